"""RelayAttention in plain PyTorch: the reference implementation.

All branches share one prompt (the prefix); each branch also owns the KV of the
tokens it generated (its suffix).  Attention over prefix+suffix is split in two:

  prefix part: one batched matrix product of every branch's queries against the
               single prefix KV (read once for the whole batch);
  suffix part: per-branch attention over that branch's own KV, causal within the
               q new tokens;

and the two partial results are merged exactly through their log-sum-exps.

Shapes (B branches, q query tokens per branch, H query heads, Hkv KV heads, D head dim):
  q          [B, H, q, D]
  prefix_k/v [Hkv, Lp, D]
  suffix_k/v [B, Hkv, S, D]   only the first suffix_lens[b] positions of row b are valid
  suffix_lens [B] int         valid suffix tokens per branch, the q new ones included
Query i of branch b sits at suffix position suffix_lens[b] - q + i and sees every
prefix key and the suffix keys at or before it.
"""
import torch


def _acc_dtype(x: torch.Tensor) -> torch.dtype:
    """Scores, log-sum-exps and the merge run in float32, or float64 for float64 inputs."""
    return torch.promote_types(x.dtype, torch.float32)


def prefix_attention(q: torch.Tensor, prefix_k: torch.Tensor, prefix_v: torch.Tensor, scale: float):
    """Every branch's queries against the shared prefix KV: one GEMM per KV head.

    Returns (out [B, H, q, D], lse [B, H, q]) with lse = -inf and out = 0 for an empty prefix.
    """
    B, H, nq, D = q.shape
    hkv, lp, _ = prefix_k.shape
    g = H // hkv
    # [B, Hkv, g, q, D] -> [Hkv, B*g*q, D]: all queries that read KV head h in one row block.
    qh = q.reshape(B, hkv, g * nq, D).transpose(0, 1).reshape(hkv, B * g * nq, D)
    if lp == 0:
        return torch.zeros_like(q), q.new_full((B, H, nq), float("-inf"), dtype=_acc_dtype(q))
    scores = torch.bmm(qh, prefix_k.transpose(1, 2)).to(_acc_dtype(q)) * scale  # [Hkv, B*g*q, Lp]
    lse = torch.logsumexp(scores, dim=-1)
    probs = torch.exp(scores - lse.unsqueeze(-1)).to(prefix_v.dtype)
    out = torch.bmm(probs, prefix_v)  # [Hkv, B*g*q, D]
    out = out.reshape(hkv, B, g * nq, D).transpose(0, 1).reshape(B, H, nq, D)
    lse = lse.reshape(hkv, B, g * nq).transpose(0, 1).reshape(B, H, nq)
    return out, lse


def suffix_attention(q: torch.Tensor, suffix_k: torch.Tensor, suffix_v: torch.Tensor,
                     suffix_lens: torch.Tensor, scale: float):
    """Each branch's queries against its own KV, causal within the new tokens.

    Returns (out [B, H, q, D], lse [B, H, q]); a query that sees no suffix key gets
    lse = -inf and out = 0.
    """
    B, H, nq, D = q.shape
    hkv, S = suffix_k.shape[1], suffix_k.shape[2]
    g = H // hkv
    qg = q.reshape(B, hkv, g * nq, D)
    scores = torch.matmul(qg, suffix_k.transpose(2, 3)).to(_acc_dtype(q)) * scale  # [B, Hkv, g*q, S]
    scores = scores.reshape(B, hkv, g, nq, S)
    # Query i of branch b is at suffix position suffix_lens[b] - q + i.
    qpos = suffix_lens.view(B, 1) - nq + torch.arange(nq, device=q.device).view(1, nq)  # [B, q]
    kpos = torch.arange(S, device=q.device)
    visible = kpos.view(1, 1, S) <= qpos.unsqueeze(-1)  # [B, q, S]
    scores = scores.masked_fill(~visible.view(B, 1, 1, nq, S), float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)  # [B, Hkv, g, q]
    probs = torch.exp(scores - lse.unsqueeze(-1)).nan_to_num(0.0).to(suffix_v.dtype)
    out = torch.matmul(probs.reshape(B, hkv, g * nq, S), suffix_v).reshape(B, H, nq, D)
    return out, lse.reshape(B, H, nq)


def merge_by_lse(out_a: torch.Tensor, lse_a: torch.Tensor, out_b: torch.Tensor, lse_b: torch.Tensor):
    """Exact merge of two softmax-attention partials over disjoint key sets, in float32."""
    lse = torch.logaddexp(lse_a, lse_b)
    w_a = torch.exp(lse_a - lse).nan_to_num(0.0).unsqueeze(-1)
    w_b = torch.exp(lse_b - lse).nan_to_num(0.0).unsqueeze(-1)
    acc = _acc_dtype(out_a)
    out = w_a * out_a.to(acc) + w_b * out_b.to(acc)
    return out.to(out_a.dtype), lse


def relay_attention_ref(q, prefix_k, prefix_v, suffix_k, suffix_v, suffix_lens, scale: float):
    """Attention of q over [shared prefix KV ; own suffix KV], prefix read once. Returns [B, H, q, D]."""
    out_p, lse_p = prefix_attention(q, prefix_k, prefix_v, scale)
    out_s, lse_s = suffix_attention(q, suffix_k, suffix_v, suffix_lens, scale)
    out, _ = merge_by_lse(out_p, lse_p, out_s, lse_s)
    return out
