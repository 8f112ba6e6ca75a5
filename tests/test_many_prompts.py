"""Many problems' branches in one decode batch (engine.many_prompts) against one problem at a time
(engine.generate), on a real model: token for token in greedy mode; the same sampled branches
whichever batch a problem runs in; rows refilled as branches finish."""
import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from ttsplan.datasets import load_problems, prompt_ids
from ttsplan.engine.generate import generate
from ttsplan.engine.many_prompts import counter_uniforms, generate_many
from ttsplan.engine.model import Transformer
from ttsplan.engine.sampling import SamplingParams
from ttsplan.errors import TTSPlanError


@pytest.fixture(scope="module")
def smollm2(smollm2_dir):
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    prompts = [prompt_ids(tok, p.question) for p in load_problems("gsm8k", 5)]
    return Transformer.load(smollm2_dir), prompts, {tok.eos_token_id}


def run_many(model, prompts, n, rows, params, eos):
    out = {}
    for item in generate_many(model, prompts, list(range(len(prompts))), n, rows, params, eos):
        if isinstance(item, tuple):
            j, branches = item
            assert j not in out, "a prompt is yielded once"
            out[j] = branches
        else:
            stats = item
    return out, stats


def test_greedy_batch_of_problems_matches_one_problem_at_a_time(smollm2):
    model, prompts, eos = smollm2
    params = SamplingParams(temperature=0.0, max_new_tokens=40)
    # 5 problems x 2 branches in 4 rows: at most two problems in flight, rows refilled as they free
    many, stats = run_many(model, prompts, 2, 4, params, eos)
    assert sorted(many) == list(range(5))
    for j, prompt in enumerate(prompts):
        alone, _ = generate(model, prompt, 2, params, eos)
        assert [b.tokens for b in many[j]] == [b.tokens for b in alone], f"problem {j}"
        assert [b.finish for b in many[j]] == [b.finish for b in alone]
        np.testing.assert_allclose([x for b in many[j] for x in b.logprobs], [x for b in alone for x in b.logprobs],
                                   atol=1e-4)
    assert stats.new_tokens == sum(len(b.tokens) for bs in many.values() for b in bs)
    assert 0 < stats.occupancy <= 1


def test_sampled_branches_do_not_depend_on_the_batch(smollm2):
    model, prompts, eos = smollm2
    params = SamplingParams(temperature=0.7, top_p=0.95, max_new_tokens=32)
    one, _ = run_many(model, prompts[:3], 3, 3, params, eos)   # one problem at a time
    mixed, _ = run_many(model, prompts[:3], 3, 9, params, eos)  # all three together
    for j in range(3):
        assert [b.tokens for b in one[j]] == [b.tokens for b in mixed[j]]
    assert len({tuple(b.tokens) for b in one[0]}) > 1, "branches of one problem differ from each other"


def test_counter_uniforms_are_uniform_and_a_function_of_key_and_counter():
    keys = torch.arange(2000).repeat_interleave(50)
    counters = torch.arange(50).repeat(2000)
    u = counter_uniforms(keys, counters)
    assert torch.equal(u, counter_uniforms(keys, counters)) and ((0 <= u) & (u < 1)).all()
    counts = torch.histc(u, bins=20, min=0, max=1)
    expected = len(u) / 20
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 43.8  # chi-square, 19 degrees of freedom, p = 0.001
    assert abs(float(torch.corrcoef(torch.stack([u[:-1], u[1:]]))[0, 1])) < 0.02  # neighbours uncorrelated


def test_a_batch_smaller_than_one_problem_is_refused(smollm2):
    model, prompts, eos = smollm2
    with pytest.raises(TTSPlanError, match="cannot hold"):
        list(generate_many(model, prompts, [0] * 5, 4, 3, SamplingParams(), eos))
