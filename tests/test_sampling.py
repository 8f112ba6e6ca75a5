"""Sampling transforms against direct definitions, and the sampler's distribution."""
import torch

from ttsplan.engine.sampling import SamplingParams, draw, nucleus, token_probs, uniforms


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
