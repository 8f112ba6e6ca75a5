"""Random-weight timing: a plan's request on a random prompt with EOS ignored, each branch run to a
given length (drawn from a task profile, as the planner's replay draws them), and the draft's
acceptance drawn from given rates (random weights accept at meaningless rates).  What `run
--random-weights` and the latency validation benchmark time."""
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ttsplan.engine.generate import GenerationStats
from ttsplan.engine.loader import random_models
from ttsplan.engine.model import Transformer
from ttsplan.engine.speculative import SpecStats
from ttsplan.errors import TTSPlanError
from ttsplan.execute.runner import generate_branches, sampling_params
from ttsplan.hardware import copy_bandwidth
from ttsplan.measure.schema import load_task_profile
from ttsplan.planning.latency import drawn_request
from ttsplan.planning.plan import Plan


def time_request(model: Transformer, draft: Transformer | None, plan: Plan, prompt_len: int,
                 limits: list[int] | None = None, warm_up: bool = True, acceptance: tuple[float, ...] | None = None):
    """The plan's branches on a random prompt with EOS ignored: (branches, stats, spec stats, seconds).
    limits: each branch's own length; acceptance: the draft's per-position rates to draw acceptance
    from.  warm_up first runs the same request untimed, so that every kernel variant it needs (Triton
    specializes on lengths; speculative rounds launch q = k + 1 and refeed shapes) is compiled before
    the timed one."""
    prompt = torch.randint(0, model.cfg.vocab_size, (prompt_len,),
                           generator=torch.Generator().manual_seed(plan.seed)).tolist()
    params = sampling_params(plan, ignore_eos=True)
    if warm_up:
        generate_branches(model, prompt, plan.branches, params, set(), draft, plan.draft_len, limits=limits,
                          acceptance=acceptance)
    t0 = time.perf_counter()
    branches, stats, spec = generate_branches(model, prompt, plan.branches, params, set(), draft, plan.draft_len,
                                              limits=limits, acceptance=acceptance)
    return branches, stats, spec, time.perf_counter() - t0


def given_acceptance(spec: str, temperature: float) -> tuple[float, ...]:
    """`run --acceptance`: one rate for every draft position (a number), or a task profile's measured
    rates per position at the plan's temperature."""
    try:
        rate = float(spec)
    except ValueError:
        task = load_task_profile(Path(spec))
        for a in task.acceptance:
            if abs(a.temperature - temperature) < 1e-9:
                return tuple(a.per_position)
        raise TTSPlanError(f"{spec}: no acceptance measured at temperature {temperature:g}") from None
    if not 0 <= rate <= 1:
        raise TTSPlanError(f"--acceptance {spec}: a rate is between 0 and 1")
    return (rate,)


@dataclass
class Timed:
    stats: GenerationStats
    spec: SpecStats | None
    latency_s: float
    peak_bandwidth: float  # bytes/s, the device's copy bandwidth measured in the same run


def time_plan(plan: Plan, shape: str, device: str, prompt_len: int, lengths_from: Path | None = None,
              acceptance: str | None = None) -> Timed:
    """`run --random-weights`: the plan on random weights of a shipped shape (and its draft's shape),
    each branch to a length drawn from the task profile `lengths_from` (and at its prompt length)."""
    rates = given_acceptance(acceptance, plan.temperature) if acceptance and plan.draft else None
    limits, prompt = None, prompt_len
    if lengths_from:
        limits, prompt = drawn_request(load_task_profile(lengths_from), plan.branches, plan.max_new_tokens, plan.seed)
    peak = copy_bandwidth(torch.device(device))
    model, draft = random_models(shape, plan.draft, device, plan.seed)
    _, stats, spec, latency = time_request(model, draft, plan, prompt, limits, acceptance=rates)
    return Timed(stats, spec, latency, peak)
