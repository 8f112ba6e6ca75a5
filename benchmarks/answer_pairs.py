"""Comparing answers on the host: what the vote costs a request, and the value-at-a-point shortcut
(`clearly_apart`) checked against math-verify.

1. Every pair among each problem's first 16 answer classes and its gold answer, in graded MATH task
   profiles: math-verify's verdict (both orders, as `same_answer` without the shortcut) against
   `clearly_apart`.  The shortcut must never call a pair apart that math-verify calls equal.
2. The MATH-500 request whose latency blew up on the H100 (test/precalculus/990, 2026-12-07, 39.8 s
   against a 4 s budget): its answer classes grouped at each finish as the executor did (from scratch),
   with the memo, and with the memo and the shortcut; the floor is parsing each answer once.

    python benchmarks/answer_pairs.py [--limit 200]
"""
import argparse
import json
import time
from contextlib import nullcontext
from pathlib import Path
from unittest import mock

from rich.progress import Progress
from rich.table import Table

from common import RESULTS, cpu_name, emit, today
from ttsplan.answers import AnswerMemo, clearly_apart, group_answers, parse_answer, same_answer
from ttsplan.measure.schema import load_task_profile

PROFILES = [RESULTS / "head_to_head" / "heldout" / "qwen2.5-coder-1.5b-math500-h200" / "task.yaml",
            Path(__file__).parent.parent / "profiles" / "tasks" / "qwen2.5-coder-1.5b-math-train-h200" / "task.yaml"]
SLOW_RUN = RESULTS / "head_to_head" / "runs" / "math500-h100-N27_mean-logprob_cap1024_earlystop.jsonl"
SLOW_PROBLEM = "test/precalculus/990.json"
CLASSES = 16


def shortcut_off():
    """`same_answer` as before the shortcut: every pair goes to math-verify."""
    return mock.patch("ttsplan.answers.clearly_apart", lambda a, b: False)


def check_pairs(path: Path, limit: int, progress: Progress) -> list:
    profile = load_task_profile(path)
    pairs = []
    for p in profile.problems[:limit]:
        answers = list(p.classes[:CLASSES]) + [p.gold]
        pairs += [(answers[i], answers[j]) for i in range(len(answers)) for j in range(i)]
    parsed = {s: parse_answer(s, "math") for pair in pairs for s in pair}
    pairs = [(parsed[a], parsed[b]) for a, b in pairs if parsed[a] is not None and parsed[b] is not None]
    decided = disagree = 0
    verify_s = shortcut_s = 0.0
    task = progress.add_task(path.parent.name, total=len(pairs))
    for a, b in pairs:
        t0 = time.perf_counter()
        with shortcut_off():
            same = same_answer(a, b, "math")
        t1 = time.perf_counter()
        fast = same_answer(a, b, "math")
        t2 = time.perf_counter()
        verify_s, shortcut_s = verify_s + t1 - t0, shortcut_s + t2 - t1
        apart = clearly_apart(a, b)
        decided += apart
        disagree += apart and same
        assert fast == same or apart
        progress.advance(task)
    return [path.parent.name, str(min(limit, len(profile.problems))), str(len(pairs)), f"{decided / len(pairs):.0%}",
            str(disagree), f"{verify_s:.1f}", f"{shortcut_s:.1f}", f"{shortcut_s / verify_s:.2f}"]


def parse_all(answers: list[str]) -> float:
    t0 = time.perf_counter()
    for a in answers:
        parse_answer(a, "math")
    return time.perf_counter() - t0


def regroup(answers: list[str], memo: bool, shortcut: bool) -> float:
    """Seconds to group answers[:n] for every n, as early stop asks at each finish."""
    t0 = time.perf_counter()
    with nullcontext() if shortcut else shortcut_off():
        shared = AnswerMemo("math")
        for n in range(1, len(answers) + 1):
            group_answers(answers[:n], "math", shared if memo else None)
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=200, help="problems per task profile")
    args = ap.parse_args()
    pairs = Table(title=f"Value-at-a-point shortcut against math-verify ({cpu_name()}, {today()})")
    for col in ("task profile", "problems", "pairs", "decided by the shortcut", "disagreements",
                "math-verify s", "with shortcut s", "ratio"):
        pairs.add_column(col, justify="right")
    with Progress() as progress:
        for path in PROFILES:
            pairs.add_row(*check_pairs(path, args.limit, progress))
    emit(pairs, "answer_pairs", f"Value-at-a-point shortcut against math-verify ({cpu_name()}, {today()})")

    row = next(json.loads(line) for line in SLOW_RUN.read_text().splitlines() if json.loads(line)["id"] == SLOW_PROBLEM)
    answers = [t["answer"] for t in row["votes"]]
    floor = min(parse_all(answers) for _ in range(3))  # math-verify keeps parses it has made: warm for all
    request = Table(title=f"Grouping one request's {len(answers)} answer classes at each finish "
                          f"({SLOW_PROBLEM}, {cpu_name()}, {today()})")
    for col in ("grouping", "seconds", "ratio to from scratch", "ratio to the floor (parse once)"):
        request.add_column(col, justify="right")
    base = regroup(answers, memo=False, shortcut=False)
    for name, memo, shortcut in (("from scratch (before)", False, False), ("memo", True, False),
                                 ("memo + shortcut", True, True)):
        s = base if not memo else regroup(answers, memo, shortcut)
        request.add_row(name, f"{s:.3f}", f"{s / base:.4f}", f"{s / floor:.1f}")
    request.add_row("floor: parse each answer once", f"{floor:.3f}", f"{floor / base:.4f}", "1.0")
    emit(request, "answer_pairs_request", request.title)


if __name__ == "__main__":
    main()
