"""GPU benchmarks in one run (the device machine): relay attention alone, the decode step, end to end.

    python benchmarks/gpu_bench.py [--quick]

Random weights of the Qwen2.5 shapes (timings do not depend on weight values).  Every table
carries the copy bandwidth measured in this same run, and each baseline is measured beside.
"""
import argparse
import functools
import json
import statistics
import time

import torch
import torch.nn.functional as F
import triton.testing
from rich.table import Table

from common import emit, today
from ttsplan.engine.config import ModelConfig, config_path
from ttsplan.engine.cuda_graphs import GraphDecoder
from ttsplan.engine.generate import generate, step_bytes
from ttsplan.engine.kv_cache import KVCache
from ttsplan.engine.model import Transformer
from ttsplan.engine.sampling import SamplingParams
from ttsplan.hardware import copy_bandwidth
from ttsplan.kernels import relay_attention_ref
from ttsplan.kernels.relay_attention_triton import Tuning, relay_attention_triton, use_plain

DEV = torch.device("cuda")
BF16 = torch.bfloat16


@functools.cache
def matmul_peak() -> float:
    """FLOP/s of a bf16 8192^3 matmul on this device, measured once in this run: the compute floor's peak."""
    a, b = (torch.randn(8192, 8192, device=DEV, dtype=BF16) for _ in range(2))
    ms = triton.testing.do_bench(lambda: a @ b, warmup=25, rep=200, return_mode="median")
    return 2 * 8192 ** 3 / (ms * 1e-3)


HEADS = {"qwen2.5-1.5b (12/2)": (12, 2), "qwen2.5-7b (28/4)": (28, 4), "32/8 (the H100 SDPA baseline's)": (32, 8)}


def bench_ms(fn) -> float:
    """Median ms of fn replayed from a CUDA graph: kernel time, not Python launch overhead."""
    return triton.testing.do_bench_cudagraph(fn, rep=100, return_mode="median")


def sdpa_on_copies(q, pk, pv, sk, sv):
    """What an engine without prefix sharing runs: every branch holds its own copy of the prompt KV."""
    n, _, nq, _ = q.shape
    kc = torch.cat([pk.unsqueeze(0).expand(n, -1, -1, -1), sk], dim=2)
    vc = torch.cat([pv.unsqueeze(0).expand(n, -1, -1, -1), sv], dim=2)
    total = kc.shape[2]
    mask = None
    if nq > 1:
        mask = torch.arange(total, device=DEV).view(1, -1) <= (total - nq + torch.arange(nq, device=DEV)).view(-1, 1)
    return lambda: F.scaled_dot_product_attention(q, kc, vc, attn_mask=mask, enable_gqa=True)


def attention_inputs(H: int, hkv: int, lp: int, n: int, nq: int, own: int = 512, D: int = 128):
    q = torch.randn(n, H, nq, D, device=DEV, dtype=BF16)
    pk, pv = (torch.randn(hkv, lp, D, device=DEV, dtype=BF16) for _ in range(2))
    sk, sv = (torch.randn(n, hkv, own, D, device=DEV, dtype=BF16) for _ in range(2))
    return q, pk, pv, sk, sv, torch.full((n,), own, device=DEV), D ** -0.5


def attention_floors(args, bw: float) -> tuple[int, float, float]:
    """(bytes, memory floor ms, compute floor ms): prefix KV once + each branch's own KV once (+ q, out)
    at the copy bandwidth; QK^T and PV over every visible key at the bf16 matmul peak."""
    q, pk, _, sk, _, lens, _ = args
    n, H, nq, D = q.shape
    nbytes = (pk.numel() + sk.numel()) * 2 * 2 + 2 * q.numel() * 2
    flops = 4 * n * H * nq * (pk.shape[1] + int(lens[0])) * D
    return nbytes, nbytes / bw * 1e3, flops / matmul_peak() * 1e3


def attention_table(bw: float, quick: bool):
    table = Table(title="relay attention alone (bf16, head dim 128, 512 own tokens per branch); "
                        "auto = the mode the engine picks (plain at N = 1)")
    for col in ("heads", "prefix", "N", "q", "auto ms", "mode", "GB/s", "x mem floor", "x roofline",
                "plain ms", "auto/plain", "SDPA copies ms", "vs SDPA", "torch relay ms", "vs torch relay"):
        table.add_column(col, justify="right")
    for name, (H, hkv) in HEADS.items():
        assets_shape = name.startswith("32/8")
        for lp in (4096, 16384) if assets_shape else (1024, 4096, 16384):
            for n in (1, 64) if assets_shape else (1, 8, 32, 64, 128):
                for nq in (1,) if assets_shape or quick else (1, 5):
                    args = attention_inputs(H, hkv, lp, n, nq)
                    t_auto = bench_ms(lambda: relay_attention_triton(*args))
                    t_plain = bench_ms(lambda: relay_attention_triton(*args, plain=True))
                    t_ref = bench_ms(lambda: relay_attention_ref(*args))
                    t_sdpa = bench_ms(sdpa_on_copies(*args[:5]))
                    nbytes, mem_ms, flop_ms = attention_floors(args, bw)
                    table.add_row(name, str(lp), str(n), str(nq), f"{t_auto:.4f}", "plain" if use_plain(n, lp) else "relay",
                                  f"{nbytes / t_auto / 1e6:.0f}", f"{t_auto / mem_ms:.2f}",
                                  f"{t_auto / max(mem_ms, flop_ms):.2f}", f"{t_plain:.4f}", f"{t_auto / t_plain:.2f}",
                                  f"{t_sdpa:.4f}", f"{t_sdpa / t_auto:.1f}x", f"{t_ref:.4f}", f"{t_ref / t_auto:.1f}x")
    return table


def sweep_table(bw: float):
    """Median time of each launch shape on representative cases, to choose Tuning's defaults."""
    cases = [("12/2", 12, 2, 16384, 64, 1), ("28/4", 28, 4, 16384, 64, 1), ("32/8", 32, 8, 16384, 64, 1),
             ("12/2", 12, 2, 4096, 8, 1), ("28/4", 28, 4, 4096, 32, 5), ("12/2", 12, 2, 1024, 1, 1),
             ("28/4", 28, 4, 16384, 1, 1)]
    tunings = [Tuning(block_m_max=bm, block_n=bn, waves=w, num_warps=nw)
               for bm in (64, 128) for bn in (32, 64) for w in (1, 2, 4) for nw in (4,)]
    table = Table(title="launch-shape sweep: ms (x memory floor); * = best per case")
    table.add_column("block_m/block_n/waves/warps")
    results = {}
    for name, H, hkv, lp, n, nq in cases:
        table.add_column(f"{name} {lp // 1024}k N={n} q={nq}", justify="right")
        args = attention_inputs(H, hkv, lp, n, nq)
        _, mem_ms, _ = attention_floors(args, bw)
        for t in tunings:
            results[t, name, lp, n] = (bench_ms(lambda: relay_attention_triton(*args, tuning=t)), mem_ms)
    for t in tunings:
        cells = []
        for name, _, _, lp, n, _ in cases:
            ms, mem_ms = results[t, name, lp, n]
            best = min(v[0] for k, v in results.items() if k[1:] == (name, lp, n))
            cells.append(f"{ms:.4f} ({ms / mem_ms:.1f}){' *' if ms == best else ''}")
        table.add_row(f"{t.block_m_max}/{t.block_n}/{t.waves}/{t.num_warps}", *cells)
    plain = Table(title="plain vs relay at short prefixes, 12/2 heads, q = 1 (ms)")
    for col in ("prefix", "N", "relay ms", "plain ms", "relay/plain"):
        plain.add_column(col, justify="right")
    for lp in (64, 128, 256, 512, 1024):
        for n in (2, 8, 64):
            args = attention_inputs(12, 2, lp, n, 1)
            t_r = bench_ms(lambda: relay_attention_triton(*args, plain=False))
            t_p = bench_ms(lambda: relay_attention_triton(*args, plain=True))
            plain.add_row(str(lp), str(n), f"{t_r:.4f}", f"{t_p:.4f}", f"{t_r / t_p:.2f}")
    return table, plain


def decode_step_table(bw: float):
    cfg = ModelConfig.shipped("qwen2.5-1.5b")
    model = Transformer.random(cfg, DEV, BF16)
    prompt, own = 1024, 128
    table = Table(title="decode step, qwen2.5-1.5b shape, bf16, 1k-token prompt, 128 own tokens per branch; "
                        "graph = forward + greedy pick, as replayed by the engine")
    for col in ("batch", "graph ms", "x floor", "GB/s achieved", "floor ms", "+ top-p ms", "eager ms"):
        table.add_column(col, justify="right")
    for n in (1, 2, 4, 8, 16, 32, 64):
        cache = KVCache.allocate(cfg, prompt, n, own + 8, BF16, DEV)
        model.prefill(torch.randint(0, cfg.vocab_size, (prompt,), device=DEV), cache)
        cache.lens.fill_(own)
        tokens, u = torch.randint(0, cfg.vocab_size, (n, 1), device=DEV), torch.rand(n, device=DEV)
        times = []
        for params in (SamplingParams(temperature=0), SamplingParams(temperature=0.7, top_p=0.95)):
            step = GraphDecoder(model, cache, n, params)
            times.append(triton.testing.do_bench(lambda: step(tokens, u), warmup=10, rep=100, return_mode="median"))
        t_eager = triton.testing.do_bench(lambda: model.decode(tokens, cache), warmup=5, rep=50, return_mode="median")
        nbytes = step_bytes(cfg, prompt, n * (own + 1), BF16)
        floor_ms = nbytes / bw * 1e3
        table.add_row(str(n), f"{times[0]:.3f}", f"{times[0] / floor_ms:.2f}", f"{nbytes / times[0] / 1e6:.0f}",
                      f"{floor_ms:.3f}", f"{times[1] - times[0]:.3f}", f"{t_eager:.3f}")
    return table, model, cfg


def end_to_end_table(model, cfg):
    from transformers import AutoConfig, AutoModelForCausalLM
    n, new, prompt_len = 8, 256, 512
    prompt = torch.randint(0, cfg.vocab_size, (prompt_len,)).tolist()
    params = SamplingParams(temperature=0.7, top_p=0.95, max_new_tokens=new, ignore_eos=True)
    generate(model, prompt, n, SamplingParams(max_new_tokens=8, ignore_eos=True), set())  # warm up kernels
    ours = []
    for seed in range(3):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        branches, stats = generate(model, prompt, n, SamplingParams(**{**params.__dict__, "seed": seed}), set())
        torch.cuda.synchronize()
        ours.append(time.perf_counter() - t0)
        assert all(len(b.tokens) == new for b in branches)
    hf_cfg = AutoConfig.for_model(**json.loads(config_path("qwen2.5-1.5b").read_text()))
    hf = AutoModelForCausalLM.from_config(hf_cfg, dtype=BF16).to(DEV).eval()
    ids = torch.tensor([prompt], device=DEV)
    with torch.inference_mode():
        hf.generate(ids, do_sample=True, max_new_tokens=4, num_return_sequences=n)  # warm up
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = hf.generate(ids, do_sample=True, temperature=0.7, top_p=0.95, num_return_sequences=n,
                          max_new_tokens=new, min_new_tokens=new)
        torch.cuda.synchronize()
        t_hf = time.perf_counter() - t0
    assert out.shape == (n, prompt_len + new)
    t_ours = statistics.median(ours)
    table = Table(title=f"end to end, qwen2.5-1.5b shape bf16, {prompt_len}-token prompt, {n} branches x {new} new tokens")
    for col in ("engine", "wall s", "prefill s", "graph capture s", "decode tok/s", "speedup"):
        table.add_column(col, justify="right")
    table.add_row("ttsplan (relay + CUDA graphs)", f"{t_ours:.2f}", f"{stats.prefill_s:.3f}", f"{stats.capture_s:.3f}",
                  f"{stats.tokens_per_s:.0f}", f"{t_hf / t_ours:.1f}x")
    table.add_row("HF transformers generate", f"{t_hf:.2f}", "-", "-", f"{n * new / t_hf:.0f}", "1.0x")
    return table


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", choices=["sweep", "attention", "decode", "e2e"], nargs="*")
    args = ap.parse_args()
    only = set(args.only or ["attention", "decode", "e2e"])
    bw = copy_bandwidth(DEV, nbytes=1 << 30)
    header = f"{torch.cuda.get_device_name()}, copy bandwidth {bw / 1e12:.2f} TB/s, bf16 matmul {matmul_peak() / 1e12:.0f} TFLOP/s (both measured in this run), torch {torch.__version__}, triton {triton.__version__}, {today()}"
    print(header)
    if "sweep" in only:
        sweep, plain = sweep_table(bw)
        emit(sweep, "gpu_attention_sweep", header)
        emit(plain, "gpu_plain_vs_relay", header)
    if "attention" in only:
        emit(attention_table(bw, args.quick), "gpu_attention", header)
    if only & {"decode", "e2e"}:
        table, model, cfg = decode_step_table(bw)
        if "decode" in only:
            emit(table, "gpu_decode_step", header)
        if "e2e" in only:
            emit(end_to_end_table(model, cfg), "gpu_end_to_end", header)


if __name__ == "__main__":
    main()
