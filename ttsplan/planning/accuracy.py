"""A plan's accuracy, estimated from the task profile's samples without generating again.

For N <= N_max branches, the expected accuracy on a problem is the mean, over subsets of N of its
N_max i.i.d. sampled branches, of whether the vote over the subset is correct: every subset when
there are at most EXACT_SUBSETS of them (exact: C(16, 8) = 12,870, so every N of a 16-branch
profile), else MAX_SUBSETS uniformly drawn ones (unbiased).
A vote tied between classes credits each tied class equally, which is what the executor's
earliest-branch tie-break gives over a random branch order.  Accuracy over the calibration set is
the mean over problems, with a 95% interval from a bootstrap over problems.  Plans with more
branches than N_max are refused: nothing is extrapolated.
"""
from dataclasses import dataclass
from functools import lru_cache
from itertools import combinations
from math import comb

import numpy as np

from ttsplan.planning.selection import resample_weights
from ttsplan.planning.task_arrays import TaskArrays

EXACT_SUBSETS = 12870
MAX_SUBSETS = 96
BOOTSTRAP = 2000
CHUNK_ELEMENTS = 1 << 23  # subsets x problems x classes scored at once (the score array's size)


@lru_cache(maxsize=None)
def subset_matrix(n: int, size: int, exact: int = EXACT_SUBSETS, drawn: int = MAX_SUBSETS,
                  seed: int = 0) -> np.ndarray:
    """[M, n] 0/1 rows, each a subset of `size` of the n branches: all of them when there are at most
    `exact`, else `drawn` uniformly drawn ones."""
    if comb(n, size) <= exact:
        rows = list(combinations(range(n), size))
    else:
        rng = np.random.default_rng(seed + size)
        rows = [rng.choice(n, size, replace=False) for _ in range(drawn)]
    z = np.zeros((len(rows), n))
    for r, members in enumerate(rows):
        z[r, list(members)] = 1.0
    return z


def vote_credit(scores: np.ndarray, correct: np.ndarray) -> np.ndarray:
    """scores [..., P, K] total weight per class, correct [P, K] -> credit [..., P] in [0, 1]: the
    share of the tied winners that are correct (0 when nobody voted)."""
    top = scores.max(-1, keepdims=True)
    tied = (scores >= top * (1 - 1e-12)) & (top > 0)
    return (tied & correct).sum(-1) / np.maximum(tied.sum(-1), 1)


def chunks(order: np.ndarray, voted: np.ndarray, rows: int) -> list[np.ndarray]:
    """Problems (in order of class count) split so that rows x problems x classes stays within
    CHUNK_ELEMENTS per chunk."""
    out, start = [], 0
    for end in range(1, len(order) + 1):
        if end - start > 1 and rows * (end - start) * int(voted[order[end - 1]]) > CHUNK_ELEMENTS:
            out.append(order[start:end - 1])
            start = end - 1
    out.append(order[start:])
    return out


def per_problem_accuracy(classes: np.ndarray, weights: np.ndarray, correct: np.ndarray, sizes: list[int],
                         exact: int = EXACT_SUBSETS, drawn: int = MAX_SUBSETS) -> np.ndarray:
    """[len(sizes), P]: each problem's expected accuracy with N branches, for each N in sizes.
    Problems are scored in chunks of similar class counts (a few problems with dozens of answer
    classes would otherwise size every problem's score array)."""
    P, n = classes.shape
    z = [subset_matrix(n, size, exact, drawn) for size in sizes]
    starts = np.cumsum([0] + [len(x) for x in z[:-1]])
    counts = np.array([len(x) for x in z])[:, None]
    z = np.concatenate(z)
    voted = classes.max(1) + 1  # classes a problem's votes can reach
    out = np.zeros((len(sizes), P))
    order = np.argsort(voted, kind="stable")
    for chunk in chunks(order, np.maximum(voted, 1), len(z)):
        K = max(1, int(voted[chunk].max()))
        onehot = (classes[chunk, :, None] == np.arange(K)) * weights[chunk, :, None]      # [c, n, K]
        flat = onehot.transpose(1, 0, 2).reshape(n, len(chunk) * K)
        credit = vote_credit((z @ flat).reshape(-1, len(chunk), K), correct[chunk, :K])   # [all subsets, c]
        out[:, chunk] = np.add.reduceat(credit, starts, axis=0) / counts
    return out


@dataclass
class Estimate:
    accuracy: float
    low: float = float("nan")   # 95% bootstrap interval over problems
    high: float = float("nan")


def bootstrap(per_problem: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """per_problem [P] -> the 2.5th and 97.5th percentiles of the mean over resampled problems."""
    means = resample_weights(len(per_problem), BOOTSTRAP, seed) @ per_problem
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


class AccuracyTable:
    """Expected accuracy per (vote rule, cap, N), from per-problem estimates kept for the intervals."""

    def __init__(self, task: TaskArrays, rules, caps):
        sizes = list(range(1, task.n_max + 1))
        self.per_problem = {}
        for cap in caps:
            classes = task.classes_at(cap)
            for rule in rules:
                self.per_problem[(rule, cap)] = per_problem_accuracy(
                    classes, task.weights_at(rule, cap), task.correct, sizes)

    def mean(self, rule: str, cap: int, N: int) -> float:
        return float(self.per_problem[(rule, cap)][N - 1].mean())

    def estimate(self, rule: str, cap: int, N: int) -> Estimate:
        pp = self.per_problem[(rule, cap)][N - 1]
        return Estimate(float(pp.mean()), *bootstrap(pp))
