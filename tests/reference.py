"""Independent references the tests compare against: plain attention in float64, HF transformers."""
import torch


def chat_ids(tokenizer, text):
    ids = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def assert_teacher_forced_logprobs(model_dir, prompt, branches, atol=1e-3):
    """Each branch's recorded log-probs equal HF's for that branch's tokens after the prompt:
    proof that the branch attended to its own KV (no row mix-up, no stale rolled-back tokens)."""
    from transformers import AutoModelForCausalLM
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    for b in branches:
        with torch.inference_mode():
            logits = hf(torch.tensor([prompt + b.tokens])).logits[0, len(prompt) - 1:-1]
        want = torch.log_softmax(logits, -1).gather(-1, torch.tensor(b.tokens).unsqueeze(-1)).squeeze(-1)
        assert torch.allclose(torch.tensor(b.logprobs), want, atol=atol)



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
