"""The head-to-head: the plan `optimize` chooses against the seed paper's baselines, on held-out problems.

Three steps, the middle one on the GPU:

  plans    (here)  for each task and p90 budget, `optimize` on the GPU device profile and the train-split
                   task profile: the chosen plan and each baseline written as plan files, with their
                   predictions (accuracy corrected for selection, mean and p90 latency);
  run      (GPU)   each distinct plan run as `ttsplan run --plan P --dataset D` runs it (the same solver
                   and results files), one request at a time, on the first --limit held-out problems:
                   measured latency per request, and the answer;
  report   (here)  per task, one table: each plan's measured accuracy (on the held-out samples: the
                   plan's own vote over its first N of 64 branches sampled on the held-out problems,
                   capped as the plan caps, so on every held-out problem, not only those run) and
                   measured p50 / p90 latency from the runs, each beside its prediction, with intervals.

Accuracy from the held-out samples is the plan's measured accuracy: fresh branches of the same engine
and sampler, voted on as the plan votes (early stop never changes the answer; a draft never changes
the distribution).  The runs' own answers are reported beside it as a check.

    python benchmarks/head_to_head.py plans
    python benchmarks/head_to_head.py run --task gsm8k --limit 40 --device cuda     (the GPU machine)
    python benchmarks/head_to_head.py report
"""
import argparse
import json
import sys
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
from rich.table import Table

from common import RESULTS, emit, today
from ttsplan.datasets import load_problems
from ttsplan.errors import TTSPlanError
from ttsplan.planning.plan import Plan
from ttsplan.planning.selection import Z95, prediction_interval, quantile_interval

OUT = RESULTS / "head_to_head"
TASKS = {  # held-out dataset: device profile, calibration task profile, held-out samples, p90 budgets (s)
    "gsm8k": ("profiles/device/h200-relay-qwen2.5-1.5b.yaml",
              "profiles/tasks/qwen2.5-coder-1.5b-gsm8k-train-h200/task.yaml",
              OUT / "heldout" / "qwen2.5-coder-1.5b-gsm8k-h200", (1, 1.25, 1.5, 2)),
    "math500": ("profiles/device/h200-relay-qwen2.5-1.5b.yaml",
                "profiles/tasks/qwen2.5-coder-1.5b-math-train-h200/task.yaml",
                OUT / "heldout" / "qwen2.5-coder-1.5b-math500-h200", (2, 4, 8, 16)),
}
CARDS = ("h200", "h100")  # the GPU machine gives either: plans are chosen for each card's device profile


def tag(task: str, card: str) -> str:
    """The plans folder, index and run files of one task on one card (the H200's keep their old names)."""
    return task if card == "h200" else f"{task}-{card}"


def plan_key(plan: Plan) -> str:
    d = plan.describe().replace(", ", "_").replace(" ", "").replace("=", "")
    return d.replace("qwen2.5-coder-0.5b", "d05")


def make_plans(args):
    from ttsplan.planning.optimize import plan_for, search_profiles
    for task, (device, profile, _, budgets) in TASKS.items():
        if args.task and task != args.task:
            continue
        device = device.replace("h200", args.card)
        if not Path(profile).exists():
            print(f"{task}: {profile} missing (not graded?): skipped", file=sys.stderr)
            continue
        index = {"task": task, "card": args.card, "device_profile": device, "task_profile": profile, "date": today(), "budgets": []}
        searched = search_profiles(Path(device), Path(profile))
        for budget in budgets:
            opt = plan_for(searched, budget_s=budget)
            entry = {"budget_s": budget, "plans": {}}
            for name, sel in [("chosen", opt.selection)] + list(opt.baselines.items()):
                if sel is None:
                    continue
                c = sel.chosen
                plan = replace(opt.plan, branches=c.branches, vote=c.vote, max_new_tokens=c.cap,
                               early_stop=c.early_stop,
                               draft=(opt.plan.draft or opt.acceptance.draft.name) if c.draft_len else None,
                               draft_len=c.draft_len, dataset=task,
                               predicted={"accuracy": round(sel.accuracy, 4), "interval": [round(sel.low, 4),
                                                                                          round(sel.high, 4)],
                                          "accuracy_naive": round(sel.naive, 4), "mean_s": round(c.mean_s, 4),
                                          "p90_s": round(c.p90_s, 4), "budget_s": budget, "stat": "p90",
                                          "calibration_problems": sel.problems})
                key = plan_key(plan)
                path = OUT / "plans" / tag(task, args.card) / f"{key}.yaml"
                path.parent.mkdir(parents=True, exist_ok=True)
                if not path.exists():
                    plan.save(path)
                entry["plans"][name] = {"plan": key, **plan.predicted}
            index["budgets"].append(entry)
            print(task, budget, {n: p["plan"] for n, p in entry["plans"].items()})
        (OUT / f"{tag(task, args.card)}-plans.json").write_text(json.dumps(index, indent=1))


def run_plans(args):
    """Every plan file of the task, one request at a time, through the executor's own solver and results
    files; the engines load once and are shared by the plans."""
    from ttsplan.engine.loader import load_draft, load_model
    from ttsplan.execute.results import run_dataset
    from ttsplan.execute.runner import solve
    index = json.loads((OUT / f"{tag(args.task, args.card)}-plans.json").read_text())
    chosen = {b["plans"]["chosen"]["plan"] for b in index["budgets"]}
    # the chosen plans first: device time may run out before the baselines
    plans = sorted((OUT / "plans" / tag(args.task, args.card)).glob("*.yaml"), key=lambda p: (p.stem not in chosen, p.stem))
    only = set(args.only.split(",")) - {""}
    plans = [Plan.load(p) for p in plans if not only or p.stem in only]
    problems = load_problems(args.task, args.limit, 0)
    warm_up = load_problems(args.task, 1, args.limit)[0]  # not one of the timed problems
    engine = load_model(plans[0].model, args.device)
    drafts = {}
    # warm-up: the process's first request compiles the kernels, which no later request pays
    solve(engine, problems[0].question, replace(plans[0], draft=None, draft_len=0, branches=2, max_new_tokens=16))
    out = Path(args.out)
    for plan in plans:
        if plan.draft and plan.draft not in drafts:
            drafts[plan.draft] = load_draft(engine, plan.draft, args.device)
        solver = partial(solve, engine, plan=plan, draft=drafts.get(plan.draft))
        solver(warm_up.question)  # this plan's shapes compiled and captured once, as in a serving process
        path = out / f"{tag(args.task, args.card)}-{plan_key(plan)}.jsonl"
        rows = run_dataset(solver, problems, path, args.task)
        lat = [r["latency_s"] for r in rows]
        print(f"{plan_key(plan)}: {len(rows)} problems, p50 {np.median(lat):.3f} s, p90 {np.quantile(lat, 0.9):.3f} s, "
              f"{np.mean([r['correct'] for r in rows]):.1%} correct", flush=True)


def plan_accuracy_heldout(arrays, plan: Plan) -> np.ndarray:
    """[P] whether the plan's vote over branches 0..N-1 of each held-out problem is right (ties: the
    share of the tied classes that are right, as the executor's tie-break over a random order)."""
    from ttsplan.planning.accuracy import vote_credit
    cls = arrays.classes_at(plan.max_new_tokens)[:, :plan.branches]
    w = arrays.weights_at(plan.vote, plan.max_new_tokens)[:, :plan.branches]
    K = arrays.correct.shape[1]
    scores = np.zeros((len(cls), K))
    for p in range(len(cls)):
        for c, x in zip(cls[p], w[p]):
            if c >= 0:
                scores[p, c] += x
    return vote_credit(scores, arrays.correct)


def report(args):
    from ttsplan.measure.schema import load_task_profile
    from ttsplan.planning.task_arrays import load_task_arrays
    summary, dates = {"tasks": {}}, []
    for task, (_, _, heldout, _) in TASKS.items():
        indexes = {card: OUT / f"{tag(task, card)}-plans.json" for card in CARDS}
        indexes = {card: path for card, path in indexes.items() if path.exists()}
        if not indexes or not (heldout / "task.yaml").exists():
            print(f"{task}: plans or graded held-out samples missing: skipped", file=sys.stderr)
            continue
        graded = load_task_profile(heldout / "task.yaml")
        arrays = load_task_arrays(graded, heldout / "task.yaml")
        dates.append(graded.date)
        for card, index_path in indexes.items():
            summary["tasks"][tag(task, card)] = report_task(task, card, json.loads(index_path.read_text()),
                                                            arrays, graded.date, Path(args.runs))
    summary["date"] = max(dates + [row["date"] for rows in summary["tasks"].values() for row in rows])
    (OUT / "summary.json").write_text(json.dumps(summary, indent=1))


def report_task(task: str, card: str, index: dict, arrays, graded_date: str, runs_dir: Path) -> list[dict]:
    """One table: every plan of every budget, measured accuracy and latency beside the predictions,
    dated by its newest measurement (held-out samples graded, runs)."""
    card_name = card.upper()
    table = Table()
    for col in ("budget p90", "plan", "", "accuracy measured (95%)", "predicted (95% for this many)",
                "in", "runs", "p50 s measured / predicted mean", "p90 s measured (95%) / predicted", "within"):
        table.add_column(col, justify="right")
    rows = []
    for entry in index["budgets"]:
        chosen_x = None
        for name, pred in entry["plans"].items():
            plan = Plan.load(OUT / "plans" / tag(task, card) / f"{pred['plan']}.yaml")
            x = plan_accuracy_heldout(arrays, plan)
            chosen_x = x if name == "chosen" else chosen_x
            row = measured_row(entry["budget_s"], name, plan, pred, x, chosen_x, runs_dir / f"{tag(task, card)}-{pred['plan']}.jsonl",
                               index["date"])
            rows.append(row)
            versus = f" (chosen {row['chosen_minus'][0]:+.1%} +- {Z95 * row['chosen_minus'][1]:.1%})" \
                if "chosen_minus" in row else ""
            runs = row["runs"]
            table.add_row(f"{entry['budget_s']:g} s", name, plan.describe(),
                          f"{row['accuracy']:.1%} ({row['accuracy_low']:.0%}-{row['accuracy_high']:.0%}){versus}",
                          f"{pred['accuracy']:.1%} ({row['predicted_low']:.0%}-{row['predicted_high']:.0%})",
                          "yes" if row["inside"] else "NO",
                          f"{runs} ({row['runs_correct']:.0%})" if runs else "-",
                          f"{row['p50_s']:.2f} / {pred['mean_s']:.2f}" if runs else f"- / {pred['mean_s']:.2f}",
                          (f"{row['p90_s']:.2f} ({row['p90_interval'][0]:.2f}-{row['p90_interval'][1]:.2f})"
                           f" / {pred['p90_s']:.2f}") if runs else f"- / {pred['p90_s']:.2f}",
                          "not held to it" if name == "compute-optimal" else
                          ("yes" if row["p90_s"] <= entry["budget_s"] else "NO") if runs else "-")
        table.add_section()
    date = max([graded_date] + [row["date"] for row in rows])
    table.title = (f"{task}: the chosen plan against the baselines on {arrays.problems} held-out problems "
                   f"(qwen2.5-coder-1.5b, plans for the {card_name} and run there, bf16; calibrated on the "
                   f"train split; {date})")
    emit(table, f"head_to_head_{tag(task, card)}", f"Head-to-head on held-out {task}, {card_name} ({date})")
    return rows


def measured_row(budget_s: float, name: str, plan: Plan, pred: dict, x: np.ndarray, chosen_x, run_file: Path,
                 plans_date: str) -> dict:
    """A plan's held-out accuracy (with its paired difference from the chosen plan) and its runs' latency,
    dated by its newest run (rows from before runs were dated: the plans' date, the day they ran)."""
    acc = float(x.mean())
    se = float(x.std(ddof=1) / np.sqrt(len(x)))
    lo, hi = prediction_interval(pred["accuracy"], *pred["interval"], len(x))
    rerun = run_file.with_name(f"rerun-{run_file.name}")  # through `ttsplan run` itself
    run_file = rerun if rerun.exists() else run_file
    runs = [json.loads(line) for line in run_file.read_text().splitlines()] if run_file.exists() else []
    lat = np.array([r["latency_s"] for r in runs])
    row = {"budget_s": budget_s, "name": name, "plan": plan.describe(), "accuracy": acc,
           "accuracy_low": acc - Z95 * se, "accuracy_high": acc + Z95 * se,
           "predicted": pred["accuracy"], "predicted_low": lo, "predicted_high": hi,
           "inside": bool(lo <= acc <= hi), "runs": len(runs),
           "runs_correct": float(np.mean([r["correct"] for r in runs])) if runs else None,
           "p50_s": float(np.median(lat)) if runs else None,
           "p90_s": float(np.quantile(lat, 0.9)) if runs else None,
           "p90_interval": quantile_interval(lat, 0.9) if runs else None,
           "predicted_mean_s": pred["mean_s"], "predicted_p90_s": pred["p90_s"],
           "date": max((r.get("date", plans_date) for r in runs), default=plans_date)}
    if name != "chosen" and chosen_x is not None:
        d = chosen_x - x
        row["chosen_minus"] = [float(d.mean()), float(d.std(ddof=1) / np.sqrt(len(d)))]
    return row


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="mode", required=True)
    p = sub.add_parser("plans")
    p.add_argument("--task", choices=list(TASKS))
    p.add_argument("--card", choices=CARDS, default="h200")
    r = sub.add_parser("run")
    r.add_argument("--task", choices=list(TASKS), required=True)
    r.add_argument("--card", choices=CARDS, default="h200")
    r.add_argument("--limit", type=int, default=40)
    r.add_argument("--device", default="cuda")
    r.add_argument("--out", default=str(OUT / "runs"))
    r.add_argument("--only", default="", help="comma-separated plan names (file stems): run only these")
    rep = sub.add_parser("report")
    rep.add_argument("--runs", default=str(OUT / "runs"))
    args = ap.parse_args()
    try:
        {"plans": make_plans, "run": run_plans, "report": report}[args.mode](args)
    except TTSPlanError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
