"""The CUDA-graph decode path equals eager decode (GPU only; skipped elsewhere)."""
import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")


def test_graph_replay_matches_eager_through_padding_and_compaction():
    from ttsplan.engine.config import ModelConfig
    from ttsplan.engine.generate import generate
    from ttsplan.engine.model import Transformer
    from ttsplan.engine.sampling import SamplingParams

    cfg = ModelConfig.shipped("qwen2.5-0.5b")
    model = Transformer.random(cfg, "cuda", torch.bfloat16, seed=1)
    prompt = torch.randint(0, cfg.vocab_size, (600,), generator=torch.Generator().manual_seed(0)).tolist()  # relay mode (>= plain_below)
    # max_new_tokens differs per branch only through EOS; use a sampled run so branches diverge,
    # and an EOS set so some leave early and the batch shrinks through non-power-of-two sizes.
    params = SamplingParams(temperature=1.0, top_p=0.9, max_new_tokens=40, seed=3)
    eos = set(range(0, cfg.vocab_size, 97))
    eager, _ = generate(model, prompt, 7, params, eos, cuda_graphs=False)
    graphed, stats = generate(model, prompt, 7, params, eos, cuda_graphs=True)
    assert len({len(b.tokens) for b in eager}) > 1
    assert [b.tokens for b in graphed] == [b.tokens for b in eager]
    assert stats.capture_s > 0
