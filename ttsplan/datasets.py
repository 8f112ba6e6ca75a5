"""Calibration and evaluation problems, with their gold answers and prompt.

  gsm8k, math500          the held-out test sets (GSM8K test, MATH-500)
  gsm8k-train, math-train the calibration sets (GSM8K train, the MATH training set; a MATH
                          training problem's gold answer is the last \\boxed{} of its solution)
The train splits are served in a fixed random order (TRAIN_ORDER_SEED; the MATH file is sorted by
subject), so that any slice of them (--offset, --limit) is a sample of the whole; a problem's index
and id stay its position in the file.  A problem without a gold answer is left out (4 of the 7500 MATH training problems: two write
`\\boxed 2` without braces, two end in an empty `\\boxed{}`); indices stay positions in the file.
"""
import json
from dataclasses import dataclass

import numpy as np

from ttsplan.answers import stated_answers
from ttsplan.assets import dataset_file
from ttsplan.registry import DATASETS
from ttsplan.errors import TTSPlanError

TRAIN_ORDER_SEED = 0
INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."


@dataclass(frozen=True)
class Problem:
    id: str
    index: int      # position in the dataset's file
    question: str
    gold: str       # the gold answer as the dataset writes it (GSM8K: after '####'; MATH: the answer field)
    solution: str   # the gold worked solution


def answer_kind(dataset: str) -> str:
    """How a dataset's answers are read and compared (ttsplan.answers): 'gsm8k' or 'math'."""
    if dataset not in DATASETS:
        raise TTSPlanError(f"unknown dataset '{dataset}': choose one of {', '.join(DATASETS)}")
    return "gsm8k" if dataset.startswith("gsm8k") else "math"


def prompt_text(question: str) -> str:
    return f"{question}\n{INSTRUCTION}"


def prompt_ids(tokenizer, question: str) -> list[int]:
    """The chat-templated prompt token ids for one question."""
    messages = [{"role": "user", "content": prompt_text(question)}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def last_boxed(solution: str) -> str:
    stated = [s.answer for s in stated_answers(solution)]
    return stated[-1] if stated else ""


def problem(dataset: str, index: int, row: dict) -> Problem:
    if answer_kind(dataset) == "gsm8k":
        return Problem(f"{dataset}-{index}", index, row["question"], row["answer"].split("####")[-1].strip(),
                       row["answer"])
    gold = row["answer"] if "answer" in row else last_boxed(row["solution"])
    return Problem(row.get("unique_id", f"{dataset}-{index}"), index, row["problem"], gold, row["solution"])


def load_problems(dataset: str, limit: int | None = None, offset: int = 0) -> list[Problem]:
    """The dataset's problems offset..offset + limit - 1 in its order (all from offset when limit is None)."""
    answer_kind(dataset)
    if limit is not None and limit < 1:
        raise TTSPlanError(f"--limit must be at least 1, got {limit}")
    if offset < 0:
        raise TTSPlanError(f"--offset must be at least 0, got {offset}")
    rows = [json.loads(line) for line in dataset_file(dataset).read_text().splitlines() if line.strip()]
    order = np.arange(len(rows))
    if dataset.endswith("-train"):
        order = np.random.default_rng(TRAIN_ORDER_SEED).permutation(len(rows))
    order = order[offset:None if limit is None else offset + limit]
    return [p for p in (problem(dataset, int(i), rows[i]) for i in order) if p.gold]
