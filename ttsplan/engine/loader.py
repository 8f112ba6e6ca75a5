"""Loading models for the engine: a pulled model with its tokenizer and end-of-sequence ids, a draft
checked against its target's tokenizer, or random weights of a shipped shape (for timing only)."""
import json
import os
from dataclasses import dataclass
from pathlib import Path


from ttsplan.assets import resolve_model
from ttsplan.engine.config import ModelConfig
from ttsplan.engine.model import Transformer, default_dtype
from ttsplan.engine.speculative import check_pair


def load_tokenizer(model_dir: Path):
    """A model folder's Hugging Face tokenizer."""
    from transformers import AutoTokenizer  # here: it imports Triton, whose interpreter is then fixed off
    return AutoTokenizer.from_pretrained(model_dir)


@dataclass
class LoadedModel:
    name: str
    model_dir: Path
    model: Transformer
    tokenizer: object
    eos_ids: set[int]


def load_model(name_or_path: str, device: str = "cpu") -> LoadedModel:
    """A registered (pulled) model or a local Hugging Face folder, in the device's dtype."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    path = resolve_model(name_or_path)
    model = Transformer.load(path, device=device, dtype=default_dtype(device))
    tokenizer = load_tokenizer(path)
    gen_config = path / "generation_config.json"  # read as JSON: transformers.generation would import triton
    eos = json.loads(gen_config.read_text()).get("eos_token_id") if gen_config.exists() else None
    eos_ids = set(eos if isinstance(eos, list) else [eos]) | {tokenizer.eos_token_id}
    return LoadedModel(name_or_path, path, model, tokenizer, {e for e in eos_ids if e is not None})


def load_draft(target: LoadedModel, name_or_path: str, device: str = "cpu") -> LoadedModel:
    """A draft model, refused unless it shares the target's tokenizer."""
    draft = load_model(name_or_path, device)
    check_pair(target.tokenizer, draft.tokenizer, target.name, draft.name)
    return draft


def random_models(shape: str, draft_shape: str | None, device, seed: int = 0):
    """Random-weight models of shipped shapes: for timing only (timings do not depend on weight values)."""
    dtype = default_dtype(device)
    model = Transformer.random(ModelConfig.shipped(shape), device, dtype, seed=seed)
    draft = Transformer.random(ModelConfig.shipped(draft_shape), device, dtype, seed=seed + 1) if draft_shape else None
    return model, draft
