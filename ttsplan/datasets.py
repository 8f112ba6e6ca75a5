"""Calibration and evaluation problems: GSM8K test and MATH-500, with their gold answers and prompt."""
import json
from dataclasses import dataclass

from ttsplan.answers import extract_gsm8k, normalize_math
from ttsplan.assets import dataset_file

INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."


@dataclass(frozen=True)
class Problem:
    id: str
    question: str
    gold: str  # normalized


def prompt_text(question: str) -> str:
    return f"{question}\n{INSTRUCTION}"


def load_problems(dataset: str, limit: int | None = None, offset: int = 0) -> list[Problem]:
    rows = [json.loads(line) for line in dataset_file(dataset).read_text().splitlines() if line.strip()]
    rows = rows[offset:offset + limit if limit else None]
    if dataset == "gsm8k":
        return [Problem(f"gsm8k-{offset + i}", r["question"], extract_gsm8k(r["answer"].split("####")[-1]))
                for i, r in enumerate(rows)]
    return [Problem(r.get("unique_id", f"math500-{offset + i}"), r["problem"], normalize_math(r["answer"]))
            for i, r in enumerate(rows)]
