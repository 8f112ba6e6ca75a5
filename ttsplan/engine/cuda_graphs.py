"""Decode steps replayed from CUDA graphs: one graph per batch-size bucket, padded rows masked.

Small-batch decode is launch-bound in eager mode (hundreds of kernels per step); a captured
graph replays them with one launch.  Graphs are captured per request (the prompt length is
baked into the kernels' launch parameters) for the buckets up to the branch count.
"""
import torch

from ttsplan.engine.kv_cache import KVCache
from ttsplan.engine.model import Transformer


def buckets_up_to(n: int) -> list[int]:
    sizes, b = [], 1
    while b < n:
        sizes.append(b)
        b *= 2
    return sizes + [n]


class GraphDecoder:
    """decode(tokens [B, 1]) -> logits [B, V] for the first B cache rows, through a captured graph."""

    def __init__(self, model: Transformer, cache: KVCache, max_batch: int):
        self.cache = cache
        self.tokens = torch.zeros(max_batch, 1, dtype=torch.long, device=model.device)
        self.graphs, self.logits = {}, {}
        pool = None
        saved_lens = cache.lens.clone()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for bs in sorted(buckets_up_to(max_batch), reverse=True):
                model.decode(self.tokens[:bs], cache, static=True)  # warm-up: compiles kernels, sizes the pool
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=pool, stream=stream):
                    self.logits[bs] = model.decode(self.tokens[:bs], cache, static=True)[:, -1]
                pool = graph.pool()
                self.graphs[bs] = graph
        torch.cuda.current_stream().wait_stream(stream)
        cache.lens.copy_(saved_lens)  # capture wrote only uncommitted KV; lengths are as before

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        B = tokens.shape[0]
        bs = min(b for b in self.graphs if b >= B)
        self.tokens[:B].copy_(tokens)
        self.tokens[B:bs].zero_()
        self.cache.lens[B:bs].zero_()  # padded rows write at position 0 of dead rows: in bounds, never read
        self.graphs[bs].replay()
        return self.logits[bs][:B]
