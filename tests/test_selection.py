"""Choosing a plan among noisy estimates: the paired rule and the bootstrap of the whole selection
against brute force on a case small enough to enumerate every resample, and the corrected interval's
coverage over many simulated profiles whose truth is known."""
from itertools import product

import numpy as np
import pytest

from ttsplan.planning.selection import (corrected, optimism, pick_first, pick_paired, prediction_interval,
                                        resample_weights)


def paired_by_loops(X, level, idx, z):
    """The paired rule written out with loops over a resample given as problem indices."""
    M, n = len(X), len(idx)
    means = [round(sum(X[m][p] for p in idx) / n, 12) for m in range(M)]
    lowest = min(level)
    champ = max((m for m in range(M) if level[m] == lowest), key=lambda m: (means[m], -m))
    best, best_mean = champ, means[champ]
    for m in range(M):
        d = [X[m][p] - X[champ][p] for p in idx]
        mean = sum(d) / n
        var = sum((x - mean) ** 2 for x in d) / (n - 1)
        if (m == champ or mean - z * (var / n) ** 0.5 > 1e-12) and (means[m] > best_mean or
                                                                 (means[m] == best_mean and m < best)):
            best, best_mean = m, means[m]
    return best


def test_paired_rule_and_optimism_against_every_resample():
    """Five problems: all 5^5 resamples enumerated.  The rule matches the loops on every one, and the
    optimism over all of them matches the mean written out by hand."""
    rng = np.random.default_rng(1)
    P = 5
    X = rng.choice([0.0, 0.25, 0.5, 0.75, 1.0], (4, P))
    level = np.array([0, 1, 1, 2])
    resamples = list(product(range(P), repeat=P))
    weights = np.array([np.bincount(r, minlength=P) / P for r in resamples])
    for z in (0.0, 1.0):
        for r, w in zip(resamples, weights):
            if len(set(r)) > 1:
                assert pick_paired(X, level, w, z) == paired_by_loops(X.tolist(), level, r, z)
        gaps = [sum(X[i][p] for p in r) / P - X[i].mean()
                for r in resamples for i in [paired_by_loops(X.tolist(), level, r, z) if len(set(r)) > 1
                                             else pick_paired(X, level, np.bincount(r, minlength=P) / P, z)]]
        assert optimism(X, lambda w: pick_paired(X, level, w, z), weights) == pytest.approx(np.mean(gaps), abs=1e-12)


def test_pick_first_takes_the_fastest_plan_reaching_the_threshold():
    X = np.array([[0.5, 0.5], [0.75, 0.75], [1.0, 0.5], [1.0, 1.0]])
    w = np.full(2, 0.5)
    assert pick_first(X, w, 0.75) == 1 and pick_first(X, w, 0.9) == 3 and pick_first(X, w, 1.01) is None


def simulated_population(rng, M, level, size=20000, gain=0.03):
    """Problems with a shared difficulty a_p and plan effects b_m: branch success theta = sigmoid(a_p + b_m).
    Level-0 plans are a ladder up to 0; higher levels are within a noise-sized `gain` of its top, either
    side (gain > 0), or only below it (gain < 0)."""
    a = rng.normal(0.8, 1.6, size)
    other = rng.normal(-0.02, gain, M) if gain > 0 else -np.abs(rng.normal(0, -gain, M))
    b = other.copy()
    b[level == 0] = np.linspace(-0.3, 0.0, int((level == 0).sum()))
    theta = 1 / (1 + np.exp(-(a[None, :] + b[:, None])))           # [M, size]
    return theta, theta.mean(1)


def draw_profile(rng, theta, P, branches=8, shared=4):
    """P problems of the population; each plan's per-problem estimate from `branches` uniforms of which
    the first `shared` are the same for every plan (shared branches correlate the plans' errors, as on a
    real profile; the rest differ, as different subsets and vote rules do)."""
    M = theta.shape[0]
    p = rng.integers(0, theta.shape[1], P)
    u = rng.random((M, P, branches))
    u[:, :, :shared] = rng.random((P, shared))
    return (u < theta[:, p, None]).mean(-1), p


@pytest.mark.parametrize("z", [0.0, 1.0])
def test_corrected_interval_covers_the_truth_over_simulated_profiles(z):
    """Over 150 simulated calibration sets of 60 problems and 24 plans: the naive estimate of the chosen
    plan is optimistic, the corrected one is not (bias within a third of the naive's), its 95% interval
    covers the chosen plan's true accuracy at least 88% of the time, and the prediction interval covers
    what a run on 200 new problems measures."""
    rng = np.random.default_rng(7)
    M, P, H = 24, 60, 200
    level = np.array([0] * 8 + [1] * 8 + [2] * 8)
    theta, truth = simulated_population(rng, M, level)
    naive_gap, corrected_gap, covered, predicted = [], [], 0, 0
    sims = 150
    for s in range(sims):
        X, _ = draw_profile(rng, theta, P)
        pick = lambda w: pick_paired(X, level, w, z)
        i = pick(np.full(P, 1 / P))
        sel = corrected(None, X, i, pick, "", resample_weights(P, 200, seed=s))
        naive_gap.append(sel.naive - truth[i])
        corrected_gap.append(sel.accuracy - truth[i])
        covered += sel.low <= truth[i] <= sel.high
        new = rng.integers(0, theta.shape[1], H)
        measured = (rng.random(H) < theta[i, new]).mean()
        lo, hi = prediction_interval(sel.accuracy, sel.low, sel.high, H)
        predicted += lo <= measured <= hi
    naive_bias, corrected_bias = np.mean(naive_gap), np.mean(corrected_gap)
    se = np.std(naive_gap) / np.sqrt(sims)
    assert naive_bias > 2 * se
    assert abs(corrected_bias) < max(naive_bias / 3, 2 * se)
    assert covered / sims >= 0.88 and predicted / sims >= 0.88


def test_paired_rule_between_the_naive_maximum_and_the_plainest_plan():
    """z = 0 takes the highest mean; a weighted plan better on every problem wins at any z, one better
    only on average (by luck on two problems) not at z = 3; with no better plan the plain one stays."""
    P = 40
    plain = np.linspace(0.2, 0.9, P)
    X = np.stack([plain - 0.1, plain, plain + 0.02,                       # level 0: the best is row 1
                  np.where(np.arange(P) < 2, 1.0, plain - 0.01)])         # level 1: better on average only
    level = np.array([0, 0, 1, 1])
    w = np.full(P, 1 / P)
    assert pick_paired(X, level, w, 0.0) == 3
    assert pick_paired(X, level, w, 3.0) == 2 and pick_paired(X, level, w, 50.0) == 2
    X[2] = plain  # no longer better anywhere: the plain plan (faster among equals) stays
    assert pick_paired(X, level, w, 3.0) == 1
