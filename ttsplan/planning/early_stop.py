"""Early stop on a decided vote, replayed on the task profile's samples.

Branches finish in order of their (capped) lengths.  After each finish the vote is decided when the
leader's weight exceeds the runner-up's plus the most the unfinished branches can still add
(`voting.decided`, `voting.weight_bound`): the answer is then the one waiting for every branch
would give, and the request can end there.  This module finds, for many draws of N branches at
once, how many branches had finished when the vote was decided.
"""
import numpy as np

from ttsplan.voting import unit_bounded, weight_bounds


def bounds_at(task, rule: str, p_idx: np.ndarray, branch: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """voting.weight_bounds of the given branches when they hold `tokens` tokens."""
    if unit_bounded(rule):
        return np.ones(branch.shape)
    return weight_bounds(rule, task.weights[rule][p_idx, branch, np.minimum(tokens, task.weights[rule].shape[2]) - 1],
                         tokens)


def finished_at_decision(task, draws: np.ndarray, p_idx: np.ndarray, N: int, cap: int, rule: str) -> np.ndarray:
    """draws [D, N] branch indices (of problem p_idx[d]) -> [D] how many had finished, in order of
    length, when the vote was decided (N when only the last finish decides it)."""
    D = len(draws)
    lengths = np.minimum(task.lengths[p_idx[:, None], draws], cap)         # [D, N]
    order = np.argsort(lengths, axis=1, kind="stable")
    branch = np.take_along_axis(draws, order, 1)                           # finish order
    ends = np.take_along_axis(lengths, order, 1)
    classes = task.classes_at(cap)[p_idx[:, None], branch]                 # [D, N]
    weights = task.weights_at(rule, cap)[p_idx[:, None], branch]
    K = task.correct.shape[1]
    tally = np.zeros((D, K + 1))  # a last column collects branches without an answer (weight ignored)
    lead = np.full(D, -1)         # the leading class, its weight and the runner-up's, kept as weights
    top, second = np.zeros(D), np.zeros(D)  # only grow (no weight is negative)
    result = np.full(D, N)
    active = np.arange(D)         # draws not yet decided: the loop works on these alone
    for m in range(N - 1):  # after the last finish nothing is pending: decided by definition
        cls = classes[active, m]
        col = np.where(cls >= 0, cls, K)
        tally[active, col] += np.where(cls >= 0, weights[active, m], 0.0)
        v = np.where(cls >= 0, tally[active, col], 0.0)
        is_lead = col == lead[active]
        overtakes = ~is_lead & (v > top[active])
        second[active] = np.where(overtakes, top[active], np.where(~is_lead & (v > second[active]), v, second[active]))
        top[active] = np.where(is_lead | overtakes, v, top[active])
        lead[active] = np.where(overtakes, col, lead[active])
        if unit_bounded(rule):
            pending = float(N - m - 1)  # every unfinished branch can add at most 1 (bounds_at, summed)
        else:
            pending = bounds_at(task, rule, p_idx[active][:, None], branch[active, m + 1:],
                                np.broadcast_to(ends[active, m:m + 1], (len(active), N - m - 1))).sum(1)
        now = (top[active] > 0) & (top[active] > second[active] + pending)
        result[active[now]] = m + 1
        active = active[~now]
        if not len(active):
            break
    return result
