"""Shared benchmark plumbing: a real 512-token prompt, timing, and result tables written beside the printout."""
import platform
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ttsplan.datasets import load_problems
from ttsplan.measure.schema import today  # noqa: F401  (the benchmarks' date, one definition)

RESULTS = Path(__file__).parent / "results"


def gsm8k_prompt_ids(tokenizer, n_tokens: int, offset: int = 0) -> list[int]:
    """Exactly n_tokens of real text: GSM8K test questions joined until long enough."""
    text = ""
    for p in load_problems("gsm8k", 200, offset):
        text += p.question + "\n"
        ids = tokenizer(text)["input_ids"]
        if len(ids) >= n_tokens:
            return ids[:n_tokens]
    raise ValueError("not enough text")


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def emit(table: Table, name: str, header: str) -> None:
    """Print the table and save it as markdown under benchmarks/results/NAME.md."""
    Console(width=200).print(table)
    cols = [c.header for c in table.columns]
    rows = list(zip(*[c._cells for c in table.columns]))
    md = [header, "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    md += ["| " + " | ".join(str(x) for x in r) + " |" for r in rows]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.md").write_text("\n".join(md) + "\n")
