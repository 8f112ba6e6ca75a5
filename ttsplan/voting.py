"""Vote rules over branches' answers: majority and confidence-weighted.

Each branch contributes weight w to its (normalized) answer; answers that failed to parse
do not vote.  Weights:
  majority       w = 1
  mean-logprob   w = exp(mean token log-probability): the branch's geometric-mean token probability
  min-window     w = exp(lowest mean log-probability over any window of `window` consecutive
                 tokens): DeepConf's "lowest group confidence", which punishes a branch for its
                 least certain stretch rather than averaging it away
Ties on total weight break by vote count, then by the branch that reached the answer first.
"""
import math
from dataclasses import dataclass

VOTE_RULES = ("majority", "mean-logprob", "min-window")


def branch_weight(logprobs: list[float], rule: str, window: int = 16) -> float:
    if rule == "majority":
        return 1.0
    if not logprobs:
        return 0.0
    if rule == "mean-logprob":
        return math.exp(sum(logprobs) / len(logprobs))
    if rule == "min-window":
        w = min(window, len(logprobs))
        run = sum(logprobs[:w])
        lowest = run
        for i in range(w, len(logprobs)):
            run += logprobs[i] - logprobs[i - w]
            lowest = min(lowest, run)
        return math.exp(lowest / w)
    raise ValueError(f"unknown vote rule '{rule}': choose one of {', '.join(VOTE_RULES)}")


@dataclass
class Tally:
    answer: str
    votes: int
    weight: float
    first_branch: int


def vote(answers: list[str | None], weights: list[float]) -> tuple[str | None, list[Tally]]:
    """The winning answer (None when no branch produced one) and the tally, best first."""
    tallies: dict[str, Tally] = {}
    for i, (answer, w) in enumerate(zip(answers, weights)):
        if answer is None:
            continue
        t = tallies.setdefault(answer, Tally(answer, 0, 0.0, i))
        t.votes += 1
        t.weight += w
    ranked = sorted(tallies.values(), key=lambda t: (-t.weight, -t.votes, t.first_branch))
    return (ranked[0].answer if ranked else None), ranked
