"""What `ttsplan run` prints: the branches, the vote, the latency beside the device's copy bandwidth, the
draft's rounds, and a dataset run's problems and its measured accuracy and latency against the plan's
prediction."""
import numpy as np
from rich.table import Table

from ttsplan.planning.selection import Z95, prediction_interval, quantile_interval
from ttsplan.report import table_of


def vote_table(solved) -> Table:
    table = Table(title="votes")
    for col in ("answer", "votes", "weight"):
        table.add_column(col, justify="right")
    for t in solved.tallies:
        table.add_row(t.answer, str(t.votes), f"{t.weight:.3f}")
    unparsed = sum(a is None for a in solved.answers)
    if unparsed:
        table.add_row("(no answer)", str(unparsed), "-")
    notes = []
    if solved.cut_off:
        notes.append(f"{solved.cut_off} of {len(solved.branches)} branches were cut off at the token limit")
    if solved.stopped:
        notes.append(f"{solved.stopped} stopped early: the vote was decided")
    table.caption = "; ".join(notes) or None
    return table


def branch_table(solved) -> Table:
    table = Table(title="branches")
    for col in ("branch", "tokens", "finish", "answer", "weight"):
        table.add_column(col, justify="right")
    for i, (b, a, w) in enumerate(zip(solved.branches, solved.answers, solved.weights)):
        table.add_row(str(i), str(len(b.tokens)), b.finish, a or "-", f"{w:.3f}")
    return table


def timing_table(stats, latency_s: float, peak_bw: float, predicted: dict | None = None,
                 vote_s: float | None = None) -> Table:
    """vote_s: of the total, the host's reading and comparing of answers (early stop's checks, inside
    decode s, and the final vote)."""
    table = Table(title="latency")
    cols = ["prompt tokens", "prefill s", "graph capture s", "decode s", "total s", "new tokens", "decode tok/s",
            "bandwidth achieved", "device copy bw"]
    if vote_s is not None:
        cols.insert(4, "vote s (of total)")
    if predicted:
        cols += ["predicted s (mean)"]
    for col in cols:
        table.add_column(col, justify="right")
    achieved = stats.bytes_read / stats.decode_s if stats.decode_s else 0.0
    row = [str(stats.prompt_tokens), f"{stats.prefill_s:.2f}", f"{stats.capture_s:.2f}", f"{stats.decode_s:.2f}",
           f"{latency_s:.2f}", str(stats.new_tokens), f"{stats.tokens_per_s:.1f}",
           f"{achieved / 1e9:.1f} GB/s ({achieved / peak_bw:.0%})", f"{peak_bw / 1e9:.1f} GB/s"]
    if vote_s is not None:
        row.insert(4, f"{vote_s:.2f}")
    if predicted:
        row.append(f"{predicted['mean_s']:.2f}")
    table.add_row(*row)
    return table


def spec_table(spec) -> Table:
    table = Table(title=f"speculative decoding, draft length {spec.draft_len}")
    for col in ("rounds", "tokens/round", "acceptance", "per position"):
        table.add_column(col, justify="right")
    table.add_row(str(spec.rounds), f"{spec.tokens_per_round:.2f}", f"{spec.overall_acceptance:.2f}",
                  " ".join(f"{a:.2f}" for a in spec.acceptance))
    return table


def dataset_table(rows: list[dict], plan) -> Table:
    table = Table(title=f"{plan.dataset}: {plan.model}, {plan.describe()}")
    for col in ("problem", "gold", "answer", "correct", "latency s", "tokens", "cut off", "stopped"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(r["id"], r["gold"], str(r["answer"]), "yes" if r["correct"] else "no",
                      f"{r['latency_s']:.1f}", str(r["new_tokens"]), str(r["cut_off"]), str(r.get("stopped", 0)))
    correct = sum(r["correct"] for r in rows)
    mean_s = sum(r["latency_s"] for r in rows) / len(rows)
    table.add_section()
    table.add_row("total", "", "", f"{correct}/{len(rows)} ({correct / len(rows):.0%})", f"mean {mean_s:.1f}",
                  str(sum(r["new_tokens"] for r in rows)), str(sum(r["cut_off"] for r in rows)),
                  str(sum(r.get("stopped", 0) for r in rows)))
    return table


def run_summary_table(rows: list[dict], plan, predicted: dict | None) -> Table:
    """A dataset run against its plan's prediction: accuracy with its 95% interval (measured: over these
    problems; predicted: the plan's corrected estimate, widened by this many problems' own noise), and
    p50 / p90 latency (measured, with a bootstrap interval) against the predicted mean and p90."""
    n = len(rows)
    correct = np.array([float(r["correct"]) for r in rows])
    lat = np.array([r["latency_s"] for r in rows])
    acc, se = correct.mean(), correct.std(ddof=1) / np.sqrt(n) if n > 1 else float("nan")
    table = table_of(f"{plan.dataset}, {n} problems: measured against predicted", ["", "accuracy (95%)", "p50 s",
                                                                                 "p90 s (95%)", "budget"])
    lo90, hi90 = quantile_interval(lat, 0.9)
    table.add_row("measured", f"{acc:.1%} ({max(acc - Z95 * se, 0):.0%}-{min(acc + Z95 * se, 1):.0%})",
                  f"{np.median(lat):.2f}", f"{np.quantile(lat, 0.9):.2f} ({lo90:.2f}-{hi90:.2f})", "")
    if predicted:
        lo, hi = prediction_interval(predicted["accuracy"], *predicted["interval"], n)
        budget = predicted.get("budget_s")
        table.add_row("predicted", f"{predicted['accuracy']:.1%} ({lo:.0%}-{hi:.0%})", f"mean {predicted['mean_s']:.2f}",
                      f"{predicted['p90_s']:.2f}", f"{budget:g} s" if budget else "")
    return table
