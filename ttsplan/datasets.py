"""Calibration and evaluation problems: GSM8K test and MATH-500, with their gold answers and prompt."""
import json
from dataclasses import dataclass

from ttsplan.assets import dataset_file
from ttsplan.errors import TTSPlanError

INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."


@dataclass(frozen=True)
class Problem:
    id: str
    index: int      # position in the dataset's test split
    question: str
    gold: str       # the gold answer as the dataset writes it (GSM8K: after '####'; MATH: the answer field)
    solution: str   # the gold worked solution


def prompt_text(question: str) -> str:
    return f"{question}\n{INSTRUCTION}"


def load_problems(dataset: str, limit: int | None = None, offset: int = 0) -> list[Problem]:
    """The dataset's problems offset..offset + limit - 1 (all from offset when limit is None)."""
    if limit is not None and limit < 1:
        raise TTSPlanError(f"--limit must be at least 1, got {limit}")
    if offset < 0:
        raise TTSPlanError(f"--offset must be at least 0, got {offset}")
    rows = [json.loads(line) for line in dataset_file(dataset).read_text().splitlines() if line.strip()]
    rows = rows[offset:None if limit is None else offset + limit]
    if dataset == "gsm8k":
        return [Problem(f"gsm8k-{offset + i}", offset + i, r["question"], r["answer"].split("####")[-1].strip(),
                        r["answer"]) for i, r in enumerate(rows)]
    return [Problem(r.get("unique_id", f"math500-{offset + i}"), offset + i, r["problem"], r["answer"], r["solution"])
            for i, r in enumerate(rows)]
