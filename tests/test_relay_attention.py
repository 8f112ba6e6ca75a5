"""The reference relay attention equals plain attention over the concatenated KV, in float64."""
import pytest
import torch

from reference import concat_attention
from ttsplan.kernels import relay_attention_ref

CASES = [
    # B, q, Hkv, group, D, prefix, suffix_max
    (1, 1, 2, 1, 16, 37, 5),
    (64, 1, 2, 4, 16, 33, 9),
    (3, 1, 1, 7, 8, 0, 6),      # no prefix
    (3, 1, 2, 4, 8, 1, 6),      # one prefix token
    (4, 1, 2, 1, 8, 21, 1),     # one own token each (the query itself)
    (5, 3, 1, 4, 32, 19, 11),   # q > 1: causal within the new tokens
    (2, 6, 2, 7, 8, 13, 17),
    (7, 1, 3, 4, 64, 129, 33),
]


def random_inputs(B, nq, hkv, group, D, lp, smax, gen, noncontiguous):
    H = hkv * group
    lens = torch.randint(nq, smax + 1, (B,), generator=gen)
    lens[0] = smax
    if noncontiguous:  # every input a strided view of a larger tensor
        q = torch.randn(B, nq, H, 2 * D, generator=gen, dtype=torch.float64)[..., ::2].transpose(1, 2)
        pk = torch.randn(lp, hkv, D, generator=gen, dtype=torch.float64).permute(1, 0, 2)
        pv = torch.randn(lp, hkv, D, generator=gen, dtype=torch.float64).permute(1, 0, 2)
        sk = torch.randn(B, smax + 3, hkv, D, generator=gen, dtype=torch.float64).transpose(1, 2)[:, :, :smax]
        sv = torch.randn(B, smax + 3, hkv, D, generator=gen, dtype=torch.float64).transpose(1, 2)[:, :, :smax]
        assert not q.is_contiguous() and not sk.is_contiguous()
    else:
        q = torch.randn(B, H, nq, D, generator=gen, dtype=torch.float64)
        pk, pv = (torch.randn(hkv, lp, D, generator=gen, dtype=torch.float64) for _ in range(2))
        sk, sv = (torch.randn(B, hkv, smax, D, generator=gen, dtype=torch.float64) for _ in range(2))
    return q, pk, pv, sk, sv, lens


@pytest.mark.parametrize("noncontiguous", [False, True])
@pytest.mark.parametrize("case", CASES)
def test_relay_equals_concatenated_attention(case, noncontiguous):
    gen = torch.Generator().manual_seed(hash((case, noncontiguous)) % 2**31)
    inputs = random_inputs(*case, gen, noncontiguous)
    scale = case[4] ** -0.5
    got = relay_attention_ref(*inputs, scale)
    want = concat_attention(*inputs, scale)
    rel = (got - want).abs().max() / want.abs().max()
    assert got.dtype == torch.float64 and rel < 1e-10, f"relative error {rel:.3e}"


def test_empty_suffix_is_pure_prefix_attention():
    """Suffix length 0: queries see only the prefix (the suffix part contributes nothing)."""
    gen = torch.Generator().manual_seed(7)
    q = torch.randn(3, 8, 1, 16, generator=gen, dtype=torch.float64)
    pk, pv = (torch.randn(2, 9, 16, generator=gen, dtype=torch.float64) for _ in range(2))
    sk, sv = (torch.randn(3, 2, 4, 16, generator=gen, dtype=torch.float64) for _ in range(2))
    got = relay_attention_ref(q, pk, pv, sk, sv, torch.zeros(3, dtype=torch.long) + 0, 0.25)
    # suffix_lens 0 with q = 1 puts the query before every suffix key: plain prefix attention.
    k, v = pk.repeat_interleave(4, 0), pv.repeat_interleave(4, 0)
    want = torch.softmax(q @ k.transpose(1, 2) * 0.25, dim=-1) @ v
    assert (got - want).abs().max() / want.abs().max() < 1e-10
