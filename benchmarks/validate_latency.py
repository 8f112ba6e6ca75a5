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
untimed at a quarter of its lengths (compiling every kernel variant it meets) and then timed.  Rows
are written after every request; a killed run keeps what it measured and a rerun appends to it.

report: each request predicted from its own lengths and prompt by the device profile of its shape
(`planning.latency.predict_request`): MAPE and the worst plan per shape, plain and draft, the error
against N, and the ratio measured / predicted whose 90th percentile `optimize` keeps as margin.
"""
import argparse
import json
import math
import statistics
import time
from pathlib import Path

import numpy as np
from rich.table import Table

from common import emit, today
from ttsplan.files import write_atomic
from ttsplan.planning.plan import Plan

LENGTHS = Path("profiles/tasks/qwen2.5-coder-0.5b-gsm8k/task.yaml")
ACCEPTANCE = Path("profiles/tasks/qwen2.5-coder-1.5b-gsm8k/task.yaml")
CAP_MIN, K_MAX = 48, 8


def draw_plan(rng: np.random.Generator, shape: str, draft: str | None, n_max: int, cap_max: int) -> tuple[Plan, bool]:
    """(a random plan of the optimizer's space, whether its prompt is a long random one)."""
    n = int(round(math.exp(rng.uniform(0, math.log(n_max + 0.49)))))
    cap = int(rng.integers(CAP_MIN, cap_max + 1))
    k = int(rng.integers(1, K_MAX + 1)) if draft and rng.random() < 0.5 else 0
    return Plan(model=shape, branches=n, max_new_tokens=cap, draft=draft if k else None, draft_len=k), \
        bool(rng.random() < 0.2)


def measure(args):
    import torch
    from ttsplan.measure.profiles import load_task_profile
    from ttsplan.planning.latency import drawn_request
    from ttsplan.runner import generate_branches, given_acceptance, random_models, sampling_params, time_request
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
        plan, long_prompt = draw_plan(rng, args.shape, args.draft, args.n_max, args.cap_max)
        seed = int(rng.integers(1 << 30))
        limits, prompt = drawn_request(task, plan.branches, plan.max_new_tokens, seed)
        if long_prompt:
            prompt = int(rng.integers(512, 4097))
        acc = rates if plan.draft_len else None
        d = draft_model if plan.draft_len else None
        warm = torch.randint(0, model.cfg.vocab_size, (prompt,)).tolist()
        generate_branches(model, warm, plan.branches, sampling_params(plan, ignore_eos=True), set(), d, plan.draft_len,
                          limits=[max(1, x // 4) for x in limits], acceptance=acc)
        _, stats, spec, seconds = time_request(model, d, plan, prompt, limits, warm_up=False, acceptance=acc)
        data["rows"].append({"shape": args.shape, "branches": plan.branches, "cap": plan.max_new_tokens,
                             "k": plan.draft_len, "acceptance": list(acc or ()), "prompt": prompt,
                             "lengths": limits, "seconds": seconds, "prefill_s": stats.prefill_s,
                             "capture_s": stats.capture_s, "decode_s": stats.decode_s, "steps": stats.steps})
        write_atomic(out, json.dumps(data).encode())
        print(args.shape, plan.describe(), f"prompt {prompt}", f"{seconds:.3f} s", flush=True)


def report(args):
    from ttsplan.measure.profiles import load_device_profile
    from ttsplan.planning.latency import Decoding, DeviceCosts, predict_request
    rows, devices = [], set()
    for f in args.measurements:
        data = json.loads(Path(f).read_text())
        devices.add((data["device"], data["date"]))
        rows += data["rows"]
    costs = {}
    for r in rows:
        if r["shape"] not in costs:
            costs[r["shape"]] = DeviceCosts.fit(load_device_profile(Path(args.profiles) / f"{args.prefix}-{r['shape']}.yaml"))
        dec = Decoding(r["k"], tuple(r["acceptance"])) if r["k"] else Decoding()
        r["predicted"] = predict_request(costs[r["shape"]], r["lengths"], r["prompt"], dec, on_gpu=args.gpu)
        r["error"] = r["predicted"] / r["seconds"] - 1
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
    emit(table, args.name, f"Latency model off its grid ({device}, {date}): random weights, plans drawn at random "
                           f"(N 1-128, caps 48-512, k 1-8 or none), lengths drawn from {LENGTHS}, each request "
                           "predicted from its own lengths (`benchmarks/validate_latency.py`)")
    write_atomic(Path(args.rows), json.dumps([{k: r[k] for k in ("shape", "branches", "cap", "k", "prompt",
                                                                  "seconds", "predicted")} for r in rows]).encode())


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
    r = sub.add_parser("report")
    r.add_argument("measurements", nargs="+")
    r.add_argument("--profiles", default="profiles/device")
    r.add_argument("--prefix", default="h200-relay")
    r.add_argument("--gpu", action=argparse.BooleanOptionalAction, default=True)
    r.add_argument("--name", default="latency_validation_h200")
    r.add_argument("--rows", default="benchmarks/results/latency_validation_h200.json")
    args = ap.parse_args(argv)
    {"measure": measure, "report": report}[args.cmd](args)


if __name__ == "__main__":
    main()
