"""A plan as vLLM's configuration, plain data: the engine and sampling arguments that run it on
vLLM (backends.vllm_args), and for a draft plan the profile's best draft length per batch size
(planning.draft_schedule).  What `optimize --emit vllm` writes and `run --backend vllm` starts;
torch-free, so a plan for a GPU can be written on a laptop."""
from pathlib import Path

import numpy as np
import yaml

from ttsplan.registry import MODELS, model_dir
from ttsplan.backends.vllm_args import engine_args, sampling_args
from ttsplan.files import write_atomic
from ttsplan.planning.draft_schedule import draft_schedule
from ttsplan.planning.plan import Plan


def plan_sampling_args(plan: Plan, ignore_eos: bool = False) -> dict:
    """SamplingParams(**plan_sampling_args(plan)): the plan's N branches, as the relay engine samples them."""
    return sampling_args(plan.branches, plan.temperature, plan.top_p, plan.top_k, plan.seed, plan.max_new_tokens,
                         ignore_eos)


def plan_engine_args(plan: Plan, model_path: Path, draft_path: Path | None, device_type: str, **more) -> dict:
    """LLM(**plan_engine_args(...)): the plan's model and, for a draft plan, its draft proposing draft_len."""
    return engine_args(model_path, device_type, plan.seed, draft_path if plan.draft else None, plan.draft_len, **more)


def vllm_config(opt) -> dict:
    """The chosen plan of an `optimize` result as vLLM arguments: {"engine": LLM(**engine),
    "sampling": SamplingParams(**sampling)}; a draft plan carries the profile's best draft length per
    batch size up to the plan's branches."""
    plan = opt.plan
    folder = lambda name: model_dir(name) if name in MODELS else Path(name)
    schedule = None
    if plan.draft:
        ks = sorted({c.k for c in opt.device.draft.round_overhead})
        prompt = float(np.median(opt.arrays.prompt_tokens))
        own = float(np.median(np.minimum(opt.arrays.lengths, plan.max_new_tokens))) / 2
        schedule = draft_schedule(opt.costs, opt.acceptance.per_position, ks, plan.branches, prompt, own)
    engine = plan_engine_args(plan, folder(plan.model), folder(plan.draft) if plan.draft else None,
                              opt.device.device["type"], draft_schedule=schedule)
    return {"engine": engine, "sampling": plan_sampling_args(plan)}


def save_vllm_config(opt, path: Path) -> None:
    head = (f"# vLLM configuration of the plan {opt.plan.describe()} (ttsplan optimize):\n"
            f"#   LLM(**engine), SamplingParams(**sampling); then a {opt.plan.vote} vote over the n completions\n"
            f"#   (`ttsplan run --plan PLAN --backend vllm` does all three)\n")
    write_atomic(path, (head + yaml.safe_dump(vllm_config(opt), sort_keys=False)).encode())
