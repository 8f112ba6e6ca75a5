"""Validate the planner by running plans: predicted against measured latency, and accuracy.

    python benchmarks/validate_plans.py cpu-latency                       (this CPU, real models)
    python benchmarks/validate_plans.py cpu-accuracy                      (this CPU, real models)
    python benchmarks/validate_plans.py headline                          (budgets: latency-optimal vs baselines)

(Plans drawn at random off the grid, on a GPU or this CPU: benchmarks/validate_latency.py.)  CPU: real models on GSM8K problems the task
profile never saw (from problem 1000 on): predicted mean latency (over the profile's draws) against
the measured mean, and the same prediction from each request's actual branch lengths; and measured
accuracy against the predicted 95% interval.
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from rich.table import Table

from common import RESULTS, emit, today
from ttsplan.planning.plan import Plan

ACCEPTANCE = Path("profiles/tasks/qwen2.5-coder-1.5b-gsm8k-cpu-2t/task.yaml")
LENGTHS = Path("profiles/tasks/qwen2.5-coder-0.5b-gsm8k-cpu-2t/task.yaml")
HELD_OUT = 1000


def cpu_plans():
    """At least 8 plans spanning N = 1..16, with and without the draft, a cap and early stop; caps of
    192-256 tokens keep the run near an hour on two cores."""
    small, large = "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"
    return [
        Plan(model=small, branches=1, max_new_tokens=256), Plan(model=small, branches=4, max_new_tokens=256),
        Plan(model=small, branches=8, max_new_tokens=256), Plan(model=small, branches=16, max_new_tokens=192),
        Plan(model=small, branches=8, max_new_tokens=256, early_stop=True),
        Plan(model=small, branches=16, vote="min-window", max_new_tokens=256, early_stop=True),
        Plan(model=large, branches=1, draft=small, draft_len=4, max_new_tokens=256),
        Plan(model=large, branches=2, draft=small, draft_len=2, max_new_tokens=192),
    ]


def run_plan(plan: Plan, problems) -> list[dict]:
    """The plan's result rows on the problems, from the results file where an earlier run left them."""
    from ttsplan.execute.results import load_results, run_dataset, run_key
    from ttsplan.execute.runner import load_solver
    out = RESULTS / "cpu_validation" / f"{plan.model}-{run_key(plan)}.jsonl"
    if set(load_results(out)) >= {p.id for p in problems}:
        return run_dataset(None, problems, out, plan.dataset)
    return run_dataset(load_solver(plan), problems, out, plan.dataset,
                       on_problem=lambda p: print(plan.describe(), p.id, flush=True))


def profiles_for(plan: Plan) -> tuple[Path, Path]:
    name = plan.model
    return (Path(f"profiles/device/cpu-2t-relay-{name}.yaml"), Path(f"profiles/tasks/{name}-gsm8k-cpu-2t/task.yaml"))


def predicted(plan: Plan, replay_cache: dict):
    """(mean, p90) the planner predicts for the plan, over the task profile's draws."""
    from ttsplan.planning.latency import Decoding
    from ttsplan.planning.optimize import load_profiles, matching_acceptance
    from ttsplan.planning.latency import DeviceCosts, Replay
    from ttsplan.planning.task_arrays import load_task_arrays
    dev_path, task_path = profiles_for(plan)
    if task_path not in replay_cache:
        device, task = load_profiles(dev_path, task_path)
        replay = Replay(DeviceCosts.fit(device), load_task_arrays(task, task_path), on_gpu=False)
        replay_cache[task_path] = (replay, matching_acceptance(device, task))
    replay, acc = replay_cache[task_path]
    dec = Decoding(plan.draft_len, tuple(acc.per_position)) if plan.draft else Decoding()
    out = replay.simulate(plan.branches, plan.max_new_tokens, dec, [plan.vote] if plan.early_stop else ())
    return out[plan.vote if plan.early_stop else None], replay, dec


def cpu_latency(args):
    """Run every plan on the held-out problems (results cached per plan, so a rerun only reports),
    then compare with the planner's predictions."""
    import torch
    from ttsplan.datasets import load_problems
    from ttsplan.hardware import device_name
    from ttsplan.planning.latency import predict_request
    problems = load_problems("gsm8k", args.problems, HELD_OUT)
    measured = [(plan, run_plan(plan, problems)) for plan in cpu_plans()]
    table = Table(title=f"predicted against measured mean latency, {device_name(torch.device('cpu'))}, {today()}, "
                        f"GSM8K problems {HELD_OUT}..{HELD_OUT + args.problems - 1} (not in the task profile)")
    for col in ("plan", "model", "measured mean s", "predicted mean s", "error", "from actual lengths s",
                "error (lengths)"):
        table.add_column(col, justify="right")
    errors, length_errors, cache = [], [], {}
    for plan, rows in measured:
        lat, replay, dec = predicted(plan, cache)
        mean = statistics.mean(r["latency_s"] for r in rows)
        errors.append(abs(lat.mean_s / mean - 1))
        cells = ["-", "-"]
        if not plan.early_stop:
            from_lengths = statistics.mean(predict_request(replay.costs, r["lengths"], r["prompt_tokens"], dec, False).mean_s
                                           for r in rows)
            length_errors.append(abs(from_lengths / mean - 1))
            cells = [f"{from_lengths:.1f}", f"{from_lengths / mean - 1:+.1%}"]
        table.add_row(plan.describe(), plan.model, f"{mean:.1f}", f"{lat.mean_s:.1f}", f"{lat.mean_s / mean - 1:+.1%}",
                      *cells)
    table.add_section()
    table.add_row("MAPE", "", "", "", f"{np.mean(errors):.1%}", "", f"{np.mean(length_errors):.1%}")
    emit(table, "cpu_validation_latency", f"CPU plan validation (latency): requests as measured (cached in "
                                          f"benchmarks/results/cpu_validation/), predicted {today()}")


def cpu_accuracy(args):
    import torch
    from ttsplan.datasets import load_problems
    from ttsplan.hardware import device_name
    from ttsplan.planning.accuracy import AccuracyTable
    from ttsplan.planning.optimize import load_profiles
    from ttsplan.planning.task_arrays import load_task_arrays
    problems = load_problems("gsm8k", args.problems, HELD_OUT)
    plans = cpu_plans()[:2] + cpu_plans()[4:5]  # their first problems are shared with cpu-latency
    table = Table(title=f"measured accuracy on GSM8K {HELD_OUT}..{HELD_OUT + args.problems - 1} against the "
                        f"predicted 95% interval, {device_name(torch.device('cpu'))}, {today()}")
    for col in ("plan", "problems", "measured", "predicted (95% interval)", "inside", "for a sample of this size",
                "inside"):
        table.add_column(col, justify="right")
    dev_path, task_path = profiles_for(plans[0])
    _, task = load_profiles(dev_path, task_path)
    arrays = load_task_arrays(task, task_path)
    for plan in plans:
        rows = run_plan(plan, problems)
        est = AccuracyTable(arrays, [plan.vote], [plan.max_new_tokens]).estimate(plan.vote, plan.max_new_tokens,
                                                                                 plan.branches)
        acc = statistics.mean(r["correct"] for r in rows)
        # The interval is the mean accuracy's; the measured accuracy is also a sample of len(rows)
        # problems, so a sample of that size falls within the two variances combined.
        se = np.hypot((est.high - est.low) / 3.92, np.sqrt(est.accuracy * (1 - est.accuracy) / len(rows)))
        low, high = max(est.accuracy - 1.96 * se, 0.0), min(est.accuracy + 1.96 * se, 1.0)
        table.add_row(plan.describe(), str(len(rows)), f"{acc:.1%}", f"{est.accuracy:.1%} ({est.low:.1%}-{est.high:.1%})",
                      "yes" if est.low <= acc <= est.high else "no", f"{low:.1%}-{high:.1%}",
                      "yes" if low <= acc <= high else "no")
    emit(table, "cpu_validation_accuracy", f"CPU plan validation (accuracy), {today()}")


def headline(args):
    from ttsplan.planning.optimize import optimize
    cases = [("cpu", Path(f"profiles/device/cpu-2t-relay-{m}.yaml"), Path(f"profiles/tasks/{m}-gsm8k-cpu-2t/task.yaml"),
              (10, 30, 60, 120)) for m in ("qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b")]
    cases += [("h100", Path(f"profiles/device/h100-relay-{s}.yaml"), Path(f"profiles/tasks/{m}-gsm8k-cpu-2t/task.yaml"),
               (0.5, 1, 2, 5, 10)) for s, m in (("qwen2.5-0.5b", "qwen2.5-coder-0.5b"),
                                                ("qwen2.5-1.5b", "qwen2.5-coder-1.5b"))]
    table = Table(title=f"accuracy within a p90 latency budget: the latency-optimal plan and the plans the seed "
                        f"paper argues against ({today()})")
    for col in ("device", "model", "budget s", "latency-optimal", "compute-optimal", "branches only",
                "speculation only", "greedy allocation"):
        table.add_column(col, justify="right")
    for device, dev_path, task_path, budgets in cases:
        if not (dev_path.exists() and task_path.exists()):
            print(f"skipping {dev_path} + {task_path}: missing", file=sys.stderr)
            continue
        for budget in budgets:
            try:
                opt = optimize(dev_path, task_path, budget_s=budget)
            except Exception as e:  # an impossible budget: say so in the table
                fastest = str(e).split("the fastest plan ")[-1]
                table.add_row(device, task_path.parent.name, f"{budget:g}", f"none fits; fastest {fastest}",
                              "", "", "", "")
                continue
            cell = lambda s: f"{s.accuracy:.1%} ({s.chosen.describe()}, {s.chosen.p90_s:.2f} s)" if s else "-"
            b = opt.baselines
            table.add_row(device, task_path.parent.name, f"{budget:g}", cell(opt.selection),
                          cell(b["compute-optimal"]), cell(b["branches only"]), cell(b["speculation only"]),
                          cell(b["greedy allocation"]))
    emit(table, "headline", f"Latency-optimal plans against the seed paper's baselines, {today()}")


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="mode", required=True)
    for name in ("cpu-latency", "cpu-accuracy"):
        c = sub.add_parser(name)
        c.add_argument("--problems", type=int, default=8 if name == "cpu-latency" else 32)
    sub.add_parser("headline")
    args = ap.parse_args()
    t0 = time.time()
    {"cpu-latency": cpu_latency, "cpu-accuracy": cpu_accuracy,
     "headline": headline}[args.mode](args)
    print(f"{args.mode}: {time.time() - t0:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
