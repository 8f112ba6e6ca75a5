"""The relay engine: our own Llama/Qwen2 forward pass over a two-level (shared prompt + per-branch) KV cache."""
