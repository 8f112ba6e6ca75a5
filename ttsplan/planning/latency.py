"""A plan's latency, by replaying its decode loop on the fitted step costs.

One request: prefill once (the draft prefills too), capture the CUDA graphs of the batch buckets it
passes through on a GPU (decode steps, or speculative rounds: the first round's and the
buckets cuda_graphs.GraphRound keeps), then decode.  Plain decoding runs one step per token for
every live branch; speculative decoding runs rounds of k draft steps, one verification of k + 1
tokens per branch and the round's own cost, emitting tau = 1 + sum_i prod_{j<=i} a_j tokens per
branch per round on average (a_j: the draft's acceptance at position j).  Branches end at lengths
drawn from the task profile, capped by the plan; finished branches leave the batch, so the request
ends with its longest branch, or earlier when early stop decides the vote.

Draws: for every calibration problem (with its own prompt length), DRAWS random subsets of N of its
N_max branches.  The cost of s steps at a live batch of j is tabulated once per problem and
configuration, so a plan's thousand draws cost a few array gathers.
"""
from dataclasses import dataclass, field

import numpy as np

from ttsplan.measure.profiles import DeviceProfile
from ttsplan.planning.cost_model import BatchTable, ModelShape, PrefillModel, StepModel
from ttsplan.planning.early_stop import finished_at_decision
from ttsplan.planning.task_arrays import TaskArrays

DRAWS = 24


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

    @classmethod
    def fit(cls, profile: DeviceProfile) -> "DeviceCosts":
        shape = ModelShape.from_config(profile.model.config, profile.dtype)
        costs = cls(StepModel.fit(shape, profile.steps), PrefillModel.fit(profile.prefill),
                    BatchTable.build(profile.loop_overhead), BatchTable.build(profile.capture))
        if profile.draft and profile.draft.steps:
            d_shape = ModelShape.from_config(profile.draft.model.config, profile.dtype)
            costs.draft = StepModel.fit(d_shape, profile.draft.steps)
            costs.draft_prefill = PrefillModel.fit(profile.draft.prefill) if profile.draft.prefill else None
            costs.rounds = BatchTable.build(profile.draft.round_overhead)
        return costs


def speculative_round_ms(c: DeviceCosts, b, k: int, prompt, own) -> np.ndarray:
    """k draft steps + one verification of k + 1 tokens + the round's measured overhead.  The overhead
    is a real round less its parts timed alone, and may be negative (on a CPU the parts run faster
    back to back than alone); a round never costs less than its verification."""
    verify = c.target.predict(b, k + 1, prompt, own)
    return np.maximum(k * c.draft.predict(b, 1, prompt, own) + verify + c.rounds.at(b, k), verify)


@dataclass(frozen=True)
class Decoding:
    """How tokens are produced: plain (k = 0), or k drafts per round at the given acceptance."""
    k: int = 0
    acceptance: tuple[float, ...] = ()

    @property
    def tokens_per_round(self) -> float:
        if self.k == 0:
            return 1.0
        run, total = 1.0, 1.0
        for a in self.acceptance[:self.k]:
            run *= a
            total += run
        return total


@dataclass
class Latency:
    mean_s: float
    p90_s: float
    tokens: float               # mean tokens generated per request (all branches)
    seconds: np.ndarray = field(repr=False)   # per draw


def bucket(batch, max_batch):
    """The CUDA-graph bucket (cuda_graphs.bucket), vectorized."""
    return np.minimum(2 ** np.ceil(np.log2(np.maximum(batch, 1))), max_batch)


class Replay:
    """Latency of plans on one task profile and one device profile."""

    def __init__(self, costs: DeviceCosts, task: TaskArrays, on_gpu: bool, draws: int = DRAWS, seed: int = 0):
        self.costs, self.task, self.on_gpu = costs, task, on_gpu
        rng = np.random.default_rng(seed)
        P, n = task.problems, task.n_max
        self.p_idx = np.repeat(np.arange(P), draws)
        self.perms = np.stack([rng.permutation(n) for _ in range(P * draws)])
        self.tables: dict[Decoding, np.ndarray] = {}
        self.decisions: dict[tuple, np.ndarray] = {}
        prompt = task.prompt_tokens[self.p_idx]
        self.prefill_s = costs.prefill.predict(prompt) / 1e3
        self.draft_prefill_s = costs.draft_prefill.predict(prompt) / 1e3 if costs.draft_prefill else 0.0

    def finished_at_decision(self, N: int, cap: int, rule: str) -> np.ndarray:
        """[D] branches finished when early stop decided the vote (shared by every decoding)."""
        key = (N, cap, rule)
        if key not in self.decisions:
            self.decisions[key] = finished_at_decision(self.task, self.perms[:, :N], self.p_idx, N, cap, rule)
        return self.decisions[key]

    def step_table(self, dec: Decoding) -> np.ndarray:
        """[P, n + 1, S + 1]: seconds of the first s steps (rounds) at a live batch of j branches."""
        if dec in self.tables:
            return self.tables[dec]
        c, task = self.costs, self.task
        n, tau = task.n_max, dec.tokens_per_round
        steps = int(np.ceil((task.max_new_tokens - 1) / tau)) + 1
        j = np.arange(1, n + 1)[None, :, None]
        u = np.arange(1, steps + 1)[None, None, :]
        P = task.prompt_tokens[:, None, None]
        own = (u - 1) * tau
        if dec.k == 0:
            ms = c.target.predict(j, 1, P, own) + c.loop.at(j)
        else:
            ms = speculative_round_ms(c, j, dec.k, P, own)
        ms = np.broadcast_to(ms, (task.problems, n, steps))
        table = np.zeros((task.problems, n + 1, steps + 1))
        table[:, 1:, 1:] = np.cumsum(ms, axis=2) / 1e3
        self.tables[dec] = table
        return table

    def simulate(self, N: int, cap: int, dec: Decoding, early_stop_rules=()) -> dict:
        """Latency of N branches under the cap: key None without early stop, and one key per vote rule
        in early_stop_rules with early stop on that rule's vote."""
        task, p = self.task, self.p_idx
        tau = dec.tokens_per_round
        lengths = np.minimum(task.lengths[p[:, None], self.perms[:, :N]], cap)     # [D, N]
        steps = np.sort(np.ceil((lengths - 1) / tau).astype(int), axis=1)          # decode steps (rounds), shortest first
        longest_first = steps[:, ::-1]
        below = np.concatenate([longest_first[:, 1:], np.zeros((len(steps), 1), int)], 1)
        table, live = self.step_table(dec), np.arange(1, N + 1)[None, :]
        fixed = self.prefill_s + (self.draft_prefill_s if dec.k else 0.0)
        rows = np.arange(len(steps))
        out = {}
        for rule in (None, *early_stop_rules):
            stop = steps[:, -1] if rule is None else steps[rows, self.finished_at_decision(N, cap, rule) - 1]
            hi = np.minimum(stop[:, None], longest_first)
            lo = np.minimum(stop[:, None], below)
            seconds = (table[p[:, None], live, hi] - table[p[:, None], live, lo]).sum(1) + fixed
            if self.on_gpu:
                last_live = (steps >= np.maximum(stop, 1)[:, None]).sum(1)            # batch of the last step
                capture = self.round_capture_s(N, dec.k) if dec.k else self.capture_s(N)
                seconds = seconds + capture[np.maximum(last_live, 1)]
            emitted = np.minimum(lengths, 1 + stop[:, None] * tau).sum(1)
            out[rule] = Latency(float(seconds.mean()), float(np.quantile(seconds, 0.9)), float(emitted.mean()), seconds)
        return out

    def capture_s(self, N: int) -> np.ndarray:
        """[N + 1]: seconds capturing the buckets a batch shrinking from N to j passes through."""
        sums = np.zeros(N + 1)
        for low in range(1, N + 1):
            buckets = np.unique(bucket(np.arange(low, N + 1), N))
            sums[low] = self.costs.capture.at(buckets).sum() / 1e3
        return sums


    def round_capture_s(self, N: int, k: int) -> np.ndarray:
        """[N + 1]: seconds capturing round graphs while a batch shrinks from N to j: the first round's and
        the second's at N, then a smaller bucket each time the batch falls to 1/SHRINK of the graph it
        replays (cuda_graphs.GraphRound)."""
        from ttsplan.engine.cuda_graphs import SHRINK
        sums, held = np.zeros(N + 1), [N]
        for live in range(N, 0, -1):
            small = int(bucket(live, N))
            if min(b for b in held if b >= live) >= SHRINK * small:
                held.append(small)
            sums[live] = (self.costs.capture.at(N, k) + self.costs.capture.at(np.array(held), k).sum()) / 1e3
        return sums


def drawn_request(task, branches: int, cap: int, seed: int) -> tuple[list[int], int]:
    """Branch lengths of one calibration problem of a task profile, drawn at the seed and capped, and
    that problem's prompt length: what a random-weight timing run replays (`run --lengths-from`)."""
    rng = np.random.default_rng(seed)
    problem = task.problems[rng.integers(len(task.problems))]
    picks = rng.choice(len(problem.branches), branches, replace=branches > len(problem.branches))
    return [min(problem.branches[i].length, cap) for i in picks], problem.prompt_tokens


def predict_request(costs: DeviceCosts, lengths: list[int], prompt_tokens: int, dec: Decoding,
                    on_gpu: bool) -> float:
    """Seconds for one request whose branches have exactly these lengths (no early stop)."""
    n = len(lengths)
    one = TaskArrays(np.array([lengths]), np.zeros((1, n), int), [[[] for _ in range(n)]], np.ones((1, 1), bool),
                     np.array([prompt_tokens]), {}, int(max(lengths)))
    return Replay(costs, one, on_gpu, draws=1).simulate(n, int(max(lengths)), dec)[None].mean_s
