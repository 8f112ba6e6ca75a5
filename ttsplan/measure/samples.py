"""Raw accuracy samples: N_max sampled branches for each calibration problem, kept whole.

Every branch is stored with its token ids, per-token log-probabilities and DeepConf confidences,
and its finish reason, so that answers can be extracted and graded again at any time, and any
vote rule or length cap evaluated later by subsampling, without generating again.

The store is one gzipped JSON file, rewritten atomically after each problem: an interrupted run
loses at most the problem in flight, and the next run resumes where it stopped (each problem has
its own seed, so a resumed run draws what an uninterrupted one would have).
"""
from dataclasses import asdict
from pathlib import Path

from ttsplan.errors import TTSPlanError
from ttsplan.files import read_json_gz, write_json_gz

SAMPLES_FORMAT = "ttsplan.samples/1"


def round_list(values: list[float], digits: int = 4) -> list[float]:
    return [round(v, digits) for v in values]


def load_samples(path: Path) -> dict | None:
    """The raw store at path, or None when there is none yet; a damaged file is refused by name."""
    if not path.exists():
        return None
    try:
        store = read_json_gz(path)
        if store.get("format") != SAMPLES_FORMAT:
            raise TTSPlanError(f"{path}: field 'format' is {store.get('format')!r}, expected {SAMPLES_FORMAT!r}")
        for p in store["problems"]:
            for b in p["branches"]:
                if not len(b["tokens"]) == len(b["logprobs"]) == len(b["confidences"]):
                    raise TTSPlanError(f"{path}: problem {p['id']}: tokens, logprobs and confidences differ in length")
        return store
    except (OSError, EOFError, ValueError, KeyError, TypeError) as e:
        raise TTSPlanError(f"{path}: not a readable samples file ({type(e).__name__}: {e})") from e


def new_store(model: dict, dataset: str, params, n_max: int) -> dict:
    return {"format": SAMPLES_FORMAT, "model": model, "dataset": dataset, "sampling": asdict(params),
            "n_max": n_max, "problems": []}


IDENTITY = ("name", "shape", "weights_sha256")


def check_compatible(store: dict, fresh: dict, path: Path) -> None:
    """A resumed store must have been taken with the same model (name, shape, weights), dataset,
    sampling and N_max."""
    for key in ("model", "dataset", "sampling", "n_max"):
        have, want = store[key], fresh[key]
        if key == "model":
            have, want = ({k: m.get(k) for k in IDENTITY} for m in (have, want))
        if have != want:
            raise TTSPlanError(f"{path}: field '{key}' is {have!r} but this run asks for {want!r}; "
                               "give another output folder or the same settings")


def collect_samples(engine, problems, n_max: int, params, path: Path, model: dict, dataset: str,
                    on_problem=None) -> dict:
    """Generate n_max branches (SamplingParams `params`) for every problem (datasets.Problem) not yet
    in the store at path; return the store.  Problem i of the dataset is sampled with seed
    params.seed + i (its index in the dataset)."""
    from ttsplan.engine.sampling import SamplingParams
    from ttsplan.runner import encode, generate_branches

    fresh = new_store(model, dataset, params, n_max)
    store = load_samples(path) or fresh
    check_compatible(store, fresh, path)
    done = {p["id"] for p in store["problems"]}
    for problem in problems:
        if problem.id in done:
            if on_problem:
                on_problem(problem, skipped=True)
            continue
        prompt = encode(engine, problem.question)
        seeded = SamplingParams(**{**asdict(params), "seed": params.seed + problem.index})
        branches, _, _ = generate_branches(engine.model, prompt, n_max, seeded, engine.eos_ids)
        store["problems"].append({
            "id": problem.id, "index": problem.index, "gold": problem.gold, "prompt_tokens": len(prompt),
            "seed": seeded.seed,
            "branches": [{"tokens": b.tokens, "logprobs": round_list(b.logprobs),
                          "confidences": round_list(b.confidences), "finish": b.finish} for b in branches],
        })
        write_json_gz(path, store)
        if on_problem:
            on_problem(problem, skipped=False)
    return store
