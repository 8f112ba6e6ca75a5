"""Speculative decoding on the GPU, in one run (the device machine): sampling, rounds, speedups, end to end.

    python benchmarks/gpu_speculative.py [--quick] [--only TABLE ...] [--targets qwen2.5-7b ...]

Random weights of the Qwen2.5 shapes, bf16; acceptance drawn per position from the CPU task profile
of the real qwen2.5-coder 0.5b -> 1.5b pair (the timing mode with given acceptance), since random
weights accept at rates that mean nothing.  Tables:
  sampling   temperature + top-p + draw per step: the full sort, the threshold kernel on softmax's
             probabilities (what verification uses) and the fused kernel from the logits (decode steps)
  verify     relay attention at q = k + 1: the decode launch shape against the verification ones
  rounds     a real round (graph-replayed, host commit included) against the sum of its parts replayed
             alone (k draft steps, one verification); speedup over the target alone beside the
             speedup those parts and the acceptance predict: tau x step / (k draft + verify)
  e2e        a 512-token prompt, 8 x 256 tokens, with the draft and without
"""
import argparse
import time

import torch
import triton
import triton.testing
from rich.table import Table

from common import emit, today
from gpu_bench import attention_floors, attention_inputs, bench_ms
from ttsplan.engine.config import ModelConfig
from ttsplan.engine.generate import generate
from ttsplan.engine.model import Transformer
from ttsplan.engine.sampling import SamplingParams, draw, float32, nucleus_sort_free, token_scores
from ttsplan.engine.speculative import generate_speculative
from ttsplan.hardware import copy_bandwidth
from ttsplan.kernels.relay_attention_triton import Tuning, relay_attention_triton
from ttsplan.kernels.sampling_triton import sample_top_p
from ttsplan.measure.schema import PROFILES, load_task_profile
from ttsplan.measure.step_cost import PromptCaches, draft_point, step_point

DEV = torch.device("cuda")
BF16 = torch.bfloat16
PROMPT, NEW = 512, 256
PARAMS = SamplingParams(temperature=0.7, top_p=0.95, max_new_tokens=NEW, ignore_eos=True)


def cpu_pair_acceptance() -> tuple[float, ...]:
    task = load_task_profile(PROFILES / "tasks" / "qwen2.5-coder-1.5b-gsm8k-cpu-2t" / "task.yaml")
    return tuple(next(a.per_position for a in task.acceptance if a.temperature == PARAMS.temperature))


def tokens_per_round(rates: tuple[float, ...], k: int) -> float:
    """1 + sum_i prod_{j <= i} a_j: the expected tokens a branch emits per round."""
    tau, run = 1.0, 1.0
    for i in range(k):
        run *= rates[min(i, len(rates) - 1)]
        tau += run
    return tau


def sorted_nucleus(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """The full-vocabulary sort."""
    top, order = probs.sort(dim=-1, descending=True)
    top = top.masked_fill(top.cumsum(-1) - top >= top_p, 0.0)
    kept = torch.zeros_like(probs).scatter_(-1, order, top)
    return kept / kept.sum(-1, keepdim=True)


def sampling_table(bw: float) -> Table:
    V = ModelConfig.shipped("qwen2.5-1.5b").vocab_size
    table = Table(title=f"sampling per step (temperature {PARAMS.temperature}, top-p {PARAMS.top_p}, one draw per "
                        f"row), vocabulary {V}, float32 logits, graph-replayed; floor: one read of the logits")
    for col in ("rows", "logits", "nucleus size", "full sort ms", "threshold kernel ms", "fused ms",
                "fused vs sort", "floor ms", "fused / floor", "+ scores ms"):
        table.add_column(col, justify="right")
    gen = torch.Generator(device=DEV).manual_seed(0)
    temp, top_p = PARAMS.temperature, float32(PARAMS.top_p)
    for rows in (1, 8, 16, 32, 64, 320):
        for name, scale in (("peaked (N(0, 3))", 3.0), ("flat (random weights)", 0.6)):
            logits = torch.randn(rows, V, device=DEV, generator=gen) * scale
            u = torch.rand(rows, device=DEV, generator=gen)
            size = int((nucleus_sort_free(torch.softmax(logits / temp, -1), top_p) > 0).sum(-1).float().median())
            fused = sample_top_p(logits, temp, top_p, u)
            bench = lambda fn: triton.testing.do_bench_cudagraph(fn, rep=100)  # noqa: E731
            t_sort = bench(lambda: draw(sorted_nucleus(torch.softmax(logits / temp, -1), top_p), u))
            t_kernel = bench(lambda: draw(nucleus_sort_free(torch.softmax(logits / temp, -1), top_p), u))
            t_fused = bench(lambda: sample_top_p(logits, temp, top_p, u))
            t_scores = bench(lambda: token_scores(logits, fused))
            floor = logits.numel() * logits.element_size() / bw * 1e3
            table.add_row(str(rows), name, str(size), f"{t_sort:.3f}", f"{t_kernel:.3f}", f"{t_fused:.3f}",
                          f"{t_sort / t_fused:.1f}x", f"{floor:.3f}", f"{t_fused / floor:.1f}", f"{t_scores:.3f}")
    return table


def verify_attention_table(bw: float) -> Table:
    """Relay attention at q = k + 1: the decode launch shape against the one launch_shape picks."""
    table = Table(title="relay attention at q = k + 1 (bf16, head dim 128, 256 own tokens per branch): the decode "
                        "launch shape against launch_shape's; floors: memory (read once), compute (bf16 peak)")
    for col in ("heads", "prefix", "N", "q", "decode shape ms", "chosen ms", "speedup", "x mem floor",
                "x roofline"):
        table.add_column(col, justify="right")
    for name, H, hkv in (("28/4", 28, 4), ("12/2", 12, 2)):
        for lp in (512, 1024, 4096, 16384):
            for n in (8, 32, 64):
                for nq in (3, 5, 9):
                    args = attention_inputs(H, hkv, lp, n, nq, own=256)
                    _, mem_ms, flop_ms = attention_floors(args, bw)
                    t_old = bench_ms(lambda: relay_attention_triton(*args, tuning=Tuning()))
                    t_new = bench_ms(lambda: relay_attention_triton(*args))
                    table.add_row(name, str(lp), str(n), str(nq), f"{t_old:.4f}", f"{t_new:.4f}",
                                  f"{t_old / t_new:.2f}x", f"{t_new / mem_ms:.1f}", f"{t_new / flop_ms:.1f}")
        table.add_section()
    return table


def timed_generation(fn, repeats: int = 3) -> tuple[float, object]:
    """fn() once untimed (kernels compile, graphs capture), then `repeats` times: (decode seconds, result)
    of the median run, so that one slow run on a shared host does not decide a ratio."""
    fn()
    torch.cuda.synchronize()
    median = sorted((fn() for _ in range(repeats)), key=lambda result: result[1].decode_s)[repeats // 2]
    return median[1].decode_s, median


def rounds_table(rates, quick: bool, targets: list[str]) -> Table:
    table = Table(title=f"speculative rounds: {PROMPT}-token prompt, {NEW} tokens per branch, bf16, acceptance "
                        f"per position from the CPU profile of the real pair ({' '.join(f'{a:.2f}' for a in rates[:4])} "
                        "...); every time the median of 3 runs")
    for col in ("pair", "N", "k", "round ms", "parts ms", "round / parts", "target tok/s", "with draft tok/s",
                "speedup", "predicted", "achieved / predicted"):
        table.add_column(col, justify="right")
    d_cfg = ModelConfig.shipped("qwen2.5-0.5b")
    draft = Transformer.random(d_cfg, DEV, BF16, seed=1)
    prompt = torch.randint(0, d_cfg.vocab_size, (PROMPT + 1024,), generator=torch.Generator().manual_seed(0)).tolist()
    for shape in targets:
        pair_rows(table, shape, draft, prompt, rates, quick)
        torch.cuda.empty_cache()
    return table


def pair_rows(table: Table, shape: str, draft: Transformer, prompt: list[int], rates, quick: bool) -> None:
    target = Transformer.random(ModelConfig.shipped(shape), DEV, BF16, seed=0)
    t_caches, d_caches = PromptCaches(target, prompt), PromptCaches(draft, prompt)
    for n in (1, 8) if quick else (1, 8, 32, 64):
        _, (_, plain) = timed_generation(lambda: generate(target, prompt[:PROMPT], n, PARAMS, set()))
        mid = NEW // 2
        step_ms = step_point(target, t_caches, n, 1, PROMPT, mid, 15, 0.6).ms
        draft_ms = draft_point(draft, d_caches, n, PROMPT, mid, 15, 0.6).ms
        for k in (1, 4) if quick else (1, 2, 4, 8):
            spec_s, (_, stats, spec) = timed_generation(lambda: generate_speculative(
                target, draft, prompt[:PROMPT], n, PARAMS, set(), draft_len=k, acceptance=rates))
            parts = k * draft_ms + step_point(target, t_caches, n, k + 1, PROMPT, mid, 15, 0.6).ms
            round_ms = spec_s * 1e3 / spec.rounds
            speedup = stats.tokens_per_s / plain.tokens_per_s
            predicted = tokens_per_round(rates, k) * step_ms / parts
            table.add_row(f"0.5b -> {shape.split('-')[1]}", str(n), str(k), f"{round_ms:.2f}", f"{parts:.2f}",
                          f"{round_ms / parts:.2f}", f"{plain.tokens_per_s:.0f}", f"{stats.tokens_per_s:.0f}",
                          f"{speedup:.2f}x", f"{predicted:.2f}x", f"{speedup / predicted:.2f}")
        table.add_section()


def end_to_end_table(rates) -> Table:
    target = Transformer.random(ModelConfig.shipped("qwen2.5-1.5b"), DEV, BF16, seed=0)
    draft = Transformer.random(ModelConfig.shipped("qwen2.5-0.5b"), DEV, BF16, seed=1)
    prompt = torch.randint(0, target.cfg.vocab_size, (PROMPT,), generator=torch.Generator().manual_seed(0)).tolist()
    n = 8
    table = Table(title=f"end to end, qwen2.5-1.5b shape bf16, {PROMPT}-token prompt, {n} branches x {NEW} tokens; "
                        f"draft qwen2.5-0.5b shape at the CPU pair's acceptance")
    for col in ("engine", "draft length", "wall s (median run of 3)", "prefill s", "graph capture s", "decode tok/s",
                "speedup"):
        table.add_column(col, justify="right")
    runs = [("ttsplan, target alone", 0)] + [("ttsplan, with draft", k) for k in (2, 4)]
    base = None
    for name, k in runs:
        def run(seed):
            params = SamplingParams(**{**PARAMS.__dict__, "seed": seed})
            if k:
                return generate_speculative(target, draft, prompt, n, params, set(), draft_len=k, acceptance=rates)[:2]
            return generate(target, prompt, n, params, set())
        run(0)
        runs = []
        for seed in range(3):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            _, stats = run(seed)
            torch.cuda.synchronize()
            runs.append((time.perf_counter() - t0, stats))
            print(f"{name} k={k} seed {seed}: wall {runs[-1][0]:.3f} s, capture {stats.capture_s:.3f} s")
        wall, stats = sorted(runs, key=lambda r: r[0])[1]  # the median run
        base = base or wall
        table.add_row(name, str(k or "-"), f"{wall:.3f}", f"{stats.prefill_s:.3f}", f"{stats.capture_s:.3f}",
                      f"{stats.tokens_per_s:.0f}", f"{base / wall:.2f}x")
    return table


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--targets", nargs="*", default=["qwen2.5-1.5b", "qwen2.5-7b"], help="rounds: the target shapes")
    ap.add_argument("--only", choices=["sampling", "verify", "rounds", "e2e"], nargs="*")
    args = ap.parse_args()
    only = set(args.only or ["sampling", "verify", "rounds", "e2e"])
    bw = copy_bandwidth(DEV, nbytes=1 << 30)
    header = (f"{torch.cuda.get_device_name()}, copy bandwidth {bw / 1e12:.2f} TB/s (measured in this run), "
              f"torch {torch.__version__}, triton {triton.__version__}, {today()}")
    print(header)
    rates = cpu_pair_acceptance()
    if "sampling" in only:
        emit(sampling_table(bw), "gpu_sampling", header)
    if "verify" in only:
        emit(verify_attention_table(bw), "gpu_relay_verify", header)
    if "rounds" in only:
        name = "gpu_speculative_rounds" + "".join(f"_{t.split('-')[1]}" for t in args.targets)
        emit(rounds_table(rates, args.quick, args.targets[:1] if args.quick else args.targets), name, header)
    if "e2e" in only:
        emit(end_to_end_table(rates), "gpu_speculative_end_to_end", header)


if __name__ == "__main__":
    main()
