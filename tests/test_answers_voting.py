"""Answer extraction, normalization and vote rules on hand-written cases."""
import math

import pytest

from ttsplan.answers import extract_gsm8k, extract_math, last_boxed, normalize_math, normalize_number
from ttsplan.voting import branch_weight, vote


@pytest.mark.parametrize("text,want", [
    ("She sold 48 + 24 = 72 clips.\n#### 72", "72"),
    ("so the total is $1,234.50.", "1234.5"),
    ("The answer is \\boxed{18}. Check: 9 + 9 = 18 and 20 - 2", "18"),
    ("#### 3.0", "3"),
    ("It costs -5 dollars... wait no", "-5"),
    ("Half of it is 0.5 kg.", "0.5"),
    ("\\boxed{\\frac{3}{4}} of the cake", "0.75"),
    ("I cannot say.", None),
    ("", None),
])
def test_gsm8k_extraction(text, want):
    assert extract_gsm8k(text) == want


@pytest.mark.parametrize("text,want", [
    ("so $x = \\boxed{\\dfrac{1}{2}}$.", "0.5"),
    ("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}", "(3,\\frac{\\pi}{2})"),
    ("first \\boxed{1} then \\boxed{ 10^\\circ }", "10"),
    ("\\boxed{\\text{(C)}}", "(C)"),
    ("\\boxed{x^{2}+1", None),      # unclosed
    ("no box at all: 42", None),
])
def test_math_extraction(text, want):
    assert extract_math(text) == want


def test_nested_braces_and_equivalent_forms():
    assert last_boxed("\\boxed{\\frac{a}{b^{2}}}") == "\\frac{a}{b^{2}}"
    assert normalize_math("\\frac12") == normalize_math("\\dfrac{1}{2}") == "0.5"
    assert normalize_number("1,000") == normalize_number("1000.00") == "1000"
    assert normalize_number("1/3") == "1/3" and normalize_number("abc") is None


def test_majority_vote_and_unparsed_answers_do_not_vote():
    answer, tally = vote(["72", None, "72", "36", None, None], [1.0] * 6)
    assert answer == "72" and [(t.answer, t.votes) for t in tally] == [("72", 2), ("36", 1)]
    assert vote([None, None], [1.0, 1.0]) == (None, [])


def test_ties_break_by_weight_then_votes_then_first_branch():
    assert vote(["5", "7"], [1.0, 1.0])[0] == "5"              # full tie: the earlier branch
    assert vote(["5", "7", "7"], [1.0, 0.5, 0.5])[0] == "7"    # equal weight: more votes
    assert vote(["5", "7", "7"], [0.9, 0.4, 0.4])[0] == "5"    # weight decides before count


def test_confidence_weights():
    sure, unsure = [-0.01] * 20, [-0.01] * 10 + [-3.0] * 4 + [-0.01] * 6
    assert branch_weight(sure, "majority") == branch_weight(unsure, "majority") == 1.0
    assert math.isclose(branch_weight(sure, "mean-logprob"), math.exp(-0.01))
    assert branch_weight(unsure, "mean-logprob") < branch_weight(sure, "mean-logprob")
    # The lowest window (size 4) sits on the four uncertain tokens: exp(-3).
    assert math.isclose(branch_weight(unsure, "min-window", window=4), math.exp(-3.0))
    # A weighted vote lets two confident branches beat three unsure ones.
    answers = ["1", "1", "2", "2", "2"]
    weights = [branch_weight(sure, "min-window", 4)] * 2 + [branch_weight(unsure, "min-window", 4)] * 3
    assert vote(answers, weights)[0] == "1" and vote(answers, [1.0] * 5)[0] == "2"
    with pytest.raises(ValueError):
        branch_weight(sure, "best-of")
