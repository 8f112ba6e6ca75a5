"""Transformer: the Llama/Qwen2 forward pass (RMSNorm, RoPE, GQA, SwiGLU, tied or untied head).

Two entry points share one layer body:
  prefill(tokens, cache)  causal attention over the prompt, whose KV becomes the shared prefix;
  decode(tokens, cache)   q new tokens for each live branch, attention through relay attention.
"""
import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from ttsplan.engine.config import ModelConfig, dtype_name
from ttsplan.engine.kv_cache import KVCache
from ttsplan.errors import TTSPlanError
from ttsplan.kernels import add_rms_norm, relay_attention, rope_and_store, silu_mul
from ttsplan.kernels.layer_ops_ref import rms_norm, split_heads


class Linear:
    """y = x W^T + b.  On the CPU in float32 the weight is prepacked once for oneDNN, whose
    small-batch GEMM is 2-3x faster than the default path here (same float32 math)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        self.bias = bias
        self.packed = weight.device.type == "cpu" and weight.dtype == torch.float32 and torch.backends.mkldnn.is_available()
        self.weight = torch.ops.mkldnn._reorder_linear_weight(weight, 8) if self.packed else weight

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed:
            return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")
        return F.linear(x, self.weight, self.bias)


@dataclass
class Layer:
    attn_norm: torch.Tensor
    qkv: Linear                   # q, k, v projections fused into one GEMM
    o: Linear
    mlp_norm: torch.Tensor
    gate_up: Linear               # gate and up fused
    down: Linear


def load_state_dict(model_dir: Path) -> dict[str, torch.Tensor]:
    index = model_dir / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else ["model.safetensors"]
    state = {}
    for f in files:
        state.update(load_file(str(model_dir / f)))
    return state


def random_state_dict(cfg: ModelConfig, device: torch.device, dtype: torch.dtype, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator(device=device).manual_seed(seed)
    E, Fd, H, Hkv, D = cfg.hidden_size, cfg.intermediate_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim

    def rand(*shape):
        return (torch.randn(*shape, generator=gen, device=device, dtype=torch.float32) * 0.02).to(dtype)

    state = {"model.embed_tokens.weight": rand(cfg.vocab_size, E), "model.norm.weight": torch.ones(E, device=device, dtype=dtype)}
    if not cfg.tie_word_embeddings:
        state["lm_head.weight"] = rand(cfg.vocab_size, E)
    for i in range(cfg.num_layers):
        p = f"model.layers.{i}."
        shapes = {"self_attn.q_proj": (H * D, E), "self_attn.k_proj": (Hkv * D, E), "self_attn.v_proj": (Hkv * D, E),
                  "self_attn.o_proj": (E, H * D), "mlp.gate_proj": (Fd, E), "mlp.up_proj": (Fd, E), "mlp.down_proj": (E, Fd)}
        for name, shape in shapes.items():
            state[p + name + ".weight"] = rand(*shape)
            if cfg.attention_bias and name in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
                state[p + name + ".bias"] = rand(shape[0])
        state[p + "input_layernorm.weight"] = torch.ones(E, device=device, dtype=dtype)
        state[p + "post_attention_layernorm.weight"] = torch.ones(E, device=device, dtype=dtype)
    return state


def in_vocab(tokens: torch.Tensor, model: "Transformer") -> torch.Tensor:
    """tokens as `model` can embed them: a draft whose vocabulary is a prefix of its target's is fed the
    target's extra ids as its own last id (the draft only proposes, so the output stays the target's)."""
    return tokens.clamp(max=model.cfg.vocab_size - 1)


def default_dtype(device: str | torch.device) -> torch.dtype:
    """The torch dtype of engine.config.dtype_name for the device."""
    return getattr(torch, dtype_name(torch.device(device).type))


class Transformer:
    def __init__(self, cfg: ModelConfig, state: dict[str, torch.Tensor], device: torch.device, dtype: torch.dtype):
        self.cfg, self.device, self.dtype = cfg, torch.device(device), dtype

        def w(name: str) -> torch.Tensor:
            if name not in state:
                raise TTSPlanError(f"weight '{name}' missing from the checkpoint")
            return state[name].to(device=self.device, dtype=dtype)

        self.embed = w("model.embed_tokens.weight")
        self.norm = w("model.norm.weight")
        tied = cfg.tie_word_embeddings or "lm_head.weight" not in state
        self.lm_head = Linear(self.embed if tied else w("lm_head.weight"))
        self.layers = []
        for i in range(cfg.num_layers):
            p = f"model.layers.{i}."
            a = p + "self_attn."
            self.layers.append(Layer(
                attn_norm=w(p + "input_layernorm.weight"),
                qkv=Linear(torch.cat([w(a + "q_proj.weight"), w(a + "k_proj.weight"), w(a + "v_proj.weight")]),
                           torch.cat([w(a + "q_proj.bias"), w(a + "k_proj.bias"), w(a + "v_proj.bias")])
                           if cfg.attention_bias else None),
                o=Linear(w(a + "o_proj.weight")),
                mlp_norm=w(p + "post_attention_layernorm.weight"),
                gate_up=Linear(torch.cat([w(p + "mlp.gate_proj.weight"), w(p + "mlp.up_proj.weight")])),
                down=Linear(w(p + "mlp.down_proj.weight")),
            ))
        inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, cfg.head_dim, 2, dtype=torch.float64) / cfg.head_dim))
        self.inv_freq = inv_freq.float().to(self.device)
        self.scale = cfg.head_dim ** -0.5

    @classmethod
    def load(cls, model_dir: Path, device="cpu", dtype=torch.float32) -> "Transformer":
        model_dir = Path(model_dir)
        return cls(ModelConfig.load(model_dir), load_state_dict(model_dir), torch.device(device), dtype)

    @classmethod
    def random(cls, cfg: ModelConfig, device="cpu", dtype=torch.float32, seed: int = 0) -> "Transformer":
        """Random weights of the config's shapes, made on the device: for timing only (timings do not
        depend on weight values, and real weights cannot travel to every machine)."""
        return cls(cfg, random_state_dict(cfg, torch.device(device), dtype, seed), torch.device(device), dtype)

    def rope(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [B, T, D] for positions [B, T]."""
        freqs = positions.float().unsqueeze(-1) * self.inv_freq  # [..., D/2]
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(self.dtype), emb.sin().to(self.dtype)

    def _forward(self, tokens: torch.Tensor, positions: torch.Tensor, attend) -> torch.Tensor:
        """tokens, positions [B, T] -> final hidden states [B, T, E].  attend(layer, qkv, cos, sin) takes the
        fused qkv projection [B, T, (H + 2 Hkv) D], applies RoPE, stores the KV, and returns the
        attention output [B, T, H D].  Each residual add is fused with the RMSNorm that follows it."""
        eps = self.cfg.rms_norm_eps
        cos, sin = self.rope(positions)
        x = F.embedding(tokens, self.embed)
        h = rms_norm(x, self.layers[0].attn_norm, eps)
        for i, layer in enumerate(self.layers):
            x, h = add_rms_norm(x, layer.o(attend(i, layer.qkv(h), cos, sin)), layer.mlp_norm, eps)
            next_norm = self.layers[i + 1].attn_norm if i + 1 < len(self.layers) else self.norm
            x, h = add_rms_norm(x, layer.down(silu_mul(layer.gate_up(h))), next_norm, eps)
        return h

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden).float()

    @torch.inference_mode()
    def prefill(self, tokens: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Run the prompt [Lp] once, store its KV as the shared prefix, return the last position's logits [V]."""
        Lp = tokens.shape[0]
        positions = torch.arange(Lp, device=self.device).unsqueeze(0)
        cfg = self.cfg

        def attend(i, qkv, cos, sin):
            q, k, v = split_heads(qkv, cfg.num_heads, cfg.num_kv_heads, cos, sin)
            cache.prefix_k[i].copy_(k[0])
            cache.prefix_v[i].copy_(v[0])
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale, enable_gqa=True)
            return o.transpose(1, 2).reshape(1, Lp, -1)

        hidden = self._forward(tokens.unsqueeze(0).to(self.device), positions, attend)
        return self.logits(hidden[0, -1])

    @torch.inference_mode()
    def decode(self, tokens: torch.Tensor, cache: KVCache, static: bool = False) -> torch.Tensor:
        """Score tokens [B, q] for cache rows 0..B-1, placed after each branch's committed tokens.

        Writes their KV past cache.lens without committing it; returns logits [B, q, V].
        The caller commits what it accepts by advancing cache.lens.  static=True never reads a
        device value on the host (attention spans the whole capacity, masked by lens): the form
        a CUDA graph can capture.
        """
        B, nq = tokens.shape
        lens = cache.lens[:B]
        positions = cache.prefix_len + lens.view(B, 1) + torch.arange(nq, device=self.device).view(1, nq)
        span = cache.capacity if static else int(lens.max()) + nq  # suffix positions any query can see
        if span > cache.capacity:  # checked where lens is already read on the host; graphs never sync
            raise TTSPlanError(f"a branch outgrew its KV capacity of {cache.capacity} tokens")

        cfg, seen = self.cfg, lens + nq

        def attend(i, qkv, cos, sin):
            q = rope_and_store(qkv, cos, sin, cache.suffix_k[i], cache.suffix_v[i], lens, cfg.num_heads, cfg.num_kv_heads)
            out = torch.empty(B, nq, cfg.num_heads, cfg.head_dim, device=qkv.device, dtype=qkv.dtype)
            relay_attention(q, cache.prefix_k[i], cache.prefix_v[i], cache.suffix_k[i][:B, :, :span],
                            cache.suffix_v[i][:B, :, :span], seen, self.scale, out=out.transpose(1, 2))
            return out.view(B, nq, -1)

        return self.logits(self._forward(tokens.to(self.device), positions, attend))
