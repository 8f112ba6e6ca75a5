"""Real data: the answer our extraction takes from each gold solution verifies as the gold answer."""
import pytest

from ttsplan.answers import extract_answer, is_correct
from ttsplan.datasets import load_problems


@pytest.mark.parametrize("dataset,count", [("math500", 500), ("gsm8k", 1319)])
def test_gold_solutions_grade_as_their_gold_answers(dataset, count):
    problems = load_problems(dataset)
    assert len(problems) == count
    misses = [(p.id, extract_answer(p.solution, dataset), p.gold) for p in problems
              if not is_correct(extract_answer(p.solution, dataset), p.gold, dataset)]
    # Measured 2026-11-24: 500/500 MATH-500 (\boxed{} of the solution against `answer`, by math-verify)
    # and 1319/1319 GSM8K ('#### N' of the solution against the gold number).  No exceptions.
    assert misses == []
