"""Sampling: temperature, top-k, top-p on a batch of logits, seeded; greedy when temperature is 0.

`token_probs` returns the distribution a token is actually drawn from, so speculative
decoding can apply the min(1, p/q) rule to exactly these distributions.
"""
from dataclasses import dataclass

import torch

from ttsplan.errors import TTSPlanError


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
    if params.top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        before = sorted_p.cumsum(-1) - sorted_p  # mass strictly above each token
        sorted_p = sorted_p.masked_fill(before >= params.top_p, 0.0)
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_p)
        probs = probs / probs.sum(-1, keepdim=True)
    return probs


def draw(probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One token per row of probs [B, V] -> [B]."""
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def chosen_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """The model's own log-probability (temperature 1) of each chosen token: the confidence used by votes."""
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
