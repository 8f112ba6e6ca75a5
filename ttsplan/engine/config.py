"""ModelConfig: the few numbers of a Llama/Qwen2 checkpoint the engine needs, read from config.json."""
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from ttsplan.errors import TTSPlanError

SUPPORTED = ("llama", "qwen2", "mistral")


SHIPPED = Path(__file__).parent.parent / "configs"
DTYPES = {"cpu": "float32", "cuda": "bfloat16"}  # the one place the dtype per device is chosen


def dtype_name(device_type: str) -> str:
    """float32 on the CPU (bf16 matmuls are slow without AVX-512), bfloat16 on a GPU: for the relay
    engine, vLLM and the profiles alike."""
    return DTYPES.get(device_type, "bfloat16")


def config_path(name_or_path: str) -> Path:
    """The config.json of a shipped shape name, a model folder, or a path to a config file."""
    for path in (SHIPPED / f"{name_or_path}.json", Path(name_or_path) / "config.json", Path(name_or_path)):
        if path.is_file():
            return path
    shipped = sorted(p.stem for p in SHIPPED.glob("*.json"))
    raise TTSPlanError(f"unknown model config '{name_or_path}': choose one of {', '.join(shipped)} or a config.json")


@dataclass(frozen=True)
class ModelConfig:
    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float
    rms_norm_eps: float
    tie_word_embeddings: bool
    attention_bias: bool
    max_position_embeddings: int

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        model_type = d.get("model_type", "")
        if model_type not in SUPPORTED:
            raise TTSPlanError(f"model type '{model_type}' is not supported: the engine runs {', '.join(SUPPORTED)}")
        rope = d.get("rope_parameters") or d.get("rope_scaling") or {}
        if rope.get("rope_type", rope.get("type", "default")) != "default":
            raise TTSPlanError(f"rope scaling '{rope.get('rope_type', rope.get('type'))}' is not supported")
        heads = d["num_attention_heads"]
        return cls(
            model_type=model_type,
            vocab_size=d["vocab_size"],
            hidden_size=d["hidden_size"],
            intermediate_size=d["intermediate_size"],
            num_layers=d["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=d.get("num_key_value_heads") or heads,
            head_dim=d.get("head_dim") or d["hidden_size"] // heads,
            rope_theta=float(rope.get("rope_theta", d.get("rope_theta", 10000.0))),
            rms_norm_eps=d.get("rms_norm_eps", 1e-6),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            attention_bias=model_type == "qwen2" or bool(d.get("attention_bias", False)),
            max_position_embeddings=d.get("max_position_embeddings", 4096),
        )

    @classmethod
    def shipped(cls, name_or_path: str) -> "ModelConfig":
        """A config shipped with ttsplan (qwen2.5-0.5b, -1.5b, -3b, -7b) or a config.json path: for random weights."""
        return cls.from_file(config_path(name_or_path))

    @classmethod
    def load(cls, model_dir: Path) -> "ModelConfig":
        return cls.from_file(Path(model_dir) / "config.json")

    @classmethod
    def from_file(cls, path: Path) -> "ModelConfig":
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError, KeyError) as e:
            raise TTSPlanError(f"cannot read a model config in {path}: {e}") from e

    def shape_hash(self) -> str:
        """What a step's cost depends on: the tensor shapes (not rope, window or head tying, which a
        decode step's reads and FLOPs do not see).  Real weights and a random-weight shipped shape
        with the same shapes share it, so a device profile of one serves the other."""
        shape = (self.hidden_size, self.intermediate_size, self.num_layers, self.num_heads, self.num_kv_heads,
                 self.head_dim, self.vocab_size, self.attention_bias)
        return hashlib.sha256(repr(shape).encode()).hexdigest()[:12]

    def kv_token_bytes(self, dtype_bytes: int) -> int:
        """Bytes of K and V one token holds across all layers."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * dtype_bytes

    def weight_bytes(self, dtype_bytes: int) -> int:
        """Bytes of weights read per decode step (embedding rows are gathered, not read whole)."""
        e, f, h, kv, d = self.hidden_size, self.intermediate_size, self.num_heads, self.num_kv_heads, self.head_dim
        per_layer = e * (h + 2 * kv) * d + h * d * e + 3 * e * f + 2 * e
        return dtype_bytes * (self.num_layers * per_layer + self.vocab_size * e + e)
