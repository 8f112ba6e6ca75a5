"""Answer a question by vote over N branches that share one prompt: the executor behind `ttsplan run`.

A plan runs on the relay engine (`solve`) or on vLLM (`solve_vllm`); `load_solver` picks one and
returns a function question -> Solved, which `results.run_dataset` calls per problem.
"""
import time
from dataclasses import dataclass
from functools import partial
from typing import Callable

import torch

from ttsplan.answers import AnswerMemo, extract_answer, group_answers
from ttsplan.assets import resolve_model
from ttsplan.backends import vllm as vllm_backend
from ttsplan.datasets import answer_kind, prompt_ids
from ttsplan.engine.config import ModelConfig
from ttsplan.engine.generate import Branch, GenerationStats, generate
from ttsplan.engine.loader import LoadedModel, load_draft, load_model, load_tokenizer
from ttsplan.engine.model import Transformer
from ttsplan.engine.sampling import SamplingParams
from ttsplan.engine.speculative import SpecStats, generate_speculative
from ttsplan.errors import TTSPlanError
from ttsplan.hardware import device_name
from ttsplan.planning.plan import Plan
from ttsplan.planning.vllm_config import plan_engine_args, plan_sampling_args
from ttsplan.voting import Tally, branch_weight, decided, vote, weight_bound, weights_by_length


def sampling_params(plan: Plan, ignore_eos: bool = False) -> SamplingParams:
    return SamplingParams(plan.temperature, plan.top_p, plan.top_k, plan.max_new_tokens, plan.seed, ignore_eos)


def generate_branches(model: Transformer, prompt: list[int], n: int, params: SamplingParams, eos_ids: set[int],
                      draft: Transformer | None = None, draft_len: int = 0, on_step=None, stop=None, limits=None,
                      acceptance=None):
    """generate(), or generate_speculative() with a draft model: (branches, stats, SpecStats or None)."""
    if draft is not None:
        return generate_speculative(model, draft, prompt, n, params, eos_ids, draft_len, on_step=on_step, stop=stop,
                                    limits=limits, acceptance=acceptance)
    return (*generate(model, prompt, n, params, eos_ids, on_step, stop=stop, limits=limits), None)


@dataclass
class Solved:
    answer: str | None
    tallies: list[Tally]
    branches: list[Branch]
    answers: list[str | None]
    weights: list[float]
    stats: GenerationStats
    latency_s: float
    spec: SpecStats | None = None
    vote_s: float = 0.0  # of latency_s: reading and comparing answers on the host (early stop's checks included)

    @property
    def cut_off(self) -> int:
        """Branches stopped by the token limit (they vote only if they stated a final answer)."""
        return sum(b.finish == "length" for b in self.branches)

    @property
    def stopped(self) -> int:
        """Branches ended by early stop once the vote was decided."""
        return sum(b.finish == "stopped" for b in self.branches)


class VoteWatch:
    """Reads finished branches' answers as they finish: the final vote, and early stop's question
    "can any unfinished branch still change the winner?" (voting.decided).  It runs on the host between
    decode steps while the GPU waits, so each answer is read and compared once per request (texts,
    memo), and the answers are not grouped while the weight of the finished branches cannot yet
    outweigh what the unfinished ones may add."""

    def __init__(self, tokenizer, rule: str, task: str):
        self.tokenizer, self.rule, self.task, self.texts = tokenizer, rule, task, {}
        self.memo = AnswerMemo(task)
        self.seconds = 0.0  # spent in decided() so far: the decode loop waits on it

    def answer(self, i: int, branch: Branch) -> str | None:
        if i not in self.texts:
            text = self.tokenizer.decode(branch.tokens, skip_special_tokens=True)
            self.texts[i] = extract_answer(text, self.task, finished=branch.finish == "eos")
        return self.texts[i]

    def tally(self, branches: list[Branch]):
        """(winner, tallies, answers, weights) over the finished branches (a stopped branch does not vote)."""
        done = [(i, b) for i, b in enumerate(branches) if b.finish in ("eos", "length")]
        answers = [self.answer(i, b) if b.finish in ("eos", "length") else None for i, b in enumerate(branches)]
        weights = [branch_weight(b.logprobs, b.confidences, self.rule) for b in branches]
        classes, _ = group_answers([answers[i] for i, _ in done], self.task, self.memo)
        every = [None] * len(branches)
        for (i, _), c in zip(done, classes):
            every[i] = c
        return (*vote(every, answers, weights), answers, weights)

    def decided(self, branches: list[Branch]) -> bool:
        t0 = time.perf_counter()
        pending = [weight_bound(weights_by_length(b.logprobs, b.confidences, self.rule), self.rule)
                   for b in branches if not b.finish]
        finished = sum(branch_weight(b.logprobs, b.confidences, self.rule) for b in branches if b.finish)
        # the leader holds at most every finished branch's weight (weights are >= 0): no grouping until that could win
        verdict = finished > sum(pending) and decided([t.weight for t in self.tally(branches)[1]], pending)
        self.seconds += time.perf_counter() - t0
        return verdict


def solve(engine: LoadedModel, question: str, plan: Plan, draft: LoadedModel | None = None, on_step=None) -> Solved:
    t0 = time.perf_counter()
    watch = VoteWatch(engine.tokenizer, plan.vote, answer_kind(plan.dataset))
    branches, stats, spec = generate_branches(
        engine.model, prompt_ids(engine.tokenizer, question), plan.branches, sampling_params(plan), engine.eos_ids,
        draft.model if draft else None, plan.draft_len, on_step, stop=watch.decided if plan.early_stop else None)
    t_vote = time.perf_counter()
    answer, tallies, answers, weights = watch.tally(branches)
    done = time.perf_counter()
    return Solved(answer, tallies, branches, answers, weights, stats, done - t0, spec, watch.seconds + done - t_vote)


@dataclass
class VllmEngine:
    name: str
    llm: object
    tokenizer: object


def load_vllm(plan: Plan, device: str = "cpu", tensor_parallel_size: int = 1,
              pipeline_parallel_size: int = 1) -> VllmEngine:
    """vLLM started for a plan: its model, its draft (if any), its parallel sizes."""
    model_dir = resolve_model(plan.model)
    args = plan_engine_args(plan, model_dir, resolve_model(plan.draft) if plan.draft else None,
                            torch.device(device).type, tensor_parallel_size=tensor_parallel_size,
                            pipeline_parallel_size=pipeline_parallel_size)
    return VllmEngine(plan.model, vllm_backend.start_llm(args), load_tokenizer(model_dir))


def solve_vllm(engine: VllmEngine, question: str, plan: Plan, on_step=None) -> Solved:
    """The plan through vLLM: the same prompt, vote and report as `solve`; no early stop (vLLM returns
    a request's branches together)."""
    t0 = time.perf_counter()
    branches, stats = vllm_backend.generate(engine.llm, prompt_ids(engine.tokenizer, question),
                                            plan_sampling_args(plan))
    answer, tallies, answers, weights = VoteWatch(engine.tokenizer, plan.vote, answer_kind(plan.dataset)).tally(branches)
    return Solved(answer, tallies, branches, answers, weights, stats, time.perf_counter() - t0)


def load_solver(plan: Plan, device: str = "cpu", backend: str = "relay", **vllm_args) -> Callable:
    """(question, on_step=None) -> Solved: the plan on a backend, its models loaded."""
    if backend == "relay":
        engine = load_model(plan.model, device)
        draft = load_draft(engine, plan.draft, device) if plan.draft else None
        return partial(solve, engine, plan=plan, draft=draft)
    if backend == "vllm":
        return partial(solve_vllm, load_vllm(plan, device, **vllm_args), plan=plan)
    raise TTSPlanError(f"unknown backend {backend!r}: relay or vllm")


def check_plan_device(plan: Plan, device: str, backend: str, force: bool, shape: str | None = None) -> None:
    """A plan made for another device, backend or model shape is refused unless force; shape: the
    model shape it runs on (default: the plan's model's)."""
    if not plan.device or force:
        return
    here = device_name(torch.device(device))
    if plan.device.get("name") != here:
        raise TTSPlanError(f"the plan was made for {plan.device.get('name')!r} (its device profile) but this is "
                           f"{here!r}: profile this device, or pass --force")
    shape = shape or ModelConfig.load(resolve_model(plan.model)).shape_hash()
    if plan.device.get("shape") != shape:
        raise TTSPlanError(f"the plan's device profile is for model shape {plan.device.get('shape')} but "
                           f"{plan.model} has shape {shape}: pass --force to run it anyway")
    if plan.device.get("backend", "relay") != backend:
        raise TTSPlanError(f"the plan was profiled on the {plan.device.get('backend')} backend, not {backend}: "
                           "profile that backend, or pass --force")
