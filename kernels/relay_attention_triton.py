"""RelayAttention in Triton: three launches; the reference is relay_attention_ref.py.

1. prefix kernel, grid (prefix splits, Hkv, row blocks): the rows are every branch's queries
   that read KV head h (B * group * q of them), so each prefix tile is loaded once per split for
   the whole batch; the prefix is split flash-decoding style so a long prefix fills the GPU.
2. suffix kernel, grid (B, Hkv, suffix splits): each branch's queries over its own KV, causal
   within the q new tokens, split along the keys so that few branches still fill the GPU.
3. merge kernel, grid (row blocks): the exact float32 log-sum-exp merge of all partials,
   written in the query dtype.
Partials are float32 [splits, B, H, q, D] outputs and [splits, B, H, q] log-sum-exps; an empty
split writes lse = -inf.  Same shapes and semantics as the reference: q [B, H, q, D],
prefix_k/v [Hkv, Lp, D], suffix_k/v [B, Hkv, S, D], suffix_lens [B].
"""
import functools

import torch
import triton
import triton.language as tl


@triton.jit
def _attend_keys(q, Kp, Vp, sk_n, sv_n, start, end, qpos, scale, CAUSAL: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr):
    """Flash attention of q [BLOCK_M, D] over keys start..end-1 at Kp / Vp (row strides sk_n, sv_n),
    masked causally against qpos when CAUSAL.  Returns the running (max, sum, unnormalized output)."""
    d = tl.arange(0, D)
    m = tl.full([BLOCK_M], float("-inf"), tl.float32)
    s = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D], tl.float32)
    for n0 in range(start, end, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        n_ok = n < end
        k = tl.load(Kp + n[:, None] * sk_n + d[None, :], mask=n_ok[:, None], other=0.0)
        v = tl.load(Vp + n[:, None] * sv_n + d[None, :], mask=n_ok[:, None], other=0.0)
        visible = n_ok[None, :]
        if CAUSAL:
            visible = visible & (n[None, :] <= qpos[:, None])
        x = tl.where(visible, tl.dot(q, tl.trans(k)) * scale, float("-inf"))
        m_new = tl.maximum(m, tl.max(x, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp(m - m_safe)
        p = tl.exp(x - m_safe[:, None])
        s = s * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m = m_new
    return m, s, acc


@triton.jit
def _store_partial(O, L, split, b, h, i, row_ok, m, s, acc, so_s, so_b, so_h, so_t, sl_s, sl_b, sl_h, D: tl.constexpr):
    d = tl.arange(0, D)
    lse = tl.where(s > 0, m + tl.log(s), float("-inf"))
    out = acc / tl.where(s > 0, s, 1.0)[:, None]
    tl.store(O + split * so_s + b[:, None] * so_b + h[:, None] * so_h + i[:, None] * so_t + d[None, :], out, mask=row_ok[:, None])
    tl.store(L + split * sl_s + b * sl_b + h * sl_h + i, lse, mask=row_ok)


@triton.jit
def _prefix_kernel(Q, K, V, O, L, sq_b, sq_h, sq_t, sk_h, sk_n, sv_h, sv_n,
                   so_s, so_b, so_h, so_t, sl_s, sl_b, sl_h, rows, prefix_len, chunk, scale,
                   GROUP: tl.constexpr, NQ: tl.constexpr, D: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    split, kvh, mblock = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    r = mblock * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = r < rows
    b, j, i = r // (GROUP * NQ), (r // NQ) % GROUP, r % NQ
    h = kvh * GROUP + j
    d = tl.arange(0, D)
    q = tl.load(Q + b[:, None] * sq_b + h[:, None] * sq_h + i[:, None] * sq_t + d[None, :], mask=row_ok[:, None], other=0.0)
    start = split * chunk
    m, s, acc = _attend_keys(q, K + kvh * sk_h, V + kvh * sv_h, sk_n, sv_n, start, tl.minimum(start + chunk, prefix_len),
                             i, scale, CAUSAL=False, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, D=D)
    _store_partial(O, L, split, b, h, i, row_ok, m, s, acc, so_s, so_b, so_h, so_t, sl_s, sl_b, sl_h, D)


@triton.jit
def _suffix_kernel(Q, K, V, LENS, O, L, sq_b, sq_h, sq_t, sk_b, sk_h, sk_n, sv_b, sv_h, sv_n,
                   so_s, so_b, so_h, so_t, sl_s, sl_b, sl_h, first_split, chunk, scale,
                   GROUP: tl.constexpr, NQ: tl.constexpr, D: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    b, kvh, split = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    r = tl.arange(0, BLOCK_M)
    row_ok = r < GROUP * NQ
    j, i = r // NQ, r % NQ
    h = kvh * GROUP + j
    bb = tl.zeros([BLOCK_M], tl.int32) + b
    d = tl.arange(0, D)
    q = tl.load(Q + b * sq_b + h[:, None] * sq_h + i[:, None] * sq_t + d[None, :], mask=row_ok[:, None], other=0.0)
    length = tl.load(LENS + b)
    qpos = length - NQ + i  # suffix position of each query row
    start = split * chunk
    m, s, acc = _attend_keys(q, K + b * sk_b + kvh * sk_h, V + b * sv_b + kvh * sv_h, sk_n, sv_n, start,
                             tl.minimum(start + chunk, length), qpos, scale,
                             CAUSAL=True, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, D=D)
    _store_partial(O, L, first_split + split, bb, h, i, row_ok, m, s, acc, so_s, so_b, so_h, so_t, sl_s, sl_b, sl_h, D)


@triton.jit
def _merge_kernel(PO, PL, OUT, so_s, sl_s, sout_b, sout_h, sout_t, rows, splits,
                  H: tl.constexpr, NQ: tl.constexpr, D: tl.constexpr, BLOCK_R: tl.constexpr):
    """Partials are contiguous [splits, B, H, q, (D)]: row r = (b * H + h) * q + i."""
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = r < rows
    d = tl.arange(0, D)
    m = tl.full([BLOCK_R], float("-inf"), tl.float32)
    for sp in range(0, splits):
        m = tl.maximum(m, tl.load(PL + sp * sl_s + r, mask=row_ok, other=float("-inf")))
    m_safe = tl.where(m == float("-inf"), 0.0, m)
    total = tl.zeros([BLOCK_R], tl.float32)
    acc = tl.zeros([BLOCK_R, D], tl.float32)
    for sp in range(0, splits):
        w = tl.exp(tl.load(PL + sp * sl_s + r, mask=row_ok, other=float("-inf")) - m_safe)
        o = tl.load(PO + sp * so_s + r[:, None] * D + d[None, :], mask=row_ok[:, None], other=0.0)
        total += w
        acc += w[:, None] * o
    out = acc / tl.where(total > 0, total, 1.0)[:, None]
    b, h, i = r // (H * NQ), (r // NQ) % H, r % NQ
    tl.store(OUT + b[:, None] * sout_b + h[:, None] * sout_h + i[:, None] * sout_t + d[None, :],
             out.to(OUT.dtype.element_ty), mask=row_ok[:, None])


@functools.cache
def _multiprocessors() -> int:
    return torch.cuda.get_device_properties(0).multi_processor_count if torch.cuda.is_available() else 8


def _split(length: int, programs_per_split: int, block_n: int, min_tiles: int) -> tuple[int, int]:
    """(splits, chunk): enough splits to give the GPU one wave of programs, min_tiles tiles each."""
    if length == 0:
        return 0, block_n
    want = max(1, _multiprocessors() // max(programs_per_split, 1))
    splits = max(1, min(want, triton.cdiv(length, min_tiles * block_n)))
    chunk = triton.cdiv(triton.cdiv(length, splits), block_n) * block_n
    return triton.cdiv(length, chunk), chunk


def relay_attention_triton(q, prefix_k, prefix_v, suffix_k, suffix_v, suffix_lens, scale: float,
                           splits: int | None = None, out: torch.Tensor | None = None):
    """splits forces the number of prefix splits (tests); by default both parts split to fill the GPU."""
    B, H, nq, D = q.shape
    for t in (q, prefix_k, prefix_v, suffix_k, suffix_v):
        assert t.stride(-1) == 1, "the head dim must be contiguous"
    hkv, lp, cap = prefix_k.shape[0], prefix_k.shape[1], suffix_k.shape[2]
    group = H // hkv
    rows = B * group * nq
    block_m = max(16, min(64, triton.next_power_of_2(rows)))
    block_n = 64 if D <= 64 else 32
    mblocks = triton.cdiv(rows, block_m)
    if splits is None:
        p_splits, p_chunk = _split(lp, hkv * mblocks, block_n, min_tiles=4)
    else:
        p_chunk = triton.cdiv(triton.cdiv(lp, splits), block_n) * block_n if lp else block_n
        p_splits = triton.cdiv(lp, p_chunk)
    s_splits, s_chunk = _split(cap, B * hkv, block_n, min_tiles=2)
    total = p_splits + s_splits
    part_o = torch.empty(total, B, H, nq, D, device=q.device, dtype=torch.float32)
    part_l = torch.empty(total, B, H, nq, device=q.device, dtype=torch.float32)
    strides = (*part_o.stride()[:4], *part_l.stride()[:3])
    if p_splits:
        _prefix_kernel[(p_splits, hkv, mblocks)](
            q, prefix_k, prefix_v, part_o, part_l, q.stride(0), q.stride(1), q.stride(2),
            prefix_k.stride(0), prefix_k.stride(1), prefix_v.stride(0), prefix_v.stride(1), *strides,
            rows, lp, p_chunk, scale, GROUP=group, NQ=nq, D=D, BLOCK_M=block_m, BLOCK_N=block_n,
            num_warps=4)
    if s_splits:
        _suffix_kernel[(B, hkv, s_splits)](
            q, suffix_k, suffix_v, suffix_lens, part_o, part_l, q.stride(0), q.stride(1), q.stride(2),
            suffix_k.stride(0), suffix_k.stride(1), suffix_k.stride(2),
            suffix_v.stride(0), suffix_v.stride(1), suffix_v.stride(2), *strides,
            p_splits, s_chunk, scale, GROUP=group, NQ=nq, D=D,
            BLOCK_M=max(16, triton.next_power_of_2(group * nq)), BLOCK_N=block_n)
    out = torch.empty_like(q) if out is None else out
    all_rows = B * H * nq
    _merge_kernel[(triton.cdiv(all_rows, 32),)](
        part_o, part_l, out, part_o.stride(0), part_l.stride(0), out.stride(0), out.stride(1), out.stride(2),
        all_rows, total, H=H, NQ=nq, D=D, BLOCK_R=32)
    return out
