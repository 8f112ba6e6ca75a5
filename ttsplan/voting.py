"""Vote rules: how much a branch's answer counts, and the vote over equivalence classes of answers.

A branch weighs w for its answer's class (answers that verify as equal are one candidate, however
they are spelled; a branch without an answer does not vote).  The rules:
  majority      w = 1
  mean-logprob  w = exp(mean log-probability of the chosen tokens): the geometric-mean token probability
  min-window    w = exp(lowest mean of the chosen tokens' log-probabilities over any WINDOW
                consecutive tokens): a DeepConf-like "lowest group confidence" on the chosen tokens
  deepconf      w = DeepConf's lowest group confidence: the lowest mean over any WINDOW consecutive
                tokens of the token confidence -mean(top-20 log-probabilities) (Fu et al., 2025;
                they weigh by it after filtering; we weigh every branch by it)
A branch shorter than WINDOW is one window.  The winner has the largest total weight; ties go to
more votes, then to the class of the earliest branch.  The reported answer is the class's most
common spelling.
"""
from dataclasses import dataclass

import numpy as np

VOTE_RULES = ("majority", "mean-logprob", "min-window", "deepconf")
WINDOW = 16
CONFIDENCE_TOP_K = 20  # DeepConf's k: a token's confidence averages its top-20 log-probabilities


def weights_by_length(logprobs, confidences, rule: str, window: int = WINDOW) -> np.ndarray:
    """w[L - 1]: the weight the branch carries if it is cut after its first L tokens, for every L
    (the last entry is the whole branch's weight).  One pass, so a planner can read any length cap."""
    x = np.asarray(confidences if rule == "deepconf" else logprobs, dtype=np.float64)
    n = len(x)
    if rule == "majority":
        return np.ones(n)
    if rule not in VOTE_RULES:
        raise ValueError(f"unknown vote rule '{rule}': choose one of {', '.join(VOTE_RULES)}")
    if n == 0:
        return np.zeros(0)
    csum = np.cumsum(x)
    prefix_mean = csum / np.arange(1, n + 1)
    if rule == "mean-logprob":
        return np.exp(prefix_mean)
    lowest = prefix_mean.copy()  # fewer than `window` tokens: the one window is the whole prefix
    if n > window:
        ends = (csum[window - 1:] - np.concatenate([[0.0], csum[:-window]])) / window
        lowest[window - 1:] = np.minimum.accumulate(ends)
    return lowest if rule == "deepconf" else np.exp(lowest)


def branch_weight(logprobs, confidences, rule: str, window: int = WINDOW) -> float:
    if rule == "majority":
        return 1.0
    w = weights_by_length(logprobs, confidences, rule, window)
    return float(w[-1]) if len(w) else 0.0


def weight_bounds(rule: str, weight_now, tokens, window: int = WINDOW) -> np.ndarray:
    """The most weight unfinished branches can end with, given the weight of the tokens they hold so
    far (weights_by_length at their length) and how many they hold: 1 for majority and mean-logprob
    (a geometric-mean probability is at most 1); for the lowest-window rules the lowest window so far
    (a longer branch only adds windows), once a branch has a whole window, and no bound before.
    Vectorized over branches: the executor's early stop and the planner's replay of it both call this."""
    tokens = np.asarray(tokens)
    if unit_bounded(rule):
        return np.ones(tokens.shape)
    return np.where(tokens >= window, weight_now, np.inf)


def unit_bounded(rule: str) -> bool:
    """Whether every branch's weight under the rule is at most 1 whatever its tokens."""
    return rule in ("majority", "mean-logprob")


def weight_bound(weights_so_far: np.ndarray, rule: str, window: int = WINDOW) -> float:
    """weight_bounds of one branch from its weights_by_length so far."""
    now = weights_so_far[-1] if len(weights_so_far) else np.inf
    return float(weight_bounds(rule, now, len(weights_so_far), window))


def decided(tally_weights: list[float], pending_bounds: list[float]) -> bool:
    """No unfinished branch can change the winner: the leader's weight exceeds the runner-up's plus
    everything the unfinished branches can still add (to the runner-up or to a new answer)."""
    ranked = sorted(tally_weights, reverse=True) + [0.0, 0.0]
    return ranked[0] > 0 and ranked[0] > ranked[1] + sum(pending_bounds)


@dataclass
class Tally:
    answer: str      # the class's most common spelling
    votes: int
    weight: float
    first_branch: int


def vote(classes: list[int | None], spellings: list[str | None],
         weights: list[float]) -> tuple[str | None, list[Tally]]:
    """The winning answer (None when no branch has one) and the tally per class, best first."""
    members: dict[int, list[int]] = {}
    for i, c in enumerate(classes):
        if c is not None:
            members.setdefault(c, []).append(i)
    tallies = []
    for idx in members.values():
        names = [spellings[i] for i in idx]
        common = max(names, key=lambda s: (names.count(s), -names.index(s)))
        tallies.append(Tally(common, len(idx), sum(weights[i] for i in idx), idx[0]))
    ranked = sorted(tallies, key=lambda t: (-t.weight, -t.votes, t.first_branch))
    return (ranked[0].answer if ranked else None), ranked
