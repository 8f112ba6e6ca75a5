"""The exact plan search: every plan of the integer grid scored, the best one within the budget chosen.

The grid: branches N = 1..N_max, vote rule, length cap (quantiles of the profiled branch lengths,
and no cap), early stop off/on, and no draft or each profiled draft length k.  Accuracy comes from
the task profile (`accuracy`), latency from the replay of each plan's decode loop (`latency`).
Accuracy does not depend on the draft or on early stop, and early stop's decision does not depend
on the draft, so each is computed once and shared.  Nothing is pruned: every plan of the grid is
scored, and the choice among them (`selection`) compares their accuracies by paired differences and
reports the chosen plan's accuracy corrected for having been chosen.
"""
from dataclasses import dataclass, replace

import numpy as np

from ttsplan.errors import TTSPlanError
from ttsplan.planning.accuracy import AccuracyTable
from ttsplan.planning.latency import Decoding, Replay
from ttsplan.planning.selection import Z_PAIRED, Selection, best_within, fastest_reaching, first_reaching, unselected
from ttsplan.planning.task_arrays import TaskArrays
from ttsplan.voting import VOTE_RULES

CAP_QUANTILES = (0.5, 0.75, 0.9, 0.95)


@dataclass(frozen=True)
class Candidate:
    branches: int
    vote: str
    cap: int
    early_stop: bool
    draft_len: int              # 0: no draft
    accuracy: float
    mean_s: float
    p90_s: float
    tokens: float
    binds: str = ""

    def latency(self, stat: str) -> float:
        return self.p90_s if stat == "p90" else self.mean_s

    def describe(self) -> str:
        draft = f", draft k={self.draft_len}" if self.draft_len else ""
        return f"N={self.branches}, {self.vote}, cap {self.cap}{draft}{', early stop' if self.early_stop else ''}"


def length_caps(task: TaskArrays) -> list[int]:
    """Caps worth trying: quantiles of the branch lengths (rounded up to 16 tokens), and no cap."""
    qs = np.quantile(task.lengths, CAP_QUANTILES)
    caps = {int(min(task.max_new_tokens, 16 * np.ceil(q / 16))) for q in qs}
    return sorted(caps | {task.max_new_tokens})


def what_binds(replay: Replay, c: Candidate, dec: Decoding) -> str:
    """The constraint that sets the plan's latency: the draft's share of a round, the device's
    compute (a step of N branches against a step of one), or the longest branch (the tail in
    which fewer than half the branches are still running)."""
    costs, task = replay.costs, replay.task
    prompt = float(np.median(task.prompt_tokens))
    own = float(np.median(np.minimum(task.lengths, c.cap))) / 2
    if c.draft_len:
        draft = c.draft_len * costs.draft.predict(c.branches, 1, prompt, own)
        share = float(draft / (draft + costs.target.predict(c.branches, c.draft_len + 1, prompt, own)))
        if share > 0.4:
            return f"draft ({share:.0%} of a round)"
    q = c.draft_len + 1
    saturation = float(costs.target.predict(c.branches, q, prompt, own) / costs.target.predict(1, q, prompt, own))
    if saturation > 1.5:
        return f"compute (step x{saturation:.1f} of one branch)"
    lengths = np.minimum(task.lengths[replay.p_idx[:, None], replay.perms[:, :c.branches]], c.cap)
    tail = float(np.mean(1 - np.median(lengths, 1) / lengths.max(1)))
    return f"longest branch ({tail:.0%} of steps past the median branch)"


@dataclass
class SearchResult:
    candidates: list[Candidate]
    stat: str
    accuracy: AccuracyTable

    def interval(self, c: Candidate) -> tuple[float, float]:
        est = self.accuracy.estimate(c.vote, c.cap, c.branches)
        return est.low, est.high

    def frontier(self) -> list[Candidate]:
        """Plans no other plan beats on both accuracy and latency, fastest first."""
        out, best_acc = [], -1.0
        for c in sorted(self.candidates, key=lambda c: (c.latency(self.stat), -c.accuracy, c.mean_s + c.p90_s)):
            if c.accuracy > best_acc + 1e-12:
                out.append(c)
                best_acc = c.accuracy
        return out

    def fastest(self) -> Candidate:
        return min(self.candidates, key=lambda c: c.latency(self.stat))


def search(replay: Replay, acceptance: list[float] | None, draft_lengths=(1, 2, 4, 8), rules=VOTE_RULES,
           caps: list[int] | None = None, stat: str = "p90", early_stop: bool = True) -> SearchResult:
    """Score every plan of the grid (with early stop only where the backend can stop a request early)."""
    task = replay.task
    caps = caps or length_caps(task)
    decodings = [Decoding()]
    if acceptance is not None and replay.costs.draft is not None:
        decodings += [Decoding(k, tuple(acceptance)) for k in draft_lengths if k <= len(acceptance)]
    accuracy = AccuracyTable(task, rules, caps)
    out = []
    for N in range(1, task.n_max + 1):
        for cap in caps:
            for dec in decodings:
                latency = replay.simulate(N, cap, dec, rules if N > 1 else ())
                for rule in rules:
                    acc = accuracy.mean(rule, cap, N)
                    for early in (False, True) if N > 1 and early_stop else (False,):  # one branch: nothing to decide
                        lat = latency[rule if early else None]
                        out.append(Candidate(N, rule, cap, early, dec.k, acc, lat.mean_s, lat.p90_s, lat.tokens))
    return SearchResult(out, stat, accuracy)


def full_cap(result: SearchResult) -> int:
    return max(c.cap for c in result.candidates)


def choose(result: SearchResult, budget_s: float | None = None, target_accuracy: float | None = None,
           z: float = Z_PAIRED) -> Selection:
    """The most accurate plan within the budget by the paired rule (ties: the faster); or, with a target
    accuracy, the fastest plan that reaches it; either with its accuracy corrected for the choosing."""
    stat, cands = result.stat, result.candidates
    if target_accuracy is not None:
        return fastest_reaching(result, cands, target_accuracy)
    ok = [c for c in cands if c.latency(stat) <= budget_s]
    if not ok:
        fast = result.fastest()
        raise TTSPlanError(f"no plan fits a budget of {budget_s:g} s ({stat} latency): the fastest plan "
                           f"({fast.describe()}) takes {fast.latency(stat):.2f} s")
    return best_within(result, ok, full_cap(result), z)


def best_plans(result: SearchResult, budget_s: float | None, target_accuracy: float | None,
               top: int) -> list[Candidate]:
    """The best-plans table: within the budget the most accurate first (ties: the faster); with a
    target accuracy, of the plans reaching it the fastest first."""
    stat = result.stat
    if target_accuracy is not None:
        ok = [c for c in result.candidates if c.accuracy >= target_accuracy]
        return sorted(ok, key=lambda c: (c.latency(stat), -c.accuracy))[:top]
    ok = [c for c in result.candidates if c.latency(stat) <= budget_s]
    return sorted(ok, key=lambda c: (-c.accuracy, c.latency(stat)))[:top]


def baselines(result: SearchResult, chosen: Selection, budget_s: float | None) -> dict[str, Selection | None]:
    """The plans the seed paper argues against, on the same profiles, each corrected for its own choosing:
      compute-optimal     the fewest generated tokens whose estimate reaches the chosen plan's corrected
                          accuracy, regardless of latency;
      branches only       majority vote over N branches, no draft, cap or early stop, best within budget;
      speculation only    one branch with the fastest draft length within budget;
      greedy allocation   the draft length fastest for one branch first, then as many branches of it as fit."""
    stat, cands = result.stat, result.candidates
    within = (lambda c: c.latency(stat) <= budget_s) if budget_s is not None else (lambda c: True)
    cap = full_cap(result)
    plain = lambda c: c.cap == cap and not c.early_stop and c.vote == "majority"
    branches = [c for c in cands if plain(c) and c.draft_len == 0 and within(c)]
    spec = [c for c in cands if plain(c) and c.branches == 1 and c.draft_len and within(c)]
    compute = first_reaching(result, cands, chosen.accuracy, order=lambda c: (c.tokens, c.latency(stat)))
    seed_paper = greedy(result, budget_s)
    return {
        "compute-optimal": compute,
        "branches only": best_within(result, branches, cap, z=0) if branches else None,
        "speculation only": best_within(result, spec, cap, z=0) if spec else None,
        "greedy allocation": unselected(result, seed_paper) if seed_paper else None,
    }


def greedy(result: SearchResult, budget_s: float | None) -> Candidate | None:
    """Sequence-wise first, then branch-wise: the draft length (or none) that makes one branch fastest,
    then the most branches with that draft length that fit the budget (majority vote, no cap, no
    early stop).  How we read the seed paper's allocation of the two kinds of parallelism."""
    stat, cands = result.stat, result.candidates
    full_cap = max(c.cap for c in cands)
    pool = [c for c in cands if c.cap == full_cap and not c.early_stop and c.vote == "majority"]
    single = [c for c in pool if c.branches == 1]
    if not single:
        return None
    k = min(single, key=lambda c: c.latency(stat)).draft_len
    fits = [c for c in pool if c.draft_len == k and (budget_s is None or c.latency(stat) <= budget_s)]
    return max(fits, key=lambda c: c.branches) if fits else None


def with_binds(replay: Replay, c: Candidate, acceptance) -> Candidate:
    dec = Decoding(c.draft_len, tuple(acceptance or ())) if c.draft_len else Decoding()
    return replace(c, binds=what_binds(replay, c, dec))
