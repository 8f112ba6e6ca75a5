"""A device profile: what each part of a request costs on this device, timed the way the engine runs it.

  decode step (q = 1)  the engine's decoder: forward + sampling, replayed from a CUDA graph on a GPU
  verify (q = k + 1)   speculative.verify: the target over k + 1 tokens per branch + the acceptance rule
                       (a CUDA graph on a GPU, as inside the engine's graph-replayed round)
  draft step           speculative.draft_step: the draft's proposal, q = 1 (a CUDA graph on a GPU)
  prefill              Transformer.prefill of the prompt
  capture              GraphDecoder's capture of one batch bucket (k = 0), GraphRound's of one round
                       at draft length k (GPU; once per request and bucket)
  loop overhead        a real generate() loop's time per step beyond its steps: host bookkeeping
  round overhead       a real speculative round's time beyond its draft steps and its verification
  compaction           KVCache.keep_rows after a branch finishes: the live rows behind it move down

Each step point (b live branches, q query tokens per branch, shared prompt P, own tokens S per
branch) runs on a KV cache filled from a real prefill of a P-token prompt (GSM8K text, or random
tokens for random weights), so sampling sees realistic distributions.  Every point is warmed up and
timed with the device synchronized around each call: median, p10 and p90 of the repeats.
Points already in the output profile are not measured again (a killed run resumes).
"""
import gc
import statistics
import time
from dataclasses import dataclass

import torch

from ttsplan.engine.cuda_graphs import GraphRound, GraphSet
from ttsplan.engine.generate import decoder, generate
from ttsplan.engine.kv_cache import KVCache, free_memory_bytes, kv_cache_bytes
from ttsplan.engine.model import Transformer
from ttsplan.engine.sampling import SamplingParams, token_probs
from ttsplan.engine.speculative import draft_step, generate_speculative, speculative_round, verify
from ttsplan.errors import TTSPlanError
from ttsplan.hardware import synchronize
from ttsplan.measure.schema import BatchCost, CompactCost, PrefillCost, StepCost, save_profile

TIMING_PARAMS = SamplingParams(temperature=0.7, top_p=0.95)


@dataclass(frozen=True)
class Grid:
    """The axes of a step-cost grid.  Every b x q pair is measured at the core (prompt, own) and at
    each of `contexts` (`decode_contexts` too where q = 1), so that the cost's slope in context is
    measured at every b and q (the cost model interpolates between them); the prompt x own sweep is
    measured at the smallest and largest b, q = 1 and the middle q."""
    branches: tuple[int, ...]
    query: tuple[int, ...]
    prompt: tuple[int, ...]
    own: tuple[int, ...]
    core: tuple[int, int]
    contexts: tuple[tuple[int, int], ...] = ()
    decode_contexts: tuple[tuple[int, int], ...] = ()

    def points(self, window: int, query: tuple[int, ...] | None = None) -> list[tuple[int, int, int, int]]:
        query = query or self.query
        pts = [(b, q, p, s) for b in self.branches for q in query
               for p, s in (self.core, *self.contexts, *(self.decode_contexts if q == 1 else ()))]
        sweep_q = sorted({query[0], query[len(query) // 2]})
        pts += [(b, q, p, s) for b in sorted({self.branches[0], self.branches[-1]}) for q in sweep_q
                for p in self.prompt for s in self.own]
        seen, out = set(), []
        for pt in pts:
            if pt not in seen and pt[2] + pt[3] + pt[1] <= window:
                seen.add(pt)
                out.append(pt)
        return out

    def as_dict(self) -> dict:
        return {"branches": list(self.branches), "query": list(self.query), "prompt": list(self.prompt),
                "own": list(self.own), "core": list(self.core), "contexts": [list(c) for c in self.contexts],
                "decode_contexts": [list(c) for c in self.decode_contexts]}

    def powers_of_two(self) -> list[int]:
        """The batch sizes that are CUDA-graph buckets (cuda_graphs.bucket) of every larger batch."""
        return [b for b in self.branches if b & (b - 1) == 0]


GRIDS = {
    ("cpu", False): Grid((1, 2, 4, 8, 16), (1, 2, 3, 5, 9), (128, 1024), (0, 256, 512), (128, 256)),
    ("cpu", True): Grid((1, 4, 16), (1, 3), (128,), (0, 256), (128, 128)),
    # Every b a plan's full batch or graph bucket can take is measured or has neighbours 1.5x apart; the
    # core and contexts are plain attention (prompts under 512 tokens, as every shipped task's) and relay.
    ("cuda", False): Grid((1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128), (1, 2, 3, 5, 9), (64, 512, 8192), (0, 1536),
                          (128, 256), contexts=((128, 768),), decode_contexts=((2048, 0),)),
    ("cuda", True): Grid((1, 8, 64), (1, 5), (512,), (0, 512), (512, 256)),
}
LOOP_STEPS = {"cpu": 24, "cuda": 64}
ROUNDS = {"cpu": 16, "cuda": 16}  # a real speculative generation this long, for a round's overhead


def default_grid(device: torch.device, quick: bool) -> Grid:
    return GRIDS[(device.type, quick)]


def timed(fn, device: torch.device, warmup: int, repeats: int, budget_s: float,
          back_to_back: int = 1) -> tuple[float, float, float, int]:
    """(median, p10, p90 in ms per call, repeats) of fn() with the device synchronized around each
    repeat of `back_to_back` calls (a round's draft steps run back to back, with no sync between);
    stops early once budget_s is spent (at least 3 repeats)."""
    for _ in range(warmup):
        fn()
    times, t_start = [], time.perf_counter()
    for i in range(repeats):
        synchronize(device)
        t0 = time.perf_counter()
        for _ in range(back_to_back):
            fn()
        synchronize(device)
        times.append((time.perf_counter() - t0) * 1e3 / back_to_back)
        if i >= 2 and time.perf_counter() - t_start > budget_s:
            break
    times.sort()
    pick = lambda f: times[min(len(times) - 1, int(f * len(times)))]
    return statistics.median(times), pick(0.1), pick(0.9), len(times)


def replayed(step, caches: list[KVCache]):
    """step(static) as the engine runs it inside a round: replayed from a CUDA graph on a GPU."""
    if not caches[0].lens.is_cuda:
        return step
    graphs = GraphSet(caches)
    graphs.capture(0, lambda: step(static=True))
    return lambda: graphs.replay(0, None)


def capacity_for(own: int, q: int) -> int:
    """The own-token capacity a point's cache gets: a request's max_new_tokens, which the engine's graphs
    span (relay attention launches splits over the whole capacity), is typically a few hundred tokens
    beyond what a branch holds; round up to a multiple of 512."""
    return 512 * -(-(own + q + 1) // 512)


def oversized_points(models: list[Transformer], points, core: tuple[int, int]) -> list:
    """The points whose KV caches do not fit in free memory, decided before any allocation: a context
    or sweep point is skipped, a core point (every b level needs one) refused."""
    def need(pt):
        b, q, p, s = pt
        return sum(kv_cache_bytes(m.cfg, p, b, capacity_for(s, q), m.dtype) for m in models)
    free = free_memory_bytes(models[0].device)
    too_large = [pt for pt in points if need(pt) > 0.8 * free]
    for b, q, p, s in too_large:
        if (p, s) == tuple(core):
            raise TTSPlanError(f"the grid point b={b}, q={q}, prompt {p}, own {s} needs {need((b, q, p, s)) / 2**30:.2f} "
                               f"GiB of KV cache but only {free / 2**30:.2f} GiB is free on {models[0].device}: use "
                               "--quick or fewer --branches")
    return too_large


class PromptCaches:
    """One real prefill per prompt length, shared by every point of that length; each point gets its
    own suffix rows, filled from the prompt's KV so attention and sampling see realistic values."""

    def __init__(self, model: Transformer, prompt_ids: list[int]):
        self.model, self.prompt_ids, self.prefixes = model, prompt_ids, {}

    def cache(self, prompt: int, b: int, own: int, q: int = 1) -> KVCache:
        m = self.model
        if prompt not in self.prefixes:
            base = KVCache.allocate(m.cfg, prompt, 1, 1, m.dtype, m.device)
            m.prefill(torch.tensor(self.prompt_ids[:prompt]), base)
            self.prefixes = {prompt: (base.prefix_k, base.prefix_v)}  # one prompt length held at a time
        pk, pv = self.prefixes[prompt]
        capacity = capacity_for(own, q)
        cache = KVCache.allocate(m.cfg, 0, b, capacity, m.dtype, m.device)
        cache.prefix_k, cache.prefix_v = pk, pv
        for buf, src in ((cache.suffix_k, pk), (cache.suffix_v, pv)):
            for layer, s in zip(buf, src):
                reps = -(-capacity // max(prompt, 1))
                layer.copy_(s.repeat(1, reps, 1)[:, :capacity].unsqueeze(0).expand(b, -1, -1, -1))
        cache.lens.fill_(own)
        return cache


def step_point(model: Transformer, caches: PromptCaches, b: int, q: int, prompt: int, own: int,
               repeats: int, budget_s: float) -> StepCost:
    """One decode step (q = 1) or one verification of q - 1 drafts, as the engine runs it."""
    dev = model.device
    cache = caches.cache(prompt, b, own, q)
    gen = torch.Generator(device=dev).manual_seed(0)
    tokens = torch.tensor(caches.prompt_ids[:b * q], device=dev).view(b, q) if len(caches.prompt_ids) >= b * q \
        else torch.randint(0, model.cfg.vocab_size, (b, q), device=dev, generator=gen)
    if q == 1:
        step = decoder(model, cache, b, TIMING_PARAMS, cuda_graphs=True)
        u = torch.rand(b, device=dev, generator=gen)
        fn = lambda: step(tokens, u)
    else:
        drafts = tokens[:, 1:]
        dist = token_probs(torch.randn(b, q - 1, model.cfg.vocab_size, device=dev, generator=gen) * 4, TIMING_PARAMS)
        u = torch.rand(b, q, device=dev, generator=gen)
        fn = replayed(lambda static=False: verify(model, cache, tokens[:, :1], drafts, dist, TIMING_PARAMS, u,
                                                  static=static), [cache])
    ms, p10, p90, n = timed(fn, dev, warmup=3 if dev.type == "cuda" else 1, repeats=repeats, budget_s=budget_s)
    return StepCost(b, q, prompt, own, round(ms, 4), round(p10, 4), round(p90, 4), n)


def draft_point(draft: Transformer, caches: PromptCaches, b: int, prompt: int, own: int,
                repeats: int, budget_s: float) -> StepCost:
    dev = draft.device
    cache = caches.cache(prompt, b, own)
    gen = torch.Generator(device=dev).manual_seed(0)
    feed = torch.tensor(caches.prompt_ids[:b], device=dev).view(b, 1)
    u = torch.rand(b, device=dev, generator=gen)

    def step(static=False):
        out = draft_step(draft, cache, feed, TIMING_PARAMS, u, static)
        cache.lens[:b] -= 1  # uncommit: every repeat runs at the same length
        return out
    fn = replayed(step, [cache])
    ms, p10, p90, n = timed(fn, dev, warmup=3 if dev.type == "cuda" else 1, repeats=repeats, budget_s=budget_s,
                            back_to_back=4 if dev.type == "cuda" else 1)
    return StepCost(b, 1, prompt, own, round(ms, 4), round(p10, 4), round(p90, 4), n)


def prefill_point(model: Transformer, prompt_ids: list[int], prompt: int, repeats: int, budget_s: float) -> PrefillCost:
    cache = KVCache.allocate(model.cfg, prompt, 1, 1, model.dtype, model.device)
    tokens = torch.tensor(prompt_ids[:prompt])
    ms, _, _, _ = timed(lambda: model.prefill(tokens, cache), model.device, warmup=1, repeats=repeats, budget_s=budget_s)
    return PrefillCost(prompt, round(ms, 4))


def capture_point(model: Transformer, caches: PromptCaches, b: int, prompt: int, own: int) -> BatchCost:
    """Seconds GraphDecoder spends capturing one bucket (the first capture also compiles kernels;
    that warm-up is left out by capturing twice and keeping the second)."""
    for _ in range(2):
        step = decoder(model, caches.cache(prompt, b, own), b, TIMING_PARAMS, cuda_graphs=True)
    return BatchCost(b, 0, round(step.capture_s * 1e3, 4))


def round_capture_point(target: Transformer, draft: Transformer, t_caches: PromptCaches, d_caches: PromptCaches,
                        b: int, k: int, prompt: int, own: int) -> BatchCost:
    """Seconds GraphRound spends capturing one round graph at batch b and draft length k (the second of
    two captures: the first also compiles)."""
    dev = target.device
    for _ in range(2):
        t_cache, d_cache = t_caches.cache(prompt, b, own, k + 1), d_caches.cache(prompt, b, own, k + 1)

        def round_fn(feed, u, static=False, t_cache=t_cache, d_cache=d_cache):
            return speculative_round(target, draft, t_cache, d_cache, feed, k, TIMING_PARAMS, TIMING_PARAMS, u,
                                     static=static)
        graphs = GraphRound(round_fn, t_cache, d_cache, b, k)
        feed = torch.tensor(t_caches.prompt_ids[:2 * b], device=dev).view(b, 2)
        graphs(feed, torch.rand(b, 2 * k + 1, device=dev))
    return BatchCost(b, k, round(graphs.capture_s * 1e3, 4))


def compaction_point(model: Transformer, caches: PromptCaches, b: int, moved: int, upto: int, prompt: int,
                     repeats: int, budget_s: float) -> CompactCost:
    """KVCache.keep_rows with the last `moved` of b live rows moving down one place (the row before them
    finished), copying `upto` tokens each: what a finish costs the decode loop."""
    cache = caches.cache(prompt, b, upto)
    keep = [r for r in range(b) if r != b - 1 - moved]
    ms, _, _, _ = timed(lambda: cache.keep_rows(keep, upto), model.device, warmup=2, repeats=repeats,
                        budget_s=budget_s)
    return CompactCost(b, moved, upto, round(ms, 4))


def loop_overhead_point(model: Transformer, caches: PromptCaches, b: int, prompt: int, steps: int,
                        repeats: int, budget_s: float) -> BatchCost:
    """A real generate() of `steps` decode steps from a `prompt`-token prompt, less `steps` isolated
    decode steps at the middle own length: the loop's host work per step."""
    params = SamplingParams(temperature=0.7, top_p=0.95, max_new_tokens=steps + 1, ignore_eos=True)
    ids = caches.prompt_ids[:prompt]
    _, stats = generate(model, ids, b, params, set())  # warm-up (captures graphs, compiles kernels)
    loop = []
    for _ in range(3):
        _, stats = generate(model, ids, b, params, set())
        loop.append(stats.decode_s * 1e3 / stats.steps)
    step = step_point(model, caches, b, 1, prompt, steps // 2, repeats, budget_s)
    return BatchCost(b, 0, round(statistics.median(loop) - step.ms, 4))


def round_overhead_point(target: Transformer, draft: Transformer, t_caches: PromptCaches, d_caches: PromptCaches,
                         b: int, k: int, prompt: int, rounds: int, repeats: int, budget_s: float) -> BatchCost:
    """A real speculative generation of about `rounds` rounds, less its parts timed alone (k draft
    steps and one verification of k + 1 tokens, at the middle own length): the round's own cost."""
    params = SamplingParams(temperature=0.7, top_p=0.95, max_new_tokens=rounds * (k + 1), ignore_eos=True)
    ids = t_caches.prompt_ids[:prompt]
    generate_speculative(target, draft, ids, b, params, set(), k)  # warm-up
    per_round, mid = [], 0
    for _ in range(2):
        branches, stats, spec = generate_speculative(target, draft, ids, b, params, set(), k)
        per_round.append(stats.decode_s * 1e3 / spec.rounds)
        mid = max(len(x.tokens) for x in branches) // 2
    verify_ms = step_point(target, t_caches, b, k + 1, prompt, mid, repeats, budget_s).ms
    draft_ms = draft_point(draft, d_caches, b, prompt, mid, repeats, budget_s).ms
    return BatchCost(b, k, round(statistics.median(per_round) - k * draft_ms - verify_ms, 4))


REPEATS = {"cpu": (7, 3.0), "cuda": (15, 0.6)}  # (most repeats, seconds per point)
DRAFT_LENGTHS = (1, 2, 4, 8)
ROUND_BRANCHES = (1, 4, 16, 64, 128)  # round overheads at these b (where the grid has them)
COMPACT_UPTO = (64, 1024)             # compaction: tokens each moved row copies


def plan_tasks(grid: Grid, window: int, draft_window: int | None, on_gpu: bool) -> list[tuple]:
    """Everything a device profile measures, as keys: ('step', b, q, P, S), ('prefill', P),
    ('capture', b), ('loop', b), ('compact', b, moved, upto), ('draft', b, P, S), ('draft-prefill', P),
    ('round', b, k), ('round-capture', b, k); ordered so that points of one prompt length run together
    (one prefill each).  Verification (q > 1) is measured only with a draft."""
    query = grid.query if draft_window is not None else (1,)
    tasks = [("step", *pt) for pt in grid.points(window, query)]
    prompts = sorted({*grid.prompt, grid.core[0], *(p for p, _ in grid.contexts + grid.decode_contexts)})
    tasks += [("prefill", p) for p in prompts]
    ends = sorted({grid.branches[0], grid.branches[len(grid.branches) // 2], grid.branches[-1]})
    buckets = grid.powers_of_two() if on_gpu else ends
    if on_gpu:
        tasks += [("capture", b) for b in grid.branches]
    tasks += [("loop", b) for b in buckets]
    tasks += [("compact", b, moved, upto) for b in buckets if b > 1 for moved in (0, b - 1) for upto in COMPACT_UPTO
              if upto + 1 <= window]
    if draft_window is not None:
        tasks += [("draft", b, p, s) for b, _, p, s in grid.points(min(window, draft_window), query=(1,))]
        tasks += [("draft-prefill", p) for p in prompts]
        round_b = sorted({grid.branches[0], grid.branches[-1], *(b for b in ROUND_BRANCHES if b in grid.branches)})
        tasks += [("round", b, k) for b in round_b for k in DRAFT_LENGTHS if k + 1 in grid.query]
        if on_gpu:
            tasks += [("round-capture", b, k) for b in buckets for k in DRAFT_LENGTHS if k + 1 in grid.query]
    order = {"step": 0, "draft": 1, "prefill": 2, "draft-prefill": 2, "capture": 3, "loop": 4, "compact": 4,
             "round": 5, "round-capture": 6}
    prompt_of = {"step": lambda t: t[3], "draft": lambda t: t[2]}
    return sorted(tasks, key=lambda t: (order[t[0]], prompt_of.get(t[0], lambda t: 0)(t)))


def measured_keys(profile) -> set[tuple]:
    keys = {("step", s.b, s.q, s.prompt, s.own) for s in profile.steps}
    keys |= {("prefill", p.prompt) for p in profile.prefill}
    keys |= {("capture", c.b) if c.k == 0 else ("round-capture", c.b, c.k) for c in profile.capture}
    keys |= {("loop", c.b) for c in profile.loop_overhead}
    keys |= {("compact", c.b, c.moved, c.upto) for c in profile.compaction}
    if profile.draft:
        keys |= {("draft", s.b, s.prompt, s.own) for s in profile.draft.steps}
        keys |= {("round", c.b, c.k) for c in profile.draft.round_overhead}
        keys |= {("draft-prefill", p.prompt) for p in profile.draft.prefill}
    return keys


def measure_device(profile, out, model: Transformer, prompt_ids: list[int], grid: Grid,
                   draft: Transformer | None = None, on_task=None):
    """Measure every task of the grid that the profile (new, or loaded from `out`) does not hold yet,
    saving it atomically after each one; returns the profile.  on_task(task, done, total) reports."""
    dev = model.device
    repeats, budget = REPEATS[dev.type]
    window = model.cfg.max_position_embeddings
    tasks = [t for t in plan_tasks(grid, window, draft.cfg.max_position_embeddings if draft else None,
                                   dev.type == "cuda") if t not in measured_keys(profile)]
    # (b, q, P, S) of the tasks that allocate a point's cache: steps, and draft steps (q = 1)
    point = lambda t: t[1:] if t[0] == "step" else t[1:2] + (1,) + t[2:] if t[0] == "draft" else None
    too_large = oversized_points([model] + ([draft] if draft else []),
                                 [point(t) for t in tasks if point(t)], grid.core)
    tasks = [t for t in tasks if point(t) not in too_large]
    if on_task and too_large:
        on_task(f"(skipping {len(too_large)} points too large for free memory)", False, len(tasks))
    t_caches = PromptCaches(model, prompt_ids)
    d_caches = PromptCaches(draft, prompt_ids) if draft else None
    for task in tasks:
        if on_task:
            on_task(task, False, len(tasks))
        if dev.type == "cuda":
            # The last point's cache and graph pool sit in reference cycles (graphs hold their step's
            # closure): free them before the next allocation, or two 32B-sized caches meet (seen: OOM).
            gc.collect()
        kind, args = task[0], task[1:]
        if kind == "step":
            profile.steps.append(step_point(model, t_caches, *args, repeats, budget))
        elif kind == "prefill":
            profile.prefill.append(prefill_point(model, prompt_ids, args[0], repeats, budget))
        elif kind == "round-capture":
            profile.capture.append(round_capture_point(model, draft, t_caches, d_caches, *args, *grid.core))
        elif kind == "capture":
            profile.capture.append(capture_point(model, t_caches, args[0], *grid.core))
        elif kind == "compact":
            profile.compaction.append(compaction_point(model, t_caches, *args, grid.core[0], repeats, budget))
        elif kind == "loop":
            profile.loop_overhead.append(loop_overhead_point(model, t_caches, args[0], grid.core[0],
                                                             LOOP_STEPS[dev.type], repeats, budget))
        elif kind == "draft-prefill":
            profile.draft.prefill.append(prefill_point(draft, prompt_ids, args[0], repeats, budget))
        elif kind == "draft":
            profile.draft.steps.append(draft_point(draft, d_caches, *args, repeats, budget))
        elif kind == "round":
            profile.draft.round_overhead.append(round_overhead_point(
                model, draft, t_caches, d_caches, args[0], args[1], grid.core[0], ROUNDS[dev.type], repeats, budget))
        save_profile(profile, out)
        if on_task:
            on_task(task, True, len(tasks))
    return profile
