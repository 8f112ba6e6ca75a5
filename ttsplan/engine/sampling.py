"""Sampling: temperature, top-k, top-p on a batch of logits, seeded; greedy when temperature is 0.

`token_probs` returns the distribution a token is actually drawn from, so speculative
decoding can apply the min(1, p/q) rule to exactly these distributions.  `token_scores` gives
what the vote rules weigh a branch by: each chosen token's log-probability and DeepConf's token
confidence (the negated mean log-probability of the CONFIDENCE_TOP_K most likely tokens).
"""
from dataclasses import dataclass

import torch

from ttsplan.errors import TTSPlanError
from ttsplan.voting import CONFIDENCE_TOP_K



@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.7
    top_p: float = 0.95
    top_k: int = 0               # 0: no top-k cut
    max_new_tokens: int = 512
    seed: int = 0
    ignore_eos: bool = False

    def __post_init__(self):
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.top_k < 0 or self.max_new_tokens < 1:
            raise TTSPlanError("sampling needs temperature >= 0, 0 < top-p <= 1, top-k >= 0, max-new-tokens >= 1")


def token_probs(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """logits [..., V] -> float32 probabilities [..., V] after temperature, top-k and top-p."""
    logits = logits.float()
    if params.temperature == 0:
        return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).float()
    logits = logits / params.temperature
    if params.top_k and params.top_k < logits.shape[-1]:
        kth = torch.topk(logits, params.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return nucleus(probs, params.top_p) if params.top_p < 1.0 else probs


SORT_FREE_MIN_ROWS = 16  # on a GPU: below this many rows the sort is faster (benchmarks/gpu_speculative.py)


def nucleus(probs: torch.Tensor, top_p: float, candidates: tuple[int, ...] = (1024, 16384)) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose mass reaches top_p, renormalized; tokens tied
    with the least likely one kept are all kept, so that every path keeps the same set.

    On a GPU, with no host sync (the form CUDA graphs capture): from SORT_FREE_MIN_ROWS rows on (a
    verification scores b x (k + 1) of them) the threshold comes from a bisection kernel
    (kernels/sampling_triton.py), 1.1-4.3x faster than sorting 152k tokens per row on an H100; below
    that the sort is faster and is kept.  On the CPU, where sorting 8 x 152k takes 70 ms on 2 cores,
    the nucleus lies inside the top-k tokens whenever their mass already reaches top_p: a few
    growing k are tried first, and everything is sorted only when none suffices.
    """
    rows = probs.numel() // probs.shape[-1]
    top_p = float32(top_p)
    if probs.is_cuda and rows >= SORT_FREE_MIN_ROWS:
        return nucleus_sort_free(probs, top_p)
    for k in () if probs.is_cuda else candidates:
        if k < probs.shape[-1]:
            top = probs.topk(k, dim=-1).values
            if bool((top.sum(-1) >= top_p).all()):
                break
    else:
        top = probs.sort(dim=-1, descending=True).values
    mass = top.double()  # float64 sums: see kernels/sampling_triton.py
    inside = mass.cumsum(-1) - mass < top_p  # less than top_p of the mass strictly above
    threshold = top.masked_fill(~inside, float("inf")).amin(-1, keepdim=True)
    kept = probs.masked_fill(probs < threshold, 0.0)
    return kept / kept.sum(-1, keepdim=True)


def float32(x: float) -> float:
    """x rounded to float32: the top-p every path compares against, as the kernels see it."""
    return float(torch.tensor(x, dtype=torch.float32))


def nucleus_sort_free(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """nucleus() through the threshold kernel (a GPU, or the Triton interpreter)."""
    from ttsplan.kernels.sampling_triton import top_p_threshold  # optional: Triton is an extra
    kept = probs.masked_fill(probs < top_p_threshold(probs, top_p).unsqueeze(-1), 0.0)
    return kept / kept.sum(-1, keepdim=True)


def uniforms(generator: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.rand(*shape, generator=generator, device=generator.device)


def draw(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """One token per row of probs [..., V] at the uniforms u [...] by inverse CDF: exact, O(V)."""
    cdf = probs.cumsum(-1)
    x = u.to(cdf.dtype).unsqueeze(-1) * cdf[..., -1:]
    # First index whose cdf exceeds x: never a zero-probability token.
    return torch.searchsorted(cdf, x, right=True).clamp_(max=probs.shape[-1] - 1).squeeze(-1)


def sample(logits: torch.Tensor, params: SamplingParams, u: torch.Tensor):
    """logits [B, V] -> (tokens [B] drawn at the uniforms u [B], their log-probabilities [B],
    token confidences [B]).  On a GPU, top-p sampling without top-k runs in the fused kernel
    (kernels/sampling_triton.py: the probabilities are never written); elsewhere token_probs and draw."""
    if logits.is_cuda and params.temperature > 0 and params.top_k == 0 and params.top_p < 1:
        from ttsplan.kernels.sampling_triton import sample_top_p  # optional: Triton is an extra
        tokens = sample_top_p(logits.float(), params.temperature, float32(params.top_p), u)
    else:
        tokens = draw(token_probs(logits, params), u)
    return tokens, *token_scores(logits, tokens)


def token_scores(logits: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """From the model's own distribution (temperature 1): each chosen token's log-probability, and
    DeepConf's token confidence -mean(top-k log-probabilities), large where the model is sure."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    chosen = logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    confidence = -logp.topk(min(CONFIDENCE_TOP_K, logp.shape[-1]), dim=-1).values.mean(-1)
    return chosen, confidence
