"""What `profile show` and `optimize` print: rich tables of profiles and plans, the Pareto frontier as a
terminal chart and as a PNG (what `run` prints: run_report)."""
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from rich.table import Table

from ttsplan.engine.config import ModelConfig
from ttsplan.measure.schema import DEVICE_SCHEMA, load_device_profile, load_task_profile
from ttsplan.planning.accuracy import AccuracyTable
from ttsplan.planning.latency import DeviceCosts
from ttsplan.planning.search import best_plans, with_binds
from ttsplan.planning.task_arrays import load_task_arrays
from ttsplan.voting import VOTE_RULES


def table_of(title: str, columns, caption: str | None = None) -> Table:
    table = Table(title=title, caption=caption)
    for i, col in enumerate(columns):
        table.add_column(col, justify="left" if i == 0 else "right")
    return table


# --- device profile ------------------------------------------------------------------------------

def profile_tables(path: Path) -> list[Table]:
    """`profile show`: a device profile with its fitted cost model, or a task profile's accuracy tables."""
    if path.is_file() and f"schema: {DEVICE_SCHEMA}" in path.read_text(errors="replace"):
        profile = load_device_profile(path)
        return device_tables(profile, DeviceCosts.fit(profile))
    profile = load_task_profile(path)
    arrays = load_task_arrays(profile, path)
    return task_tables(profile, AccuracyTable(arrays, VOTE_RULES, [arrays.max_new_tokens]), arrays)


def device_tables(profile, costs) -> list[Table]:
    prompt, own = profile.grid["core"]
    qs = sorted({s.q for s in profile.steps})
    at_core = {(s.b, s.q): s for s in profile.steps if (s.prompt, s.own) == (prompt, own)}
    steps = table_of(f"decode step ms (median, p10-p90) at prompt {prompt}, own {own}: {profile.model.name} "
                   f"{profile.dtype} on {profile.device['name']}, {profile.backend}",
                   ["branches b"] + [f"q={q}" for q in qs],
                   caption="q = 1: a decode step with sampling; q = k + 1: verifying k drafts per branch"
                           + (" (through vLLM: a whole round less its k draft steps)" if profile.backend == "vllm" else ""))
    for b in sorted({b for b, _ in at_core}):
        steps.add_row(str(b), *[f"{at_core[(b, q)].ms:.2f} ({at_core[(b, q)].p10_ms:.2f}-{at_core[(b, q)].p90_ms:.2f})"
                                if (b, q) in at_core else "-" for q in qs])
    sweep = table_of("decode step ms over prompt and own tokens", ["b", "q", "prompt", "own", "ms", "model ms"])
    for s in sorted(profile.steps, key=lambda s: (s.b, s.q, s.prompt, s.own)):
        if (s.prompt, s.own) != (prompt, own):
            sweep.add_row(str(s.b), str(s.q), str(s.prompt), str(s.own), f"{s.ms:.2f}",
                          f"{float(costs.target.predict(s.b, s.q, s.prompt, s.own)):.2f}")
    other = table_of("prefill, graph capture and loop overhead", ["what", "at", "ms"])
    for p in profile.prefill:
        other.add_row("prefill", f"prompt {p.prompt}", f"{p.ms:.2f}")
    for c in profile.capture:
        other.add_row("graph capture" if c.k == 0 else f"round graph capture, k={c.k}", f"b={c.b}", f"{c.ms:.2f}")
    for c in profile.loop_overhead:
        other.add_row("loop overhead per step", f"b={c.b}", f"{c.ms:.3f}")
    for c in profile.compaction:
        other.add_row("compaction", f"b={c.b}, {c.moved} rows of {c.upto} tokens moved", f"{c.ms:.3f}")
    tables = [steps, sweep, other]
    if profile.draft:
        draft = table_of(f"draft {profile.draft.model.name}: step and round costs", ["what", "at", "ms"])
        for s in sorted(profile.draft.steps, key=lambda s: (s.b, s.prompt, s.own)):
            draft.add_row("draft step", f"b={s.b}, prompt {s.prompt}, own {s.own}", f"{s.ms:.2f}")
        for p in profile.draft.prefill:
            draft.add_row("draft prefill", f"prompt {p.prompt}", f"{p.ms:.2f}")
        for c in profile.draft.round_overhead:
            draft.add_row("round overhead", f"b={c.b}, k={c.k}", f"{c.ms:.3f}")
        tables.append(draft)
    tables.append(fit_table(costs, profile))
    return tables


def fit_table(costs, profile) -> Table:
    """The step-cost interpolant: its error where it must interpolate (whole b levels left out), the
    per-thousand-token costs behind it, and the latency model's error on plans off the grid."""
    table = table_of("step-cost model (interpolated between measured levels)",
                   ["model", "points", "b levels left out", "held-out error", "held-out max",
                    "base ms at b = 1 / max", "ms per 1k own KV tokens", "own KV GB/s"])
    width = 4 if profile.dtype == "float32" else 2
    models = (("target", costs.target, profile.model), ("draft", costs.draft, profile.draft.model if profile.draft else None))
    for name, m, info in models:
        if m is None:
            continue
        levels = m.level_table(1)
        slope = float(np.median([lv[2] for lv in levels if lv[0] >= 16] or [lv[2] for lv in levels]))
        gbs = ModelConfig(**info.config).kv_token_bytes(width) * 1e3 / (slope * 1e-3) / 1e9 if slope > 0 else float("nan")
        table.add_row(name, str(m.points), str(m.held_out_levels), f"{m.held_out_error:.1%}", f"{m.held_out_max:.1%}",
                      f"{levels[0][1]:.2f} / {levels[-1][1]:.2f}", f"{slope:.4f}", f"{gbs:.0f}")
    v = profile.validation
    if v:
        table.caption = (f"plans off the grid ({v['requests']} requests, {v['device']}, {v['date']}): MAPE "
                         f"{v['mape']:.1%}, log(measured / predicted) {v['log_ratio_mean']:+.3f} +- "
                         f"{v['log_ratio_sd']:.3f}: the p90 a budget is held to is widened by it")
    else:
        table.caption = "no validation on plans off the grid stored: the p90 is not widened"
    return table


# --- task profile --------------------------------------------------------------------------------

def sampled_on_line(on: dict) -> str:
    if not on:
        return ""
    return (f"\nsampled on {on['device']}, {on['dtype']}, {on['backend']} engine (ttsplan {on['ttsplan']}, "
            f"torch {on['torch']}, triton {on['triton']})")


def task_tables(profile, accuracy, task) -> list[Table]:
    cap = task.max_new_tokens
    sizes = [n for n in (1, 2, 4, 8, 16, 32, 64) if n <= profile.n_max]
    acc = table_of(f"accuracy (95% interval) on {profile.limit} {profile.dataset} problems: {profile.model.name}, "
                 f"T={profile.sampling['temperature']}",
                 ["vote rule"] + [f"N={n}" for n in sizes],
                 caption=f"{profile.limit} problems x {profile.n_max} sampled branches; subsampled, not extrapolated"
                         + sampled_on_line(profile.sampled_on))
    for rule in VOTE_RULES:
        cells = []
        for n in sizes:
            e = accuracy.estimate(rule, cap, n)
            cells.append(f"{e.accuracy:.1%} ({e.low:.0%}-{e.high:.0%})")
        acc.add_row(rule, *cells)
    lengths = table_of("branch lengths (tokens)", ["p50", "p75", "p90", "p99", "max", "cut off at the limit",
                                                 "with no answer"])
    flat = task.lengths.ravel()
    finish = [b.finish for p in profile.problems for b in p.branches]
    answered = [b.answer >= 0 for p in profile.problems for b in p.branches]
    lengths.add_row(*[f"{np.percentile(flat, q):.0f}" for q in (50, 75, 90, 99)], str(int(flat.max())),
                    f"{finish.count('length') / len(finish):.1%} (limit {cap})",
                    f"{1 - np.mean(answered):.1%}")
    tables = [acc, lengths]
    if profile.acceptance:
        k = max(len(a.per_position) for a in profile.acceptance)
        table = table_of("draft acceptance per position (given the earlier drafts were accepted)",
                       ["draft", "temperature"] + [str(i + 1) for i in range(k)] + ["prompts"])
        for a in profile.acceptance:
            table.add_row(a.draft.name, f"{a.temperature:g}", *[f"{x:.2f}" for x in a.per_position], str(a.prompts))
        tables.append(table)
    return tables


# --- plans ---------------------------------------------------------------------------------------

def plan_row(c, result, binds: str = "") -> list[str]:
    low, high = result.interval(c)
    return [c.describe(), f"{c.accuracy:.1%} ({low:.0%}-{high:.0%})", f"{c.mean_s:.2f}", f"{c.p90_s:.2f}",
            f"{c.tokens:.0f}", binds]


def selection_row(sel, binds: str = "") -> list[str]:
    """A chosen plan: its accuracy corrected for the choosing, then as estimated before the correction."""
    c = sel.chosen
    return [c.describe(), f"{sel.accuracy:.1%} ({sel.low:.0%}-{sel.high:.0%})",
            f"{sel.naive:.1%} ({sel.optimism:+.1%})", f"{c.mean_s:.2f}", f"{c.p90_s:.2f}", f"{c.tokens:.0f}", binds]


def selections_table(title: str, rows, problems: int) -> Table:
    table = table_of(title, ["plan", "accuracy, corrected (95% CI)", "as estimated (optimism)", "mean s", "p90 s",
                           "tokens", "what binds"],
                   caption=f"each plan's accuracy on the {problems} calibration problems less the optimism of "
                           "choosing it (a bootstrap of the whole selection)")
    for name, cells in rows:
        table.add_row(f"{name}: {cells[0]}", *cells[1:])
    return table


PLAN_COLUMNS = ["plan", "accuracy (95% CI)", "mean s", "p90 s", "tokens", "what binds"]


def plans_table(title: str, rows) -> Table:
    table = table_of(title, PLAN_COLUMNS)
    for name, cells in rows:
        table.add_row(*([f"{name}: {cells[0]}" if name else cells[0]] + cells[1:]))
    return table


def optimize_report(opt, budget_s: float | None, target_accuracy: float | None, top: int, elapsed_s: float) -> list:
    """What `ttsplan optimize` prints before the plan: the best plans, the chosen plan beside the seed
    paper's baselines, the edges of what the profile measured, and the frontier."""
    res, stat = opt.result, opt.result.stat
    acc = opt.acceptance.per_position if opt.acceptance else None
    goal = f"{stat} latency <= {budget_s:g} s" if budget_s is not None else f"accuracy >= {target_accuracy:.1%}"
    rows = [("", plan_row(c, res, with_binds(opt.replay, c, acc).binds))
            for c in best_plans(res, budget_s, target_accuracy, top)]
    out = [plans_table(f"best plans, {goal}: {opt.task.model.name} on {opt.device.device['name']} "
                       f"({len(res.candidates)} plans scored in {elapsed_s:.2f} s)", rows)]
    base = [("chosen", selection_row(opt.selection, opt.chosen.binds))]
    base += [(name, selection_row(sel, with_binds(opt.replay, sel.chosen, acc).binds))
             for name, sel in opt.baselines.items() if sel is not None]
    out.append(selections_table("the chosen plan beside the plans the seed paper argues against", base,
                                opt.selection.problems))
    out += [f"[yellow]edge:[/] {line}" for line in opt.edges]
    missing = [name for name, sel in opt.baselines.items() if sel is None]
    if missing:
        why = "the task profile measured no acceptance for this draft" if acc is None else goal
        out.append(f"no plan of kind {', '.join(missing)} fits ({why})")
    out.append(frontier_chart(res.frontier(), stat, opt.chosen))
    return out


def frontier_chart(frontier, stat: str, chosen, width: int = 64, height: int = 14) -> str:
    """The Pareto frontier as text: latency across, accuracy up; '*' the chosen plan."""
    points = [c for c in frontier if c != chosen] + [chosen]
    xs = np.array([c.latency(stat) for c in points])
    ys = np.array([c.accuracy for c in points])
    x0, x1 = 0.0, xs.max() * 1.02
    y0, y1 = max(0.0, ys.min() - 0.02), min(1.0, ys.max() + 0.02)
    grid = [[" "] * width for _ in range(height)]
    for c, x, y in zip(points, xs, ys):
        col = int((x - x0) / (x1 - x0) * (width - 1))
        row = height - 1 - int((y - y0) / max(y1 - y0, 1e-9) * (height - 1))
        grid[row][col] = "*" if c == chosen else "o"
    lines = [f"accuracy against {stat} latency: the Pareto frontier ({len(frontier)} plans; * chosen)"]
    for r, line in enumerate(grid):
        label = f"{y1 - r * (y1 - y0) / (height - 1):6.1%} |" if r in (0, height // 2, height - 1) else "       |"
        lines.append(label + "".join(line))
    lines.append("       +" + "-" * width)
    lines.append(f"        0 s{'':{width - 16}}{x1:8.2f} s")
    return "\n".join(lines)


def plot_frontier(result, chosen, baselines: dict, path: Path, title: str) -> None:
    stat = result.stat
    fig = Figure(figsize=(8, 5))
    ax = fig.subplots()
    ax.scatter([c.latency(stat) for c in result.candidates], [c.accuracy for c in result.candidates], s=4,
               color="0.8", label=f"all {len(result.candidates)} plans")
    front = result.frontier()
    ax.plot([c.latency(stat) for c in front], [c.accuracy for c in front], "-o", ms=3, color="tab:blue",
            label="Pareto frontier")
    for (name, c), marker in zip(baselines.items(), "sD^v"):
        if c is not None:
            ax.scatter([c.latency(stat)], [c.accuracy], marker=marker, s=50, label=name, zorder=3)
    ax.scatter([chosen.latency(stat)], [chosen.accuracy], marker="*", s=200, color="tab:red", label="chosen", zorder=4)
    ax.set_xlabel(f"{stat} latency (s)")
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
