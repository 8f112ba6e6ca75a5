"""Choosing a plan without chasing noise, and the chosen plan's accuracy corrected for the choosing.

Every plan's accuracy is a mean over the same calibration problems, so the maximum of thousands of
such means is optimistic, and two plans' estimates share most of their error (a hard problem is
hard for every plan).  Hence:

  paired rule    plans are grouped by how much they add to the plainest plan (a majority vote with
                 no cap; a weighted vote rule and a length cap each add one level).  The champion is
                 the most accurate plan of the lowest level present; a plan of a higher level is
                 eligible only when the lower confidence bound of its paired difference with the
                 champion, over problems, is above zero (mean - z se > 0).  The chosen plan is the most
                 accurate eligible one, the fastest among equals.  z = 0 is the naive maximum.
  correction     a bootstrap of the whole selection (Efron's optimism): resample the problems, choose
                 again on the resample, and take how much the resample's choice looks better there than
                 on the original problems.  The chosen plan's accuracy less that optimism is the
                 estimate reported, with its bootstrap interval shifted by the same amount.
  target         `--target-accuracy`: the fastest plan whose accuracy reaches the target after the
                 same correction (the threshold is raised by the optimism of choosing at it).

What a held-out run will measure adds the held-out problems' own noise: `prediction_interval`
widens the interval for a run on H new problems by the variance of H Bernoulli outcomes.
"""
from dataclasses import dataclass

import numpy as np

from ttsplan.errors import TTSPlanError

Z_PAIRED = 2.0      # the paired rule's z: the best held out in benchmarks/selection_rules.py (2026-12-03)
RESAMPLES = 400     # bootstrap resamples of the selection
Z95 = 1.959964


@dataclass(frozen=True)
class Selection:
    """A chosen plan with its accuracy as estimated before (naive) and after correcting for the choice."""
    chosen: object          # the search's Candidate
    naive: float            # the chosen plan's mean accuracy on the calibration problems
    accuracy: float         # corrected for the selection
    low: float              # 95% interval of the corrected accuracy (over calibration problems)
    high: float
    optimism: float         # naive - accuracy
    problems: int
    rule: str               # how it was chosen, in words


def levels(keys, full_cap: int) -> np.ndarray:
    """How far each (vote rule, cap, N) plan is from the plainest: +1 for a weighted vote, +1 for a cap."""
    return np.array([(rule != "majority") + (cap != full_cap) for rule, cap, _ in keys])


def pick_paired(X: np.ndarray, level: np.ndarray, w: np.ndarray, z: float) -> int:
    """X [M, P] per-problem accuracy of M plans (fastest first), w [P] how often each problem is drawn,
    over P (uniform, or a bootstrap resample) -> the paired rule's choice (index into X)."""
    means = np.round(X @ w, 12)  # equal accuracies compare equal: the faster plan wins
    lowest = level == level.min()
    champ = int(np.argmax(np.where(lowest, means, -np.inf)))
    if z == 0:
        return int(np.argmax(means))
    d = X - X[champ]
    d_mean = d @ w
    n = len(w)                                                  # a resample has P problems too
    var = np.maximum((d * d) @ w - d_mean ** 2, 0.0) * n / max(n - 1, 1)
    eligible = (d_mean - z * np.sqrt(var / n) > 1e-12) | (np.arange(len(X)) == champ)
    return int(np.argmax(np.where(eligible, means, -np.inf)))


def pick_first(X: np.ndarray, w: np.ndarray, threshold: float) -> int | None:
    """The first plan of X (fastest first) whose accuracy reaches the threshold, None if none does."""
    hits = np.nonzero(X @ w >= threshold - 1e-12)[0]
    return int(hits[0]) if len(hits) else None


def resample_weights(P: int, resamples: int = RESAMPLES, seed: int = 0) -> np.ndarray:
    """[resamples, P] bootstrap weights: multinomial counts of problems, divided by P."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(P, np.full(P, 1.0 / P), size=resamples) / P


def optimism(X: np.ndarray, pick, weights: np.ndarray) -> float:
    """Efron's bootstrap optimism of a selection: the mean, over resamples w, of how much better the
    plan chosen on w looks on w than on the original problems."""
    base = X.mean(1)
    gaps = []
    for w in weights:
        i = pick(w)
        if i is not None:
            gaps.append(float(X[i] @ w - base[i]))
    return float(np.mean(gaps)) if gaps else 0.0


def corrected(chosen, X: np.ndarray, i: int, pick, rule: str, weights: np.ndarray) -> Selection:
    """The Selection of plan i of X, its estimate corrected by the optimism of `pick`."""
    naive = float(X[i].mean())
    opt = optimism(X, pick, weights)
    spread = weights @ X[i]
    low, high = np.percentile(spread, [2.5, 97.5])
    return Selection(chosen, naive, naive - opt, float(low - opt), float(high - opt), opt, X.shape[1], rule)


def keyed(cands, stat: str):
    """The fastest candidate of each accuracy key (vote rule, cap, N), fastest first; accuracy does not
    depend on the draft or on early stop, so these are the plans selection chooses between."""
    out = {}
    for c in sorted(cands, key=lambda c: (c.latency(stat), c.mean_s + c.p90_s)):
        out.setdefault((c.vote, c.cap, c.branches), c)
    return list(out), list(out.values())


def accuracy_rows(table, keys) -> np.ndarray:
    """[M, P] per-problem accuracy of each key."""
    return np.stack([table.per_problem[(rule, cap)][N - 1] for rule, cap, N in keys])


def best_within(result, pool, full_cap: int, z: float = Z_PAIRED, resamples: int = RESAMPLES) -> Selection:
    """The paired rule's choice among the pool (candidates already within the budget), corrected."""
    keys, fastest = keyed(pool, result.stat)
    X = accuracy_rows(result.accuracy, keys)
    level = levels(keys, full_cap)
    pick = lambda w: pick_paired(X, level, w, z)
    P = X.shape[1]
    i = pick(np.full(P, 1.0 / P))
    rule = "most accurate" if z == 0 else f"paired rule (z = {z:g}) over {len(keys)} accuracies"
    return corrected(fastest[i], X, i, pick, rule, resample_weights(P, resamples))


def unselected(result, c, resamples: int = RESAMPLES) -> Selection:
    """A plan chosen without looking at accuracy (by latency alone): no optimism to correct."""
    x = accuracy_rows(result.accuracy, [(c.vote, c.cap, c.branches)])[0]
    low, high = np.percentile(resample_weights(len(x), resamples) @ x, [2.5, 97.5])
    return Selection(c, float(x.mean()), float(x.mean()), float(low), float(high), 0.0, len(x), "by latency alone")


def first_reaching(result, pool, threshold: float, order=None, resamples: int = RESAMPLES) -> Selection | None:
    """The first plan of the pool (fastest first, or in `order`'s key) whose accuracy reaches the
    threshold, corrected for choosing it that way; None when none does."""
    keys, fastest = keyed(pool, result.stat)
    if order is not None:
        ranked = sorted(range(len(keys)), key=lambda i: order(fastest[i]))
        keys, fastest = [keys[i] for i in ranked], [fastest[i] for i in ranked]
    X = accuracy_rows(result.accuracy, keys)
    P = X.shape[1]
    pick = lambda w: pick_first(X, w, threshold)
    i = pick(np.full(P, 1.0 / P))
    if i is None:
        return None
    return corrected(fastest[i], X, i, pick, f"first to reach {threshold:.1%}", resample_weights(P, resamples))


def fastest_reaching(result, pool, target: float) -> Selection:
    """The fastest plan whose accuracy, corrected for choosing it by a threshold, reaches the target:
    the threshold is raised by the optimism of choosing at it, until the corrected estimate holds."""
    threshold = target
    for _ in range(4):
        sel = first_reaching(result, pool, threshold)
        if sel is None:
            break
        if sel.accuracy >= target - 1e-12:
            return sel
        threshold = target + sel.optimism
    top = max(pool, key=lambda c: c.accuracy)
    raise TTSPlanError(f"no plan reaches accuracy {target:.1%} once corrected for its selection: the most "
                       f"accurate plan ({top.describe()}) is estimated at {top.accuracy:.1%} before the correction")


def prediction_interval(sel_accuracy: float, low: float, high: float, heldout: int) -> tuple[float, float]:
    """95% interval of the accuracy a run measures on `heldout` new problems: the calibration interval's
    spread and the held-out problems' own (each problem's outcome is Bernoulli with mean the accuracy)."""
    se_cal = (high - low) / (2 * Z95)
    se_new = np.sqrt(max(sel_accuracy * (1 - sel_accuracy), 0.0) / heldout)
    half = Z95 * float(np.hypot(se_cal, se_new))
    return max(0.0, sel_accuracy - half), min(1.0, sel_accuracy + half)


def quantile_interval(x, q: float, resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% bootstrap interval of the q-quantile of measurements x (latencies of a run)."""
    x = np.asarray(x, dtype=np.float64)
    rng = np.random.default_rng(seed)
    boot = np.quantile(x[rng.integers(0, len(x), (resamples, len(x)))], q, axis=1)
    return float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))
