"""N branches from one prompt: prefill once, then decode every live branch as one batch.

The prompt's KV is computed and stored once; each decode step feeds every live
branch's last token through relay attention; finished branches (EOS or length)
leave the batch.
"""
import time
from dataclasses import dataclass, field

import torch

from ttsplan.engine.config import ModelConfig
from ttsplan.engine.kv_cache import KVCache
from ttsplan.engine.model import Transformer
from ttsplan.engine.sampling import SamplingParams, sample, uniforms
from ttsplan.errors import TTSPlanError
from ttsplan.hardware import synchronize


@dataclass
class Branch:
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    confidences: list[float] = field(default_factory=list)  # DeepConf token confidence, per token
    finish: str = ""  # "eos" or "length" once done


@dataclass
class GenerationStats:
    prompt_tokens: int
    prefill_s: float = 0.0
    capture_s: float = 0.0  # CUDA graph capture, per request (0 on the CPU)
    decode_s: float = 0.0
    steps: int = 0
    new_tokens: int = 0     # every generated token, the first (from prefill logits) included
    decode_tokens: int = 0  # tokens produced by decode steps: what decode tokens/s counts
    bytes_read: int = 0  # weights + KV read by decode steps (the memory-traffic floor)

    @property
    def tokens_per_s(self) -> float:
        return self.decode_tokens / self.decode_s if self.decode_s else 0.0


def check_request(cfg: ModelConfig, prompt_len: int, branches: int, params: SamplingParams) -> None:
    if branches < 1:
        raise TTSPlanError(f"branches must be at least 1, got {branches}")
    if prompt_len < 1:
        raise TTSPlanError("the prompt is empty")
    if prompt_len + params.max_new_tokens > cfg.max_position_embeddings:
        raise TTSPlanError(f"prompt of {prompt_len} tokens + {params.max_new_tokens} new tokens exceeds the "
                           f"model's window of {cfg.max_position_embeddings} tokens")


def step_bytes(cfg: ModelConfig, prefix_len: int, suffix_tokens: int, dtype: torch.dtype) -> int:
    """Bytes a decode step must read at least: weights once, prefix KV once, each branch's own KV once
    (suffix_tokens: the own tokens of all live branches together, the ones being fed included)."""
    width = torch.finfo(dtype).bits // 8
    kv_token = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * width
    return cfg.weight_bytes(width) + kv_token * (prefix_len + suffix_tokens)


def append(branch: Branch, token: int, logprob: float, confidence: float, eos_ids: set[int],
           params: SamplingParams) -> None:
    branch.tokens.append(token)
    branch.logprobs.append(logprob)
    branch.confidences.append(confidence)
    if token in eos_ids and not params.ignore_eos:
        branch.finish = "eos"
    elif len(branch.tokens) >= params.max_new_tokens:
        branch.finish = "length"


def decoder(model: Transformer, cache: KVCache, n: int, params: SamplingParams, cuda_graphs: bool):
    """One decode step and sampling for the live rows, (tokens [B, 1], u [B]) -> (next tokens [B],
    log-probs [B], confidences [B]): graph replay on a GPU."""
    if cuda_graphs and model.device.type == "cuda":
        from ttsplan.engine.cuda_graphs import GraphDecoder
        return GraphDecoder(model, cache, n, params)
    return lambda tokens, u: sample(model.decode(tokens, cache)[:, -1], params, u)


def generate(model: Transformer, prompt: list[int], n: int, params: SamplingParams,
             eos_ids: set[int], on_step=None, cuda_graphs: bool = True) -> tuple[list[Branch], GenerationStats]:
    cfg = model.cfg
    check_request(cfg, len(prompt), n, params)
    cache = KVCache.allocate(cfg, len(prompt), n, params.max_new_tokens, model.dtype, model.device)
    gen = torch.Generator(device=model.device).manual_seed(params.seed)
    stats = GenerationStats(prompt_tokens=len(prompt))
    branches = [Branch() for _ in range(n)]

    t0 = time.perf_counter()
    logits = model.prefill(torch.tensor(prompt, dtype=torch.long), cache).expand(n, -1)
    tokens, logprobs, confs = sample(logits, params, uniforms(gen, n))
    synchronize(model.device)
    stats.prefill_s = time.perf_counter() - t0
    step = decoder(model, cache, n, params, cuda_graphs)
    synchronize(model.device)
    stats.capture_s = time.perf_counter() - t0 - stats.prefill_s
    t0 = time.perf_counter()
    rows = list(range(n))  # branch id held by each live cache row
    while True:
        for row, (tok, lp, c) in enumerate(zip(tokens.tolist(), logprobs.tolist(), confs.tolist())):
            append(branches[rows[row]], tok, lp, c, eos_ids, params)
        if stats.steps:
            stats.decode_tokens += len(rows)
        stats.new_tokens += len(rows)
        keep = [r for r, b in enumerate(rows) if not branches[b].finish]
        if not keep:
            break
        cache.keep_rows(keep)
        rows = [rows[r] for r in keep]
        last = tokens[torch.tensor(keep, device=tokens.device)].view(-1, 1)
        stats.bytes_read += step_bytes(cfg, cache.prefix_len, sum(len(branches[b].tokens) for b in rows), model.dtype)
        tokens, logprobs, confs = step(last, uniforms(gen, len(rows)))
        cache.lens[:len(rows)] += 1
        stats.steps += 1
        if on_step:
            on_step(stats)
    synchronize(model.device)
    stats.decode_s = time.perf_counter() - t0
    return branches, stats
