"""Final answers: where a branch states one, what it says, and whether two answers are the same.

What is ours to decide is kept small:
  - a final answer is stated by \\boxed{...} (or \\fbox{...}), or by '#### N' on GSM8K; the last
    non-empty one is the branch's answer;
  - a branch that finished (EOS) without one falls back to its last number (GSM8K) or to
    math-verify's own extraction from the text (MATH); a branch cut off at the token limit has no
    answer unless it stated one (an unfinished derivation's last number is not an answer).
Whether two answers agree is not ours: MATH answers are parsed and compared by Hugging Face's
math-verify (LaTeX, fractions, mixed numbers, intervals, sets and tuples, percentages, units,
\\text{}); GSM8K answers are numbers, read in every written form (thousands separators such as
1,000 / 1{,}000 / 10,\\!000, currency and percent signs, units, a trailing period), with LaTeX
numbers (\\frac{5}{2}, 2\\frac{1}{2}) handed to math-verify.
"""
import cmath
import math
import random
import re
from dataclasses import dataclass, field
from fractions import Fraction

from math_verify import parse, verify
from sympy import Basic, Expr, Symbol, UnevaluatedExpr, preorder_traversal

TASKS = ("gsm8k", "math")  # answer kinds (datasets.answer_kind): GSM8K numbers, MATH LaTeX
BOX_COMMANDS = ("\\boxed", "\\fbox")
PLAIN_NUMBER = re.compile(r"-?(?:\d+(?:\.\d*)?|\.\d+)")
# A number in running text: digit groups of three after a comma are thousands, not a list.
NUMBER_IN_TEXT = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\d+(?:\.\d+)?|-?\.\d+")


@dataclass(frozen=True)
class Stated:
    """A final answer stated in a text: its content and the character offset just past it."""
    answer: str
    end: int


def stated_answers(text: str) -> list[Stated]:
    """Every closed, non-empty \\boxed{}/\\fbox{} and '#### N' in the text, in order of their end."""
    found = []
    for command in BOX_COMMANDS:
        start = text.find(command)
        while start >= 0:
            brace = start + len(command)
            while brace < len(text) and text[brace] == " ":
                brace += 1
            if brace < len(text) and text[brace] == "{":
                depth = 0
                for j in range(brace, len(text)):
                    depth += {"{": 1, "}": -1}.get(text[j], 0)
                    if depth == 0:
                        if text[brace + 1:j].strip():
                            found.append(Stated(text[brace + 1:j].strip(), j + 1))
                        break
            start = text.find(command, start + 1)
    for m in re.finditer(r"####\s*([^\n]+)", text):
        found.append(Stated(m.group(1).strip(), m.end()))
    return sorted(found, key=lambda s: s.end)


def extract_answer(text: str, task: str, finished: bool = True) -> str | None:
    """The branch's final answer as written, or None.  finished=False: the branch was cut off at
    the token limit, and only a stated final answer counts."""
    stated = stated_answers(text)
    if stated:
        return stated[-1].answer
    if not finished:
        return None
    if task == "gsm8k":
        numbers = NUMBER_IN_TEXT.findall(text)
        return numbers[-1] if numbers else None
    parsed = _math_verify_parse(text, wrap=False)
    return parsed[1] if len(parsed) > 1 else None


def _math_verify_parse(text: str, wrap: bool = True):
    try:
        return parse(f"${text}$" if wrap else text)
    except Exception:  # math-verify raises on some malformed LaTeX: not an answer
        return []


def _strip_text_commands(s: str) -> str:
    return re.sub(r"\\(?:text|textbf|mathrm|mbox)\s*\{([^{}]*)\}", r" \1 ", s)


def gsm8k_number(answer: str) -> Fraction | None:
    """A GSM8K answer as an exact number: '1,000', '1{,}000', '10,\\!000', '\\$1,200.00', '25\\%',
    '18.', '18 apples', 'x = 18', '\\frac{5}{2}', '2\\frac{1}{2}'; None for a list ('-2, 3') or text."""
    s = _strip_text_commands(answer)
    s = s.replace("{,}", ",").replace("\\!", "").replace("\\,", "").replace("\\ ", " ").replace("\\$", "")
    s = s.replace("$", "").replace("\\%", "").replace("%", "").replace("\\left", "").replace("\\right", "")
    s = s.split("=")[-1]
    s = re.sub(r"(?<=\d),(?=\d{3}(?:\D|$))", "", s)          # thousands separators
    s = re.sub(r"[A-Za-z][A-Za-z ]*(?:\^\{?\d\}?)?\.?$", "", s.strip())  # trailing units or words
    s = s.strip().rstrip(".").strip()
    if PLAIN_NUMBER.fullmatch(s):
        return Fraction(s)
    if "\\" in s:  # a LaTeX number: fractions, mixed numbers
        parsed = _math_verify_parse(s)
        if parsed and getattr(parsed[0], "is_number", False) and parsed[0].is_finite:
            try:
                return Fraction(str(parsed[0].nsimplify() if hasattr(parsed[0], "nsimplify") else parsed[0]))
            except (ValueError, ZeroDivisionError, TypeError):
                return None
    return None


def parse_answer(answer: str | None, task: str):
    """The comparable form of an answer: an exact number (GSM8K) or math-verify's parse (MATH);
    None when it cannot be read."""
    if answer is None:
        return None
    if task == "gsm8k":
        return gsm8k_number(answer)
    return _math_verify_parse(answer) or None


HUGE_EXPONENT = 10_000


def huge(parsed) -> bool:
    """Whether comparing this parsed answer could build an astronomically large number: a power whose
    exponent is a number beyond HUGE_EXPONENT (2^{100 \\cdot 2^{99}}, 10^{10^{10}}).  math-verify's
    timeout cannot interrupt Python's big-integer arithmetic, so such answers are compared as written."""
    for expr in parsed:
        if isinstance(expr, Basic):
            for node in preorder_traversal(expr):
                if node.is_Pow and node.exp.is_number:
                    try:
                        if abs(complex(node.exp.evalf(8))) > HUGE_EXPONENT:
                            return True
                    except (TypeError, ValueError, OverflowError):
                        return True
    return False


APART = 1e-4  # values this far apart (relative, or absolute below 1) belong to different answers


def sample_value(parsed) -> complex | None:
    """The value of a parsed answer that is one expression (not a relation, set, tuple, matrix, bare
    symbol or percentage: 3\\sqrt{2}, 6 - 5i, 2p + q), its variables set to fixed pseudo-random points
    of the unit circle (each a function of the variable's name), or None."""
    exprs = [e for e in parsed if isinstance(e, Basic)]
    if len(exprs) != 1:
        return None
    e = exprs[0]
    if not isinstance(e, Expr) or isinstance(e, Symbol) or e.is_Matrix or e.has(UnevaluatedExpr):
        return None
    point = {}  # on the unit circle, so that x^{8038} stays a number a float can hold
    for x in e.free_symbols:
        point[x] = cmath.exp(1j * random.Random(str(x)).uniform(0.3, 2.8))
    try:
        value = complex(e.evalf(30, subs=point))
    except (TypeError, ValueError, OverflowError, ZeroDivisionError, AttributeError):
        return None
    return value if math.isfinite(value.real) and math.isfinite(value.imag) else None


def clearly_apart(a, b) -> bool:
    """Two expressions whose values at the same point differ by more than APART: their difference is not
    zero, so math-verify, which calls such a pair equal only when its difference simplifies to 0 or
    rounds to 0 at 6 decimals, need not be asked (it spends 1-200 ms on a pair; this 0.1 ms).  Checked
    against math-verify on every pair of answer classes and gold answers of graded MATH profiles
    (benchmarks/answer_pairs.py)."""
    va, vb = sample_value(a), sample_value(b)
    return va is not None and vb is not None and abs(va - vb) > APART * max(1.0, abs(va), abs(vb))


def same_answer(a, b, task: str) -> bool:
    """Two parsed answers are the same answer (never true when either is unreadable)."""
    if a is None or b is None:
        return False
    if task == "gsm8k":
        return a == b
    if huge(a) or huge(b):
        return a[-1] == b[-1]  # as written
    if clearly_apart(a, b):
        return False
    try:
        return verify(a, b) or verify(b, a)
    except Exception:
        return False


@dataclass
class AnswerMemo:
    """Comparisons already paid for, kept for the next grouping of the same answers: each spelling's
    parse and each ordered pair's verdict.  The executor regroups a request's finished answers each
    time a branch finishes (early stop asks whether the vote is decided); math-verify spends 1-200 ms
    on a pair of MATH expressions, so regrouping from scratch cost 33-44 s in replays of one MATH-500
    request (benchmarks/answer_pairs.py)."""
    task: str
    parsed: dict = field(default_factory=dict)
    verdicts: dict = field(default_factory=dict)

    def parse(self, answer: str | None):
        if answer not in self.parsed:
            self.parsed[answer] = parse_answer(answer, self.task)
        return self.parsed[answer]

    def same(self, a: str, b: str) -> bool:
        if (a, b) not in self.verdicts:
            self.verdicts[a, b] = same_answer(self.parse(a), self.parse(b), self.task)
        return self.verdicts[a, b]


def group_answers(answers: list[str | None], task: str,
                  memo: AnswerMemo | None = None) -> tuple[list[int | None], list]:
    """Equivalence classes of answers that verify as equal, in order of first appearance:
    (class index per answer, None where unreadable; the parsed representative of each class).
    memo: parses and verdicts from earlier groupings, reused and extended."""
    memo = AnswerMemo(task) if memo is None else memo
    classes, representatives, class_of = [], [], {}
    for answer in answers:
        if answer not in class_of:
            class_of[answer] = None if memo.parse(answer) is None else next(
                (i for i, rep in enumerate(representatives) if memo.same(rep, answer)), None)
            if memo.parse(answer) is not None and class_of[answer] is None:
                representatives.append(answer)
                class_of[answer] = len(representatives) - 1
        classes.append(class_of[answer])
    return classes, [memo.parse(rep) for rep in representatives]


def is_correct(answer: str | None, gold: str, task: str) -> bool:
    return same_answer(parse_answer(answer, task), parse_answer(gold, task), task)
