"""A task profile: the raw samples graded, and the draft's acceptance measured, for one model and dataset.

Grading reads every branch's text: the final answers it states (\\boxed{}, '####') and the token
count at which each became complete, and the answer it ends with (see `ttsplan.answers`).  All
answers of one problem are grouped into equivalence classes and each class is graded against the
gold answer once.  The planner can then tell, for any length cap C, what a branch votes for: its
answer if it is no longer than C, else the last answer it stated within its first C tokens, else
nothing.
"""
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from pathlib import Path

from ttsplan.answers import extract_answer, group_answers, parse_answer, same_answer, stated_answers
from ttsplan.datasets import answer_kind
from ttsplan.engine.sampling import SamplingParams
from ttsplan.engine.speculative import generate_speculative
from ttsplan.measure.schema import Acceptance, BranchSample, ModelInfo, ProblemSamples, TaskProfile, \
    software_versions, today
from ttsplan.measure.samples import SampleStore, store_sha256
from ttsplan.voting import vote

GRADE_WORKERS = 8
_GRADING = None  # (store, tokenizer, task) of the grading in progress: what forked graders inherit


def token_ends(tokenizer, tokens: list[int], text: str) -> list[int]:
    """ends[i]: characters of the decoded text covered by tokens[:i + 1]."""
    pieces = tokenizer.batch_decode([[t] for t in tokens], skip_special_tokens=True)
    if "".join(pieces) == text:
        ends, total = [], 0
        for piece in pieces:
            total += len(piece)
            ends.append(total)
        return ends
    # A character split across tokens decodes differently piece by piece: decode every prefix.
    return [len(tokenizer.decode(tokens[:i + 1], skip_special_tokens=True)) for i in range(len(tokens))]


def tokens_to_cover(ends: list[int], chars: int) -> int:
    """The fewest tokens whose text reaches `chars` characters."""
    for i, end in enumerate(ends):
        if end >= chars:
            return i + 1
    return len(ends)


def grade_problem(store: SampleStore, p: int, tokenizer, task: str) -> ProblemSamples:
    """Problem p of the store graded: its branches' answers grouped into classes, each class graded once."""
    raw = store.problems[p]
    branches, answers = [], []
    for i in range(store.lengths.shape[1]):
        tokens = store.branch(p, i).tolist()
        text = tokenizer.decode(tokens, skip_special_tokens=True)
        ends = token_ends(tokenizer, tokens, text)
        stated = [(tokens_to_cover(ends, s.end), s.answer) for s in stated_answers(text)]
        final = extract_answer(text, task, finished=store.finish_of(p, i) == "eos")
        branches.append((len(tokens), store.finish_of(p, i), stated, final))
        answers += [final] + [a for _, a in stated]
    classes, representatives = group_answers(answers, task)
    class_of = dict(zip(answers, classes))
    gold = parse_answer(raw["gold"], task)
    members: dict[int, list[str]] = {}
    for a, c in zip(answers, classes):
        if c is not None:
            members.setdefault(c, []).append(a)
    spellings = [vote([0] * len(members[c]), members[c], [1.0] * len(members[c]))[0] for c in range(len(representatives))]
    samples = []
    for length, finish, stated, final in branches:
        cls = class_of.get(final)
        samples.append(BranchSample(length, finish, -1 if cls is None else cls,
                                    [[n, class_of[a]] for n, a in stated if class_of.get(a) is not None]))
    return ProblemSamples(raw["id"], raw["gold"], raw["prompt_tokens"], spellings,
                          [same_answer(rep, gold, task) for rep in representatives], samples)


def _grade_at(p: int) -> ProblemSamples:
    store, tokenizer, task = _GRADING
    return grade_problem(store, p, tokenizer, task)


def build_task_profile(store: SampleStore, folder: Path, tokenizer, acceptance: list[Acceptance],
                       on_problem=None) -> TaskProfile:
    """The store in `folder` graded into a task profile (with the draft acceptance measured beside it)."""
    global _GRADING
    _GRADING = (store, tokenizer, answer_kind(store.meta["dataset"]))
    problems = []
    workers = min(os.cpu_count() or 1, GRADE_WORKERS, len(store.problems))
    # math-verify is pure Python, and a few problems take seconds each: grade in forked processes
    # (they inherit the store and the tokenizer; only indices and graded problems travel), in order
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) if workers > 1 else \
            nullcontext() as pool:
        indices = range(len(store.problems))
        for p, samples in enumerate(pool.map(_grade_at, indices, chunksize=2) if pool else map(_grade_at, indices)):
            problems.append(samples)
            if on_problem:
                on_problem(store.problems[p]["id"])
    _GRADING = None
    meta = store.meta
    return TaskProfile(ModelInfo(**meta["model"]), meta["dataset"], min((p["index"] for p in store.problems), default=0),
                       len(problems), meta["sampling"], meta["n_max"], store_sha256(folder), problems, acceptance,
                       software_versions(), today(), sampled_on=meta["sampled_on"])


def measure_acceptance(target, draft, draft_info: ModelInfo, prompts: list[list[int]], eos_ids: set[int],
                       temperature: float, k: int = 8, branches: int = 4, new_tokens: int = 96,
                       on_prompt=None) -> Acceptance:
    """Acceptance per draft position 1..k from real speculative generation on calibration prompts."""
    reached, accepted = [0] * k, [0] * k
    for i, prompt in enumerate(prompts):
        params = SamplingParams(temperature=temperature, top_p=0.95, max_new_tokens=new_tokens, seed=i)
        _, _, spec = generate_speculative(target, draft, prompt, branches, params, eos_ids, k)
        reached = [a + b for a, b in zip(reached, spec.reached)]
        accepted = [a + b for a, b in zip(accepted, spec.accepted)]
        if on_prompt:
            on_prompt(i)
    return Acceptance(draft_info, temperature, [round(a / r, 4) if r else 0.0 for a, r in zip(accepted, reached)],
                      reached, len(prompts))
