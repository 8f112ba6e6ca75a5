"""RelayAttention in Triton: two launches, the reference in relay_attention_ref.py.

1. prefix kernel, grid (splits, Hkv, row blocks): the rows are every branch's queries that read
   KV head h (B * group * q of them), so each prefix tile is loaded once per split for the whole
   batch; the prefix is split flash-decoding style so a long prefix fills the GPU.  Writes float32
   partial outputs and log-sum-exps per split.
2. suffix kernel, grid (B, Hkv): each branch's queries over its own KV (causal within the q new
   tokens), then the exact float32 log-sum-exp merge with the prefix partials, fused, written in
   the query dtype.
Same shapes and semantics as the reference: q [B, H, q, D], prefix_k/v [Hkv, Lp, D],
suffix_k/v [B, Hkv, S, D], suffix_lens [B].
"""
import functools

import torch
import triton
import triton.language as tl


@triton.jit
def _prefix_kernel(Q, K, V, O, L, sq_b, sq_h, sq_t, sk_h, sk_n, sv_h, sv_n,
                   so_s, so_b, so_h, so_t, sl_s, sl_b, sl_h,
                   rows, prefix_len, chunk, scale,
                   GROUP: tl.constexpr, NQ: tl.constexpr, D: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    split, kvh, mblock = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    r = mblock * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = r < rows
    b, j, i = r // (GROUP * NQ), (r // NQ) % GROUP, r % NQ
    h = kvh * GROUP + j
    d = tl.arange(0, D)
    q = tl.load(Q + b[:, None] * sq_b + h[:, None] * sq_h + i[:, None] * sq_t + d[None, :], mask=row_ok[:, None], other=0.0)
    m = tl.full([BLOCK_M], float("-inf"), tl.float32)
    s = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D], tl.float32)
    start = split * chunk
    end = tl.minimum(start + chunk, prefix_len)
    for n0 in range(start, end, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        n_ok = n < end
        k = tl.load(K + kvh * sk_h + n[:, None] * sk_n + d[None, :], mask=n_ok[:, None], other=0.0)
        v = tl.load(V + kvh * sv_h + n[:, None] * sv_n + d[None, :], mask=n_ok[:, None], other=0.0)
        x = tl.dot(q, tl.trans(k)) * scale
        x = tl.where(n_ok[None, :], x, float("-inf"))
        m_new = tl.maximum(m, tl.max(x, 1))
        alpha = tl.exp(m - m_new)
        p = tl.exp(x - m_new[:, None])
        s = s * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m = m_new
    lse = tl.where(s > 0, m + tl.log(s), float("-inf"))
    out = acc / tl.where(s > 0, s, 1.0)[:, None]
    tl.store(O + split * so_s + b[:, None] * so_b + h[:, None] * so_h + i[:, None] * so_t + d[None, :], out, mask=row_ok[:, None])
    tl.store(L + split * sl_s + b * sl_b + h * sl_h + i, lse, mask=row_ok)


@triton.jit
def _suffix_merge_kernel(Q, K, V, LENS, PO, PL, OUT, sq_b, sq_h, sq_t, sk_b, sk_h, sk_n, sv_b, sv_h, sv_n,
                         so_s, so_b, so_h, so_t, sl_s, sl_b, sl_h, sout_b, sout_h, sout_t,
                         splits, scale,
                         GROUP: tl.constexpr, NQ: tl.constexpr, D: tl.constexpr,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    b, kvh = tl.program_id(0), tl.program_id(1)
    r = tl.arange(0, BLOCK_M)
    row_ok = r < GROUP * NQ
    j, i = r // NQ, r % NQ
    h = kvh * GROUP + j
    d = tl.arange(0, D)
    q = tl.load(Q + b * sq_b + h[:, None] * sq_h + i[:, None] * sq_t + d[None, :], mask=row_ok[:, None], other=0.0)
    length = tl.load(LENS + b)
    qpos = length - NQ + i  # suffix position of each query row
    m = tl.full([BLOCK_M], float("-inf"), tl.float32)
    s = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D], tl.float32)
    for n0 in range(0, length, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        n_ok = n < length
        k = tl.load(K + b * sk_b + kvh * sk_h + n[:, None] * sk_n + d[None, :], mask=n_ok[:, None], other=0.0)
        v = tl.load(V + b * sv_b + kvh * sv_h + n[:, None] * sv_n + d[None, :], mask=n_ok[:, None], other=0.0)
        x = tl.dot(q, tl.trans(k)) * scale
        x = tl.where(n_ok[None, :] & (n[None, :] <= qpos[:, None]), x, float("-inf"))
        m_new = tl.maximum(m, tl.max(x, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp(m - m_safe)
        p = tl.exp(x - m_safe[:, None])
        s = s * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m = m_new
    # Merge the suffix partial with every prefix split by log-sum-exp, in float32.
    lse = tl.where(s > 0, m + tl.log(s), float("-inf"))
    out = acc / tl.where(s > 0, s, 1.0)[:, None]
    for sp in range(0, splits):
        pl = tl.load(PL + sp * sl_s + b * sl_b + h * sl_h + i, mask=row_ok, other=float("-inf"))
        po = tl.load(PO + sp * so_s + b * so_b + h[:, None] * so_h + i[:, None] * so_t + d[None, :], mask=row_ok[:, None], other=0.0)
        new = tl.maximum(lse, pl)
        new_safe = tl.where(new == float("-inf"), 0.0, new)
        wa = tl.exp(lse - new_safe)
        wb = tl.exp(pl - new_safe)
        tot = wa + wb
        out = (out * wa[:, None] + po * wb[:, None]) / tl.where(tot > 0, tot, 1.0)[:, None]
        lse = tl.where(tot > 0, new_safe + tl.log(tot), float("-inf"))
    tl.store(OUT + b * sout_b + h[:, None] * sout_h + i[:, None] * sout_t + d[None, :], out.to(OUT.dtype.element_ty), mask=row_ok[:, None])


@functools.cache
def _multiprocessors() -> int:
    return torch.cuda.get_device_properties(0).multi_processor_count if torch.cuda.is_available() else 8


def _num_splits(prefix_len: int, programs_per_split: int, block_n: int) -> int:
    """Enough prefix splits to give the GPU ~2 waves of programs, at least 4 tiles of keys each."""
    if prefix_len == 0:
        return 0
    sms = _multiprocessors()
    want = max(1, (2 * sms) // max(programs_per_split, 1))
    return max(1, min(want, triton.cdiv(prefix_len, 4 * block_n)))


def relay_attention_triton(q, prefix_k, prefix_v, suffix_k, suffix_v, suffix_lens, scale: float,
                           splits: int | None = None, out: torch.Tensor | None = None):
    B, H, nq, D = q.shape
    for t in (q, prefix_k, prefix_v, suffix_k, suffix_v):
        assert t.stride(-1) == 1, "the head dim must be contiguous"
    hkv, lp = prefix_k.shape[0], prefix_k.shape[1]
    group = H // hkv
    rows = B * group * nq
    block_m = max(16, min(64, triton.next_power_of_2(rows)))
    block_n = 64 if D <= 64 else 32
    mblocks = triton.cdiv(rows, block_m)
    splits = _num_splits(lp, hkv * mblocks, block_n) if splits is None else splits
    part_o = torch.empty(max(splits, 1), B, H, nq, D, device=q.device, dtype=torch.float32)
    part_l = torch.empty(max(splits, 1), B, H, nq, device=q.device, dtype=torch.float32)
    if splits:
        chunk = triton.cdiv(triton.cdiv(lp, splits), block_n) * block_n
        splits = triton.cdiv(lp, chunk)
        _prefix_kernel[(splits, hkv, mblocks)](
            q, prefix_k, prefix_v, part_o, part_l, q.stride(0), q.stride(1), q.stride(2),
            prefix_k.stride(0), prefix_k.stride(1), prefix_v.stride(0), prefix_v.stride(1),
            *part_o.stride()[:4], *part_l.stride()[:3], rows, lp, chunk, scale,
            GROUP=group, NQ=nq, D=D, BLOCK_M=block_m, BLOCK_N=block_n)
    out = torch.empty_like(q) if out is None else out
    _suffix_merge_kernel[(B, hkv)](
        q, suffix_k, suffix_v, suffix_lens, part_o, part_l, out, q.stride(0), q.stride(1), q.stride(2),
        suffix_k.stride(0), suffix_k.stride(1), suffix_k.stride(2), suffix_v.stride(0), suffix_v.stride(1), suffix_v.stride(2),
        *part_o.stride()[:4], *part_l.stride()[:3], out.stride(0), out.stride(1), out.stride(2),
        splits, scale, GROUP=group, NQ=nq, D=D, BLOCK_M=max(16, triton.next_power_of_2(group * nq)), BLOCK_N=block_n)
    return out
