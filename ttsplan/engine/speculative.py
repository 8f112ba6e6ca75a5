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
"""
import time
from dataclasses import dataclass, field

import torch

from ttsplan.engine.generate import Branch, GenerationStats, Request, check_request, start_request, step_bytes
from ttsplan.engine.kv_cache import KVCache
from ttsplan.engine.model import Transformer
from ttsplan.engine.sampling import SamplingParams, draw, token_probs, token_scores, uniforms
from ttsplan.errors import TTSPlanError
from ttsplan.hardware import synchronize


@dataclass
class SpecStats:
    draft_len: int
    rounds: int = 0
    branch_rounds: int = 0
    reached: list[int] = field(default_factory=list)   # per draft position: branch-rounds that got to it
    accepted: list[int] = field(default_factory=list)  # ... and accepted it
    emitted: int = 0
    draft_s: float = 0.0
    verify_s: float = 0.0
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


def accept_drafts(p: torch.Tensor, q: torch.Tensor, drafts: torch.Tensor, gen: torch.Generator):
    """The speculative-sampling rule for a batch.

    p [B, k+1, V] target distributions, q [B, k, V] draft distributions, drafts [B, k].
    Returns (n_accepted [B], next_token [B]): the first n_accepted drafts are kept, then next_token
    (drawn from the residual at the first rejection, or from p[:, k] when all were accepted).
    """
    B, k = drafts.shape
    idx = drafts.unsqueeze(-1)
    p_d = p[:, :k].gather(-1, idx).squeeze(-1)
    q_d = q.gather(-1, idx).squeeze(-1)
    u = torch.rand(B, k, generator=gen, device=p.device)
    ok = u * q_d < p_d  # u < p/q without dividing by a zero q
    n_acc = ok.long().cumprod(-1).sum(-1)
    rows = torch.arange(B, device=p.device)
    at = n_acc.clamp(max=k - 1)
    residual = (p[rows, at] - q[rows, at]).clamp_(min=0)
    empty = residual.sum(-1, keepdim=True) <= 0  # p == q there: rejection cannot happen, keep p
    residual = torch.where(empty, p[rows, at], residual)
    final = torch.where((n_acc == k).unsqueeze(-1), p[:, k], residual)
    return n_acc, draw(final, uniforms(gen, B))


def given_accepts(rates: tuple[float, ...], B: int, k: int, gen: torch.Generator, device) -> torch.Tensor:
    """Accepted drafts per branch [B] drawn from per-position acceptance rates instead of the models
    (timing random-weight models, whose own acceptance means nothing): draft i is accepted with
    probability rates[i] once drafts 1..i-1 were."""
    a = torch.tensor([rates[min(i, len(rates) - 1)] for i in range(k)], device=device)
    return (torch.rand(B, k, generator=gen, device=device) < a).long().cumprod(-1).sum(-1)


def check_pair(target_tokenizer, draft_tokenizer, target_name: str, draft_name: str) -> None:
    if target_tokenizer.get_vocab() != draft_tokenizer.get_vocab():
        raise TTSPlanError(f"draft '{draft_name}' and target '{target_name}' do not share a tokenizer: "
                           "speculative decoding needs identical vocabularies")


def draft_step(draft: Transformer, d_cache: KVCache, feed: torch.Tensor, draft_params: SamplingParams,
               gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The draft scores feed [B, f] for every live branch, commits it, and draws one token per branch
    from the last position: (tokens [B], the distributions they were drawn from [B, V])."""
    B = feed.shape[0]
    d_logits = draft.decode(feed, d_cache)[:, -1]
    d_cache.lens[:B] += feed.shape[1]
    q = token_probs(d_logits, draft_params)
    return draw(q, uniforms(gen, B)), q


def propose(draft: Transformer, d_cache: KVCache, feed: torch.Tensor, k: int, draft_params: SamplingParams,
            gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """k draft steps for all live branches: (drafts [B, k], their distributions [B, k, V])."""
    drafts, q = [], []
    for _ in range(k):
        token, dist = draft_step(draft, d_cache, feed, draft_params, gen)
        drafts.append(token)
        q.append(dist)
        feed = token.view(-1, 1)
    return torch.stack(drafts, 1), torch.stack(q, 1)


def verify(target: Transformer, t_cache: KVCache, last: torch.Tensor, drafts: torch.Tensor, q: torch.Tensor,
           params: SamplingParams, gen: torch.Generator, acceptance: tuple[float, ...] | None = None):
    """The target scores [last, d1..dk] for every branch in one pass (relay attention, q = k + 1) and
    applies the acceptance rule: (accepted drafts per branch [B], emitted tokens [B, k + 1] of which
    the first accepted + 1 count, their log-probabilities and confidences).  With `acceptance`, the
    number accepted is drawn from those rates instead (given_accepts)."""
    B = drafts.shape[0]
    t_logits = target.decode(torch.cat([last, drafts], dim=1), t_cache)
    p = token_probs(t_logits, params)
    if q.shape[-1] < p.shape[-1]:  # the draft's vocabulary is a prefix of the target's: no mass on the rest
        q = torch.nn.functional.pad(q, (0, p.shape[-1] - q.shape[-1]))
    n_acc, nxt = accept_drafts(p, q, drafts, gen)
    if acceptance:
        n_acc = given_accepts(acceptance, B, drafts.shape[1], gen, drafts.device)
    emitted = torch.cat([drafts, torch.zeros_like(nxt).view(B, 1)], dim=1)
    emitted[torch.arange(B), n_acc] = nxt
    return n_acc, emitted, *token_scores(t_logits, emitted)


def commit(request: Request, spec: SpecStats, kr: int, n_acc: torch.Tensor, emitted, logprobs, confs) -> None:
    """Append each branch's accepted drafts and its next token (up to its finish), and count acceptance."""
    n_list = n_acc.tolist()
    for row, (n_ok, toks, lps, cs) in enumerate(zip(n_list, emitted.tolist(), logprobs.tolist(), confs.tolist())):
        for tok, lp, c in zip(toks[:n_ok + 1], lps[:n_ok + 1], cs[:n_ok + 1]):
            if not request.emit(row, tok, lp, c):
                break
            request.stats.decode_tokens += 1
            spec.emitted += 1
        for i in range(min(n_ok + 1, kr)):
            spec.reached[i] += 1
            spec.accepted[i] += i < n_ok
    spec.accept_counts.append(n_list)
    spec.rounds += 1
    spec.branch_rounds += len(n_list)


def generate_speculative(target: Transformer, draft: Transformer, prompt: list[int], n: int, params: SamplingParams,
                         eos_ids: set[int], draft_len: int, draft_params: SamplingParams | None = None,
                         on_step=None, stop=None, limits=None, acceptance: tuple[float, ...] | None = None
                         ) -> tuple[list[Branch], GenerationStats, SpecStats]:
    """Like generate(), with k = draft_len tokens proposed by the draft per branch per round.

    draft_params sets how the draft proposes (default: the target's sampling); any proposal
    distribution is lossless, greedy drafts (temperature 0) included.  acceptance: per-position
    rates to draw acceptance from (timing only; see given_accepts).
    """
    if draft_len < 1:
        raise TTSPlanError(f"draft length must be at least 1, got {draft_len}")
    if draft.cfg.vocab_size > target.cfg.vocab_size:
        raise TTSPlanError(f"the draft's vocabulary ({draft.cfg.vocab_size} tokens) is larger than the target's "
                           f"({target.cfg.vocab_size}): a draft's vocabulary must be a prefix of the target's")
    k, cfg = draft_len, target.cfg
    check_request(cfg, len(prompt) + k + 1, n, params)
    draft_params = draft_params or params
    capacity = params.max_new_tokens + k + 1
    t_cache = KVCache.allocate(cfg, len(prompt), n, capacity, target.dtype, target.device)
    d_cache = KVCache.allocate(draft.cfg, len(prompt), n, capacity, draft.dtype, draft.device)
    request, _ = start_request(target, prompt, n, params, eos_ids, [t_cache, d_cache], [target, draft], limits)
    stats, spec, gen, dev = request.stats, SpecStats(k), request.gen, target.device
    t0 = time.perf_counter()
    while request.compact([t_cache, d_cache], stop):
        B = len(request.rows)
        toks = [request.branches[b].tokens for b in request.rows]
        lengths = [len(t) for t in toks]
        m = torch.tensor(lengths, device=dev)
        last = torch.tensor([t[-1] for t in toks], device=dev).view(B, 1)

        # Propose: kr draft steps; the first also re-feeds T[m-2] (see module doc).  The last rounds
        # draft no more than the longest-lived branch can still emit.
        room = max((request.branches[b].limit or params.max_new_tokens) - len(request.branches[b].tokens)
                   for b in request.rows)
        kr = max(1, min(k, room - 1))
        ts = time.perf_counter()
        if min(lengths) >= 2:
            d_cache.lens[:B] = m - 2
            feed = torch.cat([torch.tensor([t[-2] for t in toks], device=dev).view(B, 1), last], dim=1)
        else:
            feed = last
        fed = sum(lengths)
        stats.bytes_read += sum(step_bytes(draft.cfg, d_cache.prefix_len, fed + j * B, draft.dtype) for j in range(kr))
        drafts, q = propose(draft, d_cache, feed, kr, draft_params, gen)
        synchronize(dev)
        tv = time.perf_counter()
        spec.draft_s += tv - ts

        stats.bytes_read += step_bytes(cfg, t_cache.prefix_len, fed + kr * B, target.dtype)
        n_acc, emitted, logprobs, confs = verify(target, t_cache, last, drafts, q, params, gen, acceptance)
        synchronize(dev)
        spec.verify_s += time.perf_counter() - tv

        # Commit: the target keeps [last, d1..d_n]; the draft keeps what it fed of those.
        t_cache.lens[:B] += n_acc + 1
        d_cache.lens[:B] = m + n_acc.clamp(max=kr - 1)
        commit(request, spec, kr, n_acc, emitted, logprobs, confs)
        stats.steps += 1
        if on_step:
            on_step(stats)
    synchronize(dev)
    stats.decode_s = time.perf_counter() - t0
    return request.branches, stats, spec
