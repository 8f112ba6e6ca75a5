"""A device profile measured through vLLM (`ttsplan profile --backend vllm`): the decode step over
live branches and prompt length, prefill, and with a draft the speculative round over live branches
and draft length, timed from outside vLLM's own loop.

A step is what a fixed-length request costs per engine step with EOS ignored: n = b branches
generating 2S + 1 tokens, less the same request generating one token (prefill and set-up), over the
engine steps between them (vLLM's own count, `vllm:iteration_tokens_total`), at their mean own
length S.  vLLM's loop (scheduling, sampling, detokenizing) is inside that step, so the loop overhead
is recorded as 0.  Prefix caching stays on, as deployed (it is what lets n branches share their
prompt's KV); every repeat gets a prompt of its own so that it prefills.

With a draft, each step of an engine started with num_speculative_tokens = k is one whole round:
k draft passes, the target's verification of k + 1 tokens per branch, vLLM's acceptance.  vLLM does
not time its parts, so the round is stored the way the replay (planning.latency) reads it: the
draft's step measured through vLLM serving the draft alone, and the rest of the round as the
target's verification point at q = k + 1 (round less k draft steps), with no round overhead.
"""
import statistics
import time

from ttsplan.backends.vllm import start_llm
from ttsplan.measure.schema import BatchCost, DraftCosts, PrefillCost, StepCost, save_profile
from ttsplan.measure.step_cost import Grid

# query: 1, and k + 1 for each draft length k measured when a draft is given (at the core point)
VLLM_GRIDS = {
    ("cpu", False): Grid((1, 4, 16), (1, 2, 3, 5), (128, 1024), (24,), (128, 24)),
    ("cpu", True): Grid((1, 4), (1, 3), (128,), (8,), (128, 8)),
    ("cuda", False): Grid((1, 2, 4, 8, 16, 32, 64, 128), (1, 2, 3, 5, 9), (128, 1024, 8192), (64, 256), (1024, 256)),
    ("cuda", True): Grid((1, 8, 64), (1, 5), (512,), (64,), (512, 64)),
}
REPEATS = 3


def vllm_points(grid: Grid, window: int) -> list[tuple[int, int, int]]:
    """(b, prompt, own) for every branch count x prompt x own that fits the window."""
    return [(b, p, s) for b in grid.branches for p in grid.prompt for s in grid.own if p + 2 * s + 1 <= window]


def engine_steps(llm) -> int:
    """Engine steps vLLM has run so far (prefill and decode iterations)."""
    return next(int(m.count) for m in llm.get_metrics() if m.name == "vllm:iteration_tokens_total")


def request_cost(llm, prompt: list[int], b: int, tokens: int) -> tuple[float, int]:
    """(seconds, engine steps) of one request of b branches generating `tokens` tokens, EOS ignored."""
    from vllm import SamplingParams  # optional: only --backend vllm needs vLLM
    from vllm.inputs import TokensPrompt
    params = SamplingParams(n=b, temperature=0.7, top_p=0.95, max_tokens=tokens, ignore_eos=True, seed=0)
    steps = engine_steps(llm)
    t0 = time.perf_counter()
    llm.generate([TokensPrompt(prompt_token_ids=prompt)], params, use_tqdm=False)
    return time.perf_counter() - t0, engine_steps(llm) - steps


def step_point(llm, prompt_ids: list[int], b: int, q: int, prompt: int, own: int, salt: int) -> StepCost:
    """The engine step at (b, prompt, own): per repeat, (t(2 own + 1 tokens) - t(1 token)) over the engine
    steps between the two (2 own without a draft; the rounds with one, q = k + 1)."""
    fresh = lambda r: prompt_ids[r * 7 + salt:][:prompt]  # a prompt no earlier request cached
    request_cost(llm, fresh(0), b, 2 * own + 1)  # warm-up
    steps = []
    for r in range(1, REPEATS + 1):
        one, one_steps = request_cost(llm, fresh(2 * r), b, 1)
        full, full_steps = request_cost(llm, fresh(2 * r + 1), b, 2 * own + 1)
        steps.append((full - one) * 1e3 / max(full_steps - one_steps, 1))
    q10 = statistics.quantiles(steps, n=10, method="inclusive") if len(steps) > 1 else steps * 9
    return StepCost(b, q, prompt, own, round(statistics.median(steps), 4), round(q10[0], 4), round(q10[-1], 4),
                    len(steps))


def less_draft_steps(round_: StepCost, draft_ms: float, k: int) -> StepCost:
    """A round as the target's verification point: the round less its k draft steps."""
    cut = lambda ms: round(max(ms - k * draft_ms, 1e-3), 4)  # a positive time, as profiles require
    return StepCost(round_.b, round_.q, round_.prompt, round_.own, cut(round_.ms), cut(round_.p10_ms),
                    cut(round_.p90_ms), round_.repeats)


def measure_steps(profile, out, llm, steps: list[StepCost], todo: list[tuple[int, int, int, int]],
                  prompt_ids: list[int], on_task=None, to_store=lambda point: point) -> None:
    """Measure each (b, q, prompt, own) of `todo` into `steps` (as to_store makes it), saving after each."""
    for b, q, prompt, own in todo:
        name = f"b={b} q={q} prompt={prompt} own={own}"
        if on_task:
            on_task(name, False, None)
        steps.append(to_store(step_point(llm, prompt_ids, b, q, prompt, own, salt=37 * len(steps) + q)))
        save_profile(profile, out)
        if on_task:
            on_task(name, True, None)


def measure_prefill(llm, prompt_ids: list[int], prompts: list[int]) -> list[PrefillCost]:
    out = []
    for i, prompt in enumerate(prompts):
        ones = [request_cost(llm, prompt_ids[1000 + 11 * (i * REPEATS + r):][:prompt], 1, 1)[0] * 1e3
                for r in range(REPEATS)]
        out.append(PrefillCost(prompt, round(statistics.median(ones), 4)))
    return out


def measure_phase(profile, out, engine: dict, which: str, k: int, todo, prefills: list[int], prompt_ids: list[int],
                  progress) -> None:
    """One engine's points, in a process of its own (its exit is what frees vLLM's memory): the
    target's or the draft's plain steps and prefills (k = 0), or the target's rounds with the draft
    proposing k tokens.  Saves `out` after every point; sends (name, done, total) and then None to
    the progress queue."""
    llm = start_llm(engine)
    on_task = lambda *msg: progress.put(msg)
    costs = profile.draft if which == "draft" else profile
    store = lambda point: point
    if k:
        drafted = {(s.b, s.prompt, s.own): s.ms for s in profile.draft.steps}
        store = lambda r: less_draft_steps(r, drafted[(r.b, r.prompt, r.own)], k)
    measure_steps(profile, out, llm, costs.steps, todo, prompt_ids, on_task, store)
    costs.prefill += measure_prefill(llm, prompt_ids, prefills)
    save_profile(profile, out)
    progress.put(None)


def measure_vllm_device(profile, out, run_phase, grid: Grid, window: int, draft_info=None, on_task=None):
    """Measure what `out` does not hold yet.  run_phase(profile, which, k, todo, prefills) measures one
    engine's points (measure_phase, in a process of its own) and returns the profile as saved; an
    engine starts only when it has points left to measure."""
    ks = [q - 1 for q in grid.query if q > 1] if draft_info else []
    have = {(s.b, s.q, s.prompt, s.own) for s in profile.steps}
    plain = [(b, 1, p, s) for b, p, s in vllm_points(grid, window) if (b, 1, p, s) not in have]
    rounds = {k: [(b, k + 1, *grid.core) for b in grid.branches if (b, k + 1, *grid.core) not in have] for k in ks}
    if draft_info and profile.draft is None:
        profile.draft = DraftCosts(draft_info, [], [])
    drafted = {(s.b, s.prompt, s.own) for s in profile.draft.steps} if profile.draft else set()
    draft_todo = [(b, 1, *grid.core) for b in grid.branches if (b, *grid.core) not in drafted] if ks else []
    prefills = [p for p in grid.prompt if p not in {x.prompt for x in profile.prefill}]
    if on_task:
        on_task("", False, len(plain) + len(draft_todo) + sum(map(len, rounds.values())))
    if plain or prefills:
        profile = run_phase(profile, "target", 0, plain, prefills)
    if draft_todo or (ks and not profile.draft.prefill):
        profile = run_phase(profile, "draft", 0, draft_todo, [] if profile.draft.prefill else list(grid.prompt))
    for k, todo in rounds.items():
        if todo:
            profile = run_phase(profile, "target", k, todo, [])
    if profile.draft:
        profile.draft.round_overhead = [BatchCost(b, k, 0.0) for k in ks for b in grid.branches]  # inside the round
    profile.loop_overhead = [BatchCost(b, 0, 0.0) for b in grid.branches]  # inside the measured step
    save_profile(profile, out)
    return profile
