"""Early stop in the executor, on the real smollm2: the same answer as waiting for every branch,
fewer tokens, and branches identical up to where they were stopped."""
import pytest

from ttsplan.planning.plan import Plan
from ttsplan.engine.loader import load_model
from ttsplan.execute.runner import solve


@pytest.fixture(scope="module")
def engine(smollm2_dir):
    return load_model(str(smollm2_dir))


@pytest.mark.parametrize("seed", [1, 2])
def test_early_stop_keeps_the_answer_and_saves_tokens(engine, seed):
    plan = Plan(model="smollm2", branches=10, max_new_tokens=96, seed=seed)
    full = solve(engine, "What is 10 times 10?", plan)
    early = solve(engine, "What is 10 times 10?", Plan(**{**plan.__dict__, "early_stop": True}))
    assert early.answer == full.answer is not None
    assert early.stopped > 0 and early.stats.new_tokens < full.stats.new_tokens
    assert 0 < early.vote_s < early.latency_s  # the host's share of the request, timed
    for a, b in zip(early.branches, full.branches):
        assert b.tokens[:len(a.tokens)] == a.tokens  # the same stream, cut where the vote was decided
        assert a.finish == "stopped" or a.tokens == b.tokens
    assert all(answer is None for answer, b in zip(early.answers, early.branches) if b.finish == "stopped")
