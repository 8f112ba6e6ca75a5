"""Decode steps replayed from CUDA graphs: one graph per batch-size bucket, padded rows masked.

Small-batch decode is launch-bound in eager mode (hundreds of kernels per step); a captured
graph replays the forward pass and the sampling with one launch.  Graphs are captured per
request (the prompt length is baked into the kernels' launch parameters): the full batch's
bucket up front, each smaller one the first time the shrinking batch needs it.
"""
import time

import torch

from ttsplan.engine.kv_cache import KVCache
from ttsplan.engine.model import Transformer
from ttsplan.engine.sampling import SamplingParams, sample


def bucket(batch: int, max_batch: int) -> int:
    """The smallest power of two >= batch, or max_batch."""
    return min(1 << (batch - 1).bit_length(), max_batch)


class GraphDecoder:
    """step(tokens [B, 1], u [B]) -> (next tokens [B], log-probs [B], confidences [B]) for the first B cache rows."""

    def __init__(self, model: Transformer, cache: KVCache, max_batch: int, params: SamplingParams):
        self.model, self.cache, self.max_batch, self.params = model, cache, max_batch, params
        self.tokens = torch.zeros(max_batch, 1, dtype=torch.long, device=model.device)
        self.u = torch.zeros(max_batch, device=model.device)
        self.graphs, self.outputs, self.pool = {}, {}, None
        self.capture_s = 0.0  # every capture so far, the lazy ones mid-run included
        self._capture(max_batch)

    def _step(self, bs: int):
        logits = self.model.decode(self.tokens[:bs], self.cache, static=True)[:, -1]
        return sample(logits, self.params, self.u[:bs])

    def _capture(self, bs: int) -> None:
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        saved_lens = self.cache.lens.clone()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            self._step(bs)  # warm-up: compiles kernels, sizes the pool
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool, stream=stream):
                self.outputs[bs] = self._step(bs)
        torch.cuda.current_stream().wait_stream(stream)
        self.pool = graph.pool()
        self.graphs[bs] = graph
        self.cache.lens.copy_(saved_lens)  # capture wrote only uncommitted KV; lengths are as before
        torch.cuda.synchronize()
        self.capture_s += time.perf_counter() - t0

    def __call__(self, tokens: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, ...]:
        B = tokens.shape[0]
        bs = bucket(B, self.max_batch)
        self.tokens[:B].copy_(tokens)
        self.tokens[B:bs].zero_()
        self.u[:B].copy_(u)
        self.cache.lens[B:bs].zero_()  # padded rows write at position 0 of dead rows: in bounds, never read
        if bs not in self.graphs:
            self._capture(bs)
        self.graphs[bs].replay()
        return tuple(out[:B] for out in self.outputs[bs])
