"""Attention kernels for the relay engine (installed as `ttsplan.kernels`).

`relay_attention` is the plain-PyTorch reference every faster kernel must match.
"""
from ttsplan.kernels.relay_attention_ref import merge_by_lse, relay_attention

__all__ = ["merge_by_lse", "relay_attention"]
