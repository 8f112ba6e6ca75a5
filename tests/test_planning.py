"""The planner on synthetic profiles with known answers: cost-model fit, decode-loop replay, early stop,
the subsampling estimator against enumeration, the search against a known optimum and against the
greedy allocation."""
from itertools import permutations
from pathlib import Path

import numpy as np
import pytest

from ttsplan.errors import TTSPlanError
from ttsplan.measure.schema import BatchCost, PrefillCost, StepCost
from ttsplan.planning.accuracy import AccuracyTable, per_problem_accuracy
from ttsplan.planning.cost_model import BatchTable, CompactionModel, PrefillModel, StepModel
from ttsplan.planning.latency import Decoding, DeviceCosts, Replay, SHRINK, bucket, round_graphs, rounds_needed
from ttsplan.planning.optimize import edges, optimize
from ttsplan.planning.search import Candidate, baselines, choose, greedy, search
from ttsplan.planning.task_arrays import TaskArrays
from ttsplan.voting import VOTE_RULES, decided, vote

def step_model(c0=1.0, row=0.0, c0_verify=1.0, row_verify=0.0) -> StepModel:
    """A step cost with no context term: t = c0 + row * b q (ms), verify likewise (exact: linear in b and q
    between the levels)."""
    b = np.array([1.0, 256.0])
    flat = lambda c, r, q: np.array([c + r * b * q, [0.0, 0.0], [0.0, 0.0]])
    return StepModel({1: (b, flat(c0, row, 1)), 2: (b, flat(c0_verify, row_verify, 2)),
                      9: (b, flat(c0_verify, row_verify, 9))}, plain_from=512.0)


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

def engine_like_points(rng, branches, noise=0.01):
    """Steps of a known engine: base 2 ms + 0.004 b q ms, 0.01 ms per thousand KV tokens a branch reads
    itself, a relay prefix pass of 0.02 + 0.001 b ms per thousand prompt tokens (plain under 512)."""
    def truth(b, q, prompt, own):
        plain = b == 1 or prompt < 512
        return (2 + 0.004 * b * q + 0.01 * b * (own + q + (prompt if plain else 0)) / 1e3
                + (0 if plain else (0.02 + 0.001 * b) * prompt / 1e3))
    pts = []
    for b in branches:
        for q in (1, 3, 5):
            for prompt, own in ((128, 256), (128, 768), (2048, 0)):
                ms = truth(b, q, prompt, own) * (1 + noise * rng.standard_normal())
                pts.append(StepCost(b, q, prompt, own, ms, ms, ms, 5))
    return truth, pts


def test_cost_model_interpolates_between_levels_it_never_saw():
    """Fitted on a b ladder with gaps, asked about b, q, prompts and own lengths off the grid (plain and
    relay): within 3% of the truth; the held-out error (whole b levels left out) says so too."""
    rng = np.random.default_rng(0)
    truth, pts = engine_like_points(rng, (1, 2, 4, 8, 16, 32, 64, 128))
    model = StepModel.fit(pts, plain_from=512)
    assert model.held_out_levels == 6 and model.held_out_error < 0.03
    for b, q, prompt, own in ((3, 1, 100, 300), (24, 3, 300, 100), (48, 2, 4096, 200), (96, 4, 1000, 600),
                              (128, 5, 64, 900)):
        assert float(model.predict(b, q, prompt, own)) == pytest.approx(truth(b, q, prompt, own), rel=0.03)
    # A graph of 32 rows with 20 live branches: the base of 32 rows, the KV of 20.
    assert float(model.predict(32, 1, 128, 256, live=20)) == pytest.approx(
        truth(32, 1, 128, 0) - 0.01 * 32 * 1 / 1e3 - 0.01 * 32 * 128 / 1e3 + 0.01 * 20 * (257 + 128) / 1e3, rel=0.03)


def test_prefill_and_batch_tables():
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
    """k = 2, every draft accepted: 3 tokens a round; 7, 2 and 4 tokens after the first need 3, 1 and 2
    rounds; a round is 2 draft steps (0.2 ms) + a verification (2 ms) + 0.3 ms; the request ends with
    the 3rd round: 3 * 2.7 + 10 + 5 (draft prefill) = 23.1 ms."""
    t = task([[0, 0, 1]], [[8, 3, 5]], [[True, False]])
    c = costs(step_model(1.0, 0.0, 2.0, 0.0), draft=step_model(0.2), draft_prefill_ms=5.0, round_ms=0.3)
    dec = Decoding(2, (1.0, 1.0))
    assert dec.tokens_per_round == pytest.approx(3.0) and Decoding(2, (0.5, 0.5)).tokens_per_round == 1.75
    lat = Replay(c, t, on_gpu=False, draws=4).simulate(3, 8, dec)[None]
    assert lat.mean_s == pytest.approx(0.0231)


def rounds_pmf(rates, need: int, most: int) -> np.ndarray:
    """Exact distribution of the rounds to emit `need` tokens, by dynamic programming over the tokens a
    round emits (1 + drafts accepted): pmf[r]."""
    k = len(rates)
    emit = np.zeros(k + 2)
    reach = np.concatenate([[1.0], np.cumprod(rates)])                 # P(at least m accepted)
    for m in range(k + 1):
        emit[m + 1] = reach[m] - (reach[m + 1] if m < k else 0.0)
    dist = np.zeros((need + 1, most + 1))                              # dist[t, r]: P(t tokens left after r rounds)
    dist[need, 0] = 1.0
    done = np.zeros(most + 1)
    for r in range(most):
        for t in range(1, need + 1):
            for m in range(1, k + 2):
                left = t - m
                if left <= 0:
                    done[r + 1] += dist[t, r] * emit[m]
                else:
                    dist[left, r + 1] += dist[t, r] * emit[m]
    return done


def test_random_round_counts_against_their_exact_distribution():
    """One branch's rounds (rounds_needed) follow the exact distribution; a request of two such branches
    waits for the slower one: the replay's mean is E[max(R1, R2)] computed exactly."""
    rates = np.array([0.8, 0.6, 0.5])
    rng = np.random.default_rng(1)
    need = 20
    pmf = rounds_pmf(rates, need, need)
    r = rounds_needed(rng, rates, (20000,), need)[:, need]
    assert np.abs(np.bincount(r, minlength=need + 1)[:need + 1] / len(r) - pmf).max() < 0.01
    cdf = np.cumsum(pmf)
    e_max = float(((1 - cdf[:-1] ** 2)).sum())                         # E[max] = sum_r P(max > r)
    t = task([[0, 1]], [[need + 1, need + 1]], [[True, False]])
    c = costs(step_model(1.0, 0.0, 1.0, 0.0), prefill_ms=0.0, draft=step_model(0.0), round_ms=0.0)
    lat = Replay(c, t, on_gpu=False, draws=4000).simulate(2, need + 1, Decoding(3, tuple(rates)))[None]
    assert lat.mean_s * 1e3 == pytest.approx(e_max, rel=0.02)


def test_compaction_against_every_row_order():
    """Lengths 3, 3, 5, 6 (two finish together): the expected compaction cost over all 24 orders of the
    rows, each compaction run as the engine's Request.compact does (rows of the finished leave, the rest
    keep their order), equals the replay's."""
    lengths = [3, 3, 5, 6]
    fixed, per_token = 1.0, 0.001
    total = 0.0
    for order in permutations(range(4)):
        rows = list(order)                       # rows[r] = branch in cache row r
        for step in sorted(set(lengths))[:-1]:
            keep = [r for r, b in enumerate(rows) if lengths[b] - 1 > step - 1]
            moved = sum(1 for dst, src in enumerate(keep) if dst != src)
            if moved:
                total += fixed + per_token * moved * step
            rows = [rows[r] for r in keep]
    want = total / 24
    t = task([[0, 0, 1, 1]], [lengths], [[True, False]])
    c = costs(step_model(0.0), prefill_ms=0.0)
    c.compaction = CompactionModel(fixed, per_token)
    replay = Replay(c, t, on_gpu=False, draws=1)
    steps = np.sort(np.array([lengths]) - 1, axis=1)
    got = replay.compaction_s(steps, steps[:, -1], 1.0, False)[0] * 1e3
    # moved rows are counted at s f / (f + 1) on average and their tokens at the step they finish
    assert got == pytest.approx(want, rel=0.05)


def stepwise(N: int) -> dict:
    """GraphRound's rule for a batch shrinking from N one branch at a time: live batch -> graph rows."""
    held, out = [N], {}
    for B in range(N, 0, -1):
        bs = min(b for b in held if b >= B)
        if bs >= SHRINK * int(bucket(B, N)):
            bs = int(bucket(B, N))
            held.append(bs)
        out[B] = bs
    return out


def test_graphs_held_and_captured_against_the_engines_rule():
    """Batches shrinking from N in random jumps: the graphs the replay prices as captured are the ones
    GraphRound's rule captures; where the batch passes through every size, the graph the rule replays is
    round_graphs(N) (what the replay prices a round at; after jumps the rule may hold another)."""
    from ttsplan.engine.cuda_graphs import SHRINK as ENGINE_SHRINK
    assert SHRINK == ENGINE_SHRINK  # the replay's copy (planning does not import the engine)
    rng = np.random.default_rng(2)
    for N in (5, 12, 33, 64, 100, 128):
        for _ in range(20):
            live = sorted({N, *rng.integers(1, N + 1, size=rng.integers(1, 8))}, reverse=True)
            held, captured = [N], {N}
            for B in live:
                bs = min(b for b in held if b >= B)
                if bs >= SHRINK * int(bucket(B, N)):
                    bs = int(bucket(B, N))
                    held.append(bs)
                    captured.add(bs)
            assert all(int(round_graphs(N)[B]) == g for B, g in stepwise(N).items())
            lengths = []
            for i, B in enumerate(live):
                nxt = live[i + 1] if i + 1 < len(live) else 0
                lengths += [10 * (i + 1) + 1] * (B - nxt)
            t = task([[0] * N], [lengths], [[True]])
            c = costs(step_model(0.0), prefill_ms=0.0, draft=step_model(0.0))
            c.capture = BatchTable.build([BatchCost(b, 2, float(b)) for b in (1, 2, 4, 8, 16, 32, 64, 128, N)])
            replay = Replay(c, t, on_gpu=True, draws=1)
            steps = np.sort(np.array([lengths]) - 1, axis=1)
            got = replay.capture_s(steps, steps[:, -1], 2)[0] * 1e3
            assert got == pytest.approx(N + sum(captured)), (N, live)


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
    exact = per_problem_accuracy(classes, weights, correct, sizes, exact=10**6)
    for s, N in enumerate(sizes):
        for p in range(2):
            assert exact[s, p] == pytest.approx(enumerated_accuracy(classes[p], weights[p], correct[p], N), abs=1e-12)
    # Drawn subsets (fewer than all of them) are unbiased: close to the enumeration.
    drawn = per_problem_accuracy(classes, weights, correct, sizes, exact=0, drawn=12)
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
        best = choose(result, budget).chosen
        assert (best.branches, best.accuracy) == (want_n, pytest.approx(want_acc))
        assert best.p90_s <= budget
        assert all(c.accuracy <= best.accuracy + 1e-12 for c in result.candidates if c.p90_s <= budget)
    assert choose(result, target_accuracy=0.99).chosen.branches == 4
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
    sel = choose(result, budget)
    best = sel.chosen
    seed_paper = greedy(result, budget)
    assert seed_paper.draft_len > 0 and seed_paper.branches <= 2
    assert best.draft_len == 0 and best.branches == 4 and best.accuracy > seed_paper.accuracy
    named = baselines(result, sel, budget)
    assert named["greedy allocation"].chosen == seed_paper and named["speculation only"].chosen.branches == 1
    assert named["compute-optimal"].accuracy >= sel.accuracy


PROFILES = Path(__file__).resolve().parent.parent / "profiles"
SHIPPED_TASK = PROFILES / "tasks" / "qwen2.5-coder-1.5b-gsm8k-cpu-2t" / "task.yaml"


@pytest.fixture(scope="module")
def relay_plan_60s():
    """`optimize` on the shipped CPU relay profile and GSM8K task profile at a 60 s budget."""
    return optimize(PROFILES / "device" / "cpu-2t-relay-qwen2.5-coder-1.5b.yaml", SHIPPED_TASK, budget_s=60)


def test_a_vllm_deployment_is_planned_without_early_stop(relay_plan_60s):
    """vLLM's offline generate returns a request's branches together, so plans for a vLLM profile
    never stop early; the same task on the relay engine's profile does."""
    vllm = optimize(PROFILES / "device" / "cpu-2t-vllm-qwen2.5-coder-1.5b.yaml", SHIPPED_TASK, budget_s=60)
    assert not any(c.early_stop for c in vllm.result.candidates) and vllm.plan.device["backend"] == "vllm"
    assert any(c.early_stop for c in relay_plan_60s.result.candidates)


def test_the_chosen_plan_on_the_edge_of_the_profile_is_named():
    """A plan using every sampled branch, or running to the sampling limit where branches were cut off,
    is flagged: the profile cannot say whether more would be better."""
    t = task(FIVE["classes"], [[11, 11, 11, 11, 20]] * 4, FIVE["correct"], max_new=20)
    at = lambda N, cap: Candidate(N, "majority", cap, False, 0, 1.0, 0.1, 0.1, 50.0)
    assert edges(at(3, 16), t) == []
    named = edges(at(5, 20), t)
    assert len(named) == 2 and "N_max = 5" in named[0] and "20 tokens" in named[1] and "20%" in named[1]


def test_optimize_reports_the_corrected_accuracy_in_the_plan(relay_plan_60s):
    p = relay_plan_60s.plan.predicted
    assert p["accuracy"] == pytest.approx(p["accuracy_naive"] - p["optimism"], abs=1e-3)
    assert p["interval"][0] <= p["accuracy"] <= p["interval"][1] and p["calibration_problems"] == 32
    assert relay_plan_60s.selection.chosen.p90_s <= 60
