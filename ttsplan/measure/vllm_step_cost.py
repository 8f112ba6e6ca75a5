"""A device profile measured through vLLM (`ttsplan profile --backend vllm`): the decode step over
live branches and prompt length, and prefill, timed from outside vLLM's own loop.

A step is what a fixed-length request costs per token with EOS ignored: n = b branches generating
2S + 1 tokens, less the same request generating one token (prefill and set-up), over its 2S steps,
at their mean own length S.  vLLM's loop (scheduling, sampling, detokenizing) is inside that step, so
the loop overhead is recorded as 0.  Prefix caching stays on, as deployed (it is what lets n branches
share their prompt's KV); every repeat gets a prompt of its own so that it prefills.  Speculative
rounds are not measured through vLLM: a draft pair is profiled on the relay engine.
"""
import statistics
import time

from ttsplan.measure.profiles import BatchCost, PrefillCost, StepCost, save_profile
from ttsplan.measure.step_cost import Grid

VLLM_GRIDS = {
    ("cpu", False): Grid((1, 2, 4, 8, 16), (1,), (128, 1024), (16, 48), (128, 48)),
    ("cpu", True): Grid((1, 4), (1,), (128,), (8,), (128, 8)),
    ("cuda", False): Grid((1, 2, 4, 8, 16, 32, 64, 128), (1,), (128, 1024, 8192), (64, 256), (1024, 256)),
    ("cuda", True): Grid((1, 8, 64), (1,), (512,), (64,), (512, 64)),
}
REPEATS = 3


def vllm_points(grid: Grid, window: int) -> list[tuple[int, int, int]]:
    """(b, prompt, own) for every branch count x prompt x own that fits the window."""
    return [(b, p, s) for b in grid.branches for p in grid.prompt for s in grid.own if p + 2 * s + 1 <= window]


def request_seconds(llm, prompt: list[int], b: int, tokens: int) -> float:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt
    params = SamplingParams(n=b, temperature=0.7, top_p=0.95, max_tokens=tokens, ignore_eos=True, seed=0)
    t0 = time.perf_counter()
    llm.generate([TokensPrompt(prompt_token_ids=prompt)], params, use_tqdm=False)
    return time.perf_counter() - t0


def step_point(llm, prompt_ids: list[int], b: int, prompt: int, own: int, salt: int) -> StepCost:
    """The step at (b, prompt, own): per repeat, (t(2 own + 1 tokens) - t(1 token)) / (2 own)."""
    fresh = lambda r: prompt_ids[r * 7 + salt:][:prompt]  # a prompt no earlier request cached
    request_seconds(llm, fresh(0), b, 2 * own + 1)  # warm-up
    steps = []
    for r in range(1, REPEATS + 1):
        one = request_seconds(llm, fresh(2 * r), b, 1)
        full = request_seconds(llm, fresh(2 * r + 1), b, 2 * own + 1)
        steps.append((full - one) * 1e3 / (2 * own))
    q = statistics.quantiles(steps, n=10, method="inclusive") if len(steps) > 1 else steps * 9
    return StepCost(b, 1, prompt, own, round(statistics.median(steps), 4), round(q[0], 4), round(q[-1], 4), len(steps))


def measure_vllm_device(profile, out, llm, prompt_ids: list[int], grid: Grid, window: int, on_task=None):
    """Measure what `out` does not hold yet, saving after every point."""
    have = {(s.b, s.prompt, s.own) for s in profile.steps}
    todo = [pt for pt in vllm_points(grid, window) if pt not in have]
    todo_prefill = [p for p in grid.prompt if p not in {x.prompt for x in profile.prefill}]
    total, done = len(todo) + len(todo_prefill), 0
    for i, (b, prompt, own) in enumerate(todo):
        if on_task:
            on_task(f"b={b} prompt={prompt} own={own}", False, total)
        profile.steps.append(step_point(llm, prompt_ids, b, prompt, own, salt=100 * i + len(profile.steps)))
        save_profile(profile, out)
        done += 1
        if on_task:
            on_task(f"b={b} prompt={prompt} own={own}", True, total)
    for i, prompt in enumerate(todo_prefill):
        ones = [request_seconds(llm, prompt_ids[1000 + 11 * (i * REPEATS + r):][:prompt], 1, 1) * 1e3
                for r in range(REPEATS)]
        profile.prefill.append(PrefillCost(prompt, round(statistics.median(ones), 4)))
        save_profile(profile, out)
        if on_task:
            on_task(f"prefill {prompt}", True, total)
    profile.loop_overhead = [BatchCost(b, 0, 0.0) for b in grid.branches]  # inside the measured step
    save_profile(profile, out)
    return profile
