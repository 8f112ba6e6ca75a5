"""The step-cost model: a device profile's measured steps, interpolated where plans run.

A step runs a graph of b rows (the CUDA-graph bucket of the live branches on a GPU), `live` of them
holding a branch, with q query tokens per row, a shared prompt of P tokens and S own tokens per
branch.  At each measured batch level b and query level q,

    ms = base(b, q) + own_ms(b, q) * live (S + q [+ P in plain mode]) / 1000 + prefix_ms(b, q) * P / 1000 [relay mode]

base: the step with no context (weights, launches, sampling b rows); own_ms: per thousand KV tokens
each branch reads itself; prefix_ms: per thousand prompt tokens read once for all branches (relay
attention, whose prefix pass also grows with b).  In plain mode (one row, a prompt under the relay
kernel's threshold, or a backend without relay, vLLM) every branch reads the prompt itself.  The three
are estimated per level from its points by non-negative least squares; a slope that a level's points
do not determine is read from the nearest levels that do.  Between levels every quantity is linear in
b and in q, held flat beyond the ends: an interpolant, not a curve, so its error is measured by leaving
out whole b levels (`held_out_error`), where interpolation must carry it.
"""
from dataclasses import dataclass

import numpy as np
from scipy.optimize import nnls

from ttsplan.measure.schema import BatchCost, CompactCost, PrefillCost, StepCost

def plain_below(device_type: str, backend: str) -> float:
    """Prompts shorter than this are read per branch: the relay kernel's threshold on a GPU
    (kernels.relay_attention_triton.Tuning.plain_below), never on the CPU reference, always on vLLM."""
    return float("inf") if backend == "vllm" else 512.0 if device_type == "cuda" else 0.0


def _columns(b, q, prompt, own, live, plain_from):
    b, q, prompt, own = (np.asarray(x, dtype=np.float64) for x in (b, q, prompt, own))
    live = b if live is None else np.asarray(live, dtype=np.float64)
    plain = (b <= 1) | (prompt < plain_from)
    x_own = live * (own + q + np.where(plain, prompt, 0.0)) / 1e3
    x_pre = np.where(plain, 0.0, prompt) / 1e3
    return x_own, x_pre


def _fit_levels(points: list[StepCost], plain_from: float):
    """{q: (b levels, [3, levels] parameters)} from the measured points."""
    by_level: dict[tuple[int, int], list[StepCost]] = {}
    for p in points:
        by_level.setdefault((p.q, p.b), []).append(p)

    def columns(q, b):
        pts = by_level[(q, b)]
        x_own, x_pre = _columns([b] * len(pts), q, [p.prompt for p in pts], [p.own for p in pts], None, plain_from)
        return x_own, x_pre, np.array([p.ms for p in pts])

    out = {}
    for q in sorted({q for q, _ in by_level}):
        levels = sorted(b for qq, b in by_level if qq == q)
        theta = np.full((3, len(levels)), np.nan)
        for i, b in enumerate(levels):
            x_own, x_pre, ms = columns(q, b)
            free = [c for c, x in ((1, x_own), (2, x_pre)) if np.ptp(x) > 0 and len(ms) > 1]
            cols = [np.ones(len(ms))] + [x_own if c == 1 else x_pre for c in free]
            coef, _ = nnls(np.stack(cols, 1) / ms[:, None], np.ones(len(ms)))  # relative error
            theta[0, i] = coef[0]
            for c, v in zip(free, coef[1:]):
                theta[c, i] = v
        out[q] = (np.array(levels, dtype=np.float64), theta)
    # Slopes a level could not determine: from the levels of the same q that did, else the nearest q.
    for c in (1, 2):
        for q, (levels, theta) in out.items():
            known = ~np.isnan(theta[c])
            if known.any():
                theta[c, ~known] = np.interp(levels[~known], levels[known], theta[c, known])
        for q, (levels, theta) in out.items():
            if np.isnan(theta[c]).all():
                donors = [r for r in out if not np.isnan(out[r][1][c]).all()]
                if donors:
                    r = min(donors, key=lambda r: abs(r - q))
                    theta[c] = np.interp(levels, out[r][0], out[r][1][c])
                else:
                    theta[c] = 0.0
    # Where a slope was borrowed, the level's base is what its own points leave over.
    for q, (levels, theta) in out.items():
        for i, b in enumerate(levels):
            x_own, x_pre, ms = columns(q, int(b))
            theta[0, i] = max(float(np.median(ms - theta[1, i] * x_own - theta[2, i] * x_pre)), 0.0)
    return out


def _at_q(levels_by_q: dict, q: float, b: np.ndarray) -> np.ndarray:
    """[3, ...] parameters at batch b for query level q, linear between the measured q levels."""
    qs = np.array(sorted(levels_by_q), dtype=np.float64)
    at = lambda qq: np.stack([np.interp(b, levels_by_q[qq][0], row) for row in levels_by_q[qq][1]])
    if q <= qs[0] or q >= qs[-1] or q in levels_by_q:
        return at(int(qs[np.argmin(np.abs(qs - q))]))
    hi = int(qs[np.searchsorted(qs, q)])
    lo = int(qs[np.searchsorted(qs, q) - 1])
    w = (q - lo) / (hi - lo)
    return (1 - w) * at(lo) + w * at(hi)


@dataclass
class StepModel:
    """Measured step costs, interpolated: predict(b, q, prompt, own, live) -> ms, vectorized over b,
    prompt, own and live (q one number, or an array of few distinct values)."""
    levels: dict                 # q -> (b levels, [3, levels]: base, own_ms, prefix_ms)
    plain_from: float
    in_sample_error: float = 0.0  # mean |relative error| on the points it interpolates
    held_out_error: float = float("nan")  # ... on the points of each interior b level, left out whole
    held_out_max: float = float("nan")
    held_out_levels: int = 0      # how many b levels were left out
    points: int = 0

    @classmethod
    def fit(cls, points: list[StepCost], plain_from: float) -> "StepModel":
        model = cls(_fit_levels(points, plain_from), plain_from, points=len(points))
        model.in_sample_error = float(np.mean(np.abs(model._predict_points(points) - 1)))
        errors, levels = [], sorted({p.b for p in points})
        for b in levels[1:-1]:  # an end level cannot be interpolated, only extrapolated
            train = [p for p in points if p.b != b]
            test = [p for p in points if p.b == b]
            errors += list(np.abs(cls(_fit_levels(train, plain_from), plain_from)._predict_points(test) - 1))
        if errors:
            model.held_out_error, model.held_out_max = float(np.mean(errors)), float(np.max(errors))
            model.held_out_levels = len(levels) - 2
        return model

    def _predict_points(self, points: list[StepCost]) -> np.ndarray:
        """predicted / measured for each point."""
        return np.array([float(self.predict(p.b, p.q, p.prompt, p.own)) / p.ms for p in points])

    def predict(self, b, q, prompt, own, live=None) -> np.ndarray:
        b = np.asarray(b, dtype=np.float64)
        x_own, x_pre = _columns(b, q, prompt, own, live, self.plain_from)
        qs = np.unique(np.asarray(q))
        shape = np.broadcast_shapes(b.shape, x_own.shape, np.shape(q))
        out = np.zeros(shape)
        for qq in qs:
            base, own_ms, prefix_ms = _at_q(self.levels, float(qq), np.broadcast_to(b, shape))
            t = base + own_ms * np.broadcast_to(x_own, shape) + prefix_ms * np.broadcast_to(x_pre, shape)
            out = np.where(np.broadcast_to(np.asarray(q), shape) == qq, t, out)
        return out

    def level_table(self, q: int) -> list[tuple[int, float, float, float]]:
        """(b, base ms, ms per 1k own KV tokens, ms per 1k prefix tokens) at each measured level of q."""
        levels, theta = self.levels[q]
        return [(int(b), *map(float, theta[:, i])) for i, b in enumerate(levels)]


@dataclass
class PrefillModel:
    """Prefill ms = a + b P + c P^2 (non-negative least squares over the measured prompt lengths)."""
    coef: np.ndarray

    @classmethod
    def fit(cls, points: list[PrefillCost]) -> "PrefillModel":
        p = np.array([x.prompt for x in points], dtype=np.float64)
        y = np.array([x.ms for x in points])
        A = np.stack([np.ones_like(p), p, p * p], 1) / y[:, None]  # relative error
        coef, _ = nnls(A, np.ones_like(y))
        return cls(coef)

    def predict(self, prompt) -> np.ndarray:
        p = np.asarray(prompt, dtype=np.float64)
        return self.coef[0] + self.coef[1] * p + self.coef[2] * p * p


@dataclass
class BatchTable:
    """A cost measured at a few batch sizes (per draft length k), read at any b by linear interpolation
    in log2(b) and between the measured k, held flat beyond the ends; 0 where nothing was measured."""
    by_k: dict[int, tuple[np.ndarray, np.ndarray]]

    @classmethod
    def build(cls, points: list[BatchCost]) -> "BatchTable":
        by_k = {}
        for k in sorted({p.k for p in points}):
            pts = sorted((p.b, p.ms) for p in points if p.k == k)
            by_k[k] = (np.log2([b for b, _ in pts]), np.array([ms for _, ms in pts]))
        return cls(by_k)

    def at(self, b, k: int = 0) -> np.ndarray:
        if not self.by_k:
            return np.zeros_like(np.asarray(b, dtype=np.float64))
        x = np.log2(np.maximum(np.asarray(b, dtype=np.float64), 1))
        row = lambda kk: np.interp(x, *self.by_k[kk])
        ks = sorted(kk for kk in self.by_k if (kk == 0) == (k == 0)) or sorted(self.by_k)
        if k <= ks[0] or k >= ks[-1] or k in self.by_k:
            return row(min(ks, key=lambda kk: abs(kk - k)))
        lo, hi = max(kk for kk in ks if kk < k), min(kk for kk in ks if kk > k)
        return row(lo) + (k - lo) / (hi - lo) * (row(hi) - row(lo))


@dataclass
class CompactionModel:
    """A compaction (KVCache.keep_rows) costs a fixed part once any row moves (a copy launched per layer
    buffer) and a part per moved token: ms = fixed [moved > 0] + per_token * moved * upto."""
    fixed_ms: float
    per_token_ms: float

    @classmethod
    def fit(cls, points: list[CompactCost]) -> "CompactionModel":
        moving = [p for p in points if p.moved > 0]
        if not moving:
            return cls(0.0, 0.0)
        A = np.array([[1.0, p.moved * p.upto] for p in moving])
        y = np.array([p.ms for p in moving])
        coef, _ = nnls(A / y[:, None], np.ones(len(y)))
        return cls(float(coef[0]), float(coef[1]))
