"""N branches from one prompt: prefill once, then decode every live branch as one batch.

The prompt's KV is computed and stored once; each decode step feeds every live
branch's last token through relay attention; finished branches (EOS or length)
leave the batch.
"""
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from ttsplan.engine.config import ModelConfig
from ttsplan.engine.cuda_graphs import GraphDecoder
from ttsplan.engine.kv_cache import KVCache
from ttsplan.engine.model import Transformer, in_vocab
from ttsplan.engine.sampling import SamplingParams, sample, uniforms
from ttsplan.errors import TTSPlanError
from ttsplan.hardware import synchronize


@dataclass
class Branch:
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    confidences: list[float] = field(default_factory=list)  # DeepConf token confidence, per token
    finish: str = ""  # "eos", "length", or "stopped" (early stop) once done
    limit: int = 0    # this branch's own token limit (0: the request's max_new_tokens)


@dataclass
class GenerationStats:
    prompt_tokens: int
    prefill_s: float = 0.0
    capture_s: float = 0.0  # CUDA graph capture, per request (0 on the CPU)
    decode_s: float = 0.0
    steps: int = 0
    new_tokens: int = 0     # every generated token, the first (from prefill logits) included
    decode_tokens: int = 0  # tokens produced by decode steps: what decode tokens/s counts
    bytes_read: int = 0  # weights + KV read by decode steps (the memory-traffic floor)

    @property
    def tokens_per_s(self) -> float:
        return self.decode_tokens / self.decode_s if self.decode_s else 0.0


def check_request(cfg: ModelConfig, prompt_len: int, branches: int, params: SamplingParams) -> None:
    if branches < 1:
        raise TTSPlanError(f"branches must be at least 1, got {branches}")
    if prompt_len < 1:
        raise TTSPlanError("the prompt is empty")
    if prompt_len + params.max_new_tokens > cfg.max_position_embeddings:
        raise TTSPlanError(f"prompt of {prompt_len} tokens + {params.max_new_tokens} new tokens exceeds the "
                           f"model's window of {cfg.max_position_embeddings} tokens")


def step_bytes(cfg: ModelConfig, prefix_len: int, suffix_tokens: int, dtype: torch.dtype) -> int:
    """Bytes a decode step must read at least: weights once, prefix KV once, each branch's own KV once
    (suffix_tokens: the own tokens of all live branches together, the ones being fed included)."""
    width = torch.finfo(dtype).bits // 8
    return cfg.weight_bytes(width) + cfg.kv_token_bytes(width) * (prefix_len + suffix_tokens)


def decoder(model: Transformer, cache: KVCache, n: int, params: SamplingParams, cuda_graphs: bool):
    """One decode step and sampling for the live rows, (tokens [B, 1], u [B]) -> (next tokens [B],
    log-probs [B], confidences [B]): graph replay on a GPU."""
    if cuda_graphs and model.device.type == "cuda":
        return GraphDecoder(model, cache, n, params)
    return lambda tokens, u: sample(model.decode(tokens, cache)[:, -1], params, u)


@dataclass
class Request:
    """What plain and speculative generation share: the branches, which branch each live cache row
    holds, the statistics, and the random stream."""
    branches: list[Branch]
    rows: list[int]
    stats: GenerationStats
    gen: torch.Generator
    params: SamplingParams
    eos_ids: set[int]

    def emit(self, row: int, tokens: list[int], logprobs: list[float], confidences: list[float]) -> int:
        """Append a run of tokens (one per decode step, up to k + 1 per speculative round) to the branch
        in cache row `row`, up to its finish (EOS or its limit); returns how many were appended."""
        branch = self.branches[self.rows[row]]
        if branch.finish:
            return 0
        room = (branch.limit or self.params.max_new_tokens) - len(branch.tokens)
        n = min(len(tokens), room)
        if not self.params.ignore_eos and not self.eos_ids.isdisjoint(tokens[:n]):
            n = next(i for i, t in enumerate(tokens) if t in self.eos_ids) + 1
        branch.tokens += tokens[:n]
        branch.logprobs += logprobs[:n]
        branch.confidences += confidences[:n]
        if branch.tokens[-1] in self.eos_ids and not self.params.ignore_eos:
            branch.finish = "eos"
        elif len(branch.tokens) >= (branch.limit or self.params.max_new_tokens):
            branch.finish = "length"
        self.stats.new_tokens += n
        return n

    def compact(self, caches: list[KVCache], stop=None) -> list[int]:
        """Drop finished branches' rows from every cache; returns the rows kept (their indices before),
        empty when no branch is left to decode.  stop(branches) -> True ends the request early: the
        unfinished branches are marked 'stopped'."""
        keep = [r for r, b in enumerate(self.rows) if not self.branches[b].finish]
        if keep and stop is not None and len(keep) < len(self.rows) and stop(self.branches):
            for r in keep:
                self.branches[self.rows[r]].finish = "stopped"
            keep = []
        if keep and len(keep) < len(self.rows):
            upto = max(len(self.branches[self.rows[r]].tokens) for r in keep)  # no cache holds more
            for cache in caches:
                cache.keep_rows(keep, upto)
            self.rows = [self.rows[r] for r in keep]
        return keep


def select_rows(x: torch.Tensor, keep: list[int]) -> torch.Tensor:
    """x's rows `keep` (all of x when keep is every row)."""
    return x if len(keep) == x.shape[0] else x[torch.tensor(keep, device=x.device)]


def start_request(model: Transformer, prompt: list[int], n: int, params: SamplingParams, eos_ids: set[int],
                  caches: list[KVCache], models: list[Transformer], limits=None) -> tuple[Request, torch.Tensor]:
    """Prefill the prompt once into each model's cache and sample every branch's first token from the
    first model's logits.  limits: each branch's own token limit (at most max_new_tokens).  Returns
    the request and the first tokens [n]."""
    limits = limits or [0] * n
    if len(limits) != n or any(not 0 <= x <= params.max_new_tokens for x in limits):
        raise TTSPlanError(f"branch limits must be {n} values between 1 and {params.max_new_tokens}")
    request = Request([Branch(limit=x) for x in limits], list(range(n)), GenerationStats(prompt_tokens=len(prompt)),
                      torch.Generator(device=model.device).manual_seed(params.seed), params, eos_ids)
    t0 = time.perf_counter()
    prompt_t = torch.tensor(prompt, dtype=torch.long)
    logits = [m.prefill(in_vocab(prompt_t, m), c) for m, c in zip(models, caches)][0].expand(n, -1)
    tokens, logprobs, confs = sample(logits, params, uniforms(request.gen, n))
    for row, (tok, lp, c) in enumerate(zip(tokens.tolist(), logprobs.tolist(), confs.tolist())):
        request.emit(row, [tok], [lp], [c])
    synchronize(model.device)
    request.stats.prefill_s = time.perf_counter() - t0
    return request, tokens


@contextmanager
def decode_clock(stats: GenerationStats, make_runner, device):
    """Yields make_runner() (the step or round function of a decode loop) and times the loop: building
    it (graphs captured up front) goes to stats.capture_s, the loop to stats.decode_s, except graphs the
    runner captures mid-run (its growing capture_s), which count as capture too."""
    t0 = time.perf_counter()
    runner = make_runner()
    synchronize(device)
    stats.capture_s = time.perf_counter() - t0
    captured_before = getattr(runner, "capture_s", 0.0)
    t0 = time.perf_counter()
    yield runner
    synchronize(device)
    lazy = getattr(runner, "capture_s", 0.0) - captured_before
    stats.decode_s = time.perf_counter() - t0 - lazy
    stats.capture_s += lazy


def generate(model: Transformer, prompt: list[int], n: int, params: SamplingParams,
             eos_ids: set[int], on_step=None, cuda_graphs: bool = True, stop=None,
             limits=None) -> tuple[list[Branch], GenerationStats]:
    """n branches from one prompt.  stop(branches) -> True, asked whenever a branch finishes, ends
    the request early (see Request.compact); limits gives each branch its own token limit."""
    cfg = model.cfg
    check_request(cfg, len(prompt), n, params)
    cache = KVCache.allocate(cfg, len(prompt), n, params.max_new_tokens, model.dtype, model.device)
    request, tokens = start_request(model, prompt, n, params, eos_ids, [cache], [model], limits)
    stats = request.stats
    with decode_clock(stats, lambda: decoder(model, cache, n, params, cuda_graphs), model.device) as step:
        while keep := request.compact([cache], stop):
            last = select_rows(tokens, keep).view(-1, 1)
            B = len(keep)
            stats.bytes_read += step_bytes(cfg, cache.prefix_len,
                                           sum(len(request.branches[b].tokens) for b in request.rows), model.dtype)
            tokens, logprobs, confs = step(last, uniforms(request.gen, B))
            cache.lens[:B] += 1
            for row, (tok, lp, c) in enumerate(zip(tokens.tolist(), logprobs.tolist(), confs.tolist())):
                request.emit(row, [tok], [lp], [c])
            stats.decode_tokens += B
            stats.steps += 1
            if on_step:
                on_step(stats)
    return request.branches, stats
