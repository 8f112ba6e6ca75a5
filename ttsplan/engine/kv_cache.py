"""The two-level KV cache: the prompt's KV stored once, each branch's own tokens in its own row.

  prefix_k/v[layer]  [Hkv, Lp, D]        written once by prefill, shared by every branch
  suffix_k/v[layer]  [B, Hkv, S, D]      row b holds branch b's generated tokens
  lens               [B]                 committed tokens per row

Rows 0..live-1 are the live branches; a finished branch is compacted out so that decode
always reads a contiguous batch.  Speculative decoding writes q tokens past lens and then
commits only the accepted ones (`lens[b] += accepted[b]`): rejected KV is simply ignored.
"""
from dataclasses import dataclass

import psutil
import torch

from ttsplan.engine.config import ModelConfig
from ttsplan.errors import TTSPlanError


def free_memory_bytes(device: torch.device) -> int:
    """Bytes an allocation can take: on a GPU the device's free memory and the blocks torch's caching
    allocator holds unused (freed tensors it keeps for reuse)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0] + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return psutil.virtual_memory().available


def kv_cache_bytes(cfg: ModelConfig, prefix_len: int, branches: int, suffix_capacity: int, dtype: torch.dtype) -> int:
    per_token = cfg.kv_token_bytes(torch.finfo(dtype).bits // 8)
    return per_token * (prefix_len + branches * suffix_capacity)


@dataclass
class KVCache:
    prefix_k: list[torch.Tensor]
    prefix_v: list[torch.Tensor]
    suffix_k: list[torch.Tensor]
    suffix_v: list[torch.Tensor]
    lens: torch.Tensor
    live: int

    @property
    def prefix_len(self) -> int:
        return self.prefix_k[0].shape[1]

    @property
    def capacity(self) -> int:
        return self.suffix_k[0].shape[2]

    @classmethod
    def allocate(cls, cfg: ModelConfig, prefix_len: int, branches: int, suffix_capacity: int,
                 dtype: torch.dtype, device: torch.device) -> "KVCache":
        """Allocate, after checking the whole cache fits in free memory (refused before any allocation)."""
        need = kv_cache_bytes(cfg, prefix_len, branches, suffix_capacity, dtype)
        free = free_memory_bytes(device)
        if need > 0.9 * free:
            raise TTSPlanError(
                f"KV cache for {branches} branches x {suffix_capacity} new tokens on a {prefix_len}-token prompt "
                f"needs {need / 2**30:.2f} GiB but only {free / 2**30:.2f} GiB is free on {device}: "
                "use fewer branches or fewer new tokens")
        hkv, d, L = cfg.num_kv_heads, cfg.head_dim, cfg.num_layers

        def zeros(*shape):
            return [torch.zeros(*shape, dtype=dtype, device=device) for _ in range(L)]

        return cls(zeros(hkv, prefix_len, d), zeros(hkv, prefix_len, d),
                   zeros(branches, hkv, suffix_capacity, d), zeros(branches, hkv, suffix_capacity, d),
                   torch.zeros(branches, dtype=torch.long, device=device), branches)

    def keep_rows(self, keep: list[int], upto: int | None = None) -> None:
        """Compact: the live rows become `keep` (indices of current live rows, ascending), in that order.
        Only the rows that move are copied, and only their first `upto` tokens (all of them: None)."""
        moved = [(dst, src) for dst, src in enumerate(keep) if dst != src]
        if moved:
            dst, src = (torch.tensor(x, dtype=torch.long, device=self.lens.device) for x in zip(*moved))
            span = slice(0, upto)
            for buf in (*self.suffix_k, *self.suffix_v):
                buf[dst, :, span] = buf[src, :, span]
            self.lens[dst] = self.lens[src]
        self.live = len(keep)
