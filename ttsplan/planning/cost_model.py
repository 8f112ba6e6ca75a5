"""The step-cost model: a device profile's measured points fitted to a roofline shape with scipy.

A decode step over b live branches, q query tokens each, a shared prompt of P tokens and S own
tokens per branch costs

    t = c0 + c_batched [b > 1] + c_row b q + smoothmax(bytes / BW, flops / F)     (per kind)

    bytes = weights + kv_token * (P + b (S + q))            (the prompt's KV is read once: relay)
    flops = 2 params b q + 4 layers heads head_dim b q (P + S + q)

with one parameter set per kind: 'decode' (q = 1: the engine's decode step and sampling, a
CUDA-graph replay on a GPU) and 'verify' (q > 1: the speculative verification, run eagerly).  c0 is
the fixed cost of a step (launches, host sync), c_batched what a batch of more than one branch adds
(batched GEMMs and relay attention where one branch takes GEMV and plain attention), c_row the
per-row cost of sampling over the vocabulary, and smoothmax(x, y) = (x^4 + y^4)^(1/4) the roofline's
knee.  BW and F are fitted: the bandwidth and throughput the step actually reaches.  Fitted in log space (relative error) by scipy.optimize.least_squares; the held-out
error comes from 5-fold cross-validation over the measured points.
"""
from dataclasses import dataclass

import numpy as np
from scipy.optimize import least_squares

from ttsplan.measure.profiles import BatchCost, PrefillCost, StepCost

KNEE = 4.0
NAMES = tuple(f"{name}_{kind}" for kind in ("decode", "verify")
              for name in ("fixed", "batched", "row", "bandwidth", "flops"))


@dataclass(frozen=True)
class ModelShape:
    """What the cost model needs of a model: bytes and FLOPs per token."""
    weight_bytes: float
    kv_token_bytes: float
    params: float           # multiply-adds per token through the weights
    attn_width: float       # layers * heads * head_dim: attention multiply-adds per key, per query token

    @classmethod
    def from_config(cls, cfg: dict, dtype: str) -> "ModelShape":
        width = {"float32": 4, "bfloat16": 2, "float16": 2}[dtype]
        e, f, h, kv = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_heads"], cfg["num_kv_heads"]
        d, layers, vocab = cfg["head_dim"], cfg["num_layers"], cfg["vocab_size"]
        params = layers * (e * (h + 2 * kv) * d + h * d * e + 3 * e * f) + vocab * e
        return cls(weight_bytes=width * (params + e), kv_token_bytes=2 * layers * kv * d * width,
                   params=params, attn_width=layers * h * d)


def features(shape: ModelShape, b, q, prompt, own):
    b, q, prompt, own = (np.asarray(x, dtype=np.float64) for x in (b, q, prompt, own))
    nbytes = shape.weight_bytes + shape.kv_token_bytes * (prompt + b * (own + q))
    flops = 2 * shape.params * b * q + 4 * shape.attn_width * b * q * (prompt + own + q)
    return b * q, nbytes, flops, (q > 1).astype(np.float64)


def _predict_kind(theta, b, rows, nbytes, flops):
    c0, multi, row, bw, fl = np.exp(theta)
    roof = ((nbytes / bw) ** KNEE + (flops / fl) ** KNEE) ** (1 / KNEE)
    return c0 + multi * (b > 1) + row * rows + roof


def _predict(theta, b, rows, nbytes, flops, verify):
    """theta: the decode kind's five parameters, then the verify kind's five."""
    return np.where(verify > 0, _predict_kind(theta[5:], b, rows, nbytes, flops),
                    _predict_kind(theta[:5], b, rows, nbytes, flops))


def _fit_kind(shape: ModelShape, b, rows, nbytes, flops, ms) -> np.ndarray:
    # Start from a plausible roofline: the smallest step is mostly fixed cost plus the weight read.
    t_min = float(ms.min())
    theta0 = np.log([t_min / 4, t_min / 20, 1e-3, shape.weight_bytes / (t_min * 0.75), 1e9])
    free = np.array([True, bool((b > 1).any() and (b == 1).any()), True, True, True])

    def residual(x):
        theta = theta0.copy()
        theta[free] = x
        return np.log(_predict_kind(theta, b, rows, nbytes, flops)) - np.log(ms)

    sol = least_squares(residual, theta0[free], method="trf", loss="soft_l1", f_scale=0.05, max_nfev=4000)
    theta = theta0.copy()
    theta[free] = sol.x
    if not free[1]:
        theta[1] = -np.inf  # no batch above (or at) one measured: no step between them
    return theta


def _fit(shape: ModelShape, points: list[StepCost]) -> np.ndarray:
    """Decode (q = 1) and verify (q > 1) steps run different code (a CUDA graph or not, sampling b
    or b (k + 1) rows): each kind gets its own five parameters; without verify points, verification
    is read off the decode fit."""
    b = np.array([p.b for p in points], dtype=np.float64)
    rows, nbytes, flops, verify = features(shape, *zip(*[(p.b, p.q, p.prompt, p.own) for p in points]))
    ms = np.array([p.ms for p in points])
    kinds = []
    for mask in (verify == 0, verify > 0):
        kinds.append(_fit_kind(shape, b[mask], rows[mask], nbytes[mask], flops[mask], ms[mask])
                     if mask.any() else None)
    decode, verify_theta = kinds
    decode = decode if decode is not None else verify_theta
    return np.concatenate([decode, verify_theta if verify_theta is not None else decode])


@dataclass
class StepModel:
    """A fitted step-cost model: predict(b, q, prompt, own) -> ms, vectorized over numpy arrays."""
    shape: ModelShape
    theta: np.ndarray
    in_sample_error: float      # mean |relative error| on the points it was fitted to
    held_out_error: float       # mean |relative error| on held-out points (5-fold cross-validation)
    held_out_max: float
    points: int
    held_out_decode: float = float("nan")   # the held-out error of the q = 1 points alone
    held_out_verify: float = float("nan")   # ... and of the q > 1 points

    @classmethod
    def fit(cls, shape: ModelShape, points: list[StepCost], folds: int = 5, seed: int = 0) -> "StepModel":
        theta = _fit(shape, points)
        measured = np.array([p.ms for p in points])
        model = cls(shape, theta, 0.0, float("nan"), float("nan"), len(points))
        pred = model.predict(*zip(*[(p.b, p.q, p.prompt, p.own) for p in points]))
        model.in_sample_error = float(np.mean(np.abs(pred / measured - 1)))
        if len(points) >= 2 * folds:
            errors = np.empty(len(points))
            order = np.random.default_rng(seed).permutation(len(points))
            for f in range(folds):
                test = order[f::folds]
                train = [points[i] for i in order if i not in set(test)]
                sub = cls(shape, _fit(shape, train), 0.0, 0.0, 0.0, len(train))
                errors[test] = np.abs(sub.predict(*zip(*[(points[i].b, points[i].q, points[i].prompt, points[i].own)
                                                          for i in test])) / measured[test] - 1)
            model.held_out_error, model.held_out_max = float(errors.mean()), float(errors.max())
            q = np.array([p.q for p in points])
            model.held_out_decode = float(errors[q == 1].mean()) if (q == 1).any() else float("nan")
            model.held_out_verify = float(errors[q > 1].mean()) if (q > 1).any() else float("nan")
        return model

    def predict(self, b, q, prompt, own) -> np.ndarray:
        return _predict(self.theta, np.asarray(b, dtype=np.float64), *features(self.shape, b, q, prompt, own))

    @property
    def parameters(self) -> dict[str, float]:
        return dict(zip(NAMES, np.exp(self.theta)))


@dataclass
class PrefillModel:
    """Prefill ms = a + b P + c P^2 (non-negative least squares over the measured prompt lengths)."""
    coef: np.ndarray

    @classmethod
    def fit(cls, points: list[PrefillCost]) -> "PrefillModel":
        from scipy.optimize import nnls
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
    """A cost measured at a few batch sizes (per draft length k), read at any b by linear
    interpolation in log2(b), held flat beyond the ends; 0 where nothing was measured."""
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
        kk = min(self.by_k, key=lambda x: abs(x - k))
        xs, ys = self.by_k[kk]
        return np.interp(np.log2(np.maximum(np.asarray(b, dtype=np.float64), 1)), xs, ys)
