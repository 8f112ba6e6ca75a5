"""Answer a question by vote over N branches that share one prompt: the executor behind `ttsplan run`.

A plan runs on the relay engine (`solve`) or on vLLM (`solve_vllm`); `load_solver` picks one and
returns a function question -> Solved, which `run_dataset` calls per problem.
"""
import json
import os
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Callable

import torch

from ttsplan.answers import extract_answer, group_answers, is_correct
from ttsplan.assets import resolve_model
from ttsplan.datasets import answer_kind, prompt_ids
from ttsplan.engine.generate import Branch, GenerationStats, generate
from ttsplan.engine.model import Transformer, default_dtype
from ttsplan.engine.sampling import SamplingParams
from ttsplan.engine.speculative import SpecStats, check_pair, generate_speculative
from ttsplan.errors import TTSPlanError
from ttsplan.planning.plan import Plan
from ttsplan.voting import Tally, branch_weight, decided, vote, weight_bound, weights_by_length


@dataclass
class Engine:
    name: str
    model_dir: Path
    model: Transformer
    tokenizer: object
    eos_ids: set[int]


def load_engine(name_or_path: str, device: str = "cpu") -> Engine:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer, GenerationConfig

    path = resolve_model(name_or_path)
    model = Transformer.load(path, device=device, dtype=default_dtype(device))
    tokenizer = AutoTokenizer.from_pretrained(path)
    eos = GenerationConfig.from_pretrained(path).eos_token_id if (path / "generation_config.json").exists() else None
    eos_ids = set(eos if isinstance(eos, list) else [eos]) | {tokenizer.eos_token_id}
    return Engine(name_or_path, path, model, tokenizer, {e for e in eos_ids if e is not None})


def random_models(shape: str, draft_shape: str | None, device: str, seed: int = 0):
    """Random-weight models of shipped shapes: for timing only (timings do not depend on weight values)."""
    from ttsplan.engine.config import ModelConfig
    dtype = default_dtype(device)
    model = Transformer.random(ModelConfig.shipped(shape), device, dtype, seed=seed)
    draft = Transformer.random(ModelConfig.shipped(draft_shape), device, dtype, seed=seed + 1) if draft_shape else None
    return model, draft


def time_request(model: Transformer, draft: Transformer | None, plan: Plan, prompt_len: int,
                 limits: list[int] | None = None, warm_up: bool = True, acceptance: tuple[float, ...] | None = None):
    """The plan's branches on a random prompt with EOS ignored: (branches, stats, spec stats, seconds).
    limits: each branch's own length (e.g. drawn from a task profile); acceptance: the draft's
    per-position rates to draw acceptance from (random weights accept at meaningless rates).  warm_up
    first runs the same request untimed, so that every kernel variant it needs (Triton specializes on
    lengths; speculative rounds launch q = k + 1 and refeed shapes) is compiled before the timed one."""
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
        from ttsplan.measure.profiles import load_task_profile
        task = load_task_profile(Path(spec))
        for a in task.acceptance:
            if abs(a.temperature - temperature) < 1e-9:
                return tuple(a.per_position)
        raise TTSPlanError(f"{spec}: no acceptance measured at temperature {temperature:g}") from None
    if not 0 <= rate <= 1:
        raise TTSPlanError(f"--acceptance {spec}: a rate is between 0 and 1")
    return (rate,)


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


def encode(engine: Engine, question: str) -> list[int]:
    """The chat-templated prompt token ids for one question."""
    return prompt_ids(engine.tokenizer, question)


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

    @property
    def cut_off(self) -> int:
        """Branches stopped by the token limit (they vote only if they stated a final answer)."""
        return sum(b.finish == "length" for b in self.branches)

    @property
    def stopped(self) -> int:
        """Branches ended by early stop once the vote was decided."""
        return sum(b.finish == "stopped" for b in self.branches)


def load_draft(target: Engine, name_or_path: str, device: str = "cpu") -> Engine:
    draft = load_engine(name_or_path, device)
    check_pair(target.tokenizer, draft.tokenizer, target.name, draft.name)
    return draft


class VoteWatch:
    """Reads finished branches' answers as they finish: the final vote, and early stop's question
    "can any unfinished branch still change the winner?" (voting.decided)."""

    def __init__(self, tokenizer, rule: str, task: str):
        self.tokenizer, self.rule, self.task, self.texts = tokenizer, rule, task, {}

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
        classes, _ = group_answers([answers[i] for i, _ in done], self.task)
        every = [None] * len(branches)
        for (i, _), c in zip(done, classes):
            every[i] = c
        return (*vote(every, answers, weights), answers, weights)

    def decided(self, branches: list[Branch]) -> bool:
        _, tallies, _, _ = self.tally(branches)
        pending = [weight_bound(weights_by_length(b.logprobs, b.confidences, self.rule), self.rule)
                   for b in branches if not b.finish]
        return decided([t.weight for t in tallies], pending)


def solve(engine: Engine, question: str, plan: Plan, draft: Engine | None = None, on_step=None) -> Solved:
    t0 = time.perf_counter()
    watch = VoteWatch(engine.tokenizer, plan.vote, answer_kind(plan.dataset))
    branches, stats, spec = generate_branches(
        engine.model, encode(engine, question), plan.branches, sampling_params(plan), engine.eos_ids,
        draft.model if draft else None, plan.draft_len, on_step, stop=watch.decided if plan.early_stop else None)
    answer, tallies, answers, weights = watch.tally(branches)
    return Solved(answer, tallies, branches, answers, weights, stats, time.perf_counter() - t0, spec)


def load_results(path: Path) -> dict[str, dict]:
    """Finished problems of an earlier (possibly interrupted) dataset run, by problem id.

    A line cut short by an interruption is dropped (that problem runs again), and the file is
    rewritten atomically with only the complete rows so that later appends start on a clean line.
    """
    if not path.exists():
        return {}
    done = {}
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
            done[row["id"]] = row
        except (json.JSONDecodeError, KeyError):
            continue
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(row) + "\n" for row in done.values()))
    os.replace(tmp, path)
    return done


def append_result(path: Path, row: dict) -> None:
    """One problem per line, flushed and synced, so an interruption loses at most the problem in flight."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def result_row(problem_id: str, gold: str, solved: Solved, task: str) -> dict:
    return {"id": problem_id, "gold": gold, "answer": solved.answer, "correct": is_correct(solved.answer, gold, task),
            "latency_s": solved.latency_s, "new_tokens": solved.stats.new_tokens, "cut_off": solved.cut_off,
            "stopped": solved.stopped, "prompt_tokens": solved.stats.prompt_tokens,
            "lengths": [len(b.tokens) for b in solved.branches],
            "votes": [asdict(t) for t in solved.tallies]}


def run_key(plan: Plan) -> str:
    """The results file's key: everything about the plan that changes answers (grading included)."""
    import hashlib
    fields = {k: v for k, v in asdict(plan).items() if k not in ("device", "predicted")}
    return hashlib.sha256(json.dumps({**fields, "grader": 2}, sort_keys=True).encode()).hexdigest()[:12]


def run_dataset(solver: Callable[[str], Solved], problems, out: Path, dataset: str, on_problem=None) -> list[dict]:
    """Solve every problem not yet in the results file `out`, one line per problem (resumable);
    returns the rows of `problems` in order."""
    done = load_results(out)
    for p in problems:
        if p.id not in done:
            done[p.id] = result_row(p.id, p.gold, solver(p.question), answer_kind(dataset))
            append_result(out, done[p.id])
        if on_problem:
            on_problem(p)
    return [done[p.id] for p in problems]


def solve_vllm(engine, question: str, plan: Plan, on_step=None) -> Solved:
    """The plan through vLLM (backends.vllm): the same prompt, vote and report as `solve`; no early
    stop (vLLM returns a request's branches together)."""
    from ttsplan.backends.vllm import generate as vllm_generate
    t0 = time.perf_counter()
    branches, stats, _ = vllm_generate(engine.llm, encode(engine, question), plan)
    answer, tallies, answers, weights = VoteWatch(engine.tokenizer, plan.vote, answer_kind(plan.dataset)).tally(branches)
    return Solved(answer, tallies, branches, answers, weights, stats, time.perf_counter() - t0)


def load_solver(plan: Plan, device: str = "cpu", backend: str = "relay", **vllm_args) -> Callable:
    """(question, on_step=None) -> Solved: the plan on a backend, its models loaded."""
    if backend == "relay":
        engine = load_engine(plan.model, device)
        draft = load_draft(engine, plan.draft, device) if plan.draft else None
        return partial(solve, engine, plan=plan, draft=draft)
    if backend == "vllm":
        from ttsplan.backends.vllm import load_vllm
        return partial(solve_vllm, load_vllm(plan, device, **vllm_args), plan=plan)
    raise TTSPlanError(f"unknown backend {backend!r}: relay or vllm")
