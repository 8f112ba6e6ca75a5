"""Answer a question by vote over N branches that share one prompt: the executor behind `ttsplan run`."""
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ttsplan.answers import extract_answer, group_answers, is_correct
from ttsplan.assets import resolve_model
from ttsplan.datasets import prompt_text
from ttsplan.engine.generate import Branch, GenerationStats, generate
from ttsplan.engine.model import Transformer, default_dtype
from ttsplan.engine.sampling import SamplingParams
from ttsplan.engine.speculative import SpecStats, check_pair, generate_speculative
from ttsplan.voting import Tally, branch_weight, vote


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


def time_random_weights(config: str, device: str, n: int, params: SamplingParams, prompt_len: int,
                        draft_config: str | None = None, draft_len: int = 4):
    """Branches from a random-weight model of a shipped shape on a random prompt: timings only.
    With draft_config, a random-weight draft of that shape proposes draft_len tokens per round."""
    from ttsplan.engine.config import ModelConfig
    dtype = default_dtype(device)
    model = Transformer.random(ModelConfig.shipped(config), device, dtype, seed=params.seed)
    draft = Transformer.random(ModelConfig.shipped(draft_config), device, dtype, seed=params.seed + 1) if draft_config else None
    prompt = torch.randint(0, model.cfg.vocab_size, (prompt_len,),
                           generator=torch.Generator().manual_seed(params.seed)).tolist()

    generate_branches(model, prompt, n, SamplingParams(max_new_tokens=4, ignore_eos=True), set(), draft, draft_len)
    t0 = time.perf_counter()  # after the run above has compiled the kernels
    _, stats, spec = generate_branches(model, prompt, n, params, set(), draft, draft_len)
    return stats, spec, time.perf_counter() - t0


def generate_branches(model: Transformer, prompt: list[int], n: int, params: SamplingParams, eos_ids: set[int],
                      draft: Transformer | None = None, draft_len: int = 0, on_step=None):
    """generate(), or generate_speculative() with a draft model: (branches, stats, SpecStats or None)."""
    if draft is not None:
        return generate_speculative(model, draft, prompt, n, params, eos_ids, draft_len, on_step=on_step)
    return (*generate(model, prompt, n, params, eos_ids, on_step), None)


def encode(engine: Engine, question: str) -> list[int]:
    """The chat-templated prompt token ids for one question."""
    messages = [{"role": "user", "content": prompt_text(question)}]
    ids = engine.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


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


@dataclass
class Draft:
    engine: Engine
    length: int


def load_draft(target: Engine, name_or_path: str, length: int, device: str = "cpu") -> Draft:
    draft = load_engine(name_or_path, device)
    check_pair(target.tokenizer, draft.tokenizer, target.name, draft.name)
    return Draft(draft, length)


def solve(engine: Engine, question: str, n: int, params: SamplingParams, rule: str = "majority",
          task: str = "gsm8k", on_step=None, draft: Draft | None = None) -> Solved:
    t0 = time.perf_counter()
    branches, stats, spec = generate_branches(engine.model, encode(engine, question), n, params, engine.eos_ids,
                                              draft.engine.model if draft else None, draft.length if draft else 0,
                                              on_step)
    texts = [engine.tokenizer.decode(b.tokens, skip_special_tokens=True) for b in branches]
    answers = [extract_answer(t, task, finished=b.finish == "eos") for t, b in zip(texts, branches)]
    weights = [branch_weight(b.logprobs, b.confidences, rule) for b in branches]
    classes, _ = group_answers(answers, task)
    answer, tallies = vote(classes, answers, weights)
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
            "votes": [asdict(t) for t in solved.tallies]}
