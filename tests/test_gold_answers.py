"""Real data: the answer our extraction takes from each gold solution verifies as the gold answer."""
import pytest

from ttsplan.answers import extract_answer, is_correct
from ttsplan.datasets import answer_kind, load_problems


# Measured 2026-11-24 (test splits) and 2026-12-02 (train splits): every gold solution grades as its
# gold answer: MATH-500 500/500 (\boxed{} of the solution against `answer`, by math-verify), GSM8K
# test 1319/1319 and train 7473/7473 ('#### N' against the gold number), MATH train 7496/7496 (the
# last \boxed{} of the solution is the gold answer: this checks that math-verify parses and accepts
# it; 4 of its 7500 problems have no braced \boxed{} and are left out, see ttsplan.datasets).
@pytest.mark.parametrize("dataset,count", [("math500", 500), ("gsm8k", 1319),
                                           pytest.param("gsm8k-train", 7473, marks=pytest.mark.models),
                                           pytest.param("math-train", 7496, marks=pytest.mark.models)])
def test_gold_solutions_grade_as_their_gold_answers(dataset, count):
    problems = load_problems(dataset)
    assert len(problems) == count and len({p.id for p in problems}) == count
    kind = answer_kind(dataset)
    misses = [(p.id, extract_answer(p.solution, kind), p.gold) for p in problems
              if not is_correct(extract_answer(p.solution, kind), p.gold, kind)]
    assert misses == []
