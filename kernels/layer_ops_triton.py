"""The decode layer's elementwise steps in Triton, one launch each where PyTorch needs several;
the reference (same roundings) is layer_ops_ref.py.

  add_rms_norm    residual add (in place) and RMSNorm, one program per row
  silu_mul        silu(gate) * up, reading the fused gate-up output once
  rope_and_store  RoPE on q and k, q written out, k and v written straight into the branch KV cache
"""
import torch
import triton
import triton.language as tl


@triton.jit
def _add_rms_norm_kernel(X, Y, W, OUT, sx, sy, so, E, eps, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    c = tl.arange(0, BLOCK)
    ok = c < E
    x = tl.load(X + row * sx + c, mask=ok, other=0.0)
    x = (x.to(tl.float32) + tl.load(Y + row * sy + c, mask=ok, other=0.0).to(tl.float32)).to(x.dtype)
    tl.store(X + row * sx + c, x, mask=ok)
    xf = x.to(tl.float32)
    normed = (xf * tl.rsqrt(tl.sum(xf * xf, 0) / E + eps)).to(X.dtype.element_ty)
    w = tl.load(W + c, mask=ok, other=0.0)
    tl.store(OUT + row * so + c, (w.to(tl.float32) * normed.to(tl.float32)).to(OUT.dtype.element_ty), mask=ok)


def add_rms_norm(x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """x += y (x is updated in place and returned), and RMSNorm(x) * weight."""
    E = x.shape[-1]
    x2, y2 = x.view(-1, E), y.reshape(-1, E)
    out = torch.empty_like(x2)
    _add_rms_norm_kernel[(x2.shape[0],)](x2, y2, weight, out, x2.stride(0), y2.stride(0), out.stride(0), E, eps,
                                         BLOCK=triton.next_power_of_2(E), num_warps=4)
    return x, out.view(x.shape)


@triton.jit
def _silu_mul_kernel(GU, OUT, sgu, so, F, BLOCK: tl.constexpr):
    row, blk = tl.program_id(0), tl.program_id(1)
    c = blk * BLOCK + tl.arange(0, BLOCK)
    ok = c < F
    g = tl.load(GU + row * sgu + c, mask=ok, other=0.0).to(tl.float32)
    u = tl.load(GU + row * sgu + F + c, mask=ok, other=0.0)
    act = (g / (1.0 + tl.exp(-g))).to(u.dtype)
    tl.store(OUT + row * so + c, (act.to(tl.float32) * u.to(tl.float32)).to(OUT.dtype.element_ty), mask=ok)


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    F2 = gate_up.shape[-1]
    gu = gate_up.reshape(-1, F2)
    out = torch.empty(gu.shape[0], F2 // 2, device=gu.device, dtype=gu.dtype)
    BLOCK = 1024
    _silu_mul_kernel[(gu.shape[0], triton.cdiv(F2 // 2, BLOCK))](gu, out, gu.stride(0), out.stride(0), F2 // 2, BLOCK=BLOCK)
    return out.view(*gate_up.shape[:-1], F2 // 2)


@triton.jit
def _rope_and_store_kernel(QKV, COS, SIN, Q, K, V, LENS, s_qkv, s_cs, sq_b, sq_h, sq_t,
                           sk_b, sk_h, sk_n, sv_b, sv_h, sv_n, T, H: tl.constexpr, HKV: tl.constexpr,
                           D: tl.constexpr):
    """Program (token bt, head): heads 0..H-1 are query heads, H..H+HKV-1 key heads (which also copy v)."""
    bt, head = tl.program_id(0), tl.program_id(1)
    b, t = bt // T, bt % T
    d = tl.arange(0, D)
    half: tl.constexpr = D // 2
    base = QKV + bt * s_qkv + head * D
    x = tl.load(base + d)
    rot = tl.load(base + (d + half) % D)
    rot = tl.where(d < half, -rot, rot)  # rotate_half
    cos = tl.load(COS + bt * s_cs + d)
    sin = tl.load(SIN + bt * s_cs + d)
    a = (x.to(tl.float32) * cos.to(tl.float32)).to(x.dtype)
    r = (rot.to(tl.float32) * sin.to(tl.float32)).to(x.dtype)
    y = (a.to(tl.float32) + r.to(tl.float32)).to(x.dtype)
    if head < H:
        tl.store(Q + b * sq_b + head * sq_h + t * sq_t + d, y)
    else:
        kvh = head - H
        pos = tl.load(LENS + b) + t
        tl.store(K + b * sk_b + kvh * sk_h + pos * sk_n + d, y)
        v = tl.load(QKV + bt * s_qkv + (H + HKV + kvh) * D + d)
        tl.store(V + b * sv_b + kvh * sv_h + pos * sv_n + d, v)


def rope_and_store(qkv, cos, sin, cache_k, cache_v, lens, num_heads: int, num_kv_heads: int) -> torch.Tensor:
    B, T, width = qkv.shape
    D = width // (num_heads + 2 * num_kv_heads)
    q = torch.empty(B, num_heads, T, D, device=qkv.device, dtype=qkv.dtype)
    qkv2, cos2, sin2 = qkv.reshape(B * T, width), cos.reshape(B * T, D), sin.reshape(B * T, D)
    _rope_and_store_kernel[(B * T, num_heads + num_kv_heads)](
        qkv2, cos2, sin2, q, cache_k, cache_v, lens, qkv2.stride(0), cos2.stride(0), *q.stride()[:3],
        *cache_k.stride()[:3], *cache_v.stride()[:3], T, H=num_heads, HKV=num_kv_heads, D=D, num_warps=1)
    return q
