"""Which rule chooses the plan that is most accurate held out, and does the corrected estimate predict it?

For each device profile, task profile and budget, every plan is scored once on the whole profile
(latency does not depend on which problems are held out).  Then, over random halves of the problems,
each rule chooses on one half and its plan is scored exactly on the other:

  naive            the highest mean accuracy (z = 0 of the paired rule)
  paired z         the paired rule (`ttsplan.planning.selection`) at z = 0.5, 1, 2
  lower bound      the highest per-plan lower bound, mean - 1.645 se (unpaired)
  branches only    majority vote, no cap, no draft, no early stop: the best within the budget

Per budget: each rule's held-out accuracy (mean over splits) and its paired difference from the
naive rule (with its standard error over splits); for the default rule, the estimate where it was
chosen, the corrected estimate (bootstrap of the whole selection on that half), and how often the
prediction interval for the other half's size covers what that half measured.

    python benchmarks/selection_rules.py [--splits 100]
"""
import argparse
import json
import time
from pathlib import Path

import numpy as np
from rich.table import Table

from common import RESULTS, emit, today
from ttsplan.planning.latency import DeviceCosts, Replay
from ttsplan.planning.optimize import load_profiles, matching_acceptance
from ttsplan.planning.search import full_cap, search
from ttsplan.planning.selection import (Z_PAIRED, accuracy_rows, corrected, keyed, levels, pick_paired,
                                        prediction_interval, resample_weights)
from ttsplan.planning.task_arrays import load_task_arrays

CASES = [  # device profile, task profile, p90 budgets (s)
    ("h200-relay-qwen2.5-1.5b", "qwen2.5-coder-1.5b-gsm8k-train-h200", (1, 1.25, 1.5, 2)),
    ("h200-relay-qwen2.5-0.5b", "qwen2.5-coder-0.5b-gsm8k-train-h200", (0.25, 0.5, 1, 2)),
    ("h100-relay-qwen2.5-1.5b", "qwen2.5-coder-1.5b-gsm8k-cpu-2t", (1.5, 2)),
    ("cpu-2t-relay-qwen2.5-coder-1.5b", "qwen2.5-coder-1.5b-gsm8k-cpu-2t", (60, 120)),
]
RULES = ("naive", "paired z=0.5", "paired z=1", "paired z=2", "lower bound", "branches only")


def rule_pick(rule: str, X, level, plain, w):
    if rule == "naive":
        return pick_paired(X, level, w, 0.0)
    if rule.startswith("paired"):
        return pick_paired(X, level, w, float(rule.split("=")[1]))
    if rule == "lower bound":
        m = X @ w
        sd = np.sqrt(np.maximum((X * X) @ w - m * m, 0) / (len(w) - 1))
        return int(np.argmax(m - 1.645 * sd))
    masked = np.where(plain, np.round(X @ w, 12), -np.inf)  # branches only
    return int(np.argmax(masked))


def run_case(device_name: str, task_name: str, budgets, splits: int, rng) -> list[dict]:
    device_path = Path("profiles/device") / f"{device_name}.yaml"
    task_path = Path("profiles/tasks") / task_name / "task.yaml"
    device, task = load_profiles(device_path, task_path)
    t0 = time.perf_counter()
    arrays = load_task_arrays(task, task_path)
    replay = Replay(DeviceCosts.fit(device), arrays, on_gpu=device.device["type"] == "cuda")
    acceptance = matching_acceptance(device, task)
    ks = sorted({c.k for c in device.draft.round_overhead}) if device.draft else []
    result = search(replay, acceptance and acceptance.per_position, draft_lengths=ks)
    print(f"{device_name} + {task_name}: {len(result.candidates)} plans in {time.perf_counter() - t0:.0f} s")
    cap = full_cap(result)
    rows = []
    for budget in budgets:
        pool = [c for c in result.candidates if c.p90_s <= budget]
        if not pool:
            continue
        keys, fastest = keyed(pool, "p90")
        X = accuracy_rows(result.accuracy, keys)
        level = levels(keys, cap)
        runs_plain = {(c.vote, c.cap, c.branches) for c in pool
                      if c.vote == "majority" and c.cap == cap and not c.early_stop and not c.draft_len}
        plain = np.array([k in runs_plain for k in keys])
        P = X.shape[1]
        held = {rule: [] for rule in RULES}
        where, fixed, covered = [], [], 0
        for s in range(splits):
            order = rng.permutation(P)
            a, b = order[:P // 2], order[P // 2:]
            wa = np.zeros(P)
            wa[a] = 1 / len(a)
            for rule in RULES:
                held[rule].append(X[rule_pick(rule, X, level, plain, wa), b].mean())
            Xa = X[:, a]
            pick = lambda w: pick_paired(Xa, level, w, Z_PAIRED)
            i = pick(np.full(len(a), 1 / len(a)))
            sel = corrected(None, Xa, i, pick, "", resample_weights(len(a), 200, seed=s))
            where.append(sel.naive)
            fixed.append(sel.accuracy)
            lo, hi = prediction_interval(sel.accuracy, sel.low, sel.high, len(b))
            covered += lo <= X[i, b].mean() <= hi
        base = np.array(held["naive"])
        row = {"device": device_name, "task": task_name, "problems": P, "budget_s": budget, "plans": len(keys),
               "held_out": {r: float(np.mean(v)) for r, v in held.items()},
               "vs_naive": {r: float(np.mean(np.array(v) - base)) for r, v in held.items()},
               "vs_naive_se": {r: float(np.std(np.array(v) - base) / np.sqrt(splits)) for r, v in held.items()},
               "default_where_chosen": float(np.mean(where)), "default_corrected": float(np.mean(fixed)),
               "default_held_out": float(np.mean(held[f"paired z={Z_PAIRED:g}"])),
               "coverage": covered / splits, "splits": splits}
        rows.append(row)
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--splits", type=int, default=100)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    rows = []
    for device_name, task_name, budgets in CASES:
        rows += run_case(device_name, task_name, budgets, args.splits, rng)
    (RESULTS / "selection_rules.json").write_text(json.dumps({"date": today(), "rows": rows}, indent=1))
    table = Table(title=f"selection rules held out: chosen on a random half, scored on the other ({args.splits} "
                        f"splits; {today()}); accuracy held out, and (difference from naive +- se)")
    for col in ("device / task", "budget p90", "plans") + RULES + ("default: where chosen", "corrected",
                                                                    "held out", "PI coverage"):
        table.add_column(col, justify="right")
    for r in rows:
        cells = [f"{r['held_out'][k]:.1%}" + ("" if k == "naive" else
                                              f" ({r['vs_naive'][k]:+.1%} +- {r['vs_naive_se'][k]:.1%})")
                 for k in RULES]
        table.add_row(f"{r['device']} / {r['task']} ({r['problems']})", f"{r['budget_s']:g} s", str(r["plans"]),
                      *cells, f"{r['default_where_chosen']:.1%}", f"{r['default_corrected']:.1%}",
                      f"{r['default_held_out']:.1%}", f"{r['coverage']:.0%}")
    emit(table, "selection_rules", f"Selection rules held out ({today()}, default paired z = {Z_PAIRED:g})")


if __name__ == "__main__":
    main()
