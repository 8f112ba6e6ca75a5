"""Attention and layer kernels for the relay engine (installed as `ttsplan.kernels`).

Each entry point dispatches: the Triton kernel on a GPU, the plain-PyTorch reference (the one
every faster kernel is checked against, and the CPU path) elsewhere.  On a GPU, relay attention
picks its plain mode by itself at one branch or a short prefix (`use_plain`).
"""
import torch

from ttsplan.kernels import layer_ops_ref
from ttsplan.kernels.relay_attention_ref import merge_by_lse, relay_attention_ref


def _layer_ops(x: torch.Tensor):
    """The module holding the layer kernels for x's device."""
    if x.is_cuda:
        from ttsplan.kernels import layer_ops_triton
        return layer_ops_triton
    return layer_ops_ref


def relay_attention(q, prefix_k, prefix_v, suffix_k, suffix_v, suffix_lens, scale: float,
                    out: torch.Tensor | None = None) -> torch.Tensor:
    if q.is_cuda:
        from ttsplan.kernels.relay_attention_triton import relay_attention_triton
        return relay_attention_triton(q, prefix_k, prefix_v, suffix_k, suffix_v, suffix_lens, scale, out=out)
    result = relay_attention_ref(q, prefix_k, prefix_v, suffix_k, suffix_v, suffix_lens, scale)
    return result if out is None else out.copy_(result)


def add_rms_norm(x, y, weight, eps: float):
    """(x + y, RMSNorm(x + y) * weight); on a GPU x is updated in place."""
    return _layer_ops(x).add_rms_norm(x, y, weight, eps)


def silu_mul(gate_up):
    return _layer_ops(gate_up).silu_mul(gate_up)


def rope_and_store(qkv, cos, sin, cache_k, cache_v, lens, num_heads: int, num_kv_heads: int):
    return _layer_ops(qkv).rope_and_store(qkv, cos, sin, cache_k, cache_v, lens, num_heads, num_kv_heads)


__all__ = ["add_rms_norm", "merge_by_lse", "relay_attention", "relay_attention_ref", "rope_and_store", "silu_mul"]
