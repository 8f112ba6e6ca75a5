"""Plain causal attention over the concatenated [prefix ; own suffix] KV, one branch at a time, float64."""
import torch


def concat_attention(q, prefix_k, prefix_v, suffix_k, suffix_v, suffix_lens, scale):
    B, H, nq, D = q.shape
    hkv = prefix_k.shape[0]
    lp = prefix_k.shape[1]
    out = torch.zeros(B, H, nq, D, dtype=torch.float64)
    for b in range(B):
        n = int(suffix_lens[b])
        k = torch.cat([prefix_k, suffix_k[b, :, :n]], dim=1).double().repeat_interleave(H // hkv, dim=0)
        v = torch.cat([prefix_v, suffix_v[b, :, :n]], dim=1).double().repeat_interleave(H // hkv, dim=0)
        scores = q[b].double() @ k.transpose(1, 2) * scale  # [H, q, lp+n]
        qpos = lp + n - nq + torch.arange(nq)
        mask = torch.arange(lp + n).view(1, -1) > qpos.view(-1, 1)
        scores = scores.masked_fill(mask, float("-inf"))
        out[b] = torch.softmax(scores, dim=-1) @ v
    return out
