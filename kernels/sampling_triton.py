"""Top-p without a sort: a row's nucleus threshold by bisection over the probabilities' bits (where the
distribution itself is needed: verification), and a token by rejection from the logits (decode steps).

The nucleus of top_p is every token whose probability p_i has less than top_p of the mass strictly
above it, that is p_i >= t*, where t* is the largest probability value with mass(p >= t*) >= top_p.
Non-negative floats order as their int32 bit patterns, so t* is found by bisecting the bit range
[lo, hi) that holds it (mass(p >= lo) >= top_p > mass(p >= hi); from (1 - top_p) / 2V, below which
too little mass lies, to just above 1): each pass over the row sums the mass in the upper half and
snaps the new bracket to the nearest probability inside it, until one value is left.  Once at most
CAP probabilities lie inside the bracket they are copied to a scratch row, and the remaining passes
read only those.  One program per row, no host sync: it runs inside CUDA graphs.

Tokens tied at t* are all kept, as every nucleus path does.  Masses are summed in float64: in a flat
distribution of 152k tokens a float32 running sum errs by more than one token's probability, so two
float32 summation orders (this kernel's and a sort's cumsum) would cut the nucleus at different tokens.

Sampling from logits needs no threshold at all (`sample_top_p`, FlashInfer's rejection idea): draw a
token from the whole distribution by inverse CDF; it is in the nucleus exactly when the mass of the
tokens more likely than it is below top_p.  If not, draw again from the tokens more likely than it:
the nucleus lies inside them, so the accepted token follows the renormalized nucleus exactly.  The
first draw lands in the nucleus with probability >= top_p, so a row costs about three passes (the
softmax statistics, the draw, stopping where it lands, and the check), one program per row.
"""
import struct

import torch
import triton
import triton.language as tl

CAP = 4096     # bracket size below which the passes read a compacted copy instead of the row
BLOCK = 1024
NUM_WARPS = 8
LOG2E = 1.4426950408889634
SAMPLE_BLOCK = 4096  # the sampler: one program per row, wide tiles (the fastest of 512-4096 x 4-16 warps
SAMPLE_WARPS = 16    # in a sweep on an H100, 2026-11-24)


@triton.jit
def _split(ptr, n, lo, hi, mid, BLOCK: tl.constexpr):
    """Over ptr[0:n], the values with bits in [lo, hi): mass and count of those >= mid, count of those
    below it, the smallest bits at or above mid and the largest below it.  Accumulated per lane and
    reduced once, after the pass."""
    mass = tl.zeros((BLOCK,), tl.float64)
    n_up = tl.zeros((BLOCK,), tl.int32)
    n_down = tl.zeros((BLOCK,), tl.int32)
    min_up = tl.zeros((BLOCK,), tl.int32) + hi
    max_down = tl.zeros((BLOCK,), tl.int32) + (lo - 1)
    for start in range(0, n, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        x = tl.load(ptr + offs, mask=offs < n, other=0.0)
        b = x.to(tl.int32, bitcast=True)
        inside = (offs < n) & (b >= lo) & (b < hi)
        up = inside & (b >= mid)
        down = inside & (b < mid)
        mass += tl.where(up, x.to(tl.float64), 0.0)
        n_up += up.to(tl.int32)
        n_down += down.to(tl.int32)
        min_up = tl.minimum(min_up, tl.where(up, b, hi))
        max_down = tl.maximum(max_down, tl.where(down, b, lo - 1))
    return tl.sum(mass, 0), tl.sum(n_up, 0), tl.sum(n_down, 0), tl.min(min_up, 0), tl.max(max_down, 0)


@triton.jit
def _bisect(ptr, n, lo, hi, f_hi, count, top_p, stop_at, BLOCK: tl.constexpr):
    """Narrow [lo, hi) over ptr[0:n] until one value is left or at most stop_at lie inside."""
    while (hi - lo > 1) & (count > stop_at):
        mid = lo + (hi - lo) // 2
        mass, n_up, n_down, min_up, max_down = _split(ptr, n, lo, hi, mid, BLOCK)
        if f_hi + mass >= top_p:   # t* >= mid: the smallest value there is the new lower end
            lo = min_up
            count = n_up
        else:                      # t* < mid: the largest value below mid ends the bracket
            hi = max_down + 1
            f_hi = f_hi + mass
            count = n_down
    return lo, hi, f_hi, count


@triton.jit
def _top_p_threshold_kernel(P, stride, V, top_p, lowest_bits, T, S, CAP: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    p_row = P + row * stride
    lo = tl.zeros((), tl.int32) + lowest_bits
    hi = tl.full((), 0x3F800001, tl.int32)  # just above 1.0: above every probability
    f_hi = tl.zeros((), tl.float64)
    count = tl.full((), V, tl.int32)
    lo, hi, f_hi, count = _bisect(p_row, V, lo, hi, f_hi, count, top_p, CAP, BLOCK)
    if hi - lo > 1:  # at most CAP values left in the bracket: copy them out and bisect the copy
        s_row = S + row * CAP
        n = tl.zeros((), tl.int32)
        for start in range(0, V, BLOCK):
            offs = start + tl.arange(0, BLOCK)
            x = tl.load(p_row + offs, mask=offs < V, other=0.0)
            b = x.to(tl.int32, bitcast=True)
            inside = (offs < V) & (b >= lo) & (b < hi)
            at = n + tl.cumsum(inside.to(tl.int32), 0) - 1
            tl.store(s_row + at, x, mask=inside)
            n += tl.sum(inside.to(tl.int32), 0)
        lo, hi, f_hi, count = _bisect(s_row, n, lo, hi, f_hi, count, top_p, 0, BLOCK)
    tl.store(T + row, lo.to(tl.float32, bitcast=True))


def top_p_threshold(probs: torch.Tensor, top_p: float, cap: int = CAP) -> torch.Tensor:
    """probs [..., V] (float32, rows summing to 1) -> t* [...]: the nucleus is probs >= t*."""
    V = probs.shape[-1]
    rows = probs.reshape(-1, V)
    if rows.stride(-1) != 1:
        rows = rows.contiguous()
    out = torch.empty(rows.shape[0], device=probs.device, dtype=torch.float32)
    scratch = torch.empty(rows.shape[0], cap, device=probs.device, dtype=torch.float32)
    # Below (1 - top_p) / V lies less than 1 - top_p of the mass, so t* is above it: start there (halved
    # for the float sums' rounding), not at 0.
    lowest_bits = struct.unpack("<i", struct.pack("<f", 0.5 * (1.0 - top_p) / V))[0]
    _top_p_threshold_kernel[(rows.shape[0],)](rows, rows.stride(0), V, top_p, lowest_bits, out, scratch, CAP=cap,
                                              BLOCK=BLOCK, num_warps=NUM_WARPS)
    return out.view(probs.shape[:-1])


@triton.jit
def _probs(x_row, offs, V, m, inv_z, scale):
    """p = exp((x - m) / T) / Z at offs (0 past V), with m and x both in units of log2 (x * scale)."""
    return tl.exp2(tl.load(x_row + offs, mask=offs < V, other=float("-inf")) * scale - m) * inv_z


@triton.jit
def _sample_top_p_kernel(X, stride, V, U, OUT, scale, top_p, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    x_row = X + row * stride
    # The softmax statistics in one pass: per-lane running maximum (from a finite floor, so that no
    # lane subtracts infinities) and rescaled sum.
    m = tl.full((BLOCK,), -1e30, tl.float32)
    z = tl.zeros((BLOCK,), tl.float32)
    for start in range(0, V, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        x = tl.load(x_row + offs, mask=offs < V, other=float("-inf")) * scale
        m_new = tl.maximum(m, x)
        z = z * tl.exp2(m - m_new) + tl.exp2(x - m_new)
        m = m_new
    mx = tl.max(m, 0)
    inv_z = 1.0 / tl.sum(z * tl.exp2(m - mx), 0)

    pivot = tl.full((), -1.0, tl.float32)   # this round draws among the tokens with p > pivot ...
    norm = tl.full((), 1.0, tl.float64)     # ... whose mass is norm
    u = tl.load(U + row)
    seed = u.to(tl.int32, bitcast=True)
    token = tl.full((), -1, tl.int32)
    rnd = 0
    while token < 0:
        goal = u.to(tl.float64) * norm
        # The draw: the first token whose cumulative mass exceeds the goal; stop in the tile it is in.
        run = tl.zeros((), tl.float64)
        found = tl.full((), -1, tl.int32)
        last = tl.zeros((), tl.int32)
        start = 0
        while (start < V) & (found < 0):
            offs = start + tl.arange(0, BLOCK)
            p = _probs(x_row, offs, V, mx, inv_z, scale)
            w = tl.where(p > pivot, p, 0.0).to(tl.float64)
            tile = tl.sum(w, 0)
            if run + tile > goal:
                cdf = run + tl.cumsum(w, 0)
                found = tl.min(tl.where((cdf > goal) & (w > 0), offs, V), 0)
            last = tl.maximum(last, tl.max(tl.where(w > 0, offs, 0), 0))
            run += tile
            start += BLOCK
        pick = tl.where(found >= 0, found, last)   # rounding left the goal past the end: the last token
        p_pick = _probs(x_row, pick, V, mx, inv_z, scale)
        # The check: the mass strictly more likely than the pick.
        above = tl.zeros((BLOCK,), tl.float64)
        for start2 in range(0, V, BLOCK):
            p = _probs(x_row, start2 + tl.arange(0, BLOCK), V, mx, inv_z, scale)
            above += tl.where(p > p_pick, p, 0.0).to(tl.float64)
        mass = tl.sum(above, 0)
        if mass < top_p:
            token = pick
        else:  # outside the nucleus: draw again among the more likely tokens, at a fresh uniform
            pivot = p_pick
            norm = mass
            rnd += 1
            u = tl.rand(seed, rnd)
    tl.store(OUT + row, token.to(tl.int64))


def sample_top_p(logits: torch.Tensor, temperature: float, top_p: float, u: torch.Tensor) -> torch.Tensor:
    """logits [B, V] (float32) -> one token per row [B] from the top-p nucleus of softmax(logits / T),
    by rejection from the row's uniform u [B] (later rounds' uniforms derive from it), without a sort
    or a threshold and without writing the probabilities."""
    rows = logits if logits.stride(-1) == 1 else logits.contiguous()
    out = torch.empty(rows.shape[0], device=rows.device, dtype=torch.int64)
    _sample_top_p_kernel[(rows.shape[0],)](rows, rows.stride(0), rows.shape[1], u.contiguous(), out,
                                           LOG2E / temperature, top_p, BLOCK=SAMPLE_BLOCK,
                                           num_warps=SAMPLE_WARPS)
    return out
