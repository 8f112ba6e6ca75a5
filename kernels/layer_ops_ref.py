"""The decode layer's elementwise steps in plain PyTorch: the reference for layer_ops_triton.py
and the CPU path (HF transformers' formulas and roundings, so the engine matches HF token for token).

  add_rms_norm     x += y, then RMSNorm of x (float32 statistics, cast, then scale)
  silu_mul         SwiGLU's silu(gate) * up of a fused [.., 2F] gate-up output
  apply_rope       rotary embedding of heads [B, heads, T, D] by cos, sin [B, T, D]
  rope_and_store   a fused qkv projection [B, T, (H + 2 Hkv) D] -> RoPE'd q [B, H, T, D], with k, v
                   written into a branch KV cache [B, Hkv, S, D] at positions lens[b] .. lens[b] + T - 1
"""
import torch
import torch.nn.functional as F


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    xf = x.float()
    return weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def add_rms_norm(x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    x = x + y
    return x, rms_norm(x, weight, eps)


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


def split_heads(qkv: torch.Tensor, num_heads: int, num_kv_heads: int, cos: torch.Tensor, sin: torch.Tensor):
    """qkv [B, T, (H + 2 Hkv) D] -> q [B, H, T, D], k, v [B, Hkv, T, D], RoPE on q and k in one pass."""
    B, T, width = qkv.shape
    D = width // (num_heads + 2 * num_kv_heads)
    qk, v = qkv.view(B, T, -1, D).transpose(1, 2).split([num_heads + num_kv_heads, num_kv_heads], dim=1)
    q, k = apply_rope(qk, cos, sin).split([num_heads, num_kv_heads], dim=1)
    return q, k, v


def rope_and_store(qkv, cos, sin, cache_k, cache_v, lens, num_heads: int, num_kv_heads: int) -> torch.Tensor:
    q, k, v = split_heads(qkv, num_heads, num_kv_heads, cos, sin)
    B, _, T, _ = k.shape
    pos = lens[:B].view(B, 1) + torch.arange(T, device=k.device).view(1, T)
    rows = torch.arange(B, device=k.device).view(B, 1)
    cache_k[rows, :, pos] = k.transpose(1, 2)
    cache_v[rows, :, pos] = v.transpose(1, 2)
    return q
