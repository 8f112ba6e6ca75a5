"""Speculative decoding across branches: a draft proposes k tokens for every live branch, the
target scores all k+1 positions of every branch in one pass (relay attention, q = k+1).

Acceptance is the standard speculative-sampling rule (accept d_i with min(1, p_i(d_i)/q_i(d_i)),
on the first rejection draw from norm(max(0, p_i - q_i)), a bonus token from p_{k+1} when all k
are accepted), so outputs follow the target's distribution exactly; greedy reduces to prefix match.

Cache bookkeeping for a branch whose emitted tokens are T[0..m-1] at the start of a round:
the last token T[m-1] is in neither cache; the target holds T[0..m-2]; the draft holds the
same, or one fewer (T[m-2] missing) after a round that accepted all k drafts.  The first draft
step therefore feeds [T[m-2], T[m-1]] for every branch (q = 2, uniform), after rolling the
draft back to m-2 tokens: re-feeding a token it already holds rewrites identical KV.
Rejected tokens are rolled back per branch by setting each cache's committed length.

A round is propose (k draft steps), verify (the target over k + 1 tokens), accept (the rule, for all
branches at once) and commit (the host appends the emitted tokens).  The first three and both caches'
new lengths run on the device with no host sync (speculative_round), replayed from one CUDA graph per
batch bucket on a GPU (cuda_graphs.GraphRound); the round's results come back in one copy.  Each
round draws its 2k + 1 uniforms per branch up front, so graphs and eager rounds emit the same tokens.
"""
from dataclasses import dataclass, field

import torch

from ttsplan.engine.cuda_graphs import GraphRound
from ttsplan.engine.generate import Branch, GenerationStats, Request, check_request, decode_clock, select_rows, \
    start_request, step_bytes
from ttsplan.engine.kv_cache import KVCache
from ttsplan.engine.model import Transformer, in_vocab
from ttsplan.engine.sampling import SamplingParams, draw, token_probs, token_scores, uniforms
from ttsplan.errors import TTSPlanError


@dataclass
class SpecStats:
    draft_len: int
    rounds: int = 0
    branch_rounds: int = 0
    reached: list[int] = field(default_factory=list)   # per draft position: branch-rounds that got to it
    accepted: list[int] = field(default_factory=list)  # ... and accepted it
    emitted: int = 0
    accept_counts: list[list[int]] = field(default_factory=list)  # per round, per live branch

    def __post_init__(self):
        self.reached = [0] * self.draft_len
        self.accepted = [0] * self.draft_len

    @property
    def acceptance(self) -> list[float]:
        """Acceptance rate at each draft position, given every earlier draft was accepted."""
        return [a / r if r else 0.0 for a, r in zip(self.accepted, self.reached)]

    @property
    def overall_acceptance(self) -> float:
        return sum(self.accepted) / sum(self.reached) if sum(self.reached) else 0.0

    @property
    def tokens_per_round(self) -> float:
        return self.emitted / self.branch_rounds if self.branch_rounds else 0.0


def accept_drafts(p: torch.Tensor, q: torch.Tensor, drafts: torch.Tensor, u: torch.Tensor):
    """The speculative-sampling rule for a batch.

    p [B, k+1, V] target distributions, q [B, k, V] draft distributions, drafts [B, k], u [B, k+1]
    uniforms (k acceptance tests, then the final draw).  Returns (n_accepted [B], next_token [B]): the
    first n_accepted drafts are kept, then next_token (drawn from the residual at the first rejection,
    or from p[:, k] when all were accepted).
    """
    B, k = drafts.shape
    idx = drafts.unsqueeze(-1)
    p_d = p[:, :k].gather(-1, idx).squeeze(-1)
    q_d = q.gather(-1, idx).squeeze(-1)
    ok = u[:, :k] * q_d < p_d  # u < p/q without dividing by a zero q
    n_acc = ok.long().cumprod(-1).sum(-1)
    rows = torch.arange(B, device=p.device)
    at = n_acc.clamp(max=k - 1)
    residual = (p[rows, at] - q[rows, at]).clamp_(min=0)
    empty = residual.sum(-1, keepdim=True) <= 0  # p == q there: rejection cannot happen, keep p
    residual = torch.where(empty, p[rows, at], residual)
    final = torch.where((n_acc == k).unsqueeze(-1), p[:, k], residual)
    return n_acc, draw(final, u[:, k])


def acceptance_rates(rates: tuple[float, ...], k: int, device) -> torch.Tensor:
    """Per-position rates for k drafts (the last one repeats) as a device tensor, for given_accepts."""
    return torch.tensor([rates[min(i, len(rates) - 1)] for i in range(k)], device=device)


def given_accepts(rates: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Accepted drafts per branch [B] drawn from per-position acceptance rates [k] at the uniforms u
    [B, k] instead of from the models (timing random-weight models, whose own acceptance means
    nothing): draft i is accepted with probability rates[i] once drafts 1..i-1 were."""
    return (u < rates).long().cumprod(-1).sum(-1)


def check_pair(target_tokenizer, draft_tokenizer, target_name: str, draft_name: str) -> None:
    if target_tokenizer.get_vocab() != draft_tokenizer.get_vocab():
        raise TTSPlanError(f"draft '{draft_name}' and target '{target_name}' do not share a tokenizer: "
                           "speculative decoding needs identical vocabularies")


def draft_step(draft: Transformer, d_cache: KVCache, feed: torch.Tensor, draft_params: SamplingParams,
               u: torch.Tensor, static: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The draft scores feed [B, f] for every live branch, commits it, and draws one token per branch
    from the last position at the uniforms u [B]: (tokens [B], the distributions they were drawn from [B, V])."""
    B = feed.shape[0]
    d_logits = draft.decode(in_vocab(feed, draft), d_cache, static)[:, -1]
    d_cache.lens[:B] += feed.shape[1]
    q = token_probs(d_logits, draft_params)
    return draw(q, u), q


def propose(draft: Transformer, d_cache: KVCache, feed: torch.Tensor, k: int, draft_params: SamplingParams,
            u: torch.Tensor, static: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """k draft steps for all live branches at the uniforms u [B, k]: (drafts [B, k], their distributions [B, k, V])."""
    drafts, q = [], []
    for i in range(k):
        token, dist = draft_step(draft, d_cache, feed, draft_params, u[:, i], static)
        drafts.append(token)
        q.append(dist)
        feed = token.view(-1, 1)
    return torch.stack(drafts, 1), torch.stack(q, 1)


def verify(target: Transformer, t_cache: KVCache, last: torch.Tensor, drafts: torch.Tensor, q: torch.Tensor,
           params: SamplingParams, u: torch.Tensor, rates: torch.Tensor | None = None, static: bool = False):
    """The target scores [last, d1..dk] for every branch in one pass (relay attention, q = k + 1) and
    applies the acceptance rule at the uniforms u [B, k + 1]: (accepted drafts per branch [B], emitted
    tokens [B, k + 1] of which the first accepted + 1 count, their log-probabilities and confidences).
    With `rates`, the number accepted is drawn from those instead (given_accepts)."""
    B, k = drafts.shape
    t_logits = target.decode(torch.cat([last, drafts], dim=1), t_cache, static)
    p = token_probs(t_logits, params)
    if q.shape[-1] < p.shape[-1]:  # the draft's vocabulary is a prefix of the target's: no mass on the rest
        q = torch.nn.functional.pad(q, (0, p.shape[-1] - q.shape[-1]))
    n_acc, nxt = accept_drafts(p, q, drafts, u)
    if rates is not None:
        n_acc = given_accepts(rates, u[:, :k])
    emitted = torch.cat([drafts, torch.zeros_like(nxt).view(B, 1)], dim=1)
    emitted[torch.arange(B, device=emitted.device), n_acc] = nxt
    return n_acc, emitted, *token_scores(t_logits, emitted)


def speculative_round(target: Transformer, draft: Transformer, t_cache: KVCache, d_cache: KVCache,
                      feed: torch.Tensor, k: int, params: SamplingParams, draft_params: SamplingParams,
                      u: torch.Tensor, rates: torch.Tensor | None = None, static: bool = False):
    """One round for cache rows 0..B-1, all on the device: roll the draft back, propose, verify, accept,
    and set both caches' lengths (see the module doc).  feed [B, f]: each branch's [T[m-2], T[m-1]]
    (f = 2), or [T[0]] in the first round (f = 1); u [B, 2k + 1].  Returns (packed [B, 3k + 4]: accepted
    count, then the k + 1 emitted tokens, their log-probabilities and confidences; next feed [B, 2])."""
    B, f = feed.shape
    held = t_cache.lens[:B].clone()  # the target holds m - 1 tokens
    d_cache.lens[:B] = (held - (f - 1)).clamp(min=0)
    drafts, q = propose(draft, d_cache, feed, k, draft_params, u[:, :k], static)
    last = feed[:, -1:]
    n_acc, emitted, logprobs, confs = verify(target, t_cache, last, drafts, q, params, u[:, k:], rates, static)
    t_cache.lens[:B] = held + n_acc + 1
    d_cache.lens[:B] = held + 1 + n_acc.clamp(max=k - 1)
    rows = torch.arange(B, device=feed.device)
    before = torch.where(n_acc > 0, emitted[rows, (n_acc - 1).clamp(min=0)], last[:, 0])
    packed = torch.cat([n_acc.unsqueeze(1).to(logprobs.dtype), emitted.to(logprobs.dtype), logprobs, confs], dim=1)
    return packed, torch.stack([before, emitted[rows, n_acc]], dim=1)


def commit(request: Request, spec: SpecStats, k: int, packed: list[list[float]]) -> None:
    """Append each branch's accepted drafts and its next token (up to its finish), and count acceptance."""
    n_list = []
    for row, values in enumerate(packed):
        n_ok = int(values[0])
        run = n_ok + 1
        emitted = request.emit(row, [int(t) for t in values[1:1 + run]], values[k + 2:k + 2 + run],
                                   values[2 * k + 3:2 * k + 3 + run])
        request.stats.decode_tokens += emitted
        spec.emitted += emitted
        for i in range(min(run, k)):
            spec.reached[i] += 1
            spec.accepted[i] += i < n_ok
        n_list.append(n_ok)
    spec.accept_counts.append(n_list)
    spec.rounds += 1
    spec.branch_rounds += len(n_list)


def rounder(target: Transformer, draft: Transformer, t_cache: KVCache, d_cache: KVCache, n: int, k: int,
            params: SamplingParams, draft_params: SamplingParams, rates, cuda_graphs: bool):
    """round(feed, u) -> (packed, next feed) for the live rows: graph replay on a GPU."""
    def round_fn(feed, u, static=False):
        return speculative_round(target, draft, t_cache, d_cache, feed, k, params, draft_params, u, rates, static)
    if cuda_graphs and target.device.type == "cuda":
        return GraphRound(round_fn, t_cache, d_cache, n, k)
    return round_fn


def generate_speculative(target: Transformer, draft: Transformer, prompt: list[int], n: int, params: SamplingParams,
                         eos_ids: set[int], draft_len: int, draft_params: SamplingParams | None = None,
                         on_step=None, stop=None, limits=None, acceptance: tuple[float, ...] | None = None,
                         cuda_graphs: bool = True) -> tuple[list[Branch], GenerationStats, SpecStats]:
    """Like generate(), with k = draft_len tokens proposed by the draft per branch per round.

    draft_params sets how the draft proposes (default: the target's sampling); any proposal
    distribution is lossless, greedy drafts (temperature 0) included.  acceptance: per-position
    rates to draw acceptance from (timing only; see given_accepts).  Graphs captured mid-run count
    as capture time, not decode time.
    """
    if draft_len < 1:
        raise TTSPlanError(f"draft length must be at least 1, got {draft_len}")
    if draft.cfg.vocab_size > target.cfg.vocab_size:
        raise TTSPlanError(f"the draft's vocabulary ({draft.cfg.vocab_size} tokens) is larger than the target's "
                           f"({target.cfg.vocab_size}): a draft's vocabulary must be a prefix of the target's")
    k, cfg, dev = draft_len, target.cfg, target.device
    check_request(cfg, len(prompt) + k + 1, n, params)
    draft_params = draft_params or params
    capacity = params.max_new_tokens + k + 1
    t_cache = KVCache.allocate(cfg, len(prompt), n, capacity, target.dtype, target.device)
    d_cache = KVCache.allocate(draft.cfg, len(prompt), n, capacity, draft.dtype, draft.device)
    request, first = start_request(target, prompt, n, params, eos_ids, [t_cache, d_cache], [target, draft], limits)
    stats, spec = request.stats, SpecStats(k)
    rates = acceptance_rates(acceptance, k, dev) if acceptance else None
    feed = first.view(n, 1)
    make_rounder = lambda: rounder(target, draft, t_cache, d_cache, n, k, params, draft_params, rates, cuda_graphs)
    with decode_clock(stats, make_rounder, dev) as run_round:
        while keep := request.compact([t_cache, d_cache], stop):
            feed, B = select_rows(feed, keep), len(keep)
            fed = sum(len(request.branches[b].tokens) for b in request.rows)
            stats.bytes_read += sum(step_bytes(draft.cfg, d_cache.prefix_len, fed + j * B, draft.dtype)
                                    for j in range(k))
            stats.bytes_read += step_bytes(cfg, t_cache.prefix_len, fed + k * B, target.dtype)
            packed, feed = run_round(feed, uniforms(request.gen, B, 2 * k + 1))
            commit(request, spec, k, packed.tolist())  # the round's one host sync
            stats.steps += 1
            if on_step:
                on_step(stats)
    return request.branches, stats, spec
