"""Sampling calibration problems into a samples store (measure.samples): N_max branches per problem,
several problems' branches decoding in one refilled batch (engine.many_prompts), a part written
atomically every PART_SECONDS or PART_TOKENS, resumable."""
import json
import time
from pathlib import Path

from ttsplan.engine.many_prompts import generate_many
from ttsplan.files import write_atomic
from ttsplan.measure.samples import PART_SECONDS, PART_TOKENS, check_compatible, load_store, meta_path, write_part


def collect_samples(model, encode, problems, n_max: int, params, folder: Path, fresh_meta: dict, rows: int,
                    eos_ids: set[int], on_problem=None, cuda_graphs: bool = True):
    """Generate n_max branches (SamplingParams `params`) for every problem (datasets.Problem) not yet
    in the store in `folder`, `rows` branches decoding at once (engine.many_prompts); returns the store
    and the batch's ManyStats (None when nothing was left to sample).
    Problem i of the dataset is sampled with seed params.seed + i (its index in the dataset)."""
    folder = Path(folder)
    store = load_store(folder)
    if store is None:
        write_atomic(meta_path(folder), json.dumps(fresh_meta, indent=1).encode())
        store = load_store(folder)
    check_compatible(store.meta, fresh_meta, folder)
    have = {p["id"] for p in store.problems}
    todo = [p for p in problems if p.id not in have]
    for p in problems:
        if p.id in have and on_problem:
            on_problem(p, skipped=True)
    prompts = [encode(p.question) for p in todo]
    seeds = [params.seed + p.index for p in todo]
    done, tokens, last_write, stats = [], 0, time.monotonic(), None
    for item in generate_many(model, prompts, seeds, n_max, max(rows, n_max), params, eos_ids, cuda_graphs):
        if not isinstance(item, tuple):
            stats = item
            break
        j, branches = item
        done.append((todo[j], seeds[j], len(prompts[j]), branches))
        if on_problem:
            on_problem(todo[j], skipped=False)
        tokens += sum(len(b.tokens) for b in branches)
        if time.monotonic() - last_write >= PART_SECONDS or tokens > PART_TOKENS:
            write_part(folder, done)
            done, tokens, last_write = [], 0, time.monotonic()
    if done:
        write_part(folder, done)
    return load_store(folder), stats
