"""Results files of dataset runs: one JSON line per solved problem, appended and synced as each one
finishes, so an interrupted run resumes where it stopped; keyed by what changes the answers."""
import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Callable

from ttsplan.answers import is_correct
from ttsplan.registry import home
from ttsplan.datasets import answer_kind
from ttsplan.files import write_atomic
from ttsplan.measure.schema import today
from ttsplan.planning.plan import Plan

GRADER = 2  # bumped when grading changes: older results files are not reused


def load_results(path: Path) -> dict[str, dict]:
    """Finished problems of an earlier (possibly interrupted) dataset run, by problem id.

    A line cut short by an interruption is dropped (that problem runs again), and the file is
    rewritten atomically with only the complete rows so that later appends start on a clean line.
    """
    if not path.exists():
        return {}
    done = {}
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
            done[row["id"]] = row
        except (json.JSONDecodeError, KeyError):
            continue
    write_atomic(path, "".join(json.dumps(row) + "\n" for row in done.values()).encode())
    return done


def append_result(path: Path, row: dict) -> None:
    """One problem per line, flushed and synced, so an interruption loses at most the problem in flight."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def result_row(problem_id: str, gold: str, solved, task: str) -> dict:
    """One results line from a runner.Solved."""
    return {"id": problem_id, "gold": gold, "answer": solved.answer, "correct": is_correct(solved.answer, gold, task),
            "latency_s": solved.latency_s, "new_tokens": solved.stats.new_tokens, "cut_off": solved.cut_off,
            "stopped": solved.stopped, "prompt_tokens": solved.stats.prompt_tokens,
            "prefill_s": solved.stats.prefill_s, "capture_s": solved.stats.capture_s,
            "decode_s": solved.stats.decode_s, "vote_s": solved.vote_s,
            "lengths": [len(b.tokens) for b in solved.branches],
            "votes": [asdict(t) for t in solved.tallies], "date": today()}


def run_key(plan: Plan) -> str:
    """The results file's key: everything about the plan that changes answers (grading included)."""
    fields = {k: v for k, v in asdict(plan).items() if k not in ("device", "predicted")}
    return hashlib.sha256(json.dumps({**fields, "grader": GRADER}, sort_keys=True).encode()).hexdigest()[:12]


def default_results_path(plan: Plan) -> Path:
    """Where `run --dataset` keeps a plan's results unless told: under TTSPLAN_HOME/runs."""
    return home() / "runs" / f"{plan.dataset}-{Path(plan.model).name}-n{plan.branches}-{run_key(plan)}.jsonl"


def run_dataset(solver: Callable, problems, out: Path, dataset: str, on_problem=None) -> list[dict]:
    """Solve every problem not yet in the results file `out`, one line per problem (resumable);
    returns the rows of `problems` in order."""
    done = load_results(out)
    for p in problems:
        if p.id not in done:
            done[p.id] = result_row(p.id, p.gold, solver(p.question), answer_kind(dataset))
            append_result(out, done[p.id])
        if on_problem:
            on_problem(p)
    return [done[p.id] for p in problems]
