"""The relay engine against HF transformers, greedy, token for token, on the real models."""
import pytest
import torch

from ttsplan.engine.generate import generate
from ttsplan.engine.model import Transformer
from ttsplan.engine.sampling import SamplingParams
from reference import assert_teacher_forced_logprobs, chat_ids

PROMPTS = [
    "Explain in detail how a hash table works, with an example in Python.",
    "Write a long story about a robot who learns to paint.",
    "A train travels 60 km in 45 minutes. What is its average speed in km/h? Explain step by step.",
]
NEW_TOKENS = 64


def hf_and_ours(model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    return tokenizer, hf, Transformer.load(model_dir)


pytestmark = pytest.mark.models  # the models fixture loads its model by name, out of the auto-marking's sight


@pytest.fixture(scope="module", params=["smollm2_dir", "qwen05_dir"])
def models(request):
    return hf_and_ours(request.getfixturevalue(request.param))


@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_matches_transformers(models, prompt):
    tokenizer, hf, ours = models
    ids = chat_ids(tokenizer, prompt)
    with torch.inference_mode():
        want = hf.generate(torch.tensor([ids]), max_new_tokens=NEW_TOKENS, do_sample=False)[0, len(ids):].tolist()
    branches, _ = generate(ours, ids, 1, SamplingParams(temperature=0, max_new_tokens=NEW_TOKENS),
                           {tokenizer.eos_token_id})
    assert len(want) == NEW_TOKENS, "pick prompts whose answers run past the compared length"
    assert branches[0].tokens == want


def test_branches_share_the_prompt_without_changing_anything(models):
    """N greedy branches through relay attention are each identical to the single-branch output."""
    tokenizer, _, ours = models
    ids = chat_ids(tokenizer, PROMPTS[2])
    params = SamplingParams(temperature=0, max_new_tokens=48)
    (single,), _ = generate(ours, ids, 1, params, {tokenizer.eos_token_id})
    many, stats = generate(ours, ids, 5, params, {tokenizer.eos_token_id})
    assert all(b.tokens == single.tokens for b in many)
    assert stats.prompt_tokens == len(ids)


def test_same_seed_same_output_and_finished_branches_leave(smollm2_dir):
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    model = Transformer.load(smollm2_dir)
    ids = chat_ids(tokenizer, "Name a color.")
    params = SamplingParams(temperature=1.0, top_p=0.9, top_k=50, max_new_tokens=40, seed=3)
    eos = {tokenizer.eos_token_id}
    a, _ = generate(model, ids, 6, params, eos)
    b, _ = generate(model, ids, 6, params, eos)
    c, _ = generate(model, ids, 6, SamplingParams(temperature=1.0, top_p=0.9, top_k=50, max_new_tokens=40, seed=4), eos)
    assert [x.tokens for x in a] == [x.tokens for x in b]
    assert [x.tokens for x in a] != [x.tokens for x in c]
    # Branches end at different steps (EOS or length), and leave the batch.
    assert len({len(x.tokens) for x in a}) > 1
    for x in a:
        assert x.finish == ("eos" if x.tokens[-1] in eos else "length")
        assert all(t not in eos for t in x.tokens[:-1])
    # The survivors kept their own KV through every compaction.
    assert_teacher_forced_logprobs(smollm2_dir, ids, a)
