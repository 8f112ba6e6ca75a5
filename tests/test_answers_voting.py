"""Answer extraction, grading and votes on hand-written cases; the vote rules' weights by brute force.

Every case asserts three things: the answer extracted from the branch's text, its grade against
the gold answer, and a vote of three branches (this one, an equivalent answer spelled another
way, and a different answer): the equivalent pair must win together, or, where this branch has
no readable answer, the other two tie and the earlier one wins.
"""
import math

import numpy as np
import pytest
from math_verify import verify

import ttsplan.answers as answers_module
from ttsplan.answers import (AnswerMemo, clearly_apart, extract_answer, group_answers, huge, is_correct, parse_answer,
                             same_answer, stated_answers)
from ttsplan.engine.generate import Branch
from ttsplan.execute.runner import VoteWatch
from ttsplan.voting import VOTE_RULES, WINDOW, branch_weight, decided, vote, weight_bound, weights_by_length

# (task, branch text, finished by EOS, gold, extracted answer, correct, an equivalent spelling)
CASES = [
    # GSM8K: thousands separators in every written form, currency, percent, units, trailing period
    ("gsm8k", "She sold 48 + 24 = 72 clips.\n#### 72", True, "72", "72", True, "72.0"),
    ("gsm8k", "so the total is $1,234.50.", True, "1234.5", "1,234.50", True, "1234.5"),
    ("gsm8k", "The answer is \\boxed{18}. Check: 9 + 9 = 18 and 20 - 2", True, "18", "18", True, "18.00"),
    ("gsm8k", "\\boxed{1{,}000}", True, "1000", "1{,}000", True, "1000"),
    ("gsm8k", "\\boxed{10,\\!000}", True, "10000", "10,\\!000", True, "10000"),
    ("gsm8k", "\\boxed{1\\,000}", True, "1000", "1\\,000", True, "1,000"),
    ("gsm8k", "\\boxed{12,000,000}", True, "12000000", "12,000,000", True, "12000000"),
    ("gsm8k", "#### 1,000", True, "1000", "1,000", True, "1000"),
    ("gsm8k", "\\boxed{\\$1,200.00}", True, "1200", "\\$1,200.00", True, "1200"),
    ("gsm8k", "\\boxed{\\$ 1,200}", True, "1200", "\\$ 1,200", True, "1200"),
    ("gsm8k", "\\boxed{\\$18}", True, "18", "\\$18", True, "18"),
    ("gsm8k", "\\boxed{25\\%}", True, "25", "25\\%", True, "25"),
    ("gsm8k", "\\boxed{25%}", True, "25", "25%", True, "25.0"),
    ("gsm8k", "\\boxed{18.}", True, "18", "18.", True, "18"),
    ("gsm8k", "\\boxed{18 \\text{ apples}}", True, "18", "18 \\text{ apples}", True, "18"),
    ("gsm8k", "\\boxed{\\text{18 apples}}", True, "18", "\\text{18 apples}", True, "18"),
    ("gsm8k", "\\boxed{18\\text{ dollars}}", True, "18", "18\\text{ dollars}", True, "18"),
    ("gsm8k", "\\boxed{5 \\text{ cm}^2}", True, "5", "5 \\text{ cm}^2", True, "5"),
    ("gsm8k", "\\boxed{x = 18}", True, "18", "x = 18", True, "18"),
    ("gsm8k", "\\boxed{.5}", True, "0.5", ".5", True, "0.5"),
    ("gsm8k", "\\boxed{-5}", True, "-5", "-5", True, "-5.0"),
    # GSM8K: fractions and mixed numbers (were '21/2' and '31/3')
    ("gsm8k", "\\boxed{2\\frac{1}{2}}", True, "2.5", "2\\frac{1}{2}", True, "\\frac{5}{2}"),
    ("gsm8k", "\\boxed{3\\frac{1}{3}}", True, "3.5", "3\\frac{1}{3}", False, "\\frac{10}{3}"),
    ("gsm8k", "\\boxed{\\frac{3}{4}} of the cake", True, "0.75", "\\frac{3}{4}", True, "0.75"),
    ("gsm8k", "\\boxed{\\frac{1}{2}}", True, "0.5", "\\frac{1}{2}", True, "0.50"),
    ("gsm8k", "\\boxed{-\\frac{1}{2}}", True, "-0.5", "-\\frac{1}{2}", True, "-0.5"),
    # GSM8K: lists and words are not numbers (a list was '-23' and scored correct)
    ("gsm8k", "\\boxed{-2, 3}", True, "-23", "-2, 3", False, None),
    ("gsm8k", "\\boxed{1,2}", True, "12", "1,2", False, None),
    ("gsm8k", "\\boxed{three}", True, "3", "three", False, None),
    # GSM8K: which final answer counts
    ("gsm8k", "first \\boxed{12}, no wait: \\boxed{14}", True, "14", "14", True, "14.0"),
    ("gsm8k", "an empty \\boxed{} then \\boxed{7}", True, "7", "7", True, "7"),
    ("gsm8k", "spaced \\boxed {42}", True, "42", "42", True, "42"),
    ("gsm8k", "framed \\fbox{42}", True, "42", "42", True, "42"),
    ("gsm8k", "She earns 5 * 3 = 15 dollars.", True, "15", "15", True, "15"),
    ("gsm8k", "In total 1,500 people came.", True, "1500", "1,500", True, "1500"),
    ("gsm8k", "", True, "5", None, False, None),
    ("gsm8k", "I cannot say.", True, "5", None, False, None),
    # GSM8K: a branch cut off at the token limit votes only with a stated final answer
    ("gsm8k", "Step 1: 5 + 7 = 12, then 12 * 3 = ", False, "36", None, False, None),
    ("gsm8k", "So \\boxed{36} and to double check, 36 / 3 =", False, "36", "36", True, "36"),
    ("gsm8k", "#### 36\nBecause 36 is", False, "36", "36", True, "36"),
    ("gsm8k", "\\boxed{36", False, "36", None, False, None),
    # no answer is never correct, even against a gold that does not parse either (was None == None)
    ("gsm8k", "no number at all", True, "many", None, False, None),
    # MATH: math-verify decides equality
    ("math500", "so $x = \\boxed{\\dfrac{1}{2}}$.", True, "\\frac{1}{2}", "\\dfrac{1}{2}", True, "0.5"),
    ("math500", "\\boxed{0.5}", True, "\\frac{1}{2}", "0.5", True, "\\frac12"),
    ("math500", "\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}", True, "\\left( 3, \\frac{\\pi}{2} \\right)",
     "\\left( 3, \\frac{\\pi}{2} \\right)", True, "(3,\\frac{\\pi}{2})"),
    ("math500", "\\boxed{-2, 3}", True, "-2, 3", "-2, 3", True, "3, -2"),
    ("math500", "\\boxed{-23}", True, "-2, 3", "-23", False, "-23.0"),
    ("math500", "\\boxed{2\\frac{1}{2}}", True, "\\frac{5}{2}", "2\\frac{1}{2}", True, "2.5"),
    ("math500", "\\boxed{(1,2]}", True, "(1,2]", "(1,2]", True, "(1, 2]"),
    ("math500", "\\boxed{[1,2)}", True, "(1,2]", "[1,2)", False, "[1, 2)"),
    ("math500", "\\boxed{\\text{(C)}}", True, "\\text{(C)}", "\\text{(C)}", True, "C"),
    ("math500", "\\boxed{50\\%}", True, "50", "50\\%", True, "50"),
    ("math500", "\\boxed{1{,}000}", True, "1000", "1{,}000", True, "1000"),
    ("math500", "\\boxed{\\frac{\\sqrt{3}}{2}}", True, "\\frac{\\sqrt3}{2}", "\\frac{\\sqrt{3}}{2}", True,
     "\\frac{1}{2}\\sqrt{3}"),
    ("math500", "\\boxed{\\sqrt{2}}", True, "\\sqrt2", "\\sqrt{2}", True, "2^{1/2}"),
    ("math500", "\\boxed{5 \\text{ cm}}", True, "5", "5 \\text{ cm}", True, "5"),
    ("math500", "\\boxed{10^\\circ}", True, "10", "10^\\circ", True, "10"),
    ("math500", "\\boxed{x = 5}", True, "5", "x = 5", True, "5"),
    ("math500", "\\boxed{\\infty}", True, "\\infty", "\\infty", True, "\\infty"),
    ("math500", "\\boxed{2}", True, "3", "2", False, "2.0"),
    ("math500", "\\boxed{\\frac{a}{b^{2}}}", True, "\\frac{a}{b^2}", "\\frac{a}{b^{2}}", True, "a b^{-2}"),
    ("math500", "no box at all: the answer is $42$", True, "42", "42", True, "42"),
    ("math500", "no box and cut off: $42", False, "42", None, False, None),
    ("math500", "\\boxed{x^{2}+1", False, "x^2+1", None, False, None),
]


@pytest.mark.parametrize("task,text,finished,gold,answer,correct,equivalent", CASES)
def test_extract_grade_and_vote(task, text, finished, gold, answer, correct, equivalent):
    got = extract_answer(text, task, finished)
    assert got == answer
    assert is_correct(got, gold, task) is correct
    distractor = "123456"
    if equivalent is None:  # this branch does not vote: the other two tie, the earlier one wins
        answers = [got, distractor, "654321"]
        classes, _ = group_answers(answers, task)
        winner, tallies = vote(classes, answers, [1.0] * 3)
        assert winner == distractor and [t.votes for t in tallies] == [1, 1]
        return
    answers = [got, distractor, equivalent]
    classes, _ = group_answers(answers, task)
    assert classes[0] == classes[2] != classes[1], "the two spellings are one candidate"
    winner, tallies = vote(classes, answers, [1.0] * 3)
    assert winner in (got, equivalent) and tallies[0].votes == 2
    assert is_correct(winner, gold, task) is correct


def test_case_count():
    assert len(CASES) >= 60


def test_stated_answers_in_order_with_positions():
    text = "a \\boxed{1} b \\boxed {2} c \\boxed{} #### 7\n"
    stated = stated_answers(text)
    assert [s.answer for s in stated] == ["1", "2", "7"]
    assert [text[:s.end][-2:] for s in stated] == ["1}", "2}", " 7"]


def test_spellings_of_one_answer_are_one_candidate_and_the_common_spelling_is_reported():
    answers = ["1/2", "0.5", "\\frac{1}{2}", "0.5", "3", "3", "3"]
    classes, _ = group_answers(answers, "math500")
    assert len(set(classes)) == 2
    winner, tallies = vote(classes, answers, [1.0] * len(answers))
    assert winner == "0.5" and tallies[0].votes == 4 and tallies[1].answer == "3"


def test_ties_break_by_weight_then_votes_then_first_branch():
    def run(answers, weights):
        classes, _ = group_answers(answers, "gsm8k")
        return vote(classes, answers, weights)[0]
    assert run(["5", "7"], [1.0, 1.0]) == "5"              # full tie: the earlier branch
    assert run(["5", "7", "7"], [1.0, 0.5, 0.5]) == "7"    # equal weight: more votes
    assert run(["5", "7", "7"], [0.9, 0.4, 0.4]) == "5"    # weight decides before count
    assert vote([None, None], [None, None], [1.0, 1.0]) == (None, [])


def brute_force_weight(logprobs, confidences, rule, window):
    """The rules' definitions, written out directly on one prefix."""
    x = confidences if rule == "deepconf" else logprobs
    if rule == "majority":
        return 1.0
    if rule == "mean-logprob":
        return math.exp(sum(x) / len(x))
    w = min(window, len(x))
    lowest = min(sum(x[i:i + w]) / w for i in range(len(x) - w + 1))
    return lowest if rule == "deepconf" else math.exp(lowest)


@pytest.mark.parametrize("rule", VOTE_RULES)
def test_weights_at_every_length_match_the_definitions(rule):
    rng = np.random.default_rng(7)
    for n in (1, 5, WINDOW - 1, WINDOW, WINDOW + 1, 50):
        logprobs = (-rng.exponential(0.5, n)).tolist()
        confidences = rng.uniform(1, 20, n).tolist()
        got = weights_by_length(logprobs, confidences, rule, WINDOW)
        want = [brute_force_weight(logprobs[:L], confidences[:L], rule, WINDOW) for L in range(1, n + 1)]
        assert np.allclose(got, want, rtol=1e-12)
        assert branch_weight(logprobs, confidences, rule) == pytest.approx(want[-1], rel=1e-12)


def test_confident_branches_outweigh_unsure_ones():
    sure, unsure = [-0.01] * 20, [-0.01] * 10 + [-3.0] * 4 + [-0.01] * 6
    conf_sure, conf_unsure = [15.0] * 20, [15.0] * 10 + [2.0] * 4 + [15.0] * 6
    assert math.isclose(branch_weight(unsure, conf_unsure, "min-window", window=4), math.exp(-3.0))
    assert math.isclose(branch_weight(unsure, conf_unsure, "deepconf", window=4), 2.0)
    answers = ["1", "1", "2", "2", "2"]
    classes, _ = group_answers(answers, "gsm8k")
    for rule in ("mean-logprob", "min-window", "deepconf"):
        weights = ([branch_weight(sure, conf_sure, rule, 4)] * 2 + [branch_weight(unsure, conf_unsure, rule, 4)] * 3)
        assert vote(classes, answers, weights)[0] == "1", rule
    assert vote(classes, answers, [1.0] * 5)[0] == "2"
    with pytest.raises(ValueError):
        weights_by_length(sure, conf_sure, "best-of")


def test_answers_too_large_to_evaluate_are_compared_as_written():
    """A power with an astronomically large exponent is not handed to math-verify (whose timeout cannot
    interrupt big-integer arithmetic; this comparison would not end): equal only as written."""
    tower, big = parse_answer("2^{100 \\cdot 2^{99}}", "math"), parse_answer("10^{10^{10}}", "math")
    assert huge(tower) and huge(big) and not huge(parse_answer("2^{250}", "math"))
    assert not same_answer(parse_answer("2^{250}", "math"), tower, "math")
    assert same_answer(big, parse_answer("10^{10^{10}}", "math"), "math")
    assert same_answer(parse_answer("\\frac{1}{2}", "math"), parse_answer("0.5", "math"), "math")


# One MATH-500 request's answers (test/precalculus/990, 27 branches on the H100, 2026-12-07): 19
# spellings, two of them equal, the kind of list whose regrouping at each finish cost 33-44 s.
REQUEST_ANSWERS = ["\\frac{4 + 3\\sqrt{2}}{2} - \\frac{5\\sqrt{2}}{2}i", "4 - \\frac{3\\sqrt{2}}{2} - 4i\\sqrt{2}",
                   "\\sqrt{2}(1 - i)", "-\\frac{\\sqrt{2}}{2}", "6 - 5i", "\\sqrt{2} - \\sqrt{2}i", None,
                   "1 - 2\\sqrt{2} - 2\\sqrt{2}i", "6-5i", "-\\frac{5 + 4\\sqrt{2}}{2}", "\\frac{\\sqrt{2}}{1}(1-i)"]


def test_a_memo_groups_as_from_scratch_and_verifies_each_pair_once(monkeypatch):
    """Regrouping a growing list with one memo (as the executor does at each finish) gives the classes
    of grouping from scratch, and asks math-verify about each pair of spellings at most once."""
    asked = []
    monkeypatch.setattr(answers_module, "same_answer", lambda a, b, task: asked.append(1) or same_answer(a, b, task))
    memo = AnswerMemo("math")
    grown = [group_answers(REQUEST_ANSWERS[:n], "math", memo)[0] for n in range(1, len(REQUEST_ANSWERS) + 1)]
    with_memo = len(asked)
    assert grown[-1] == group_answers(REQUEST_ANSWERS, "math")[0]
    assert with_memo == len(memo.verdicts) <= len(asked) - with_memo  # every pair once: at most one grouping
    assert all(g == grown[-1][:len(g)] for g in grown)  # classes are numbered by first appearance: prefixes agree
    classes = group_answers(REQUEST_ANSWERS, "math", memo)[0]
    assert classes[2] == classes[5] == classes[10] and classes[4] == classes[8] and classes[6] is None
    assert len(set(c for c in classes if c is not None)) == 7


class AnswerTokenizer:
    """Token t decodes to a branch stating REQUEST_ANSWERS[t]."""
    @staticmethod
    def decode(tokens, skip_special_tokens=True):
        return "".join(f"so \\boxed{{{REQUEST_ANSWERS[t]}}}" for t in tokens[:1])


@pytest.mark.parametrize("seed", range(2))
def test_early_stop_asks_what_the_full_tally_would_answer_and_groups_only_when_it_could_be_decided(seed):
    """VoteWatch.decided, as branches finish one at a time in a random order, equals voting.decided on
    the full tally every time; while the finished weight cannot outweigh what is pending, no answer is
    read or compared."""
    rng = np.random.default_rng(seed)
    picks = rng.choice([0, 2, 4, 5, 8, 9], size=12, p=[0.1, 0.3, 0.3, 0.1, 0.1, 0.1])
    branches = [Branch(tokens=[int(t)], logprobs=(-rng.exponential(0.3, 3)).tolist(), confidences=[1.0] * 3)
                for t in picks]
    watch, order = VoteWatch(AnswerTokenizer, "mean-logprob", "math"), rng.permutation(len(branches))
    for n, i in enumerate(order):
        branches[i].finish = "eos"
        pending = [weight_bound(weights_by_length(b.logprobs, b.confidences, "mean-logprob"), "mean-logprob")
                   for b in branches if not b.finish]
        full = decided([t.weight for t in VoteWatch(AnswerTokenizer, "mean-logprob", "math").tally(branches)[1]],
                       pending)
        assert watch.decided(branches) == full
        if n + 1 <= len(pending):  # weights are below 1, the bounds 1: nothing can be decided yet
            assert not watch.texts and not watch.memo.parsed
    assert watch.texts and full


def test_the_value_at_a_point_shortcut_never_parts_what_math_verify_joins():
    """clearly_apart (values at one point differ) is never true of two spellings math-verify calls equal:
    every equivalent pair of CASES and the equal classes of one real request; and it does part most of
    that request's different pairs, which then never reach math-verify."""
    joined = [(c[4], c[6]) for c in CASES if c[0] != "gsm8k" and c[6] is not None and c[4] is not None]
    joined += [("6 - 5i", "6-5i"), ("\\sqrt{2}(1 - i)", "\\sqrt{2} - \\sqrt{2}i"), ("50\\%", "0.5"),
               ("x = 5", "5"), ("\\frac{1}{3}", "0.333333"), ("2p + q", "q + 2p")]
    for a, b in joined:
        pa, pb = parse_answer(a, "math"), parse_answer(b, "math")
        assert verify(pa, pb) or verify(pb, pa), (a, b)
        assert not clearly_apart(pa, pb), (a, b)
    parsed = [parse_answer(a, "math") for a in REQUEST_ANSWERS if a is not None]
    different = [(a, b) for i, a in enumerate(parsed) for b in parsed[:i] if not (verify(a, b) or verify(b, a))]
    assert sum(clearly_apart(a, b) for a, b in different) >= 0.9 * len(different)
