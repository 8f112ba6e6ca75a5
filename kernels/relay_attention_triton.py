"""RelayAttention in Triton: two launches; the reference is relay_attention_ref.py.

1. partials kernel, one grid of two kinds of programs that run side by side:
   - prefix programs (split, KV head h, row block): the rows are every branch's queries that
     read KV head h (B * group * q of them), so each prefix tile is loaded once per split for
     the whole batch; the prefix is split flash-decoding style so a long prefix fills the GPU;
   - branch programs (branch, KV head, split): one branch's queries over its own KV, causal
     within the q new tokens.  In the plain mode (one branch, or a prefix too short for a
     shared pass to pay) there are no prefix programs and each branch program reads its slice
     of prefix + own keys itself, like ordinary paged attention.
2. merge kernel, one program per query row: the exact float32 log-sum-exp merge of its partials.
Partials are float32 [splits, B, H, q, D] outputs and [splits, B, H, q] log-sum-exps; an empty
split writes lse = -inf.  Same shapes and semantics as the reference: q [B, H, q, D],
prefix_k/v [Hkv, Lp, D], suffix_k/v [B, Hkv, S, D], suffix_lens [B].
"""
import functools
from dataclasses import dataclass

import torch
import triton
import triton.language as tl


@dataclass(frozen=True)
class Tuning:
    """Launch shape.  Defaults chosen by `benchmarks/gpu_bench.py --only sweep` on an H100
    (benchmarks/results/gpu_attention_sweep.md, gpu_plain_vs_relay.md)."""
    block_m_max: int = 64        # query rows per prefix program
    block_n: int = 32            # keys per tile
    min_tiles: int = 4           # a split gets at least this many key tiles
    waves: int = 2               # relay mode: aim for this many programs of each kind per SM
    plain_waves: int = 1         # plain mode: the same, for its branch programs
    num_warps: int = 4
    plain_below: int = 512       # prefix shorter than this: plain mode


@triton.jit
def _attend_keys(q, Kp, Vp, sk_n, sv_n, start, end, qpos, scale, m, s, acc, CAUSAL: tl.constexpr,
                 BLOCK_N: tl.constexpr, D: tl.constexpr):
    """Continue a flash-attention state (max m, sum s, unnormalized acc) of q [BLOCK_M, D] over
    keys start..end-1 at Kp / Vp (row strides sk_n, sv_n), masked causally against qpos when CAUSAL."""
    d = tl.arange(0, D)
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
def _prefix_program(pid, Q, PK, PV, O, L, sq_b, sq_h, sq_t, spk_h, spk_n, spv_h, spv_n,
                    so_s, so_b, so_h, so_t, sl_s, sl_b, sl_h, rows, prefix_len, chunk, splits, hkv, scale,
                    GROUP: tl.constexpr, NQ: tl.constexpr, D: tl.constexpr, BLOCK_M: tl.constexpr,
                    BLOCK_N: tl.constexpr):
    split, kvh, mblock = pid % splits, (pid // splits) % hkv, pid // (splits * hkv)
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
    m, s, acc = _attend_keys(q, PK + kvh * spk_h, PV + kvh * spv_h, spk_n, spv_n, start,
                             tl.minimum(start + chunk, prefix_len), i, scale, m, s, acc,
                             CAUSAL=False, BLOCK_N=BLOCK_N, D=D)
    _store_partial(O, L, split, b, h, i, row_ok, m, s, acc, so_s, so_b, so_h, so_t, sl_s, sl_b, sl_h, D)


@triton.jit
def _branch_program(pid, Q, PK, PV, SK, SV, LENS, O, L, sq_b, sq_h, sq_t, spk_h, spk_n, spv_h, spv_n,
                    ssk_b, ssk_h, ssk_n, ssv_b, ssv_h, ssv_n, so_s, so_b, so_h, so_t, sl_s, sl_b, sl_h,
                    prefix_len, chunk, splits, first_split, hkv, scale, PLAIN: tl.constexpr,
                    GROUP: tl.constexpr, NQ: tl.constexpr, D: tl.constexpr, BLOCK_M: tl.constexpr,
                    BLOCK_N: tl.constexpr):
    split, kvh, b = pid % splits, (pid // splits) % hkv, pid // (splits * hkv)
    r = tl.arange(0, BLOCK_M)
    row_ok = r < GROUP * NQ
    j, i = r // NQ, r % NQ
    h = kvh * GROUP + j
    bb = tl.zeros([BLOCK_M], tl.int32) + b
    d = tl.arange(0, D)
    q = tl.load(Q + b * sq_b + h[:, None] * sq_h + i[:, None] * sq_t + d[None, :], mask=row_ok[:, None], other=0.0)
    length = tl.load(LENS + b)
    qpos = length - NQ + i  # own-KV position of each query row
    m = tl.full([BLOCK_M], float("-inf"), tl.float32)
    s = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D], tl.float32)
    # This program's keys are start..end-1 of the branch's view: [prefix | own] in the plain
    # mode, [own] otherwise.
    start = split * chunk
    if PLAIN:
        end = tl.minimum(start + chunk, prefix_len + length)
        m, s, acc = _attend_keys(q, PK + kvh * spk_h, PV + kvh * spv_h, spk_n, spv_n, start,
                                 tl.minimum(end, prefix_len), qpos, scale, m, s, acc,
                                 CAUSAL=False, BLOCK_N=BLOCK_N, D=D)
        start = tl.maximum(start, prefix_len) - prefix_len
        end = end - prefix_len
    else:
        end = tl.minimum(start + chunk, length)
    m, s, acc = _attend_keys(q, SK + b * ssk_b + kvh * ssk_h, SV + b * ssv_b + kvh * ssv_h, ssk_n, ssv_n,
                             start, end, qpos, scale, m, s, acc, CAUSAL=True, BLOCK_N=BLOCK_N, D=D)
    _store_partial(O, L, first_split + split, bb, h, i, row_ok, m, s, acc, so_s, so_b, so_h, so_t, sl_s, sl_b, sl_h, D)


@triton.jit
def _store_partial(O, L, split, b, h, i, row_ok, m, s, acc, so_s, so_b, so_h, so_t, sl_s, sl_b, sl_h, D: tl.constexpr):
    d = tl.arange(0, D)
    lse = tl.where(s > 0, m + tl.log(tl.where(s > 0, s, 1.0)), float("-inf"))
    out = acc / tl.where(s > 0, s, 1.0)[:, None]
    tl.store(O + split * so_s + b[:, None] * so_b + h[:, None] * so_h + i[:, None] * so_t + d[None, :], out, mask=row_ok[:, None])
    tl.store(L + split * sl_s + b * sl_b + h * sl_h + i, lse, mask=row_ok)


@triton.jit
def _partials_kernel(Q, PK, PV, SK, SV, LENS, O, L, sq_b, sq_h, sq_t, spk_h, spk_n, spv_h, spv_n,
                     ssk_b, ssk_h, ssk_n, ssv_b, ssv_h, ssv_n, so_s, so_b, so_h, so_t, sl_s, sl_b, sl_h,
                     rows, prefix_len, p_chunk, p_splits, p_programs, o_chunk, o_splits, hkv, scale,
                     PLAIN: tl.constexpr, GROUP: tl.constexpr, NQ: tl.constexpr, D: tl.constexpr,
                     BLOCK_MP: tl.constexpr, BLOCK_MB: tl.constexpr, BLOCK_N: tl.constexpr):
    """Programs 0..p_programs-1 are prefix programs (the longer ones, scheduled first), the rest branch programs."""
    pid = tl.program_id(0)
    if pid < p_programs:
        _prefix_program(pid, Q, PK, PV, O, L, sq_b, sq_h, sq_t, spk_h, spk_n, spv_h, spv_n,
                        so_s, so_b, so_h, so_t, sl_s, sl_b, sl_h, rows, prefix_len, p_chunk, p_splits, hkv, scale,
                        GROUP=GROUP, NQ=NQ, D=D, BLOCK_M=BLOCK_MP, BLOCK_N=BLOCK_N)
    else:
        _branch_program(pid - p_programs, Q, PK, PV, SK, SV, LENS, O, L, sq_b, sq_h, sq_t, spk_h, spk_n, spv_h, spv_n,
                        ssk_b, ssk_h, ssk_n, ssv_b, ssv_h, ssv_n, so_s, so_b, so_h, so_t, sl_s, sl_b, sl_h,
                        prefix_len, o_chunk, o_splits, p_splits, hkv, scale, PLAIN=PLAIN,
                        GROUP=GROUP, NQ=NQ, D=D, BLOCK_M=BLOCK_MB, BLOCK_N=BLOCK_N)


@triton.jit
def _merge_kernel(PO, PL, OUT, so_s, sl_s, sout_b, sout_h, sout_t, splits,
                  H: tl.constexpr, NQ: tl.constexpr, D: tl.constexpr, SPLITS_P2: tl.constexpr, CHUNK: tl.constexpr):
    """Row r = (b * H + h) * q + i of the contiguous partials: weights exp(lse - max), all splits at once."""
    r = tl.program_id(0)
    sp = tl.arange(0, SPLITS_P2)
    m = tl.max(tl.load(PL + sp * sl_s + r, mask=sp < splits, other=float("-inf")), 0)
    m_safe = tl.where(m == float("-inf"), 0.0, m)
    d = tl.arange(0, D)
    total = tl.zeros([CHUNK], tl.float32)
    acc = tl.zeros([CHUNK, D], tl.float32)
    for s0 in range(0, splits, CHUNK):
        s = s0 + tl.arange(0, CHUNK)
        ok = s < splits
        w = tl.exp(tl.load(PL + s * sl_s + r, mask=ok, other=float("-inf")) - m_safe)
        o = tl.load(PO + s[:, None] * so_s + r * D + d[None, :], mask=ok[:, None], other=0.0)
        total += w
        acc += w[:, None] * o
    total_all = tl.sum(total, 0)
    out = tl.sum(acc, 0) / tl.where(total_all > 0, total_all, 1.0)
    b, h, i = r // (H * NQ), (r // NQ) % H, r % NQ
    tl.store(OUT + b * sout_b + h * sout_h + i * sout_t + d, out.to(OUT.dtype.element_ty))


# Verification (q = k + 1 > 1) has q times the query rows per key tile: wider key tiles pay there, and
# on long prefixes with many rows, taller row blocks too (sweep of q = 5 on an H100, 2026-11-24: 0.89x
# the time of the decode shape over 18 cases, 1.5-1.9x faster at N = 64 on 4k-16k prefixes of 28/4 heads).
VERIFY = Tuning(block_n=64)
VERIFY_WIDE = Tuning(block_m_max=128, block_n=64, num_warps=8)


def launch_shape(nq: int, rows: int, prefix_len: int) -> Tuning:
    """The launch shape for nq query tokens per branch, rows = B * group * nq, a prefix of prefix_len."""
    if nq == 1:
        return Tuning()
    return VERIFY_WIDE if rows >= 2048 and prefix_len >= 4096 else VERIFY


@functools.cache
def _multiprocessors() -> int:
    return torch.cuda.get_device_properties(0).multi_processor_count if torch.cuda.is_available() else 8


def _split(length: int, programs_per_split: int, waves: int, tuning: Tuning) -> tuple[int, int]:
    """(splits, chunk): enough splits for `waves` programs per SM, at least min_tiles tiles each."""
    if length == 0:
        return 0, tuning.block_n
    want = max(1, waves * _multiprocessors() // max(programs_per_split, 1))
    splits = max(1, min(want, triton.cdiv(length, tuning.min_tiles * tuning.block_n)))
    chunk = triton.cdiv(triton.cdiv(length, splits), tuning.block_n) * tuning.block_n
    return triton.cdiv(length, chunk), chunk


def use_plain(batch: int, prefix_len: int, tuning: Tuning = Tuning()) -> bool:
    """One branch, or a prefix too short to be worth a shared pass: each branch reads the prefix itself."""
    return batch == 1 or prefix_len < tuning.plain_below


def relay_attention_triton(q, prefix_k, prefix_v, suffix_k, suffix_v, suffix_lens, scale: float,
                           out: torch.Tensor | None = None, plain: bool | None = None,
                           splits: int | None = None, tuning: Tuning | None = None):
    """plain: None chooses (use_plain); splits forces the prefix splits of the relay mode (tests);
    tuning: None chooses (launch_shape)."""
    B, H, nq, D = q.shape
    for t in (q, prefix_k, prefix_v, suffix_k, suffix_v):
        assert t.stride(-1) == 1, "the head dim must be contiguous"
    hkv, lp, cap = prefix_k.shape[0], prefix_k.shape[1], suffix_k.shape[2]
    group = H // hkv
    rows = B * group * nq
    tuning = tuning or launch_shape(nq, rows, lp)
    plain = use_plain(B, lp, tuning) if plain is None else plain
    block_mp = max(16, min(tuning.block_m_max, triton.next_power_of_2(rows)))
    mblocks = triton.cdiv(rows, block_mp)
    if plain or lp == 0:
        p_splits, p_chunk = 0, tuning.block_n
    elif splits is not None:
        p_chunk = triton.cdiv(triton.cdiv(lp, splits), tuning.block_n) * tuning.block_n
        p_splits = triton.cdiv(lp, p_chunk)
    else:
        p_splits, p_chunk = _split(lp, hkv * mblocks, tuning.waves, tuning)
    o_splits, o_chunk = _split((lp if plain else 0) + cap, B * hkv, tuning.plain_waves if plain else tuning.waves, tuning)
    total = p_splits + o_splits
    part_o = torch.empty(total, B, H, nq, D, device=q.device, dtype=torch.float32)
    part_l = torch.empty(total, B, H, nq, device=q.device, dtype=torch.float32)
    p_programs = p_splits * hkv * mblocks
    _partials_kernel[(p_programs + o_splits * hkv * B,)](
        q, prefix_k, prefix_v, suffix_k, suffix_v, suffix_lens, part_o, part_l,
        q.stride(0), q.stride(1), q.stride(2), prefix_k.stride(0), prefix_k.stride(1),
        prefix_v.stride(0), prefix_v.stride(1), *suffix_k.stride()[:3], *suffix_v.stride()[:3],
        *part_o.stride()[:4], *part_l.stride()[:3],
        rows, lp, p_chunk, p_splits, p_programs, o_chunk, o_splits, hkv, scale,
        PLAIN=plain, GROUP=group, NQ=nq, D=D, BLOCK_MP=block_mp,
        BLOCK_MB=max(16, triton.next_power_of_2(group * nq)), BLOCK_N=tuning.block_n, num_warps=tuning.num_warps)
    out = torch.empty_like(q) if out is None else out
    _merge_kernel[(B * H * nq,)](
        part_o, part_l, out, part_o.stride(0), part_l.stride(0), out.stride(0), out.stride(1), out.stride(2),
        total, H=H, NQ=nq, D=D, SPLITS_P2=max(16, triton.next_power_of_2(total)), CHUNK=16, num_warps=2)
    return out
