"""Calibration and evaluation problems: GSM8K test and MATH-500, with their gold answers and prompt."""
import json
from dataclasses import dataclass

from ttsplan.assets import dataset_file

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
    rows = [json.loads(line) for line in dataset_file(dataset).read_text().splitlines() if line.strip()]
    rows = rows[offset:offset + limit if limit else None]
    if dataset == "gsm8k":
        return [Problem(f"gsm8k-{offset + i}", offset + i, r["question"], r["answer"].split("####")[-1].strip(),
                        r["answer"]) for i, r in enumerate(rows)]
    return [Problem(r.get("unique_id", f"math500-{offset + i}"), offset + i, r["problem"], r["answer"], r["solution"])
            for i, r in enumerate(rows)]
