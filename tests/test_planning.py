"""The planner on synthetic profiles with known answers: cost-model fit, decode-loop replay, early stop,
the subsampling estimator against enumeration, the search against a known optimum and against the
greedy allocation."""
from itertools import permutations

import numpy as np
import pytest

from ttsplan.errors import TTSPlanError
from ttsplan.measure.profiles import BatchCost, StepCost
from ttsplan.planning.accuracy import AccuracyTable, per_problem_accuracy
from ttsplan.planning.cost_model import BatchTable, ModelShape, PrefillModel, StepModel
from ttsplan.planning.latency import Decoding, DeviceCosts, Replay
from ttsplan.planning.search import baselines, choose, greedy, search
from ttsplan.planning.task_arrays import TaskArrays
from ttsplan.voting import VOTE_RULES, decided, vote

SHAPE = ModelShape(weight_bytes=1e9, kv_token_bytes=1e4, params=5e8, attn_width=1e4)


def step_model(c0=1.0, row=0.0, c0_verify=1.0, row_verify=0.0) -> StepModel:
    """A step cost with no roofline term: t = c0 + row * b q (ms), verify likewise."""
    with np.errstate(divide="ignore"):
        theta = np.log([c0, 0.0, row, 1e30, 1e30, c0_verify, 0.0, row_verify, 1e30, 1e30])
    return StepModel(SHAPE, theta, 0.0, 0.0, 0.0, 0)


def costs(target=None, prefill_ms=10.0, loop_ms=0.0, draft=None, draft_prefill_ms=0.0, round_ms=0.0) -> DeviceCosts:
    c = DeviceCosts(target or step_model(), PrefillModel(np.array([prefill_ms, 0.0, 0.0])),
                    BatchTable.build([BatchCost(1, 0, loop_ms), BatchCost(64, 0, loop_ms)]), BatchTable.build([]))
    if draft is not None:
        c.draft, c.draft_prefill = draft, PrefillModel(np.array([draft_prefill_ms, 0.0, 0.0]))
        c.rounds = BatchTable.build([BatchCost(1, k, round_ms) for k in (1, 2, 4)])
    return c


def task(classes, lengths, correct, max_new=None, weights=None, prompt=100) -> TaskArrays:
    classes, lengths, correct = np.array(classes), np.array(lengths), np.array(correct, dtype=bool)
    P, n = classes.shape
    L = max_new or int(lengths.max())
    w = {rule: np.ones((P, n, L)) for rule in VOTE_RULES}
    for rule, arr in (weights or {}).items():
        w[rule] = arr
    stated = [[[(int(lengths[p, i]), int(classes[p, i]))] if classes[p, i] >= 0 else [] for i in range(n)]
              for p in range(P)]
    return TaskArrays(lengths, classes, stated, correct, np.full(P, prompt), w, L)


# --- cost model ----------------------------------------------------------------------------------

def roofline_points(rng, branches, noise=0.02):
    """Steps from a known roofline: 2 ms fixed (+0.3 ms batched), 0.01 ms per sampled row, 1 TB/s,
    50 TFLOP/s; verification 3 ms fixed, 0.02 ms per row, the same roofline."""
    truth = np.log([2.0, 0.3, 0.01, 1e9, 5e10, 3.0, 0.3, 0.02, 1e9, 5e10])  # bytes/ms and FLOP/ms
    pts = []
    for b in branches:
        for q in (1, 2, 3, 5, 9):
            for prompt, own in ((512, 256), (128, 0), (4096, 1024)):
                ms = float(StepModel(SHAPE, truth, 0, 0, 0, 0).predict(b, q, prompt, own)[()])
                ms *= 1 + noise * rng.standard_normal()
                pts.append(StepCost(b, q, prompt, own, ms, ms, ms, 5))
    return truth, pts


def test_cost_model_fits_a_roofline_and_extrapolates_in_branches():
    rng = np.random.default_rng(0)
    truth, pts = roofline_points(rng, (1, 2, 4, 8, 16))
    model = StepModel.fit(SHAPE, pts)
    assert model.in_sample_error < 0.03 and model.held_out_error < 0.05
    # Fitted on b <= 16, asked about b = 64 and 128 (compute-bound there): within 10%.
    exact = StepModel(SHAPE, truth, 0, 0, 0, 0)
    for b in (64, 128):
        for q in (1, 5):
            assert model.predict(b, q, 1024, 512) == pytest.approx(exact.predict(b, q, 1024, 512), rel=0.10)


def test_prefill_and_batch_tables():
    from ttsplan.measure.profiles import PrefillCost
    pre = PrefillModel.fit([PrefillCost(p, 5 + 0.01 * p + 1e-6 * p * p) for p in (128, 512, 2048, 8192)])
    assert pre.predict(1024) == pytest.approx(5 + 10.24 + 1.048576, rel=1e-3)
    table = BatchTable.build([BatchCost(1, 0, 1.0), BatchCost(4, 0, 3.0)])
    assert table.at(2) == pytest.approx(2.0) and table.at(64) == pytest.approx(3.0) and table.at(1) == 1.0


# --- decode-loop replay --------------------------------------------------------------------------

def test_replay_matches_a_hand_computed_plain_run():
    """Lengths 5, 3, 8 -> 4, 2, 7 decode steps: 2 steps at 3 live (1 + 0.5 * 3 ms), 2 at 2 live, 3 at 1;
    plus 0.1 ms of loop per step and a 10 ms prefill: 5 + 4 + 4.5 + 0.7 + 10 = 24.2 ms."""
    t = task([[0, 0, 1]], [[5, 3, 8]], [[True, False]])
    replay = Replay(costs(step_model(1.0, 0.5), loop_ms=0.1), t, on_gpu=False, draws=4)
    lat = replay.simulate(3, 8, Decoding())[None]
    assert lat.mean_s == pytest.approx(0.0242) and lat.p90_s == pytest.approx(0.0242)
    assert lat.tokens == 16
    # A cap of 4 tokens: 3, 2, 3 steps -> 2 at 3 live, 1 at 2 live: 5 + 2 + 0.3 + 10 = 17.3 ms.
    assert replay.simulate(3, 4, Decoding())[None].mean_s == pytest.approx(0.0173)


def test_replay_matches_a_hand_computed_speculative_run():
    """k = 2 at acceptance 0.5, 0.5: tau = 1.75 tokens per round; 7, 2 and 4 tokens after the first
    need 4, 2 and 3 rounds; a round is 2 draft steps (0.2 ms) + a verification (2 ms) + 0.3 ms; the
    request ends with the 4th round: 4 * 2.7 + 10 + 5 (draft prefill) = 25.8 ms."""
    t = task([[0, 0, 1]], [[8, 3, 5]], [[True, False]])
    c = costs(step_model(1.0, 0.0, 2.0, 0.0), draft=step_model(0.2), draft_prefill_ms=5.0, round_ms=0.3)
    dec = Decoding(2, (0.5, 0.5))
    assert dec.tokens_per_round == pytest.approx(1.75)
    lat = Replay(c, t, on_gpu=False, draws=4).simulate(3, 8, dec)[None]
    assert lat.mean_s == pytest.approx(0.0258)


def test_early_stop_by_hand():
    """Classes 0, 0, 1 finishing at 3, 5, 8 tokens: after the second finish, 2 votes lead 0 by more
    than the one pending branch can add, so the request ends at step 4: 2 steps at 3 live and 2 at 2
    live (1 + 0.5 b ms each) + 10 ms prefill = 19 ms."""
    t = task([[0, 0, 1]], [[3, 5, 8]], [[True, False]])
    replay = Replay(costs(step_model(1.0, 0.5)), t, on_gpu=False, draws=4)
    out = replay.simulate(3, 8, Decoding(), ["majority"])
    assert out["majority"].mean_s == pytest.approx(0.019) and out[None].mean_s == pytest.approx(0.0235)


def random_task(rng, P=6, n=7, K=3, L=40):
    classes = rng.integers(-1, K, (P, n))
    lengths = rng.integers(2, L + 1, (P, n))
    correct = np.zeros((P, K), dtype=bool)
    correct[np.arange(P), rng.integers(0, K, P)] = True
    weights = {}
    for rule in VOTE_RULES[1:]:
        x = rng.uniform(0.1, 1.0, (P, n, L))
        # lowest-window weights only fall as a branch grows; mean-logprob ones wander below 1
        weights[rule] = np.minimum.accumulate(x, axis=2) if rule in ("min-window", "deepconf") else x
    return task(classes, lengths, correct, max_new=L, weights=weights)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("rule", VOTE_RULES)
def test_early_stop_never_changes_the_answer_and_never_lengthens(seed, rule):
    rng = np.random.default_rng(seed)
    t = random_task(rng)
    replay = Replay(costs(step_model(1.0, 0.5)), t, on_gpu=False, draws=8, seed=seed)
    for N in (2, 4, 7):
        for cap in (20, 40):
            m = replay.finished_at_decision(N, cap, rule)
            classes, weights = t.classes_at(cap), t.weights_at(rule, cap)
            for d, finished in enumerate(m):
                p, branches = replay.p_idx[d], replay.perms[d, :N]
                order = branches[np.argsort(np.minimum(t.lengths[p, branches], cap), kind="stable")]
                cls = [None if c < 0 else int(c) for c in classes[p, order]]
                full = vote(cls, [str(c) for c in cls], list(weights[p, order]))
                early = vote([c if i < finished else None for i, c in enumerate(cls)], [str(c) for c in cls],
                             list(weights[p, order]))
                assert early[0] == full[0]
            out = replay.simulate(N, cap, Decoding(), [rule])
            assert np.all(out[rule].seconds <= out[None].seconds + 1e-12)


def test_decided_needs_a_lead_larger_than_what_is_pending():
    assert decided([3.0, 1.0], [1.0]) and not decided([3.0, 1.0], [1.0, 1.0])
    assert not decided([], [1.0]) and decided([1.0], [])
    assert not decided([2.0], [float("inf")])


# --- accuracy ------------------------------------------------------------------------------------

def enumerated_accuracy(classes, weights, correct, N):
    """Every ordered choice of N branches, voted by the executor's vote (earliest branch breaks ties)."""
    hits, count = 0.0, 0
    for order in permutations(range(len(classes)), N):
        cls = [None if classes[i] < 0 else int(classes[i]) for i in order]
        winner, tallies = vote(cls, [str(c) for c in cls], [weights[i] for i in order])
        hits += winner is not None and bool(correct[int(winner)])
        count += 1
    return hits / count


@pytest.mark.parametrize("weighted", [False, True])
def test_subsampling_estimator_matches_enumeration(weighted):
    rng = np.random.default_rng(3)
    classes = np.array([[0, 1, 0, 2, -1, 1], [2, 2, 0, 1, 1, -1]])
    correct = np.array([[True, False, False], [False, True, False]])
    weights = rng.uniform(0.2, 1.0, classes.shape) if weighted else np.ones(classes.shape)
    sizes = list(range(1, 7))
    exact = per_problem_accuracy(classes, weights, correct, sizes, max_subsets=10**6)
    for s, N in enumerate(sizes):
        for p in range(2):
            assert exact[s, p] == pytest.approx(enumerated_accuracy(classes[p], weights[p], correct[p], N), abs=1e-12)
    # Drawn subsets (fewer than all of them) are unbiased: close to the enumeration.
    drawn = per_problem_accuracy(classes, weights, correct, sizes, max_subsets=12)
    assert np.abs(drawn - exact).max() < 0.2


def test_intervals_cover_the_mean():
    t = random_task(np.random.default_rng(0), P=20)
    est = AccuracyTable(t, ["majority"], [40]).estimate("majority", 40, 4)
    assert est.low <= est.accuracy <= est.high and est.high - est.low > 0


# --- search --------------------------------------------------------------------------------------

# Five branches per problem: three right (class 0), two wrong (classes 1 and 2).  Majority accuracy
# by enumeration: N = 1: 0.6, 2: 0.6, 3: 0.8, 4: 1.0, 5: 1.0.
FIVE = dict(classes=[[0, 0, 0, 1, 2]] * 4, correct=[[True, False, False]] * 4)


def test_search_returns_the_known_optimum_and_respects_the_budget():
    """Every branch runs 10 steps of 1 + N ms: latency(N) = 10 + 10 N ms with a 0 ms prefill."""
    t = task(FIVE["classes"], [[11] * 5] * 4, FIVE["correct"])
    replay = Replay(costs(step_model(1.0, 1.0), prefill_ms=0.0), t, on_gpu=False, draws=8)
    result = search(replay, None)
    assert {(c.branches, round(c.accuracy, 9)) for c in result.candidates if c.vote == "majority"} >= \
        {(1, 0.6), (2, 0.6), (3, 0.8), (4, 1.0), (5, 1.0)}
    for budget, want_n, want_acc in ((0.045, 3, 0.8), (0.055, 4, 1.0), (0.025, 1, 0.6)):
        best = choose(result, budget)
        assert (best.branches, best.accuracy) == (want_n, pytest.approx(want_acc))
        assert best.p90_s <= budget
        assert all(c.accuracy <= best.accuracy + 1e-12 for c in result.candidates if c.p90_s <= budget)
    assert choose(result, target_accuracy=0.99).branches == 4
    with pytest.raises(TTSPlanError, match=r"no plan fits a budget of 0.01 s .* fastest plan \(N=1.*takes 0.02 s"):
        choose(result, 0.01)


def test_exhaustive_search_beats_the_greedy_allocation():
    """A draft makes one branch 20% faster, but verifying k + 1 tokens per branch saturates the device
    as branches grow (5 ms per verified row).  Greedy takes the draft first and then fits only two
    branches; the exhaustive search drops the draft and fits four."""
    t = task(FIVE["classes"], [[41] * 5] * 4, FIVE["correct"])
    c = costs(step_model(10.0, 1.0, 10.0, 5.0), prefill_ms=0.0, draft=step_model(0.5))
    replay = Replay(c, t, on_gpu=False, draws=8)
    result = search(replay, [0.9] * 4, draft_lengths=(1, 2, 4))
    budget = 0.565  # plain: 40 * (10 + N) ms -> N = 4 fits (560 ms)
    best = choose(result, budget)
    seed_paper = greedy(result, budget)
    assert seed_paper.draft_len > 0 and seed_paper.branches <= 2
    assert best.draft_len == 0 and best.branches == 4 and best.accuracy > seed_paper.accuracy
    named = baselines(result, best, budget)
    assert named["greedy allocation"] == seed_paper and named["speculation only"].branches == 1
    assert named["compute-optimal"].accuracy >= best.accuracy


def test_a_vllm_deployment_is_planned_without_early_stop():
    """vLLM's offline generate returns a request's branches together, so plans for a vLLM profile
    never stop early; the same task on the relay engine's profile does."""
    from pathlib import Path
    from ttsplan.planning.optimize import optimize
    profiles = Path(__file__).resolve().parent.parent / "profiles"
    task = profiles / "tasks" / "qwen2.5-coder-1.5b-gsm8k" / "task.yaml"
    vllm = optimize(profiles / "device" / "cpu-2t-vllm-qwen2.5-coder-1.5b.yaml", task, budget_s=60)
    relay = optimize(profiles / "device" / "cpu-2t-relay-qwen2.5-coder-1.5b.yaml", task, budget_s=60)
    assert not any(c.early_stop for c in vllm.result.candidates) and vllm.plan.device["backend"] == "vllm"
    assert any(c.early_stop for c in relay.result.candidates)
