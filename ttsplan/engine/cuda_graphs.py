"""Decode steps and speculative rounds replayed from CUDA graphs, one graph per batch-size bucket,
padded rows masked.

Small-batch decode is launch-bound in eager mode (hundreds of kernels per step, k + 1 forward passes
and the acceptance rule per round); a captured graph replays the whole step or round with one launch.
Graphs are captured per request (the prompt length is baked into the kernels' launch parameters):
the full batch's bucket up front, each smaller one the first time the shrinking batch needs it.
"""
import time

import torch

from ttsplan.engine.kv_cache import KVCache
from ttsplan.engine.model import Transformer
from ttsplan.engine.sampling import SamplingParams, sample


SHRINK = 4  # a speculative round's batch gets a smaller graph once it falls to 1/SHRINK of the one it replays


def bucket(batch: int, max_batch: int) -> int:
    """The smallest power of two >= batch, or max_batch."""
    return min(1 << (batch - 1).bit_length(), max_batch)


class GraphSet:
    """Graphs of one step function, one per key, sharing a memory pool.  A capture runs the function
    once first (compiling its kernels), and leaves the caches' committed lengths as they were: whatever
    the warm-up wrote lies past them, or rewrites what is there."""

    def __init__(self, caches: list[KVCache]):
        self.caches, self.graphs, self.outputs, self.pool = caches, {}, {}, None
        self.capture_s = 0.0  # every capture so far, the lazy ones mid-run included

    def replay(self, key, step):
        if key not in self.graphs:
            self.capture(key, step)
        self.graphs[key].replay()
        return self.outputs[key]

    def capture(self, key, step) -> None:
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        saved = [c.lens.clone() for c in self.caches]
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            step()  # warm-up: compiles kernels, sizes the pool
            for c, lens in zip(self.caches, saved):
                c.lens.copy_(lens)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool, stream=stream):
                self.outputs[key] = step()
        torch.cuda.current_stream().wait_stream(stream)
        self.pool = graph.pool()
        self.graphs[key] = graph
        for c, lens in zip(self.caches, saved):
            c.lens.copy_(lens)
        torch.cuda.synchronize()
        self.capture_s += time.perf_counter() - t0


def pad_rows(caches: list[KVCache], B: int, bs: int) -> None:
    """Padded rows B..bs-1 write at the start of dead rows: in bounds, never read."""
    for cache in caches:
        cache.lens[B:bs].zero_()


class GraphDecoder:
    """step(tokens [B, 1], u [B]) -> (next tokens [B], log-probs [B], confidences [B]) for the first B cache rows."""

    def __init__(self, model: Transformer, cache: KVCache, max_batch: int, params: SamplingParams):
        self.model, self.cache, self.max_batch, self.params = model, cache, max_batch, params
        self.tokens = torch.zeros(max_batch, 1, dtype=torch.long, device=model.device)
        self.u = torch.zeros(max_batch, device=model.device)
        self.graphs = GraphSet([cache])
        self.graphs.capture(max_batch, self._step(max_batch))

    @property
    def capture_s(self) -> float:
        return self.graphs.capture_s

    def _step(self, bs: int):
        def step():
            logits = self.model.decode(self.tokens[:bs], self.cache, static=True)[:, -1]
            return sample(logits, self.params, self.u[:bs])
        return step

    def __call__(self, tokens: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, ...]:
        B = tokens.shape[0]
        bs = bucket(B, self.max_batch)
        self.tokens[:B].copy_(tokens)
        self.tokens[B:bs].zero_()
        self.u[:B].copy_(u)
        pad_rows([self.cache], B, bs)
        return tuple(out[:B] for out in self.graphs.replay(bs, self._step(bs)))


class GraphRound:
    """round(feed [B, f], u [B, 2k + 1]) -> speculative.speculative_round's (packed results, next feed)
    for the first B rows of both caches, replayed from a graph.

    A round's graph holds k + 1 forward passes and takes 0.07-0.37 s to capture on an H100, as long as
    dozens of rounds: a shrinking batch keeps replaying the smallest graph captured so far (padded
    rows cost little while decoding is memory-bound) until it falls to 1/SHRINK of that graph's rows.  The
    first round (one-token feed) has a graph of its own: run eagerly it would cost more than its
    capture."""

    def __init__(self, round_fn, t_cache: KVCache, d_cache: KVCache, max_batch: int, k: int):
        dev = t_cache.lens.device
        self.round_fn, self.caches, self.max_batch = round_fn, [t_cache, d_cache], max_batch
        self.feed = torch.zeros(max_batch, 2, dtype=torch.long, device=dev)
        self.u = torch.zeros(max_batch, 2 * k + 1, device=dev)
        self.graphs = GraphSet(self.caches)

    @property
    def capture_s(self) -> float:
        return self.graphs.capture_s

    def __call__(self, feed: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, f = feed.shape
        bs = min((b for b, width in self.graphs.graphs if width == f and b >= B), default=self.max_batch)
        if bs >= SHRINK * bucket(B, self.max_batch):
            bs = bucket(B, self.max_batch)
        self.feed[:B, :f].copy_(feed)
        self.feed[B:bs].zero_()
        self.u[:B].copy_(u)
        pad_rows(self.caches, B, bs)
        packed, nxt = self.graphs.replay((bs, f), lambda: self.round_fn(self.feed[:bs, :f], self.u[:bs], static=True))
        return packed[:B], nxt[:B]
