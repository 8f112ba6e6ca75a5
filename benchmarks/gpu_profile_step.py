"""Where a decode step's GPU time goes: kernel count and the top kernels of one eager step.

    python benchmarks/gpu_profile_step.py [--batch 8]
"""
import argparse

import torch

from ttsplan.engine.config import ModelConfig
from ttsplan.engine.kv_cache import KVCache
from ttsplan.engine.model import Transformer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=8)
    n = ap.parse_args().batch
    cfg = ModelConfig.shipped("qwen2.5-1.5b")
    model = Transformer.random(cfg, "cuda", torch.bfloat16)
    cache = KVCache.allocate(cfg, 1024, n, 136, torch.bfloat16, torch.device("cuda"))
    model.prefill(torch.randint(0, cfg.vocab_size, (1024,), device="cuda"), cache)
    cache.lens.fill_(128)
    tokens = torch.randint(0, cfg.vocab_size, (n, 1), device="cuda")
    for _ in range(3):
        model.decode(tokens, cache, static=True)
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        model.decode(tokens, cache, static=True)
        torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA]
    total_us = sum(e.self_device_time_total for e in events)
    launches = sum(e.count for e in events)
    print(f"batch {n}: {launches} kernels, {total_us / 1e3:.3f} ms of GPU time in one step "
          f"({launches / cfg.num_layers:.0f} per layer)")
    for e in sorted(events, key=lambda e: -e.self_device_time_total)[:12]:
        print(f"{e.self_device_time_total / 1e3:8.3f} ms  x{e.count:4d}  {e.key[:90]}")


if __name__ == "__main__":
    main()
