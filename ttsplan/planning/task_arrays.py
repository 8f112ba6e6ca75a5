"""A task profile as arrays: for every problem and sampled branch, its length, and what it votes for
and how much it weighs under any length cap and vote rule.

Shapes: P problems, n = N_max branches each, K = the most answer classes of any problem, L = the
longest branch.  A branch longer than a cap C is cut off: it votes for the last answer it stated
within its first C tokens (or not at all), with the weight of those C tokens.
"""
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ttsplan.errors import TTSPlanError
from ttsplan.measure.schema import TaskProfile
from ttsplan.measure.samples import load_store, store_sha256
from ttsplan.voting import VOTE_RULES, weights_by_length


@dataclass
class TaskArrays:
    lengths: np.ndarray        # [P, n] tokens per branch
    final_class: np.ndarray    # [P, n] the class a whole branch votes for, -1 for none
    stated: list               # [P][n] list of (tokens, class): final answers stated, in order
    correct: np.ndarray        # [P, K] whether class k of problem p is the gold answer
    prompt_tokens: np.ndarray  # [P]
    weights: dict              # rule -> [P, n, L] weight if cut after l + 1 tokens (held flat past the end)
    max_new_tokens: int
    _classes: dict = field(default_factory=dict, repr=False)

    @property
    def problems(self) -> int:
        return self.lengths.shape[0]

    @property
    def n_max(self) -> int:
        return self.lengths.shape[1]

    def capped(self, cap: int) -> np.ndarray:
        return np.minimum(self.lengths, cap)

    def classes_at(self, cap: int) -> np.ndarray:
        """[P, n] the class each branch votes for under the cap (-1: none)."""
        if cap in self._classes:
            return self._classes[cap]
        out = self.final_class.copy()
        for p, i in zip(*np.nonzero(self.lengths > cap)):
            within = [c for end, c in self.stated[p][i] if end <= cap]
            out[p, i] = within[-1] if within else -1
        self._classes[cap] = out
        return out

    def weights_at(self, rule: str, cap: int) -> np.ndarray:
        """[P, n] each branch's weight under the rule and cap."""
        w = self.weights[rule]
        idx = np.minimum(self.lengths, cap) - 1
        return np.take_along_axis(w, idx[:, :, None], axis=2)[:, :, 0]


def load_task_arrays(profile: TaskProfile, profile_path: Path) -> TaskArrays:
    """The task profile's arrays; the per-token scores come from the samples/ store beside the profile."""
    folder = Path(profile_path).parent / "samples"
    store = load_store(folder)
    if store is None:
        raise TTSPlanError(f"{folder}: missing: the task profile's samples must lie beside it")
    if store_sha256(folder) != profile.samples_sha256:
        raise TTSPlanError(f"{profile_path}: field 'samples_sha256' does not match {folder} "
                           "(regrade with `ttsplan profile grade` to rebuild the profile from its samples)")
    where = {p["id"]: i for i, p in enumerate(store.problems)}
    P, n = len(profile.problems), profile.n_max
    if P == 0:
        raise TTSPlanError(f"{profile_path}: field 'problems' is empty: no calibration problem was sampled")
    K = max(1, max(len(p.classes) for p in profile.problems))
    lengths = np.array([[b.length for b in p.branches] for p in profile.problems])
    L = int(lengths.max())
    correct = np.zeros((P, K), dtype=bool)
    weights = {rule: np.ones((P, n, L), dtype=np.float32) for rule in VOTE_RULES[1:]}
    weights[VOTE_RULES[0]] = np.broadcast_to(np.float32(1.0), (P, n, L))  # majority: 1 everywhere, no memory
    starts = store.starts
    for pi, prob in enumerate(profile.problems):
        correct[pi, :len(prob.correct)] = prob.correct
        if prob.id not in where:
            raise TTSPlanError(f"{folder}: problem {prob.id} of the profile is not in the samples")
        si = where[prob.id]
        for bi in range(n):
            m, s0 = int(store.lengths[si, bi]), int(starts[si, bi])
            for rule in VOTE_RULES[1:]:
                w = weights_by_length(store.logprobs[s0:s0 + m], store.confidences[s0:s0 + m], rule)
                weights[rule][pi, bi, :m] = w
                weights[rule][pi, bi, m:] = w[-1] if m else 0.0
    return TaskArrays(lengths, np.array([[b.answer for b in p.branches] for p in profile.problems]),
                      [[[tuple(s) for s in b.stated] for b in p.branches] for p in profile.problems],
                      correct, np.array([p.prompt_tokens for p in profile.problems]), weights,
                      int(profile.sampling["max_new_tokens"]))
