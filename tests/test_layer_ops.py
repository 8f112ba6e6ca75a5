"""The decode layer's Triton kernels (residual add + RMSNorm, SwiGLU, RoPE + KV store) against the
PyTorch reference evaluated in float64: fresh random inputs, odd shapes, poisoned outputs.
Runs in the Triton interpreter where there is no GPU."""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"
pytest.importorskip("triton")

from ttsplan.kernels import layer_ops_ref  # noqa: E402
from ttsplan.kernels import layer_ops_triton  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.bfloat16, torch.float16] if DEVICE == "cuda" else [torch.float32]
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def fresh() -> torch.Generator:
    return torch.Generator().manual_seed(int.from_bytes(os.urandom(4), "little"))


def close(got: torch.Tensor, want: torch.Tensor, dtype) -> None:
    assert torch.isfinite(got).all()
    rel = (got.double().cpu() - want).abs().max() / want.abs().max()
    assert rel < TOL[dtype], f"relative error {rel:.2e}"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,E", [(1, 896), (3, 1536), (7, 72)])
def test_add_rms_norm(rows, E, dtype):
    gen = fresh()
    x, y = torch.randn(2, rows, E, generator=gen)
    w = torch.rand(E, generator=gen) + 0.5
    want_x, want_h = layer_ops_ref.add_rms_norm(x.double(), y.double(), w.double(), 1e-6)
    xd = x.to(DEVICE, dtype)
    got_x, got_h = layer_ops_triton.add_rms_norm(xd, y.to(DEVICE, dtype), w.to(DEVICE, dtype), 1e-6)
    assert got_x.data_ptr() == xd.data_ptr(), "the residual is updated in place"
    close(got_x, want_x, dtype)
    close(got_h, want_h, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1, 2 * 4864), (2, 3, 2 * 100), (5, 1, 2 * 1500)])
def test_silu_mul(shape, dtype):
    gu = torch.randn(*shape, generator=fresh()) * 3
    close(layer_ops_triton.silu_mul(gu.to(DEVICE, dtype)), layer_ops_ref.silu_mul(gu.double()), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,T,H,Hkv,D", [(1, 1, 12, 2, 128), (3, 5, 7, 1, 64), (2, 3, 4, 4, 64)])
def test_rope_and_store(B, T, H, Hkv, D, dtype):
    gen = fresh()
    cap = 11
    qkv = torch.randn(B, T, (H + 2 * Hkv) * D, generator=gen)
    angles = torch.rand(B, T, D // 2, generator=gen) * 100
    cos, sin = torch.cat([angles, angles], -1).cos(), torch.cat([angles, angles], -1).sin()
    lens = torch.randint(0, cap - T + 1, (B,), generator=gen)
    want_k, want_v = (torch.full((B + 1, Hkv, cap, D), float("nan"), dtype=torch.float64) for _ in range(2))
    want_q = layer_ops_ref.rope_and_store(qkv.double(), cos.double(), sin.double(), want_k, want_v, lens, H, Hkv)
    got_k, got_v = (torch.full((B + 1, Hkv, cap, D), float("nan"), device=DEVICE, dtype=dtype) for _ in range(2))
    got_q = layer_ops_triton.rope_and_store(qkv.to(DEVICE, dtype), cos.to(DEVICE, dtype), sin.to(DEVICE, dtype),
                                            got_k, got_v, lens.to(DEVICE), H, Hkv)
    close(got_q, want_q, dtype)
    for got, want in ((got_k, want_k), (got_v, want_v)):
        written = ~want.isnan()
        assert torch.equal(~got.isnan().cpu(), written), "exactly the fed positions are written"
        close(got.cpu()[written], want[written], dtype)
