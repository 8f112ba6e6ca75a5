"""`ttsplan profile`: measure a device profile and a task profile, resuming whatever an earlier run left.

  profile_device  step costs of a real model (or a random-weight shipped shape) on this device,
                  with a draft's step and round costs when a draft is given
  profile_vllm_device  the same model's step costs served by vLLM (measure.vllm_step_cost)
  profile_task    N_max branches per calibration problem, graded into the task profile; the draft's
                  acceptance at the sampling temperature and at 0 (greedy) when a draft is given

Both write under profiles/ (or --out-dir) atomically after every measured point or problem, and
measure only what the files there do not hold yet.
"""
import multiprocessing
import queue
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path

import torch

from ttsplan import __version__
from ttsplan.assets import resolve_model, weights_sha256
from ttsplan.datasets import load_problems, prompt_ids
from ttsplan.backends.vllm_args import engine_args
from ttsplan.engine.config import ModelConfig, dtype_name
from ttsplan.engine.loader import LoadedModel, load_draft, load_model, load_tokenizer, random_models
from ttsplan.engine.model import Transformer
from ttsplan.engine.sampling import SamplingParams
from ttsplan.errors import TTSPlanError
from ttsplan.files import remove_stale_temps
from ttsplan.hardware import copy_bandwidth, device_name, device_slug
from ttsplan.measure.schema import DeviceProfile, DraftCosts, ModelInfo, load_acceptance, load_device_profile, \
    save_acceptance, save_profile, software_versions, today
from ttsplan.measure.samples import load_store, new_meta
from ttsplan.measure.sampling import collect_samples
from ttsplan.measure.step_cost import Grid, measure_device
from ttsplan.measure.task import build_task_profile, measure_acceptance
from ttsplan.measure.vllm_step_cost import VLLM_GRIDS, measure_phase, measure_vllm_device

ACCEPTANCE_PROMPTS = 8
ACCEPTANCE_TOKENS = 256  # whole answers: a derivation's later tokens are easier to draft than its first ones
ACCEPTANCE_FILE = "acceptance.yaml"  # beside the samples: measured where they were


def model_info(name: str, cfg: ModelConfig, random_weights: bool) -> ModelInfo:
    return ModelInfo(name, cfg.shape_hash(), "" if random_weights else weights_sha256(name), asdict(cfg))


def calibration_text_ids(tokenizer, tokens: int) -> list[int]:
    """Real text (GSM8K questions, joined) of at least `tokens` tokens, for prompts of any length."""
    text, ids = "", []
    for p in load_problems("gsm8k"):
        text += p.question + "\n"
        if len(text) > 3 * tokens:
            ids = tokenizer(text)["input_ids"]
            if len(ids) >= tokens:
                return ids
    return tokenizer(text)["input_ids"]


def device_profile_path(out_dir: Path, device: torch.device, model: str, backend: str = "relay") -> Path:
    return Path(out_dir) / "device" / f"{device_slug(device)}-{backend}-{Path(model).name}.yaml"


def task_profile_dir(out_dir: Path, model: str, dataset: str, device: torch.device) -> Path:
    """One task profile per model, dataset and device kind: fp32 CPU and bf16 GPU samples are kept apart."""
    return Path(out_dir) / "tasks" / f"{Path(model).name}-{dataset}-{device_slug(device)}"


@dataclass
class ProfileModels:
    """What a profile run measures: the target (and draft) Transformer, their loaded engines (None
    for random weights) and their model infos."""
    target: Transformer
    draft: Transformer | None
    engine: LoadedModel | None
    draft_engine: LoadedModel | None
    info: ModelInfo
    draft_info: ModelInfo | None


def load_models(model: str | None, random_weights: str | None, draft: str | None,
                device: torch.device) -> ProfileModels:
    """The models a profile run measures, each loaded once: a real model (and draft) or shipped shapes."""
    if random_weights:
        target, d = random_models(random_weights, draft, device)
        return ProfileModels(target, d, None, None, model_info(random_weights, target.cfg, True),
                             model_info(draft, d.cfg, True) if draft else None)
    engine = load_model(model, device.type)
    d = load_draft(engine, draft, device.type) if draft else None
    return ProfileModels(engine.model, d.model if d else None, engine, d,
                         model_info(model, engine.model.cfg, False), model_info(draft, d.model.cfg, False) if d else None)


def check_profile_request(backend: str, random_weights: str | None, dataset: str | None, limit: int, offset: int,
                          n_max: int, rows: int | None) -> None:
    """`ttsplan profile`'s arguments, refused before any model loads."""
    if backend not in ("relay", "vllm"):
        raise TTSPlanError(f"unknown backend {backend!r}: relay or vllm")
    if backend == "vllm" and (random_weights or dataset):
        raise TTSPlanError("--backend vllm profiles a real model's step costs (and its draft's rounds) only: "
                           "no --random-weights or --dataset")
    if dataset and random_weights:
        raise TTSPlanError("accuracy samples need real weights: drop --random-weights or --dataset")
    if n_max < 1:
        raise TTSPlanError(f"--n-max must be at least 1, got {n_max}")
    if rows is not None and rows < n_max:
        raise TTSPlanError(f"--rows must hold one problem's {n_max} branches, got {rows}")
    if dataset and not load_problems(dataset, limit, offset):  # an unknown dataset or a bad range fails here
        raise TTSPlanError(f"{dataset} has no problems from offset {offset}")


def open_device_profile(out: Path, device: torch.device, backend: str, info: ModelInfo, dtype: str,
                        grid: Grid) -> DeviceProfile:
    """The profile at `out` to resume (refused if it is another device's, backend's, shape's or
    dtype's), or a new one."""
    remove_stale_temps(out.parent)
    if out.exists():
        profile = load_device_profile(out)
        for field, have, want in (("device.name", profile.device["name"], device_name(device)),
                                  ("backend", profile.backend, backend), ("model.shape", profile.model.shape, info.shape),
                                  ("dtype", profile.dtype, dtype)):
            if have != want:
                raise TTSPlanError(f"{out}: field '{field}' is {have!r}, not {want!r}: this run would mix two "
                                   "profiles; give another --out-dir")
    else:
        profile = DeviceProfile({"name": device_name(device), "type": device.type,
                                 "copy_bandwidth_gbs": round(copy_bandwidth(device) / 1e9, 2)},
                                backend, dtype, info, grid.as_dict(), [], [], [],
                                software=software_versions(), date=today())
    profile.grid = grid.as_dict()
    return profile


def profile_device(models: ProfileModels, device: torch.device, grid: Grid, out: Path, on_task=None) -> DeviceProfile:
    """Measure (or finish measuring) the relay engine's device profile at `out`."""
    target, draft, engine, info, draft_info = models.target, models.draft, models.engine, models.info, models.draft_info
    profile = open_device_profile(out, device, "relay", info, str(target.dtype).split(".")[-1], grid)
    if draft is not None and profile.draft is None:
        profile.draft = DraftCosts(draft_info, [], [])
    if engine is not None:
        prompt_ids = calibration_text_ids(engine.tokenizer, max(grid.prompt) + max(grid.branches) * max(grid.query))
    else:
        gen = torch.Generator().manual_seed(0)
        prompt_ids = torch.randint(0, target.cfg.vocab_size, (max(grid.prompt) + 1024,), generator=gen).tolist()
    return measure_device(profile, out, target, prompt_ids, grid, draft, on_task)


def profile_vllm_device(model: str, draft: str | None, device: torch.device, quick: bool, out_dir: Path,
                        on_task=None, branches: tuple[int, ...] | None = None) -> Path:
    """Measure (or finish measuring) the device profile of `model` served by vLLM, with `draft`
    proposing for it when given; `branches` overrides the grid's live-branch axis."""
    grid = VLLM_GRIDS[(device.type, quick)]
    grid = replace(grid, branches=branches) if branches else grid
    paths = {"target": resolve_model(model), "draft": resolve_model(draft) if draft else None}
    cfg = ModelConfig.load(paths["target"])
    window = max(grid.prompt) + 2 * max(grid.own) + 64
    out = device_profile_path(out_dir, device, model, "vllm")
    profile = open_device_profile(out, device, "vllm", model_info(model, cfg, False), dtype_name(device.type), grid)
    draft_info = model_info(draft, ModelConfig.load(paths["draft"]), False) if draft else None
    if draft and profile.draft and profile.draft.model.shape != draft_info.shape:
        raise TTSPlanError(f"{out}: field 'draft.model.shape' is {profile.draft.model.shape!r}, not "
                           f"{draft_info.shape!r}: this run would mix two profiles; give another --out-dir")

    def engine(which: str, k: int) -> dict:
        return {**engine_args(paths[which], device.type, draft_dir=paths["draft"] if k else None, draft_len=k,
                              max_model_len=window), "disable_log_stats": False}

    prompt_ids = calibration_text_ids(load_tokenizer(paths["target"]), max(grid.prompt) + 1200)

    def run_phase(profile, which: str, k: int, todo, prefills):
        return run_in_process(measure_phase, profile, out, engine(which, k), which, k, todo, prefills, prompt_ids,
                              on_task=on_task, what=f"vLLM serving the {which}" + (f" with k = {k}" if k else ""))

    measure_vllm_device(profile, out, run_phase, grid, window, draft_info, on_task)
    return out


def run_in_process(fn, profile, out: Path, *args, on_task=None, what: str = ""):
    """fn(profile, out, *args, progress_queue) in a fresh process; relays its progress to on_task and
    returns the profile as it saved it."""
    ctx = multiprocessing.get_context("spawn")
    progress = ctx.Queue()
    proc = ctx.Process(target=fn, args=(profile, out, *args, progress))
    proc.start()
    while True:
        try:
            msg = progress.get(timeout=5)
        except queue.Empty:
            if proc.is_alive():
                continue
            break
        if msg is None:
            break
        if on_task:
            on_task(*msg)
    proc.join()
    if proc.exitcode:
        raise TTSPlanError(f"{what} exited with code {proc.exitcode} (killed for memory?); what it measured is "
                           f"saved in {out}: run the same command again to go on")
    return load_device_profile(out)


def sampled_on(model) -> dict:
    """Where and how samples are taken: a task profile says it, and a resumed store must match it."""
    return {"device": device_name(model.device), "type": model.device.type, "dtype": str(model.dtype).split(".")[-1],
            "backend": "relay", "ttsplan": __version__, **software_versions()}


def default_rows(device: torch.device, n_max: int) -> int:
    """Branches decoding at once while sampling: 8 problems' worth on a GPU, one problem on a CPU."""
    return n_max * (8 if device.type == "cuda" else 1)


def profile_task(models: ProfileModels, dataset: str, offset: int, limit: int,
                 n_max: int, max_new_tokens: int, temperature: float, top_p: float, out_dir: Path,
                 rows: int | None = None, grade: bool = True, on_problem=None, on_prompt=None):
    """Sample (or finish sampling) the calibration problems into out_dir/samples/, measure the draft's
    acceptance beside them, and (grade) grade them into out_dir/task.yaml.  Returns the path written
    last and the sampling batch's statistics (None when nothing was left to sample)."""
    engine, draft_engine, info, draft_info = models.engine, models.draft_engine, models.info, models.draft_info
    if n_max < 1:
        raise TTSPlanError(f"--n-max must be at least 1, got {n_max}")
    problems = load_problems(dataset, limit, offset)
    if not problems:
        raise TTSPlanError(f"{dataset} has no problems from offset {offset}")
    params = SamplingParams(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, seed=0)
    folder = out_dir / "samples"
    remove_stale_temps(out_dir)
    meta = new_meta(asdict(info), dataset, params, n_max, sampled_on(engine.model))
    rows = rows or default_rows(engine.model.device, n_max)
    store, stats = collect_samples(engine.model, partial(prompt_ids, engine.tokenizer), problems, n_max, params, folder, meta,
                                   rows, engine.eos_ids, on_problem)
    if draft_engine is not None:
        prompts = [prompt_ids(engine.tokenizer, p.question) for p in problems[:ACCEPTANCE_PROMPTS]]
        acceptance = load_acceptance(folder / ACCEPTANCE_FILE)
        for temp in (temperature, 0.0):
            if any(a.draft.shape == draft_info.shape and a.temperature == temp for a in acceptance):
                continue
            acceptance.append(measure_acceptance(engine.model, draft_engine.model, draft_info, prompts,
                                                 engine.eos_ids, temp, new_tokens=min(max_new_tokens, ACCEPTANCE_TOKENS),
                                                 on_prompt=on_prompt))
            save_acceptance(acceptance, folder / ACCEPTANCE_FILE)
    if not grade:
        return folder, stats
    return grade_task(out_dir, engine.tokenizer, store), stats


def grade_task(out_dir: Path, tokenizer=None, store=None, on_problem=None) -> Path:
    """Grade the samples in out_dir/samples/ (with the acceptance measured beside them) into
    out_dir/task.yaml; tokenizer: the sampled model's (loaded when None)."""
    folder = Path(out_dir) / "samples"
    store = store or load_store(folder)
    if store is None:
        raise TTSPlanError(f"{folder}: no samples store here (meta.json is missing)")
    if tokenizer is None:
        tokenizer = load_tokenizer(resolve_model(store.meta["model"]["name"]))
    path = Path(out_dir) / "task.yaml"
    save_profile(build_task_profile(store, folder, tokenizer, load_acceptance(folder / ACCEPTANCE_FILE), on_problem), path)
    return path
