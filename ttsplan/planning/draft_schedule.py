"""The draft length per live batch: which k (0: no draft) makes the most tokens per second at each
batch size, from the fitted step costs and the measured acceptance.

A round at batch b with k drafts costs k draft steps, one verification of k + 1 tokens per branch
and the round's own overhead, and emits tau(k) = 1 + sum_i prod_{j<=i} a_j tokens per branch; plain
decoding costs one step and emits one.  Drafts pay while the device has spare compute (small b)
and stop paying as the batch saturates it, so the best k falls with b: vLLM's
num_speculative_tokens_per_batch_size, which vLLM ships without defaults because only a profile
of the hardware and model can say it.
"""
import numpy as np

from ttsplan.planning.latency import Decoding, DeviceCosts, speculative_round_ms


def round_ms(costs: DeviceCosts, b: int, dec: Decoding, prompt: float, own: float) -> float:
    if dec.k == 0:
        return float(costs.target.predict(b, 1, prompt, own) + costs.loop.at(np.array([b]))[0])
    return float(speculative_round_ms(costs, np.array([b]), dec.k, prompt, own)[0])


def best_draft_len(costs: DeviceCosts, acceptance: list[float], ks, b: int, prompt: float, own: float) -> int:
    """The k (0 for none) with the most tokens per branch per millisecond at batch b."""
    options = [Decoding()] + [Decoding(k, tuple(acceptance)) for k in ks if k <= len(acceptance)]
    rate = [d.tokens_per_round / round_ms(costs, b, d, prompt, own) for d in options]
    return options[int(np.argmax(rate))].k


def draft_schedule(costs: DeviceCosts, acceptance: list[float], ks, max_batch: int, prompt: float,
                   own: float) -> list[tuple[int, int, int]]:
    """[(first b, last b, k)]: inclusive batch ranges of one best k each, covering 1..max_batch."""
    out = []
    for b in range(1, max_batch + 1):
        k = best_draft_len(costs, acceptance, ks, b, prompt, own)
        if out and out[-1][2] == k:
            out[-1] = (out[-1][0], b, k)
        else:
            out.append((b, b, k))
    return out
