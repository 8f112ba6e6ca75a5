"""Calibration sampling throughput: many problems in one refilled batch against one problem at a time.

    python benchmarks/sampling_throughput.py --model qwen2.5-coder-1.5b --dataset math-train --offset 7000 \
        --problems 16 --n 64 --max-new-tokens 1024 --rows 512 --device cuda

The same problems, branches and sampling three ways, in one run: `generate` one problem at a time
(the engine's own request path: rows compacted as branches finish, graph buckets), the refilled
batch (engine.many_prompts) holding one problem, and holding rows / n problems.  Prints samples/s and
tokens/s with the ratio to one problem at a time, and the achieved bandwidth (weights + KV read per
step) beside the device's copy bandwidth measured in the same run.  Writes a JSON row per way to --out.
"""
import argparse
import datetime
import json
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ttsplan.datasets import load_problems, prompt_ids
from ttsplan.engine.generate import generate
from ttsplan.engine.many_prompts import generate_many
from ttsplan.engine.sampling import SamplingParams
from ttsplan.hardware import copy_bandwidth, device_name, synchronize
from ttsplan.engine.loader import load_model


def one_at_a_time(engine, prompts, n, params):
    tokens = bytes_read = 0
    for i, prompt in enumerate(prompts):
        branches, stats = generate(engine.model, prompt, n, SamplingParams(**{**params.__dict__, "seed": i}),
                                   engine.eos_ids)
        tokens += sum(len(b.tokens) for b in branches)
        bytes_read += stats.bytes_read
    return tokens, bytes_read


def many(engine, prompts, n, rows, params):
    stats = None
    for item in generate_many(engine.model, prompts, list(range(len(prompts))), n, rows, params, engine.eos_ids):
        stats = item
    return stats.new_tokens, stats.bytes_read


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="qwen2.5-coder-1.5b")
    ap.add_argument("--dataset", default="math-train")
    ap.add_argument("--offset", type=int, default=7000)
    ap.add_argument("--problems", type=int, default=16)
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--max-new-tokens", type=int, default=1024)
    ap.add_argument("--rows", type=int, default=512)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    engine = load_model(args.model, args.device)
    prompts = [prompt_ids(engine.tokenizer, p.question) for p in load_problems(args.dataset, args.problems, args.offset)]
    params = SamplingParams(temperature=0.7, top_p=0.95, max_new_tokens=args.max_new_tokens)
    dev = engine.model.device
    peak = copy_bandwidth(dev)
    warm = SamplingParams(**{**params.__dict__, "max_new_tokens": 16})  # compiles every kernel both paths launch
    one_at_a_time(engine, prompts[:1], args.n, warm)
    many(engine, prompts[:2], args.n, args.rows, warm)
    ways = [("one problem at a time (generate)", lambda: one_at_a_time(engine, prompts, args.n, params)),
            ("refilled batch, one problem", lambda: many(engine, prompts, args.n, args.n, params)),
            (f"refilled batch, {args.rows // args.n} problems", lambda: many(engine, prompts, args.n, args.rows, params))]
    rows = []
    for name, fn in ways:
        synchronize(dev)
        t0 = time.perf_counter()
        tokens, bytes_read = fn()
        synchronize(dev)
        s = time.perf_counter() - t0
        rows.append({"way": name, "seconds": s, "samples_per_s": len(prompts) * args.n / s, "tokens_per_s": tokens / s,
                     "achieved_gbs": bytes_read / s / 1e9, "copy_gbs": peak / 1e9})
    table = Table(title=f"calibration sampling, {args.model} on {device_name(dev)}, {datetime.date.today()}: "
                        f"{len(prompts)} {args.dataset} problems x {args.n} branches, {args.max_new_tokens} tokens, T 0.7",
                  caption="achieved: weights + KV read per decode step over the run's wall time; peak: device copy "
                          "bandwidth measured in the same run")
    for col in ("way", "seconds", "samples/s", "tokens/s", "x one at a time", "achieved GB/s", "of peak copy"):
        table.add_column(col, justify="left" if col == "way" else "right")
    for r in rows:
        table.add_row(r["way"], f"{r['seconds']:.1f}", f"{r['samples_per_s']:.1f}", f"{r['tokens_per_s']:.0f}",
                      f"{r['samples_per_s'] / rows[0]['samples_per_s']:.2f}x", f"{r['achieved_gbs']:.0f}",
                      f"{r['achieved_gbs'] / r['copy_gbs']:.0%}")
    Console(width=200).print(table)
    if args.out:
        args.out.write_text(json.dumps({"device": device_name(dev), "date": str(datetime.date.today()),
                                        "args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
