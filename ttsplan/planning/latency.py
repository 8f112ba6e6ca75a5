"""A plan's latency, by replaying its decode loop on the fitted step costs.

One request: prefill once (the draft prefills too), capture the CUDA graphs of the batch buckets it
passes through on a GPU (decode steps, or speculative rounds: the first round's and the buckets
cuda_graphs.GraphRound keeps), then decode.  Plain decoding runs one step per token for every live
branch; speculative decoding runs rounds of k draft steps, one verification of k + 1 tokens per
branch and the round's own cost.  Branches end at lengths drawn from the task profile, capped by the
plan; finished branches leave the batch, so the request ends with its longest branch, or earlier
when early stop decides the vote.  What the engine does, the replay prices:

  graph buckets  a step over j live branches replays the graph of bucket(j, N) rows (a round: the
                 graph GraphRound holds), whose rows all run the weights, while only the j live rows
                 read their KV;
  compaction     each finish that leaves branches running compacts the cache (KVCache.keep_rows);
  rounds         a branch's rounds are random: each emits 1 + the drafts accepted, drawn per position
                 from the acceptance, so the request waits for the branch with the most rounds.

Draws: for every calibration problem (with its own prompt length), DRAWS random subsets of N of its
N_max branches (fewer per problem on large profiles: DRAWS_TOTAL in all), each with its own random
acceptance.  A step's cost is linear in the tokens a branch holds, so the cost of its first s steps
at a live batch of j is closed-form per problem, plan width and decoding (`StepSums`): a plan's
thousands of draws cost a few gathers.
The p90 a budget is held to is predictive: each draw's seconds times a draw of the model's own error
(log-normal, with the mean and spread that validation on plans off the grid measured for this device
profile), so that a plan promised within the budget at p90 runs within it at p90.
"""
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from scipy.special import comb

from ttsplan.measure.schema import DeviceProfile
from ttsplan.planning.cost_model import BatchTable, CompactionModel, PrefillModel, StepModel, plain_below
from ttsplan.planning.early_stop import finished_at_decision
from ttsplan.planning.task_arrays import TaskArrays

DRAWS = 24          # per calibration problem ...
DRAWS_TOTAL = 6000  # ... up to this many in all (at least 4 per problem)
ROUND_POOL = 2048  # random round sequences per decoding, shared out among the draws' branches
SHRINK = 4  # cuda_graphs.SHRINK: a round's batch gets a smaller graph once it falls to 1/SHRINK of its graph's


@dataclass
class DeviceCosts:
    """Everything the replay reads from a device profile, fitted."""
    target: StepModel
    prefill: PrefillModel
    loop: BatchTable
    capture: BatchTable
    draft: StepModel | None = None
    draft_prefill: PrefillModel | None = None
    rounds: BatchTable | None = None
    compaction: CompactionModel = field(default_factory=lambda: CompactionModel(0.0, 0.0))
    draft_compaction: float = 1.0   # a speculative compaction over both caches, against the target's alone
    error_log_mean: float = 0.0     # log(measured / predicted) over validated requests: mean and spread
    error_log_sd: float = 0.0

    @classmethod
    def fit(cls, profile: DeviceProfile) -> "DeviceCosts":
        plain = plain_below(profile.device["type"], profile.backend)
        costs = cls(StepModel.fit(profile.steps, plain), PrefillModel.fit(profile.prefill),
                    BatchTable.build(profile.loop_overhead), BatchTable.build(profile.capture),
                    compaction=CompactionModel.fit(profile.compaction))
        if profile.validation:
            costs.error_log_mean = float(profile.validation["log_ratio_mean"])
            costs.error_log_sd = float(profile.validation["log_ratio_sd"])
        if profile.draft and profile.draft.steps:
            costs.draft = StepModel.fit(profile.draft.steps, plain)
            costs.draft_prefill = PrefillModel.fit(profile.draft.prefill) if profile.draft.prefill else None
            costs.rounds = BatchTable.build(profile.draft.round_overhead)
            costs.draft_compaction = 1 + profile.draft.model.config["num_layers"] / profile.model.config["num_layers"]
        return costs


def speculative_round_ms(c: DeviceCosts, b, k: int, prompt, own, live=None) -> np.ndarray:
    """k draft steps + one verification of k + 1 tokens + the round's measured overhead, over a graph of
    b rows of which `live` hold a branch.  The overhead is a real round less its parts timed alone, and
    may be negative (on a CPU the parts run faster back to back than alone); a round never costs less
    than its verification."""
    live = b if live is None else live
    verify = c.target.predict(b, k + 1, prompt, own, live)
    return np.maximum(k * c.draft.predict(b, 1, prompt, own, live) + verify + c.rounds.at(live, k), verify)


@dataclass(frozen=True)
class Decoding:
    """How tokens are produced: plain (k = 0), or k drafts per round at the given acceptance."""
    k: int = 0
    acceptance: tuple[float, ...] = ()

    @property
    def rates(self) -> np.ndarray:
        """Per-position acceptance for the k drafts (the last measured rate repeats)."""
        return np.array([self.acceptance[min(i, len(self.acceptance) - 1)] for i in range(self.k)])

    @property
    def tokens_per_round(self) -> float:
        if self.k == 0:
            return 1.0
        return 1.0 + float(np.cumprod(self.rates).sum())


@dataclass
class Latency:
    mean_s: float
    p90_s: float                # predictive: widened by the model's validated error
    tokens: float               # mean tokens generated per request (all branches)
    seconds: np.ndarray = field(repr=False)   # per draw, as the model predicts it
    capture_s: float = 0.0      # of the mean, graph capture


def bucket(batch, max_batch):
    """The CUDA-graph bucket (cuda_graphs.bucket), vectorized."""
    return np.minimum(2 ** np.ceil(np.log2(np.maximum(batch, 1))), max_batch)


def plain_graphs(N: int) -> np.ndarray:
    """[N + 1]: the rows of the graph a plain step over j live branches replays (GraphDecoder)."""
    return np.concatenate([[1], bucket(np.arange(1, N + 1), N)]).astype(int)


def round_graphs(N: int) -> np.ndarray:
    """[N + 1]: the rows of the round graph GraphRound replays for j live branches, the batch shrinking
    from N: the smallest graph held, until j falls to 1/SHRINK of it."""
    held, out = N, np.ones(N + 1, dtype=int)
    for live in range(N, 0, -1):
        small = int(bucket(live, N))
        if held >= SHRINK * small:
            held = small
        out[live] = held
    return out


def rounds_needed(rng: np.random.Generator, rates: np.ndarray, shape: tuple, longest: int) -> np.ndarray:
    """[*shape, longest + 1]: rounds a branch needs to emit t tokens after its first (t = 0..longest),
    each round emitting 1 + the drafts accepted (draft i accepted with rates[i] once 1..i-1 were)."""
    R = max(longest, 1)
    u = rng.random((*shape, R, len(rates)))
    per_round = 1 + np.cumprod(u < rates, axis=-1).sum(-1)                  # [*shape, R]
    cum = np.cumsum(per_round, axis=-1)                                      # tokens after r + 1 rounds
    need = np.arange(longest + 1)
    flat = cum.reshape(-1, R)
    out = np.stack([np.searchsorted(row, need, side="left") + 1 for row in flat]).reshape(*shape, longest + 1)
    out[..., 0] = 0
    return out


@lru_cache(maxsize=None)
def comb_table(N: int) -> np.ndarray:
    """[N + 1, N + 1] binomial coefficients C(n, k) (0 above the diagonal)."""
    n = np.arange(N + 1)
    return comb(n[:, None], n[None, :])


def finish_events(steps: np.ndarray, stop: np.ndarray) -> np.ndarray:
    """[D, N] for sorted step counts: True at the last branch of each group that finishes at one step,
    before the request stops, with branches still running after it (N - 1 - i of them)."""
    D, N = steps.shape
    last_of_group = np.concatenate([steps[:, 1:] != steps[:, :-1], np.zeros((D, 1), bool)], 1)
    return last_of_group & (np.arange(N)[None, :] < N - 1) & (steps < stop[:, None])


@dataclass
class StepSums:
    """Seconds of the first s steps at each live batch j (column j - 1), per problem: step u costs
    a + b (u - 1) ms, and a round also max(c + d (u - 1), 0) more (its drafts and own overhead, which
    may be negative early on a CPU but never make a round cheaper than its verification)."""
    a: np.ndarray               # [P, N]
    b: np.ndarray
    c: np.ndarray | None = None
    d: np.ndarray | None = None

    def seconds(self, p: np.ndarray, s: np.ndarray) -> np.ndarray:
        """p [D, 1] problems, s [D, N] step counts -> [D, N] seconds."""
        cols = np.arange(s.shape[1])[None, :]
        a, b = self.a[p, cols], self.b[p, cols]
        ms = s * a + b * s * (s - 1) / 2
        if self.c is not None:
            c, d = self.c[p, cols], self.d[p, cols]
            with np.errstate(divide="ignore", invalid="ignore"):
                negative = np.where(d > 0, np.maximum(np.ceil(-c / d), 0), np.where(c < 0, np.inf, 0))
            m = np.minimum(s, negative)  # the first m steps' extra is negative: held at 0
            ms = ms + (s * c + d * s * (s - 1) / 2) - (m * c + d * m * (m - 1) / 2)
        return ms / 1e3


class Replay:
    """Latency of plans on one task profile and one device profile."""

    def __init__(self, costs: DeviceCosts, task: TaskArrays, on_gpu: bool, draws: int | None = None, seed: int = 0):
        self.costs, self.task, self.on_gpu = costs, task, on_gpu
        draws = draws or max(4, min(DRAWS, -(-DRAWS_TOTAL // task.problems)))
        self.rng = np.random.default_rng(seed)
        P, n = task.problems, task.n_max
        self.p_idx = np.repeat(np.arange(P), draws)
        self.perms = np.stack([self.rng.permutation(n) for _ in range(P * draws)])
        self.error = np.exp(costs.error_log_mean + costs.error_log_sd * self.rng.standard_normal(P * draws))
        self.sums: dict[tuple, StepSums] = {}
        self.pool_offset = self.rng.integers(0, ROUND_POOL, P * draws)
        self.decisions: dict[tuple, np.ndarray] = {}
        self.rounds: dict[Decoding, np.ndarray] = {}
        prompt = task.prompt_tokens[self.p_idx]
        self.prefill_s = costs.prefill.predict(prompt) / 1e3
        self.draft_prefill_s = costs.draft_prefill.predict(prompt) / 1e3 if costs.draft_prefill else 0.0

    def finished_at_decision(self, N: int, cap: int, rule: str) -> np.ndarray:
        """[D] branches finished when early stop decided the vote (shared by every decoding)."""
        key = (N, cap, rule)
        if key not in self.decisions:
            self.decisions[key] = finished_at_decision(self.task, self.perms[:, :N], self.p_idx, N, cap, rule)
        return self.decisions[key]

    def step_counts(self, lengths: np.ndarray, dec: Decoding) -> np.ndarray:
        """[D, N] decode steps (rounds) of each drawn branch of these lengths.  A branch's rounds are
        one of ROUND_POOL random round sequences, the N branches of a draw taking N different ones
        (consecutive from a random offset): every branch's count has the exact distribution, and a
        request's branches are independent, at a memory that does not grow with the draws."""
        if dec.k == 0:
            return lengths - 1
        if dec not in self.rounds:
            self.rounds[dec] = rounds_needed(self.rng, dec.rates, (ROUND_POOL,), self.task.max_new_tokens)
        seq = (self.pool_offset[:, None] + np.arange(lengths.shape[1])[None, :]) % ROUND_POOL
        return self.rounds[dec][seq, lengths - 1]

    def step_sums(self, dec: Decoding, N: int) -> "StepSums":
        """The cost of the first s steps (rounds) at each live batch j of a plan of N branches, for every
        problem: a step's cost is linear in the tokens a branch holds, so its sum over steps is closed
        (the graph a step replays depends on N)."""
        key = (dec, N)
        if key not in self.sums:
            c, task = self.costs, self.task
            tau = dec.tokens_per_round
            j = np.arange(1, N + 1)[None, :, None]
            graph = (round_graphs(N) if dec.k else plain_graphs(N))[1:][None, :, None] if self.on_gpu else j
            P = task.prompt_tokens[:, None, None]
            own = np.array([0.0, tau])[None, None, :]                     # steps u = 1 and 2
            if dec.k == 0:
                ms = np.broadcast_to(c.target.predict(graph, 1, P, own, j) + c.loop.at(j), (len(P), N, 2))
                extra = None
            else:  # a round: its verification, plus the drafts and overhead, which cannot make it cheaper
                ms = np.broadcast_to(c.target.predict(graph, dec.k + 1, P, own, j), (len(P), N, 2))
                extra = np.broadcast_to(dec.k * c.draft.predict(graph, 1, P, own, j) + c.rounds.at(j, dec.k),
                                        (len(P), N, 2))
            self.sums[key] = StepSums(ms[..., 0], ms[..., 1] - ms[..., 0],
                                      None if extra is None else extra[..., 0],
                                      None if extra is None else extra[..., 1] - extra[..., 0])
        return self.sums[key]

    def compaction_s(self, steps: np.ndarray, stop: np.ndarray, tau: float, speculative: bool) -> np.ndarray:
        """[D] seconds compacting: at each step where f branches finish and s keep running, some row
        moves unless all f stood last (probability 1 - 1/C(s + f, f)), and s f / (f + 1) rows move on
        average, each copying the tokens held so far."""
        m = self.costs.compaction
        if m.fixed_ms == 0 and m.per_token_ms == 0:
            return np.zeros(len(steps))
        D, N = steps.shape
        idx = np.arange(N)[None, :]
        first = np.where(np.concatenate([np.ones((D, 1), bool), steps[:, 1:] != steps[:, :-1]], 1), idx, 0)
        f = idx - np.maximum.accumulate(first, axis=1) + 1
        s = N - 1 - idx
        event = finish_events(steps, stop)
        p_move = 1 - 1 / comb_table(N)[s + f, f]
        ms = m.fixed_ms * p_move + m.per_token_ms * s * f / (f + 1) * (1 + steps * tau)
        scale = self.costs.draft_compaction if speculative else 1.0
        return np.where(event, ms, 0.0).sum(1) * scale / 1e3

    def simulate(self, N: int, cap: int, dec: Decoding, early_stop_rules=()) -> dict:
        """Latency of N branches under the cap: key None without early stop, and one key per vote rule
        in early_stop_rules with early stop on that rule's vote."""
        task, p = self.task, self.p_idx
        tau = dec.tokens_per_round
        lengths = np.minimum(task.lengths[p[:, None], self.perms[:, :N]], cap)     # [D, N]
        steps = np.sort(self.step_counts(lengths, dec), axis=1)                     # shortest first
        longest_first = steps[:, ::-1]
        below = np.concatenate([longest_first[:, 1:], np.zeros((len(steps), 1), int)], 1)
        sums = self.step_sums(dec, N)
        fixed = self.prefill_s + (self.draft_prefill_s if dec.k else 0.0)
        rows = np.arange(len(steps))
        out = {}
        for rule in (None, *early_stop_rules):
            stop = steps[:, -1] if rule is None else steps[rows, self.finished_at_decision(N, cap, rule) - 1]
            hi = np.minimum(stop[:, None], longest_first)
            lo = np.minimum(stop[:, None], below)
            seconds = (sums.seconds(p[:, None], hi) - sums.seconds(p[:, None], lo)).sum(1) + fixed
            seconds = seconds + self.compaction_s(steps, stop, tau, dec.k > 0)
            capture = self.capture_s(steps, stop, dec.k) if self.on_gpu else np.zeros(len(steps))
            seconds = seconds + capture
            emitted = np.minimum(lengths, 1 + stop[:, None] * tau).sum(1)
            widened = seconds * self.error
            out[rule] = Latency(float(seconds.mean()), float(np.quantile(widened, 0.9)), float(emitted.mean()),
                                seconds, float(capture.mean()))
        return out

    def capture_s(self, steps: np.ndarray, stop: np.ndarray, k: int) -> np.ndarray:
        """[D] seconds capturing graphs: the full batch's, then the graph of each live batch the request
        runs at after a finish (plain: its bucket; rounds: the graph GraphRound moves to, plus the first
        round's own graph), each once."""
        D, N = steps.shape
        event = finish_events(steps, stop)
        held = np.full(D, N)
        seconds = np.full(D, float(self.costs.capture.at(N, k))) * (2 if k else 1)
        seen, none = {N: np.ones(D, bool)}, np.zeros(D, bool)
        for i in range(N - 1):
            small = int(bucket(N - 1 - i, N))
            moved = event[:, i] & (held >= SHRINK * small) if k else event[:, i]
            held = np.where(moved, small, held)
            new = moved & ~seen.get(small, none)
            seen[small] = seen.get(small, none) | moved
            seconds = seconds + new * float(self.costs.capture.at(small, k))
        return seconds / 1e3


def drawn_request(task, branches: int, cap: int, seed: int) -> tuple[list[int], int]:
    """Branch lengths of one calibration problem of a task profile, drawn at the seed and capped, and
    that problem's prompt length: what a random-weight timing run replays (`run --lengths-from`)."""
    rng = np.random.default_rng(seed)
    problem = task.problems[rng.integers(len(task.problems))]
    picks = rng.choice(len(problem.branches), branches, replace=branches > len(problem.branches))
    return [min(problem.branches[i].length, cap) for i in picks], problem.prompt_tokens


def predict_request(costs: DeviceCosts, lengths: list[int], prompt_tokens: int, dec: Decoding,
                    on_gpu: bool) -> Latency:
    """One request whose branches have exactly these lengths (no early stop)."""
    n = len(lengths)
    one = TaskArrays(np.array([lengths]), np.zeros((1, n), int), [[[] for _ in range(n)]], np.ones((1, 1), bool),
                     np.array([prompt_tokens]), {}, int(max(lengths)))
    draws = 64 if dec.k else 1  # speculative rounds are random: their expectation
    return Replay(costs, one, on_gpu, draws=draws).simulate(n, int(max(lengths)), dec)[None]
