"""Is the latency model right where plans run?  Plans drawn at random from the optimizer's whole space,
run, and each request predicted from its own branch lengths.

    python benchmarks/validate_latency.py measure --shape qwen2.5-1.5b --draft qwen2.5-0.5b --seconds 180 --out F.json
    python benchmarks/validate_latency.py report F.json [F.json ...] --profiles profiles/device

measure: random weights of a shipped shape on this device (timings do not depend on weight values).
Each plan draws N log-uniform in 1..128 (--n-max), a length cap uniform in 48..512 (--cap-max), and with a draft half the
time a draft length k uniform in 1..8; its branches run to lengths drawn from a task profile (EOS
ignored), at the task's prompt lengths or, one plan in five, a prompt of 512-4096 tokens (relay
attention); with a draft, acceptance is drawn per position from the real pair's measured rates.  No
two runs draw the same plans (--seed), and none are the grid's points.  Every request runs once
untimed (compiling every kernel variant it meets: a warmed process, as a served planner runs) and then
timed.  (The first H200 run, 2026-12-01, warmed up at a quarter of the lengths; five of its 25 draft
requests then compiled kernels inside mid-run graph captures, 1-5 s each: `report` flags such rows,
measured capture over 1.5x the predicted + 0.3 s, and keeps them out of the stored error.)  Rows are
written after every request; a killed run keeps what it measured and a rerun appends to it.

report: each request predicted from its own lengths and prompt by the device profile of its shape
(`planning.latency.predict_request`): MAPE and the worst plan per shape, plain and draft, the error
against N, and the ratio measured / predicted whose 90th percentile `optimize` keeps as margin.
"""
import argparse
import json
import math
import statistics
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from rich.table import Table

from common import emit, today
from ttsplan.files import write_atomic
from ttsplan.planning.plan import Plan

LENGTHS = Path("profiles/tasks/qwen2.5-coder-0.5b-gsm8k-cpu-2t/task.yaml")
ACCEPTANCE = Path("profiles/tasks/qwen2.5-coder-1.5b-gsm8k-cpu-2t/task.yaml")
CAP_MIN, K_MAX = 48, 8


def draw_plan(rng: np.random.Generator, shape: str, draft: str | None, n_max: int, cap_max: int,
              draft_share: float = 0.5) -> tuple[Plan, bool]:
    """(a random plan of the optimizer's space, whether its prompt is a long random one)."""
    n = int(round(math.exp(rng.uniform(0, math.log(n_max + 0.49)))))
    cap = int(rng.integers(CAP_MIN, cap_max + 1))
    k = int(rng.integers(1, K_MAX + 1)) if draft and rng.random() < draft_share else 0
    return Plan(model=shape, branches=n, max_new_tokens=cap, draft=draft if k else None, draft_len=k), \
        bool(rng.random() < 0.2)


def measure(args):
    import torch
    from ttsplan.measure.schema import load_task_profile
    from ttsplan.planning.latency import drawn_request
    from ttsplan.engine.loader import random_models
    from ttsplan.execute.timing import given_acceptance, time_request
    device = "cuda" if torch.cuda.is_available() else "cpu"
    task = load_task_profile(LENGTHS)
    rates = given_acceptance(str(ACCEPTANCE), 0.7) if args.draft else None
    out = Path(args.out)
    data = json.loads(out.read_text()) if out.exists() else {"rows": []}
    data.update(device=torch.cuda.get_device_name() if device == "cuda" else "cpu", date=today())
    rng = np.random.default_rng([args.seed, len(data["rows"])])
    model, draft_model = random_models(args.shape, args.draft, device)
    t_end = time.perf_counter() + args.seconds
    while time.perf_counter() < t_end:
        plan, long_prompt = draw_plan(rng, args.shape, args.draft, args.n_max, args.cap_max, args.draft_share)
        seed = int(rng.integers(1 << 30))
        limits, prompt = drawn_request(task, plan.branches, plan.max_new_tokens, seed)
        if long_prompt:
            prompt = int(rng.integers(512, 4097))
        acc = rates if plan.draft_len else None
        d = draft_model if plan.draft_len else None
        _, stats, spec, seconds = time_request(model, d, plan, prompt, limits, acceptance=acc)
        data["rows"].append({"shape": args.shape, "branches": plan.branches, "cap": plan.max_new_tokens,
                             "k": plan.draft_len, "acceptance": list(acc or ()), "prompt": prompt,
                             "lengths": limits, "seconds": seconds, "prefill_s": stats.prefill_s,
                             "capture_s": stats.capture_s, "decode_s": stats.decode_s, "steps": stats.steps})
        write_atomic(out, json.dumps(data).encode())
        print(args.shape, plan.describe(), f"prompt {prompt}", f"{seconds:.3f} s", flush=True)


def report(args):
    from ttsplan.measure.schema import load_device_profile
    from ttsplan.planning.latency import Decoding, DeviceCosts, predict_request
    rows, devices = [], set()
    for f in args.measurements:
        data = json.loads(Path(f).read_text())
        devices.add((data["device"], data["date"]))
        rows += data["rows"]
    costs = {}
    for r in rows:
        if r["shape"] not in costs:
            costs[r["shape"]] = DeviceCosts.fit(load_device_profile(profile_path(args, r["shape"])))
        dec = Decoding(r["k"], tuple(r["acceptance"])) if r["k"] else Decoding()
        lat = predict_request(costs[r["shape"]], r["lengths"], r["prompt"], dec, on_gpu=args.gpu)
        r["predicted"], r["error"] = lat.mean_s, lat.mean_s / r["seconds"] - 1
        r["compiled"] = r["capture_s"] > 1.5 * lat.capture_s + 0.3  # kernels compiled inside a capture
    flagged = [r for r in rows if r["compiled"]]
    rows = [r for r in rows if not r["compiled"]]
    device, date = sorted(devices)[-1]
    table = Table(title=f"plans drawn at random, predicted against measured latency: {device}, {date}")
    for col in ("shape", "decoding", "plans", "MAPE", "worst plan", "mean error", "N 1-7", "N 8-31", "N 32-128",
                "measured/predicted p90"):
        table.add_column(col, justify="right")
    for shape in dict.fromkeys(r["shape"] for r in rows):
        for kind, pick in (("plain", lambda r: r["k"] == 0), ("draft", lambda r: r["k"] > 0)):
            sel = [r for r in rows if r["shape"] == shape and pick(r)]
            if not sel:
                continue
            errs = [r["error"] for r in sel]
            by_n = []
            for lo, hi in ((1, 7), (8, 31), (32, 128)):
                e = [abs(r["error"]) for r in sel if lo <= r["branches"] <= hi]
                by_n.append(f"{statistics.mean(e):.1%} ({len(e)})" if e else "-")
            worst = max(sel, key=lambda r: abs(r["error"]))
            ratio = np.quantile([r["seconds"] / r["predicted"] for r in sel], 0.9)
            table.add_row(shape, kind, str(len(sel)), f"{statistics.mean(map(abs, errs)):.1%}",
                          f"{worst['error']:+.1%} (N={worst['branches']}, cap {worst['cap']}, k={worst['k']})",
                          f"{statistics.mean(errs):+.1%}", *by_n, f"{ratio:.3f}")
    note = (f"; left out: {len(flagged)} requests that compiled kernels inside a graph capture (" +
            ", ".join(f"{r['shape']} N={r['branches']} k={r['k']}: capture {r['capture_s']:.2f} s" for r in flagged) +
            ")") if flagged else ""
    emit(table, args.name, f"Latency model off its grid ({device}, {date}): random weights, plans drawn at random "
                           f"(N 1-128, caps 48-512, k 1-8 or none), lengths drawn from {LENGTHS}, each request "
                           f"predicted from its own lengths (`benchmarks/validate_latency.py`){note}")
    if args.store:
        store_validation(rows, lambda shape: profile_path(args, shape), device, date)
    write_atomic(Path(args.rows), json.dumps([{k: r[k] for k in ("shape", "branches", "cap", "k", "prompt",
                                                                  "seconds", "predicted")} for r in rows]).encode())


def budget(args):
    """For each budget (p90), the plan the planner chooses without early stop (random weights cannot vote),
    run on requests whose lengths are drawn from the task profile: how many run over the budget."""
    import torch
    from ttsplan.measure.schema import load_task_profile
    from ttsplan.planning.latency import Decoding, DeviceCosts, Replay, drawn_request
    from ttsplan.planning.optimize import load_profiles, matching_acceptance
    from ttsplan.planning.search import choose, search
    from ttsplan.planning.task_arrays import load_task_arrays
    from ttsplan.engine.loader import random_models
    from ttsplan.execute.timing import time_request
    device, task = load_profiles(args.device_profile, args.task_profile)
    costs = DeviceCosts.fit(device)
    replay = Replay(costs, load_task_arrays(task, args.task_profile), on_gpu=True)
    acc = matching_acceptance(device, task)
    result = search(replay, acc.per_position if acc else None,
                    draft_lengths=sorted({c.k for c in device.draft.round_overhead}) if device.draft else [],
                    early_stop=False)
    lengths_task = load_task_profile(args.task_profile)
    gpu = torch.cuda.is_available()
    model, draft_model = random_models(device.model.name, device.draft.model.name if device.draft else None,
                                       "cuda" if gpu else "cpu")
    out = Path(args.out)
    data = {"device": torch.cuda.get_device_name() if gpu else "cpu", "date": today(), "profile": str(args.device_profile),
            "task": str(args.task_profile), "validation": device.validation, "budgets": []}
    for b in args.budgets:
        c = choose(result, b).chosen
        unwidened = Replay(replace(costs, error_log_mean=0.0, error_log_sd=0.0), replay.task, on_gpu=True).simulate(
            c.branches, c.cap, Decoding(c.draft_len, tuple(acc.per_position)) if c.draft_len else Decoding())[None]
        plan = Plan(model=device.model.name, branches=c.branches, max_new_tokens=c.cap,
                    draft=device.draft.model.name if c.draft_len else None, draft_len=c.draft_len)
        seconds = []
        for i in range(args.requests):
            limits, prompt = drawn_request(lengths_task, c.branches, c.cap, seed=10_000 * i + int(b * 1000))
            seconds.append(time_request(model, draft_model if c.draft_len else None, replace(plan, seed=i), prompt,
                                        limits, acceptance=tuple(acc.per_position) if c.draft_len else None)[3])
        data["budgets"].append({"budget_s": b, "plan": plan.describe(), "predicted_mean_s": c.mean_s,
                                "predicted_p90_s": c.p90_s, "unwidened_p90_s": unwidened.p90_s, "seconds": seconds})
        write_atomic(out, json.dumps(data).encode())
        print(b, plan.describe(), f"p90 {c.p90_s:.3f} (unwidened {unwidened.p90_s:.3f})",
              " ".join(f"{x:.3f}" for x in seconds), flush=True)


def budget_report(args):
    data = json.loads(Path(args.measurements).read_text())
    v = data["validation"]
    table = Table(title=f"chosen plans against their p90 budget: {data['device']}, {data['date']}")
    for col in ("budget (p90)", "chosen plan (no early stop)", "predicted p90 (widened)", "unwidened p90",
                "measured p50", "measured p90", "requests over budget"):
        table.add_column(col, justify="right")
    for row in data["budgets"]:
        sec = np.array(row["seconds"])
        over = int((sec > row["budget_s"]).sum())
        table.add_row(f"{row['budget_s']:g} s", row["plan"], f"{row['predicted_p90_s']:.3f} s",
                      f"{row['unwidened_p90_s']:.3f} s", f"{np.median(sec):.3f} s", f"{np.quantile(sec, 0.9):.3f} s",
                      f"{over} of {len(sec)} ({over / len(sec):.0%})")
    emit(table, args.name, f"Budget check ({data['device']}, {data['date']}): {data['profile']} planned on "
                           f"{data['task']}; the p90 widened by the validated error (log ratio "
                           f"{v.get('log_ratio_mean', 0):+.3f} +- {v.get('log_ratio_sd', 0):.3f}); each request's "
                           "lengths drawn from the task profile, random weights, EOS ignored")


def profile_path(args, shape: str) -> Path:
    """The device profile a shape's requests are predicted by: --profile-of SHAPE=PATH, else PREFIX-SHAPE.yaml."""
    named = dict(x.split("=", 1) for x in args.profile_of)
    return Path(named[shape]) if shape in named else Path(args.profiles) / f"{args.prefix}-{shape}.yaml"


def store_validation(rows, path_of, device: str, date: str) -> None:
    """Each shape's error on plans off the grid, into its device profile: what widens the p90."""
    from ttsplan.measure.schema import load_device_profile, save_profile
    for shape in dict.fromkeys(r["shape"] for r in rows):
        path = path_of(shape)
        profile = load_device_profile(path)
        logs = np.log([r["seconds"] / r["predicted"] for r in rows if r["shape"] == shape])
        profile.validation = {"requests": len(logs), "device": device, "date": date,
                              "mape": round(float(np.mean(np.abs(np.exp(-logs) - 1))), 4),
                              "log_ratio_mean": round(float(logs.mean()), 4),
                              "log_ratio_sd": round(float(logs.std(ddof=1)) if len(logs) > 1 else 0.0, 4)}
        save_profile(profile, path)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("measure")
    m.add_argument("--shape", required=True)
    m.add_argument("--draft")
    m.add_argument("--seconds", type=float, default=120)
    m.add_argument("--seed", type=int, default=int(time.time()))
    m.add_argument("--out", required=True)
    m.add_argument("--n-max", type=int, default=128)
    m.add_argument("--cap-max", type=int, default=512)
    m.add_argument("--draft-share", type=float, default=0.5, help="with --draft: the share of plans with a draft")
    r = sub.add_parser("report")
    r.add_argument("measurements", nargs="+")
    r.add_argument("--profiles", default="profiles/device")
    r.add_argument("--prefix", default="h200-relay")
    r.add_argument("--profile-of", action="append", default=[], metavar="SHAPE=PATH",
                   help="predict a shape's requests by this device profile (e.g. a real model's of that shape)")
    r.add_argument("--gpu", action=argparse.BooleanOptionalAction, default=True)
    r.add_argument("--name", default="latency_validation_h200")
    r.add_argument("--rows", default="benchmarks/results/latency_validation_h200.json")
    r.add_argument("--store", action="store_true", help="store each shape's error in its device profile")
    g = sub.add_parser("budget")
    g.add_argument("--device-profile", type=Path, default=Path("profiles/device/h200-relay-qwen2.5-1.5b.yaml"))
    g.add_argument("--task-profile", type=Path, default=ACCEPTANCE)
    g.add_argument("--budgets", type=float, nargs="+", default=[0.6, 0.9, 1.3])
    g.add_argument("--requests", type=int, default=10)
    g.add_argument("--out", required=True)
    gr = sub.add_parser("budget-report")
    gr.add_argument("measurements")
    gr.add_argument("--name", default="budget_check_h200")
    args = ap.parse_args(argv)
    {"measure": measure, "report": report, "budget": budget, "budget-report": budget_report}[args.cmd](args)


if __name__ == "__main__":
    main()
