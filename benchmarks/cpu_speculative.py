"""Speculative decoding across branches on this CPU: the real pair, N x k, beside target-only decoding.

Target qwen2.5-coder-1.5b, draft qwen2.5-coder-0.5b, float32, a GSM8K question (chat template),
sampling at temperature 0.7 / top-p 0.95, NEW tokens per branch with EOS ignored.  For each N the
target alone (k = 0) and the draft alone are timed in the same run; c = draft step / target step.
Predicted speedup from the measured acceptance a: (1 - a^(k+1)) / ((1 - a)(k c + 1)).

    python benchmarks/cpu_speculative.py [--branches 1 2 4 8] [--draft-lens 1 2 4 6 8]
"""
import argparse

import torch
from rich.table import Table

from common import cpu_name, emit, today
from ttsplan.datasets import load_problems
from ttsplan.engine.generate import generate
from ttsplan.engine.sampling import SamplingParams
from ttsplan.engine.speculative import generate_speculative
from ttsplan.datasets import prompt_ids
from ttsplan.engine.loader import load_draft, load_model

NEW = 64


def predicted_speedup(a: float, k: int, c: float) -> float:
    if a >= 1.0:
        return (k + 1) / (k * c + 1)
    return (1 - a ** (k + 1)) / ((1 - a) * (k * c + 1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--branches", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--draft-lens", type=int, nargs="+", default=[1, 2, 4, 6, 8])
    args = ap.parse_args()
    target = load_model("qwen2.5-coder-1.5b")
    draft = load_draft(target, "qwen2.5-coder-0.5b")
    prompt = prompt_ids(target.tokenizer, load_problems("gsm8k", 1)[0].question)
    params = SamplingParams(temperature=0.7, top_p=0.95, max_new_tokens=NEW, ignore_eos=True)
    generate(target.model, prompt, 1, SamplingParams(max_new_tokens=2), set())  # warm up

    table = Table(title=f"speculative decoding, 1.5b target + 0.5b draft, fp32, {NEW} new tokens/branch, GSM8K prompt")
    for col in ("N", "k", "tok/s", "latency s", "speedup", "acceptance", "per position", "tokens/round",
                "c", "predicted", "achieved/predicted"):
        table.add_column(col, justify="right")
    for n in args.branches:
        _, base = generate(target.model, prompt, n, params, set())
        _, alone = generate(draft.model, prompt, n, params, set())
        c = (alone.decode_s / alone.steps) / (base.decode_s / base.steps)
        table.add_row(str(n), "0", f"{base.tokens_per_s:.2f}", f"{base.prefill_s + base.decode_s:.1f}", "1.00x",
                      "-", "-", "1.00", f"{c:.2f}", "-", "-")
        for k in args.draft_lens:
            _, stats, spec = generate_speculative(target.model, draft.model, prompt, n, params, set(), draft_len=k)
            speedup = stats.tokens_per_s / base.tokens_per_s
            pred = predicted_speedup(spec.overall_acceptance, k, c)
            table.add_row(str(n), str(k), f"{stats.tokens_per_s:.2f}", f"{stats.prefill_s + stats.decode_s:.1f}",
                          f"{speedup:.2f}x", f"{spec.overall_acceptance:.2f}",
                          " ".join(f"{a:.2f}" for a in spec.acceptance), f"{spec.tokens_per_round:.2f}", f"{c:.2f}",
                          f"{pred:.2f}x", f"{speedup / pred:.2f}")
        table.add_section()
    emit(table, "cpu_speculative", f"CPU: {cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}, {today()}")


if __name__ == "__main__":
    main()
