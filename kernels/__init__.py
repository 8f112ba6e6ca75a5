"""Attention kernels for the relay engine (installed as `ttsplan.kernels`).

`relay_attention` dispatches: the Triton kernels on a GPU, the plain-PyTorch reference
(`relay_attention_ref`, the one every faster kernel is checked against) elsewhere.
"""
from ttsplan.kernels.relay_attention_ref import merge_by_lse, relay_attention_ref


def relay_attention(q, prefix_k, prefix_v, suffix_k, suffix_v, suffix_lens, scale: float):
    if q.is_cuda:
        from ttsplan.kernels.relay_attention_triton import relay_attention_triton
        return relay_attention_triton(q, prefix_k, prefix_v, suffix_k, suffix_v, suffix_lens, scale)
    return relay_attention_ref(q, prefix_k, prefix_v, suffix_k, suffix_v, suffix_lens, scale)


__all__ = ["merge_by_lse", "relay_attention", "relay_attention_ref"]
