"""Plan: what `ttsplan optimize` writes and what the executor runs, one object with a YAML round trip.

`ttsplan run`'s flags build a Plan too, so the executor always takes one Plan rather than a dozen
arguments.  A plan from `optimize` also carries where it came from (the device profile's device,
backend and model shape, which `run --plan` checks against the running device) and what it was
predicted to do.
"""
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import yaml

from ttsplan.errors import TTSPlanError
from ttsplan.files import check_schema, read_yaml, write_atomic
from ttsplan.voting import VOTE_RULES

PLAN_SCHEMA = "ttsplan.plan/1"


@dataclass
class Plan:
    model: str
    branches: int = 8
    vote: str = "majority"
    max_new_tokens: int = 512       # the length cap: a branch stops here, and votes only if it stated an answer
    early_stop: bool = False        # end the request once no unfinished branch can change the vote
    draft: str | None = None
    draft_len: int = 0
    temperature: float = 0.7
    top_p: float = 0.95
    top_k: int = 0
    seed: int = 0
    dataset: str = "gsm8k"          # the task whose answers are graded (gsm8k or math500)
    device: dict = field(default_factory=dict)     # from the device profile: name, type, backend, shape
    predicted: dict = field(default_factory=dict)  # accuracy, interval, mean_s, p90_s, budget_s, stat
    schema: str = PLAN_SCHEMA

    def __post_init__(self):
        if self.branches < 1:
            raise TTSPlanError(f"branches must be at least 1, got {self.branches}")
        if self.vote not in VOTE_RULES:
            raise TTSPlanError(f"unknown vote rule '{self.vote}': choose one of {', '.join(VOTE_RULES)}")
        if self.draft and self.draft_len < 1:
            raise TTSPlanError(f"draft length must be at least 1, got {self.draft_len}")
        if self.max_new_tokens < 1:
            raise TTSPlanError(f"max new tokens must be at least 1, got {self.max_new_tokens}")

    def describe(self) -> str:
        draft = f", draft {self.draft} k={self.draft_len}" if self.draft else ""
        stop = ", early stop" if self.early_stop else ""
        return f"N={self.branches}, {self.vote}, cap {self.max_new_tokens}{draft}{stop}"

    def save(self, path: Path) -> None:
        write_atomic(Path(path), yaml.safe_dump(asdict(self), sort_keys=False).encode())

    @classmethod
    def load(cls, path: Path) -> "Plan":
        path = Path(path)
        data = read_yaml(path, "plan")
        check_schema(data, path, PLAN_SCHEMA, "plan")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise TTSPlanError(f"{path}: field '{unknown[0]}' is not a plan field")
        if "model" not in data:
            raise TTSPlanError(f"{path}: field 'model' is missing")
        try:
            return cls(**data)
        except TypeError as e:
            raise TTSPlanError(f"{path}: {e}") from e
