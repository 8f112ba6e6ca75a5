"""Decode tokens/s of the relay engine vs HF transformers generate(num_return_sequences=N), same run.

qwen2.5-coder-0.5b, float32 on this CPU, a 512-token GSM8K prompt, 128 new tokens per branch
(EOS ignored), sampling at temperature 0.7.  HF's decode time is its generate() time minus its
prefill time (generate with one new token), so both columns count decode alone.

    python benchmarks/cpu_decode.py [--branches 1 4 8 16]
"""
import argparse
import time

import torch
from rich.table import Table

from common import cpu_name, emit, gsm8k_prompt_ids, today
from ttsplan.engine.generate import generate
from ttsplan.engine.sampling import SamplingParams
from ttsplan.hardware import copy_bandwidth
from ttsplan.engine.loader import load_model

NEW = 128


def hf_generate_s(hf, ids, n, new_tokens):
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = hf.generate(torch.tensor([ids]), do_sample=True, temperature=0.7, top_p=0.95, num_return_sequences=n,
                          max_new_tokens=new_tokens, min_new_tokens=new_tokens)
    assert out.shape == (n, len(ids) + new_tokens)
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--branches", type=int, nargs="+", default=[1, 4, 8, 16])
    args = ap.parse_args()
    from transformers import AutoModelForCausalLM

    engine = load_model("qwen2.5-coder-0.5b")
    hf = AutoModelForCausalLM.from_pretrained(engine.model_dir, dtype=torch.float32)
    ids = gsm8k_prompt_ids(engine.tokenizer, 512)
    bw = copy_bandwidth(torch.device("cpu"))
    generate(engine.model, ids, 2, SamplingParams(max_new_tokens=4, ignore_eos=True), set())  # warm up

    table = Table(title=f"decode tok/s, qwen2.5-coder-0.5b fp32, 512-token prompt, {NEW} new tokens/branch")
    for col in ("N", "ttsplan tok/s", "HF tok/s", "ratio", "ttsplan prefill s", "HF prefill s",
                "ttsplan e2e s", "HF e2e s", "bandwidth achieved", "x floor"):
        table.add_column(col, justify="right")
    for n in args.branches:
        params = SamplingParams(temperature=0.7, top_p=0.95, max_new_tokens=NEW, ignore_eos=True, seed=n)
        t0 = time.perf_counter()
        _, stats = generate(engine.model, ids, n, params, engine.eos_ids)
        ours_e2e = time.perf_counter() - t0
        hf_prefill = hf_generate_s(hf, ids, n, 1)
        hf_e2e = hf_generate_s(hf, ids, n, NEW)
        hf_tps = n * (NEW - 1) / (hf_e2e - hf_prefill)
        achieved = stats.bytes_read / stats.decode_s
        table.add_row(str(n), f"{stats.tokens_per_s:.1f}", f"{hf_tps:.1f}", f"{stats.tokens_per_s / hf_tps:.2f}x",
                      f"{stats.prefill_s:.2f}", f"{hf_prefill:.2f}", f"{ours_e2e:.1f}", f"{hf_e2e:.1f}",
                      f"{achieved / 1e9:.1f} GB/s ({achieved / bw:.0%} of copy)", f"{bw / achieved:.1f}x")
    emit(table, "cpu_decode", f"CPU: {cpu_name()}, {torch.get_num_threads()} threads, "
                              f"copy bandwidth {bw / 1e9:.1f} GB/s, torch {torch.__version__}, {today()}")


if __name__ == "__main__":
    main()
