"""Sampling transforms against direct definitions, and the sampler's distribution.  The GPU's sort-free
top-p kernel runs in the Triton interpreter where there is no GPU."""
import os

import torch
from scipy.stats import chisquare

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

from ttsplan.engine.sampling import SamplingParams, draw, nucleus, nucleus_sort_free, token_probs, uniforms  # noqa: E402
from ttsplan.kernels.sampling_triton import sample_top_p, top_p_threshold  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def full_sort_nucleus(probs, top_p):
    out = torch.zeros_like(probs)
    for r in range(probs.shape[0]):
        order = probs[r].argsort(descending=True)
        mass = 0.0
        for i in order.tolist():
            if mass >= top_p:
                break
            out[r, i] = probs[r, i]
            mass += probs[r, i].item()
    return out / out.sum(-1, keepdim=True)


def test_nucleus_matches_definition_on_both_paths():
    gen = torch.Generator().manual_seed(0)
    peaked = torch.softmax(torch.randn(4, 3000, generator=gen) * 4, -1)   # nucleus inside the top 64
    middle = torch.softmax(torch.randn(4, 3000, generator=gen) * 2, -1)   # needs the second candidate set
    flat = torch.softmax(torch.randn(4, 3000, generator=gen) * 0.1, -1)   # needs the full sort
    for probs in (peaked, middle, flat):
        for top_p in (0.5, 0.9, 0.99):
            assert torch.allclose(nucleus(probs, top_p, candidates=(64, 256)), full_sort_nucleus(probs, top_p), atol=1e-6)


def test_top_k_temperature_and_greedy():
    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0]])
    p = token_probs(logits, SamplingParams(temperature=0.5, top_p=1.0, top_k=2))
    want = torch.softmax(torch.tensor([4.0, 2.0]), -1)
    assert torch.allclose(p[0, :2], want) and p[0, 2:].eq(0).all()
    assert token_probs(logits, SamplingParams(temperature=0)).tolist() == [[1.0, 0.0, 0.0, 0.0]]


def test_draw_follows_the_distribution_and_skips_zeros():
    probs = torch.tensor([0.0, 0.5, 0.0, 0.2, 0.3, 0.0]).expand(20000, -1)
    tokens = draw(probs, uniforms(torch.Generator().manual_seed(1), len(probs)))
    freq = torch.bincount(tokens, minlength=6).float() / len(tokens)
    assert freq[[0, 2, 5]].eq(0).all()
    assert torch.allclose(freq, probs[0], atol=0.015)


def sort_free_nucleus(probs, top_p, cap):
    kept = probs * (probs >= top_p_threshold(probs, top_p, cap).unsqueeze(-1))
    return kept / kept.sum(-1, keepdim=True)


def test_sort_free_threshold_keeps_the_sorted_nucleus():
    """Peaked to flat rows, with the last bracket sorted (up to cap values) or bisected over the row."""
    gen = torch.Generator().manual_seed(2)
    for scale in (4.0, 2.0, 0.1):
        for V, cap in ((3001, 512), (5003, 8)):
            probs = torch.softmax(torch.randn(3, V, generator=gen) * scale, -1)
            for top_p in (0.5, 0.9, 0.99):
                got = sort_free_nucleus(probs.to(DEVICE), top_p, cap).cpu()
                assert torch.allclose(got, full_sort_nucleus(probs, top_p), atol=1e-6), (scale, V, top_p)


def one_token_short(probs, top_p):
    """A top-p whose sorted nucleus of probs [1, V] holds one token fewer than top_p's (checked)."""
    n = int((full_sort_nucleus(probs, top_p)[0] > 0).sum())
    mass = probs[0].sort(descending=True).values.cumsum(0)
    short_p = float(mass[n - 3] + mass[n - 2]) / 2
    assert int((full_sort_nucleus(probs, short_p)[0] > 0).sum()) == n - 1
    return short_p


def nucleus_pvalue(tokens, want):
    """Chi-square p-value of drawn tokens against the nucleus distribution want (0 if any lies outside)."""
    counts = torch.bincount(tokens, minlength=len(want)).double()
    support = want > 0
    if counts[~support].sum() > 0:
        return 0.0
    expected = want[support].double() * len(tokens)
    return chisquare(counts[support], expected * counts[support].sum() / expected.sum()).pvalue


def test_sort_free_sampling_draws_what_the_sort_draws():
    """Chi-square of 40000 sort-free draws against the sorted nucleus; a threshold that is wrong by one
    token (the nucleus of a slightly smaller top-p) fails the same test."""
    gen = torch.Generator().manual_seed(3)
    probs = torch.softmax(torch.randn(1, 400, generator=gen) * 2.5, -1)
    top_p = 0.9
    want = full_sort_nucleus(probs, top_p)[0]
    wrong_p = one_token_short(probs, top_p)
    draws = 40000
    u = uniforms(torch.Generator().manual_seed(4), draws)
    for p, should_pass in ((top_p, True), (wrong_p, False)):
        kept = nucleus_sort_free(probs.to(DEVICE), p).cpu().expand(draws, -1)
        pvalue = nucleus_pvalue(draw(kept, u), want)
        assert (pvalue > 1e-3) == should_pass, (p, pvalue)


def test_sort_free_threshold_keeps_every_tie():
    """Logits on a coarse grid tie hundreds of tokens on each value: more than the cap, so the row is
    bisected, and all tokens tied at the threshold are kept, as the sorting path keeps them."""
    gen = torch.Generator().manual_seed(5)
    probs = torch.softmax((torch.randn(2, 4001, generator=gen) * 2).round(), -1)
    for top_p in (0.5, 0.9):
        got = sort_free_nucleus(probs.to(DEVICE), top_p, 64).cpu()
        assert torch.allclose(got, nucleus(probs, top_p), atol=1e-6)
        kept = probs[got > 0]
        assert (probs[probs >= kept.min()] > 0).all()


def test_fused_sampling_draws_the_sorted_nucleus():
    """From logits at temperature 0.7, by rejection: chi-square of 300 draws per top-p against the sorted
    nucleus (top-p 0.5 rejects the first draw about half the time, so later rounds run too).  The test has
    the power to see one token too many: at the same draws, the sorted nucleus of a slightly smaller top-p
    (one token fewer, drawn by the reference sampler) fails it.  8 tokens keep the interpreter to seconds
    (and give the test that power at 300 draws for 40 of 50 random logits; at 12 tokens, 9 of 50)."""
    gen = torch.Generator().manual_seed(6)
    V, temp, draws = 8, 0.7, 300
    logits = torch.randn(1, V, generator=gen) * 0.8
    probs = torch.softmax(logits / temp, -1)
    u = uniforms(torch.Generator().manual_seed(7), draws)
    for top_p in (0.9, 0.5):
        want = full_sort_nucleus(probs, top_p)[0]
        got = sample_top_p(logits.expand(draws, -1).to(DEVICE), temp, top_p, u.to(DEVICE)).cpu()
        assert nucleus_pvalue(got, want) > 1e-3, top_p
    short = full_sort_nucleus(probs, one_token_short(probs, 0.9))
    assert nucleus_pvalue(draw(short.expand(draws, -1), u), full_sort_nucleus(probs, 0.9)[0]) < 1e-3
