"""Final-answer extraction and normalization for GSM8K (numbers) and MATH (\\boxed{} expressions)."""
import re
from fractions import Fraction

NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} (or \\fbox{...}), braces balanced; None when absent or unclosed."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    i = text.find("{", start)
    if i < 0:
        return None
    depth = 0
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1:j]
    return None


def normalize_number(s: str) -> str | None:
    """'1,234.50' -> '1234.5', '3.0' -> '3', '-0' -> '0', '$12' -> '12', '3/4' -> '3/4'; None if not a number."""
    s = s.strip().replace(",", "").replace("$", "").replace("\\%", "").rstrip("%").rstrip(".").strip()
    s = re.sub(r"\\(?:d|t)?frac\{(-?\d+)\}\{(\d+)\}", r"\1/\2", s)
    try:
        value = Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None
    if value.denominator == 1:
        return str(value.numerator)
    as_decimal = f"{float(value):.10f}".rstrip("0").rstrip(".")
    return as_decimal if Fraction(as_decimal) == value else f"{value.numerator}/{value.denominator}"


def extract_gsm8k(text: str) -> str | None:
    """\\boxed{} if present, else the number after '####', else the last number in the text."""
    boxed = last_boxed(text)
    if boxed is not None and (n := normalize_number(boxed)) is not None:
        return n
    if "####" in text:
        m = NUMBER.search(text.split("####")[-1])
        if m:
            return normalize_number(m.group())
    numbers = NUMBER.findall(text)
    return normalize_number(numbers[-1]) if numbers else None


def normalize_math(s: str) -> str:
    """Light canonical form of a MATH answer: no spacing, \\left/\\right, \\text{}, degree or dollar marks."""
    s = s.strip()
    s = re.sub(r"\\text\{\s*([^{}]*)\}", r"\1", s)
    for old, new in (("\\left", ""), ("\\right", ""), ("\\!", ""), ("\\,", ""), ("\\;", ""), ("\\ ", ""),
                     ("dfrac", "frac"), ("tfrac", "frac"), ("^\\circ", ""), ("^{\\circ}", ""),
                     ("\\$", ""), ("$", ""), ("\\%", ""), ("%", "")):
        s = s.replace(old, new)
    s = re.sub(r"\s+", "", s).rstrip(".")
    s = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", s)
    number = normalize_number(s)
    return number if number is not None else s


def extract_math(text: str) -> str | None:
    boxed = last_boxed(text)
    return normalize_math(boxed) if boxed is not None else None


EXTRACTORS = {"gsm8k": extract_gsm8k, "math500": extract_math}
