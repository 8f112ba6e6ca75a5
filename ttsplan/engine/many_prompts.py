"""Many prompts' branches in one decode batch: n branches per prompt, the batch refilled as they finish.

Sampling calibration problems one at a time leaves the batch emptying behind the longest branch
(the 64th branch to finish sets the time).  Here the cache has `rows` rows, and a prompt is admitted
whenever n rows are free: it is prefilled once, its prompt KV is copied into the n rows it gets, and
its branches decode beside every other prompt's in the same step, one graph replayed over all rows.
A row stays where it is until its branch finishes (no compaction); a free row decodes a dummy token
at its position 0, which the next admission overwrites.

Each row holds its own prompt's KV in front of its own tokens (the cache has no shared prefix):
at calibration prompts (58-400 tokens) the one-prompt engine runs the plain mode, in which every
branch reads its prompt's KV itself, and so does this.

Every branch draws its tokens from uniforms that depend only on (seed, branch, position)
(`counter_uniforms`), not on which other prompts share the batch: a prompt's branches are the same
whichever batch they ran in, up to the rounding of batched matrix products, and exactly the same in
greedy decoding.
"""
from dataclasses import dataclass

import torch

from ttsplan.engine.generate import Branch, check_request, decoder, step_bytes
from ttsplan.engine.kv_cache import KVCache
from ttsplan.engine.model import Transformer
from ttsplan.engine.sampling import SamplingParams, sample
from ttsplan.errors import TTSPlanError

# splitmix64's constants as signed int64 (torch's int64 products wrap around)
_GOLDEN, _MIX1, _MIX2 = (c - (1 << 64) if c >= 1 << 63 else c
                         for c in (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB))


def counter_uniforms(keys: torch.Tensor, counters: torch.Tensor) -> torch.Tensor:
    """Uniforms in [0, 1) (24 bits) from int64 keys and counters by splitmix64: a pure function of
    (key, counter), so a branch's random stream does not depend on the batch it runs in."""
    x = keys * _GOLDEN + counters
    for shift, mult in ((30, _MIX1), (27, _MIX2)):
        x = (x ^ ((x >> shift) & ((1 << (64 - shift)) - 1))) * mult
    x = x ^ ((x >> 31) & ((1 << 33) - 1))
    return ((x >> 40) & 0xFFFFFF).to(torch.float32) / float(1 << 24)


def branch_keys(seed: int, n: int, device) -> torch.Tensor:
    """The counter_uniforms keys of a prompt's n branches sampled with `seed`."""
    return seed * (1 << 20) + torch.arange(n, dtype=torch.long, device=device)


@dataclass
class Row:
    prompt: int    # index into the prompts
    branch: int


@dataclass
class ManyStats:
    steps: int = 0
    row_steps: int = 0   # rows decoded over all steps (live or not)
    live_steps: int = 0  # rows that held a live branch
    new_tokens: int = 0
    bytes_read: int = 0  # weights + the live rows' KV read by decode steps (the memory-traffic floor)

    @property
    def occupancy(self) -> float:
        return self.live_steps / self.row_steps if self.row_steps else 0.0


class ManyPrompts:
    """The batch: rows, their owners, and the device tensors a step reads (tokens, keys, counters)."""

    def __init__(self, model: Transformer, prompts: list[list[int]], seeds: list[int], n: int, rows: int,
                 params: SamplingParams, eos_ids: set[int], cuda_graphs: bool):
        if rows < n:
            raise TTSPlanError(f"a batch of {rows} rows cannot hold one prompt's {n} branches")
        longest = max(len(p) for p in prompts)
        check_request(model.cfg, longest, n, params)
        self.model, self.prompts, self.seeds, self.n, self.params, self.eos_ids = model, prompts, seeds, n, params, eos_ids
        dev = model.device
        self.cache = KVCache.allocate(model.cfg, 0, rows, longest + params.max_new_tokens, model.dtype, dev)
        self.owner: list[Row | None] = [None] * rows
        self.branches: dict[int, list[Branch]] = {}
        self.unfinished: dict[int, int] = {}
        self.tokens = torch.zeros(rows, dtype=torch.long, device=dev)
        self.keys = torch.zeros(rows, dtype=torch.long, device=dev)
        self.counters = torch.zeros(rows, dtype=torch.long, device=dev)
        self.live = torch.zeros(rows, dtype=torch.long, device=dev)
        self.step = decoder(model, self.cache, rows, params, cuda_graphs)
        self.stats = ManyStats()
        self.context = 0  # KV tokens the live rows hold, on the host

    def free_rows(self) -> list[int]:
        return [r for r, o in enumerate(self.owner) if o is None]

    def admit(self, j: int, rows: list[int]) -> None:
        """Prefill prompt j once, copy its KV into `rows`, and sample its branches' first tokens."""
        prompt, n, cache = self.prompts[j], self.n, self.cache
        pre = KVCache.allocate(self.model.cfg, len(prompt), 0, 0, self.model.dtype, self.model.device)
        logits = self.model.prefill(torch.tensor(prompt, dtype=torch.long), pre).expand(n, -1)
        idx = torch.tensor(rows, dtype=torch.long, device=self.model.device)
        for dst, src in zip((*cache.suffix_k, *cache.suffix_v), (*pre.prefix_k, *pre.prefix_v)):
            dst[idx, :, :len(prompt)] = src.unsqueeze(0)
        keys = branch_keys(self.seeds[j], n, self.model.device)
        first, logprobs, confs = sample(logits, self.params, counter_uniforms(keys, torch.zeros_like(keys)))
        cache.lens[idx] = len(prompt)
        self.tokens[idx], self.keys[idx], self.counters[idx], self.live[idx] = first, keys, 1, 1
        self.branches[j] = [Branch() for _ in range(n)]
        self.unfinished[j] = n
        self.context += n * len(prompt)
        for b, (r, t, lp, c) in enumerate(zip(rows, first.tolist(), logprobs.tolist(), confs.tolist())):
            self.owner[r] = Row(j, b)
            self.emit(r, t, lp, c)
        self.release([r for r in rows if self.owner[r] is None])

    def release(self, rows: list[int]) -> None:
        """Rows whose branch finished decode as free rows from the next step on (at their position 0)."""
        if rows:
            idx = torch.tensor(rows, dtype=torch.long, device=self.tokens.device)
            self.cache.lens[idx] = 0
            self.live[idx] = 0

    def emit(self, r: int, token: int, logprob: float, confidence: float) -> None:
        """Append one token to row r's branch; a finished branch frees its row."""
        row = self.owner[r]
        branch = self.branches[row.prompt][row.branch]
        branch.tokens.append(token)
        branch.logprobs.append(logprob)
        branch.confidences.append(confidence)
        self.stats.new_tokens += 1
        if token in self.eos_ids and not self.params.ignore_eos:
            branch.finish = "eos"
        elif len(branch.tokens) >= self.params.max_new_tokens:
            branch.finish = "length"
        if branch.finish:
            self.owner[r] = None
            self.unfinished[row.prompt] -= 1
            self.context -= len(self.prompts[row.prompt]) + len(branch.tokens) - 1  # its KV: all but the last token

    def decode_step(self) -> list[int]:
        """One step over every row; returns the prompts whose last branch finished in it."""
        rows = len(self.owner)
        before = [o.prompt if o else None for o in self.owner]
        live = [r for r, o in enumerate(self.owner) if o is not None]
        self.context += len(live)  # each live row's fed token joins its KV
        self.stats.bytes_read += step_bytes(self.model.cfg, 0, self.context, self.model.dtype)
        tokens, logprobs, confs = self.step(self.tokens.view(rows, 1), counter_uniforms(self.keys, self.counters))
        self.cache.lens += self.live
        self.counters += self.live
        self.tokens = tokens.clone()
        for r, t, lp, c in zip(live, *(x[live].tolist() for x in (tokens, logprobs, confs))):
            self.emit(r, t, lp, c)
        freed = [r for r in live if self.owner[r] is None]
        self.release(freed)
        self.stats.steps += 1
        self.stats.row_steps += rows
        self.stats.live_steps += len(live)
        return sorted({before[r] for r in freed if self.unfinished[before[r]] == 0})


def generate_many(model: Transformer, prompts: list[list[int]], seeds: list[int], n: int, rows: int,
                  params: SamplingParams, eos_ids: set[int], cuda_graphs: bool = True):
    """n branches for every prompt (prompt j sampled with seeds[j]) in a batch of `rows` rows.  Yields
    (j, branches) as each prompt's last branch finishes, then the ManyStats once all have."""
    if not prompts:
        return
    batch = ManyPrompts(model, prompts, seeds, n, rows, params, eos_ids, cuda_graphs)
    waiting = list(range(len(prompts)))
    with torch.inference_mode():
        while waiting or batch.unfinished:
            free = batch.free_rows()
            while waiting and len(free) >= n:
                j = waiting.pop(0)
                batch.admit(j, free[:n])
                free = free[n:]
            done = [j for j, left in batch.unfinished.items() if left == 0]  # ended at their first token
            done += batch.decode_step() if any(o is not None for o in batch.owner) else []
            for j in done:
                del batch.unfinished[j]
                yield j, batch.branches.pop(j)
    yield batch.stats
