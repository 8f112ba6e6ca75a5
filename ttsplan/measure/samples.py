"""Raw accuracy samples: N_max sampled branches for each calibration problem, kept whole.

Every branch is stored with its token ids, per-token log-probabilities and DeepConf confidences
(float16), and its finish reason, so that answers can be extracted and graded again at any time (on
another machine than the one that sampled), and any vote rule or length cap evaluated later by
subsampling, without generating again.

The store is a folder:
  meta.json          format, model, dataset, sampling, N_max, and where and how it was sampled
  part-NNNNN.npz     the problems of one write: ids, gold answers, lengths, finish reasons, and the
                     branches' tokens, log-probabilities and confidences end to end
Each part is written atomically once its problems are done (every PART_SECONDS or PART_TOKENS,
whichever comes first; a part stays a few MB): an interrupted run loses at most that much, and the next run resumes with the problems no part holds.
Branch i of problem p draws its tokens from uniforms fixed by (seed + p's index, i, position)
(engine.many_prompts), so a resumed run draws what an uninterrupted one would have.  This module is
the store (torch-free: the planner reads it); measure.sampling fills it.
"""
import hashlib
import io
import json
import os
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from ttsplan.errors import TTSPlanError
from ttsplan.files import sha256_file, write_atomic

SAMPLES_FORMAT = "ttsplan.samples/2"
FINISH = ("eos", "length", "stopped")
PART_SECONDS = float(os.environ.get("TTSPLAN_PART_SECONDS", 60))  # tests set it low to see parts appear
PART_TOKENS = 2_000_000
IDENTITY = ("name", "shape", "weights_sha256")


@dataclass
class SampleStore:
    """Every sampled problem of a store, its branches end to end: branch (p, i) is
    tokens[starts[p, i]:starts[p, i] + lengths[p, i]] (and the same slice of logprobs, confidences)."""
    meta: dict
    problems: list[dict]      # id, index, gold, prompt_tokens, seed
    lengths: np.ndarray       # [P, n]
    finish: np.ndarray        # [P, n] index into FINISH
    tokens: np.ndarray        # [T] uint32
    logprobs: np.ndarray      # [T] float16
    confidences: np.ndarray   # [T] float16

    @cached_property
    def starts(self) -> np.ndarray:
        """[P, n] where each branch begins in tokens (computed once: grading reads it per branch)."""
        return (np.cumsum(self.lengths.ravel()) - self.lengths.ravel()).reshape(self.lengths.shape)

    def branch(self, p: int, i: int, what: str = "tokens") -> np.ndarray:
        start = self.starts[p, i]
        return getattr(self, what)[start:start + self.lengths[p, i]]

    def finish_of(self, p: int, i: int) -> str:
        return FINISH[self.finish[p, i]]


def meta_path(folder: Path) -> Path:
    return Path(folder) / "meta.json"


def new_meta(model: dict, dataset: str, params, n_max: int, sampled_on: dict) -> dict:
    return {"format": SAMPLES_FORMAT, "model": model, "dataset": dataset, "sampling": asdict(params),
            "n_max": n_max, "sampled_on": sampled_on}


def check_compatible(meta: dict, fresh: dict, folder: Path) -> None:
    """A resumed store must have been taken with the same model (name, shape, weights), dataset,
    sampling and N_max, on the same kind of device, dtype and backend."""
    for key in ("model", "dataset", "sampling", "n_max", "sampled_on"):
        have, want = meta[key], fresh[key]
        if key == "model":
            have, want = ({k: m.get(k) for k in IDENTITY} for m in (have, want))
        if key == "sampled_on":
            have, want = ({k: m.get(k) for k in ("device", "dtype", "backend")} for m in (have, want))
        if have != want:
            raise TTSPlanError(f"{meta_path(folder)}: field '{key}' is {have!r} but this run asks for {want!r}; "
                               "give another output folder or the same settings")


def part_files(folder: Path) -> list[Path]:
    return sorted(Path(folder).glob("part-*.npz"))


def store_sha256(folder: Path) -> str:
    """One checksum over meta.json and every part, in name order: what a task profile records."""
    h = hashlib.sha256()
    for f in [meta_path(folder), *part_files(folder)]:
        h.update(f.name.encode() + sha256_file(f).encode())
    return h.hexdigest()


def load_store(folder: Path) -> SampleStore | None:
    """The store in folder, or None when there is none yet; a damaged one is refused by name."""
    folder = Path(folder)
    if not meta_path(folder).is_file():
        return None
    try:
        meta = json.loads(meta_path(folder).read_text())
        if meta.get("format") != SAMPLES_FORMAT:
            raise TTSPlanError(f"{meta_path(folder)}: field 'format' is {meta.get('format')!r}, expected {SAMPLES_FORMAT!r}")
        problems, arrays = [], {k: [] for k in ("lengths", "finish", "tokens", "logprobs", "confidences")}
        for f in part_files(folder):
            with np.load(f, allow_pickle=False) as part:
                problems += [{"id": str(i), "index": int(x), "gold": str(g), "prompt_tokens": int(t), "seed": int(s)}
                             for i, x, g, t, s in zip(part["id"], part["index"], part["gold"], part["prompt_tokens"],
                                                      part["seed"])]
                for k in arrays:
                    arrays[k].append(part[k])
                if part["lengths"].shape[1:] != (meta["n_max"],) or part["tokens"].shape[0] != part["lengths"].sum():
                    raise TTSPlanError(f"{f}: its lengths do not match n_max {meta['n_max']} or its tokens")
    except (OSError, EOFError, ValueError, KeyError, TypeError, json.JSONDecodeError) as e:
        raise TTSPlanError(f"{folder}: not a readable samples store ({type(e).__name__}: {e})") from e
    n = meta["n_max"]
    empty = {"lengths": np.zeros((0, n), np.int32), "finish": np.zeros((0, n), np.uint8),
             "tokens": np.zeros(0, np.uint32), "logprobs": np.zeros(0, np.float16), "confidences": np.zeros(0, np.float16)}
    return SampleStore(meta, problems, **{k: np.concatenate(v) if v else empty[k] for k, v in arrays.items()})


def write_part(folder: Path, done: list[tuple]) -> None:
    """Append the problems `done` ((datasets.Problem, seed, prompt_tokens, branches) each) as the next part."""
    done = sorted(done, key=lambda d: d[0].index)
    rows = [b for _, _, _, branches in done for b in branches]
    arrays = {
        "id": np.array([p.id for p, *_ in done]), "index": np.array([p.index for p, *_ in done], np.int64),
        "gold": np.array([p.gold for p, *_ in done]), "seed": np.array([s for _, s, _, _ in done], np.int64),
        "prompt_tokens": np.array([t for _, _, t, _ in done], np.int32),
        "lengths": np.array([[len(b.tokens) for b in branches] for *_, branches in done], np.int32),
        "finish": np.array([[FINISH.index(b.finish) for b in branches] for *_, branches in done], np.uint8),
        "tokens": np.array([t for b in rows for t in b.tokens], np.uint32),
        "logprobs": np.array([x for b in rows for x in b.logprobs], np.float16),
        "confidences": np.array([x for b in rows for x in b.confidences], np.float16),
    }
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    parts = part_files(folder)
    number = int(parts[-1].stem.split("-")[1]) + 1 if parts else 0
    write_atomic(Path(folder) / f"part-{number:05d}.npz", buf.getvalue())
