"""Speculative decoding across branches: lossless greedy and sampled, correct rollback, pair checks."""
import pytest
import torch
from scipy.stats import chi2_contingency

import ttsplan.engine.speculative as speculative
from ttsplan.engine.generate import generate
from ttsplan.engine.model import Transformer
from ttsplan.engine.sampling import SamplingParams, draw, uniforms
from ttsplan.engine.speculative import generate_speculative
from ttsplan.errors import TTSPlanError
from reference import assert_teacher_forced_logprobs, chat_ids


@pytest.fixture(scope="module")
def qwen_pair(qwen05_dir, qwen15_dir):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(qwen15_dir), Transformer.load(qwen15_dir), Transformer.load(qwen05_dir)


@pytest.fixture(scope="module")
def smol(smollm2_dir):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(smollm2_dir), Transformer.load(smollm2_dir)


@pytest.mark.parametrize("k", [1, 3, 8])
def test_greedy_with_draft_equals_target_alone(qwen_pair, k):
    tokenizer, target, draft = qwen_pair
    ids = chat_ids(tokenizer, "Tom has 3 boxes of 12 pencils and gives away 7. How many pencils are left?")
    params = SamplingParams(temperature=0, max_new_tokens=40)
    eos = {tokenizer.eos_token_id}
    want, _ = generate(target, ids, 1, params, eos)
    got, _, spec = generate_speculative(target, draft, ids, 3, params, eos, draft_len=k)
    assert all(b.tokens == want[0].tokens for b in got)
    assert spec.overall_acceptance > 0.3, "a draft cache broken by rollback would propose garbage"


def first_tokens(smol, n, seed, k=None, positions=(1, 2)):
    """Tokens at the given positions of n branches sampled at temperature 1 (greedy drafts if k)."""
    tokenizer, model = smol
    ids = chat_ids(tokenizer, "Name one animal.")
    params = SamplingParams(temperature=1.0, top_p=1.0, max_new_tokens=max(positions) + 1, seed=seed, ignore_eos=True)
    if k:
        branches, _, _ = generate_speculative(model, model, ids, n, params, set(), draft_len=k,
                                              draft_params=SamplingParams(temperature=0))
    else:
        branches, _ = generate(model, ids, n, params, set())
    return [tuple(b.tokens[i] for i in positions) for b in branches]


def chi_square_p(a, b, pos):
    cats = {}
    for x in a + b:
        cats[x[pos]] = cats.get(x[pos], 0) + 1
    common = [c for c, cnt in cats.items() if cnt >= 10]
    table = [[sum(x[pos] == c for x in s) for c in common] + [sum(x[pos] not in common for x in s)] for s in (a, b)]
    return chi2_contingency(table).pvalue


def resample_from_target_on_rejection(p, q, drafts, u):
    """A classic bug: draws the replacement from p instead of the residual max(0, p - q)."""
    n_acc, _ = ACCEPT(p, q, drafts, u)
    k = drafts.shape[1]
    at = n_acc.clamp(max=k - 1)
    rows = torch.arange(len(n_acc))
    final = torch.where((n_acc == k).unsqueeze(-1), p[:, k], p[rows, at])
    return n_acc, draw(final, u[:, k])


ACCEPT = speculative.accept_drafts


def test_sampling_is_lossless_and_a_broken_rule_is_caught(smol, monkeypatch):
    """Tokens 2 and 3 (the first ones the draft proposes) follow the same distribution with and
    without a draft (greedy drafts make q differ from p), at a fixed seed set; the same test
    rejects the draws of a rule that resamples from p instead of the residual."""
    n = 600
    plain = first_tokens(smol, n, seed=1)
    spec = first_tokens(smol, n, seed=2, k=2)
    for pos in (0, 1):
        assert chi_square_p(plain, spec, pos) > 1e-3
    monkeypatch.setattr(speculative, "accept_drafts", resample_from_target_on_rejection)
    broken = first_tokens(smol, n, seed=2, k=2)
    assert min(chi_square_p(plain, broken, pos) for pos in (0, 1)) < 1e-3


def test_rollback_when_branches_accept_zero_and_all_in_one_round(smol, smollm2_dir):
    """Sampled target, greedy drafts: in one round some branches accept 0 drafts and some all k;
    every branch's tokens are still exactly what the target alone assigns them (teacher-forced)."""
    tokenizer, model = smol
    ids = chat_ids(tokenizer, "Write a short poem about the sea.")
    k = 4
    params = SamplingParams(temperature=1.0, top_p=1.0, max_new_tokens=40, seed=5)
    branches, _, spec = generate_speculative(model, model, ids, 8, params, {tokenizer.eos_token_id}, draft_len=k,
                                             draft_params=SamplingParams(temperature=0))
    assert any(0 in r and k in r for r in spec.accept_counts)
    assert_teacher_forced_logprobs(smollm2_dir, ids, branches)


def test_pair_with_different_tokenizers_is_refused(smollm2_dir, qwen05_dir):
    import subprocess
    import sys
    proc = subprocess.run([sys.executable, "-m", "ttsplan", "run", "--model", str(qwen05_dir), "--draft",
                           str(smollm2_dir), "-q", "1+1?"], capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "do not share a tokenizer" in proc.stderr


def test_draft_length_below_one(smol):
    tokenizer, model = smol
    with pytest.raises(TTSPlanError, match="draft length"):
        generate_speculative(model, model, [1, 2, 3], 1, SamplingParams(), set(), draft_len=0)


def with_longer_head(model: Transformer, extra: int) -> Transformer:
    """The model with `extra` more vocabulary rows of zero weights (logit 0), as the real Qwen2.5-7B
    head has 152064 rows to the 0.5B's 151936: the model's vocabulary becomes a prefix of this one's."""
    import copy
    from dataclasses import replace
    from ttsplan.engine.model import Linear
    big = copy.copy(model)
    big.cfg = replace(model.cfg, vocab_size=model.cfg.vocab_size + extra)
    big.lm_head = Linear(torch.cat([model.embed, torch.zeros(extra, model.embed.shape[1])]))
    return big


def test_draft_whose_vocabulary_is_a_prefix_of_the_targets(smol):
    tokenizer, model = smol
    target = with_longer_head(model, 128)
    ids = chat_ids(tokenizer, "Name three colors.")
    params = SamplingParams(temperature=0, max_new_tokens=24)
    want, _ = generate(target, ids, 1, params, {tokenizer.eos_token_id})
    got, _, spec = generate_speculative(target, model, ids, 2, params, {tokenizer.eos_token_id}, draft_len=3)
    assert all(b.tokens == want[0].tokens for b in got) and spec.overall_acceptance > 0.5
    with pytest.raises(TTSPlanError, match="must be a prefix of the target's"):
        generate_speculative(model, target, ids, 2, params, set(), draft_len=3)


def test_target_only_tokens_reach_the_draft_as_its_own(smol):
    """A target that samples ids beyond the draft's vocabulary (random Qwen2.5-32B weights do, against the
    0.5B draft) and a prompt holding one: the draft is fed them as its last id, and greedy output stays
    the target's alone, token for token."""
    import copy
    from dataclasses import replace
    from ttsplan.engine.model import Linear
    tokenizer, model = smol
    extra = 64
    target = copy.copy(model)
    target.cfg = replace(model.cfg, vocab_size=model.cfg.vocab_size + extra)
    target.embed = torch.cat([model.embed, model.embed[:extra]])
    target.lm_head = Linear(torch.cat([model.embed, 2 * model.embed[:extra]]))  # extra id j: token j, surer
    ids = chat_ids(tokenizer, "Count to five.") + [model.cfg.vocab_size + 3]
    params = SamplingParams(temperature=0, max_new_tokens=16)
    want, _ = generate(target, ids, 1, params, set())
    assert any(t >= model.cfg.vocab_size for t in want[0].tokens)
    got, _, _ = generate_speculative(target, model, ids, 2, params, set(), draft_len=3)
    assert all(b.tokens == want[0].tokens for b in got)


def test_given_acceptance_replaces_the_models_own(smol):
    """Timing mode: a draft identical to the target accepts everything by itself; given rates of 0 it
    accepts nothing, given 1 everything, and given (0.9, 0.5) its per-position rates match them."""
    tokenizer, model = smol
    ids = chat_ids(tokenizer, "Name one animal.")
    params = SamplingParams(temperature=0.7, max_new_tokens=40, ignore_eos=True, seed=1)
    runs = {rates: generate_speculative(model, model, ids, 4, params, set(), draft_len=2, acceptance=rates)[2]
            for rates in ((0.0,), (1.0,))}
    assert runs[(0.0,)].overall_acceptance == 0.0 and runs[(1.0,)].overall_acceptance == 1.0
    gen = torch.Generator().manual_seed(0)
    n = speculative.given_accepts(speculative.acceptance_rates((0.9, 0.5), 2, "cpu"), uniforms(gen, 200_000, 2))
    assert abs((n >= 1).float().mean().item() - 0.9) < 0.005
    assert abs((n == 2).sum().item() / (n >= 1).sum().item() - 0.5) < 0.005
