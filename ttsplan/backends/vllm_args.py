"""vLLM's arguments as plain data (no torch, no vLLM): the engine arguments, LLM(**engine_args(...)),
and the sampling arguments, SamplingParams(**sampling_args(...)).  The one builder of both, for the
executor, the device profile of vLLM and `optimize --emit vllm`.

The N branches of a request share the prompt's KV through prefix caching (vLLM's counterpart of
relay attention), and come back with each chosen token's log-probability and the top-20
log-probabilities, so every vote rule weighs them exactly as on the relay engine.
"""
from pathlib import Path

from ttsplan.engine.config import dtype_name
from ttsplan.voting import CONFIDENCE_TOP_K


def engine_args(model_dir: Path, device_type: str, seed: int = 0, draft_dir: Path | None = None, draft_len: int = 0,
                max_model_len: int = 4096, tensor_parallel_size: int = 1, pipeline_parallel_size: int = 1,
                draft_schedule: list[tuple[int, int, int]] | None = None) -> dict:
    """LLM(**engine_args): prefix caching on, the device's dtype, eager on a CPU, and with a draft
    speculative_config={"method": "draft_model", ...}.  draft_schedule: the draft length per inclusive
    batch-size range, vLLM's num_speculative_tokens_per_batch_size."""
    args = {"model": str(model_dir), "dtype": dtype_name(device_type), "enable_prefix_caching": True,
            "tensor_parallel_size": tensor_parallel_size, "pipeline_parallel_size": pipeline_parallel_size,
            "max_model_len": max_model_len, "seed": seed}
    if device_type == "cpu":
        args["enforce_eager"] = True
    if draft_dir is not None:
        spec = {"method": "draft_model", "model": str(draft_dir), "num_speculative_tokens": draft_len}
        if draft_schedule:
            spec["num_speculative_tokens"] = max(draft_len, *(k for _, _, k in draft_schedule))
            spec["num_speculative_tokens_per_batch_size"] = [list(r) for r in draft_schedule]
        args["speculative_config"] = spec
    return args


def sampling_args(n: int, temperature: float, top_p: float, top_k: int, seed: int, max_tokens: int,
                  ignore_eos: bool = False) -> dict:
    """SamplingParams(**sampling_args): n branches, with the log-probabilities every vote rule reads."""
    args = {"n": n, "temperature": temperature, "top_p": top_p, "top_k": top_k if top_k > 0 else -1, "seed": seed,
            "max_tokens": max_tokens, "logprobs": CONFIDENCE_TOP_K}
    if ignore_eos:
        args["ignore_eos"] = True
    return args
