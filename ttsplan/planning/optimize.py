"""`ttsplan optimize`: two profiles in, the best plan (and the plans it beats) out.

device profile -> fitted cost model ┐
task profile   -> accuracy samples  ┴-> replay and score every plan -> choose -> Plan
Planning is offline (plan for an H100 from a laptop): the profiles are only checked against each
other, never against this machine.
"""
from dataclasses import dataclass, replace
from pathlib import Path

from ttsplan.errors import TTSPlanError
from ttsplan.measure.schema import Acceptance, DeviceProfile, TaskProfile, load_device_profile, load_task_profile
from ttsplan.planning.latency import Decoding, DeviceCosts, Replay
from ttsplan.planning.plan import Plan
from ttsplan.planning.search import Candidate, SearchResult, baselines, choose, search, with_binds
from ttsplan.planning.selection import Selection
from ttsplan.planning.task_arrays import TaskArrays, load_task_arrays


def matching_acceptance(device: DeviceProfile, task: TaskProfile) -> Acceptance | None:
    """The task profile's acceptance for the device profile's draft shape at the sampling temperature."""
    if device.draft is None:
        return None
    temp = task.sampling["temperature"]
    for a in task.acceptance:
        if a.draft.shape == device.draft.model.shape and abs(a.temperature - temp) < 1e-9:
            return a
    return None


def check_agree(device: DeviceProfile, task: TaskProfile, device_path: Path, task_path: Path) -> None:
    if device.model.shape != task.model.shape:
        raise TTSPlanError(f"the profiles disagree: {task_path} is for {task.model.name} (shape {task.model.shape}) "
                           f"but {device_path} is for {device.model.name} (shape {device.model.shape})")


def load_profiles(device_path: Path, task_path: Path):
    device, task = load_device_profile(device_path), load_task_profile(task_path)
    check_agree(device, task, device_path, task_path)
    return device, task


@dataclass
class Searched:
    """Both profiles loaded and every plan scored: what any number of budgets are then chosen from."""
    device: DeviceProfile
    task: TaskProfile
    costs: DeviceCosts
    arrays: TaskArrays
    replay: Replay
    result: SearchResult
    acceptance: Acceptance | None
    device_path: Path
    task_path: Path


@dataclass
class Optimized(Searched):
    """A search with one budget's (or target's) choice made."""
    selection: Selection        # the chosen plan, its accuracy corrected for the choosing
    chosen: Candidate           # selection.chosen, with what binds it
    baselines: dict             # name -> Selection | None
    plan: Plan
    margin: str                 # what the chosen plan's p90 keeps beyond the model's own prediction
    edges: list[str]            # where the chosen plan sits on the edge of what the profile measured


def search_profiles(device_path: Path, task_path: Path, stat: str = "p90") -> Searched:
    if stat not in ("p90", "mean"):
        raise TTSPlanError(f"--stat is p90 or mean, not {stat!r}")
    device, task = load_profiles(device_path, task_path)
    costs = DeviceCosts.fit(device)
    arrays = load_task_arrays(task, task_path)
    acceptance = matching_acceptance(device, task)
    replay = Replay(costs, arrays, on_gpu=device.device["type"] == "cuda")
    ks = sorted({c.k for c in device.draft.round_overhead}) if device.draft else []
    # vLLM's offline generate returns a request's branches together: no early stop there
    result = search(replay, acceptance.per_position if acceptance else None, draft_lengths=ks, stat=stat,
                    early_stop=device.backend != "vllm")
    return Searched(device, task, costs, arrays, replay, result, acceptance, Path(device_path), Path(task_path))


def optimize(device_path: Path, task_path: Path, budget_s: float | None = None,
             target_accuracy: float | None = None, stat: str = "p90") -> Optimized:
    if (budget_s is None) == (target_accuracy is None):
        raise TTSPlanError("give exactly one of --budget or --target-accuracy")
    return plan_for(search_profiles(device_path, task_path, stat), budget_s, target_accuracy)


def plan_for(s: Searched, budget_s: float | None = None, target_accuracy: float | None = None) -> Optimized:
    """The chosen plan (and its baselines) of a search, for one budget or target accuracy."""
    device, task, costs, arrays, replay, result, acceptance = (s.device, s.task, s.costs, s.arrays, s.replay,
                                                               s.result, s.acceptance)
    device_path, task_path, stat = s.device_path, s.task_path, result.stat
    selection = choose(result, budget_s, target_accuracy)
    chosen = with_binds(replay, selection.chosen, acceptance and acceptance.per_position)
    plan = Plan(model=task.model.name, branches=chosen.branches, vote=chosen.vote, max_new_tokens=chosen.cap,
                early_stop=chosen.early_stop, draft=acceptance.draft.name if chosen.draft_len else None,
                draft_len=chosen.draft_len, temperature=task.sampling["temperature"], top_p=task.sampling["top_p"],
                top_k=task.sampling["top_k"], dataset=task.dataset,
                device={"name": device.device["name"], "type": device.device["type"], "backend": device.backend,
                        "shape": device.model.shape, "profile": str(device_path)},
                predicted={"accuracy": round(selection.accuracy, 4),
                           "interval": [round(selection.low, 4), round(selection.high, 4)],
                           "accuracy_naive": round(selection.naive, 4), "optimism": round(selection.optimism, 4),
                           "calibration_problems": selection.problems,
                           "mean_s": round(chosen.mean_s, 4), "p90_s": round(chosen.p90_s, 4), "stat": stat,
                           "budget_s": budget_s, "target_accuracy": target_accuracy, "task_profile": str(task_path)})
    return Optimized(**vars(s), selection=selection, chosen=chosen, baselines=baselines(result, selection, budget_s),
                     plan=plan, margin=margin_kept(device, costs, arrays, chosen, acceptance),
                     edges=edges(chosen, arrays))


def edges(chosen: Candidate, arrays: TaskArrays) -> list[str]:
    """Where the chosen plan sits on the edge of what the task profile measured, and what more samples
    would settle: planning beyond N_max branches or beyond the sampling limit is not possible."""
    out = []
    if chosen.branches == arrays.n_max:
        out.append(f"the chosen plan uses all N_max = {arrays.n_max} sampled branches: more branches may be "
                   f"better within the budget; sample more per problem (`profile --n-max`) to plan beyond it")
    cut = float((arrays.lengths >= arrays.max_new_tokens).mean())
    if chosen.cap == arrays.max_new_tokens and cut > 0.01:
        out.append(f"the chosen plan runs to the sampling limit ({arrays.max_new_tokens} tokens), where {cut:.0%} "
                   f"of the sampled branches were cut off: a longer cap may be better; sample with a larger "
                   f"`--max-new-tokens` to plan beyond it")
    return out


def margin_kept(device: DeviceProfile, costs: DeviceCosts, arrays: TaskArrays, chosen: Candidate,
                acceptance: Acceptance | None) -> str:
    """One line: how far the chosen plan's p90 (widened by the model's validated error) lies beyond the
    model's own p90, and on what validation."""
    v = device.validation
    if not v:
        return "p90 not widened: the device profile stores no validation on plans off the grid"
    bare = Replay(replace(costs, error_log_mean=0.0, error_log_sd=0.0), arrays, on_gpu=device.device["type"] == "cuda")
    dec = Decoding(chosen.draft_len, tuple(acceptance.per_position)) if chosen.draft_len else Decoding()
    lat = bare.simulate(chosen.branches, chosen.cap, dec, [chosen.vote] if chosen.early_stop else ())
    p90 = lat[chosen.vote if chosen.early_stop else None].p90_s
    return (f"p90 {chosen.p90_s:.3f} s keeps a margin of {chosen.p90_s / p90 - 1:+.1%} over the model's own "
            f"{p90:.3f} s: widened by its error on {v['requests']} requests off the grid ({v['device']}, "
            f"{v['date']}: log(measured / predicted) {v['log_ratio_mean']:+.3f} +- {v['log_ratio_sd']:.3f})")
