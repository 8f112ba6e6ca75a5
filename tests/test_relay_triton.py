"""The Triton relay kernels against the float64 reference: fresh random inputs, output poisoned
first, every element checked.  Runs in the Triton interpreter where there is no GPU."""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"
triton = pytest.importorskip("triton")

from reference import concat_attention  # noqa: E402
from ttsplan.kernels.relay_attention_triton import VERIFY_WIDE, Tuning, relay_attention_triton  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float16, torch.bfloat16] if DEVICE == "cuda" else [torch.float32]
TOL = {torch.float32: 1e-4, torch.float16: 4e-3, torch.bfloat16: 2e-2}

CASES = [
    # B, q, Hkv, group, D, prefix, suffix_max, splits (None: automatic)
    (1, 1, 2, 1, 64, 37, 5, None),
    (5, 1, 2, 4, 64, 150, 9, 3),       # several prefix splits, the last one short
    (3, 1, 1, 7, 64, 0, 6, None),      # no prefix
    (3, 1, 2, 4, 128, 1, 6, None),     # one prefix token
    (4, 1, 2, 1, 64, 21, 1, None),     # one own token each
    (3, 5, 1, 4, 128, 70, 11, 2),      # q = 5: speculative verification shape
    (2, 3, 2, 6, 64, 13, 40, None),    # GQA 6 (Qwen2.5-1.5B), own KV longer than a tile
]


# Small tiles: many splits, row blocks and chunks that straddle the prefix/own boundary.
TUNINGS = {"default": Tuning(), "small-tiles": Tuning(block_m_max=16, block_n=16, min_tiles=1), "verify-wide": VERIFY_WIDE}


@pytest.mark.parametrize("tuning", TUNINGS)
@pytest.mark.parametrize("plain", [False, True], ids=["relay", "plain"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES)
def test_triton_relay_matches_float64_reference(case, dtype, plain, tuning):
    B, nq, hkv, group, D, lp, smax, splits = case
    gen = torch.Generator().manual_seed(int.from_bytes(os.urandom(4), "little"))  # fresh inputs every run
    H = hkv * group
    lens = torch.randint(nq, smax + 1, (B,), generator=gen)
    lens[0] = smax
    q = torch.randn(B, H, nq, D, generator=gen)
    pk, pv = (torch.randn(hkv, lp, D, generator=gen) for _ in range(2))
    # Own KV as rows of a larger preallocated cache, like the engine's.
    sk, sv = (torch.randn(B + 2, hkv, smax + 7, D, generator=gen)[:B] for _ in range(2))
    want = concat_attention(q.double(), pk.double(), pv.double(), sk.double(), sv.double(), lens, D ** -0.5)
    dev = [t.to(DEVICE, dtype) for t in (q, pk, pv, sk, sv)]
    out = torch.full_like(dev[0], float("nan"))
    relay_attention_triton(*dev, lens.to(DEVICE), D ** -0.5, out=out, plain=plain,
                           splits=splits, tuning=TUNINGS[tuning])
    got = out.double().cpu()
    assert torch.isfinite(got).all(), "every output element must be written"
    rel = (got - want).abs().max() / want.abs().max()
    assert rel < TOL[dtype], f"relative error {rel:.2e}"
