"""`ttsplan profile`, `profile show`, `optimize` and `run --plan` end to end on the real smollm2-135m:
a small real profile, a killed run that resumes, damaged and mismatched profiles, bad input."""
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import run_cli
from ttsplan.errors import TTSPlanError
from ttsplan.measure.schema import load_device_profile, load_task_profile
from ttsplan.measure.samples import load_store
from ttsplan.measure.step_cost import default_grid, measured_keys, plan_tasks

SMALL = ["--quick", "--branches", "1,4,8", "--max-new-tokens", "48"]


def ttsplan(*args, check=True, timeout=900):
    return run_cli(*args, check=check, timeout=timeout)


def one_line_error(proc, *words):
    err = proc.stderr.strip()
    assert proc.returncode != 0 and len(err.splitlines()) == 1 and err.startswith("error:"), err
    for w in words:
        assert w in err, err
    return err


@pytest.fixture(scope="module")
def profiles(tmp_path_factory, smollm2_dir):
    """A small real profile: quick grid, two GSM8K problems, N_max = 4."""
    out = tmp_path_factory.mktemp("profiles")
    ttsplan("profile", "--model", smollm2_dir, *SMALL, "--dataset", "gsm8k", "--limit", "2", "--n-max", "4",
            "--out-dir", out)
    device = next((out / "device").glob("*.yaml"))
    (task,) = (out / "tasks").glob(f"{smollm2_dir.name}-gsm8k-cpu-*/task.yaml")
    return out, device, task


def test_small_real_profile_loads_and_shows(profiles):
    out, device_path, task_path = profiles
    device, task = load_device_profile(device_path), load_task_profile(task_path)
    assert device.model.name.endswith("smollm2-135m") and device.dtype == "float32" and device.device["type"] == "cpu"
    # no draft profiled: no verification (q > 1) measured, since nothing could plan one
    assert {(s.b, s.q) for s in device.steps} == {(1, 1), (4, 1), (8, 1)} and device.prefill and device.loop_overhead
    assert {(c.b, c.moved) for c in device.compaction} >= {(4, 0), (4, 3), (8, 7)}
    assert all(s.p10_ms <= s.ms <= s.p90_ms for s in device.steps)
    assert task.n_max == 4 and [p.id for p in task.problems] == ["gsm8k-0", "gsm8k-1"]
    assert all(len(p.branches) == 4 and all(1 <= b.length <= 48 for b in p.branches) for p in task.problems)
    for field in ("schema", "device", "software", "date", "grid"):
        assert field in yaml.safe_load(device_path.read_text())
    shown = ttsplan("profile", "show", device_path).stdout
    for heading in ("decode step ms", "prefill", "step-cost model", "held-out error"):
        assert heading in shown
    shown = ttsplan("profile", "show", task_path).stdout
    for heading in ("accuracy (95% interval)", "N=4", "majority", "deepconf", "branch lengths"):
        assert heading in shown
    assert not list(out.rglob("*.tmp")), "nothing half-written is left"


def wait_for(predicate, proc, timeout=300):
    t0 = time.time()
    while not predicate():
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else "exited early"
        assert time.time() - t0 < timeout, "timed out waiting"
        time.sleep(0.2)


def count_steps(path: Path) -> int:
    try:
        return len(yaml.safe_load(path.read_text()).get("steps", []))
    except (OSError, yaml.YAMLError, AttributeError):
        return 0


def test_killed_run_resumes_and_measures_only_the_missing_points(tmp_path, smollm2_dir):
    args = [sys.executable, "-m", "ttsplan", "profile", "--model", str(smollm2_dir), *SMALL, "--out-dir", str(tmp_path)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: any(count_steps(p) >= 4 for p in (tmp_path / "device").glob("*.yaml")), proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    (path,) = (tmp_path / "device").glob("*.yaml")
    grid = replace(default_grid(torch.device("cpu"), quick=True), branches=(1, 4, 8))
    planned = set(plan_tasks(grid, 8192, None, False))
    before = load_device_profile(path)
    assert 4 <= len(before.steps) and measured_keys(before) < planned
    ttsplan(*args[3:])
    after = load_device_profile(path)
    assert after.steps[:len(before.steps)] == before.steps, "points measured before the kill are kept as they were"
    keys = [("step", s.b, s.q, s.prompt, s.own) for s in after.steps]
    assert len(keys) == len(set(keys)), "no point is measured twice"
    assert measured_keys(after) == planned
    assert not list(tmp_path.rglob("*.tmp"))


def test_killed_sampling_resumes_where_it_stopped(tmp_path, smollm2_dir):
    args = ["profile", "--model", smollm2_dir, "--skip-device", "--dataset", "gsm8k", "--limit", "3", "--n-max", "3",
            "--max-new-tokens", "48", "--samples-only", "--out-dir", tmp_path]

    def store():
        try:
            (folder,) = (tmp_path / "tasks").glob("*/samples")
            return load_store(folder)
        except (ValueError, TTSPlanError):
            return None
    proc = subprocess.Popen([sys.executable, "-m", "ttsplan", *map(str, args)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "TTSPLAN_PART_SECONDS": "0"})
    wait_for(lambda: (s := store()) is not None and len(s.problems) >= 1, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = store()
    assert 1 <= len(first.problems) < 3
    ttsplan(*args)
    final = store()
    assert [p["id"] for p in final.problems] == ["gsm8k-0", "gsm8k-1", "gsm8k-2"]
    assert final.problems[:len(first.problems)] == first.problems, "sampled problems are not sampled again"
    assert np.array_equal(final.tokens[:len(first.tokens)], first.tokens)
    folder = tmp_path / "tasks" / f"{smollm2_dir.name}-gsm8k-cpu-{torch.get_num_threads()}t"
    names = sorted(f.name for f in (folder / "samples").iterdir())
    assert names[0] == "meta.json" and len(names) >= 3 and all(n.startswith("part-") for n in names[1:]), names
    assert not (folder / "task.yaml").exists(), "--samples-only does not grade"
    assert final.meta["sampled_on"]["type"] == "cpu" and final.meta["sampled_on"]["dtype"] == "float32"
    ttsplan("profile", "grade", folder)
    task = load_task_profile(folder / "task.yaml")
    assert task.limit == 3 and all(len(p.branches) == 3 for p in task.problems)
    assert [[b.length for b in p.branches] for p in task.problems] == final.lengths.tolist()
    assert task.sampled_on == final.meta["sampled_on"]
    assert "sampled on" in ttsplan("profile", "show", folder / "task.yaml").stdout


def damaged(tmp_path, source: Path, text: str, name="profile.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_damaged_profiles_are_refused_with_one_line(profiles, tmp_path):
    _, device_path, task_path = profiles
    text = device_path.read_text()
    cases = [
        (text[:text.rindex("\n", 0, len(text) // 2)], ["is missing", "truncated"]),    # truncated at a line
        (text[:text.index("{", len(text) // 2) + 3], ["not valid YAML at line"]),      # cut inside a {...}
        ("\x00\x01garbage: [unclosed", ["not valid YAML"]),                              # corrupt
        (text.replace("ttsplan.device/1", "ttsplan.device/0"), ["field 'schema'", "ttsplan.device/0"]),
        (re.sub(r" ms: [0-9.]+", " ms: fast", text, count=1), ["steps[0].ms", "should be a number"]),
        ("model: {name: x}\n", ["field 'schema' is missing"]),
    ]
    for i, (bad, words) in enumerate(cases):
        path = damaged(tmp_path, device_path, bad, f"bad{i}.yaml")
        one_line_error(ttsplan("profile", "show", path, check=False), str(path), *words)
    task_text = task_path.read_text()
    path = tmp_path / "t" / "task.yaml"
    shutil.copytree(task_path.parent / "samples", path.parent / "samples")
    path.write_text(task_text)
    (part,) = (path.parent / "samples").glob("part-*.npz")
    part.write_bytes(part.read_bytes() + b"x")
    one_line_error(ttsplan("profile", "show", path, check=False), "samples_sha256")


def test_mismatched_profiles_are_refused(profiles, tmp_path):
    _, device_path, task_path = profiles
    other = damaged(tmp_path, device_path, device_path.read_text().replace(
        load_device_profile(device_path).model.shape, "0123456789ab"), "other.yaml")
    err = one_line_error(ttsplan("optimize", "--device-profile", other, "--task-profile", task_path, "--budget", "10s",
                                 check=False), "the profiles disagree", str(task_path), str(other))
    assert "0123456789ab" in err


def test_optimize_then_run_the_plan(profiles, tmp_path):
    _, device_path, task_path = profiles
    plan = tmp_path / "plan.yaml"
    png = tmp_path / "frontier.png"
    out = ttsplan("optimize", "--device-profile", device_path, "--task-profile", task_path, "--budget", "60s",
                  "--plot", png, "--out", plan).stdout
    for heading in ("best plans", "compute-optimal", "branches only", "Pareto frontier", "what binds"):
        assert heading in out
    assert png.stat().st_size > 10_000 and plan.is_file()
    impossible = one_line_error(ttsplan("optimize", "--device-profile", device_path, "--task-profile", task_path,
                                        "--budget", "1ms", "--out", tmp_path / "x.yaml", check=False),
                                "no plan fits a budget of 0.001 s", "the fastest plan (N=", ") takes ")
    assert not (tmp_path / "x.yaml").exists(), impossible
    run = ttsplan("run", "--plan", plan, "-q", "What is 2 + 3?").stdout
    assert "predicted s (mean)" in run and "answer:" in run
    # A plan made for another device is refused, unless --force.
    data = yaml.safe_load(plan.read_text())
    data["device"]["name"] = "NVIDIA H100 80GB HBM3"
    plan.write_text(yaml.safe_dump(data))
    one_line_error(ttsplan("run", "--plan", plan, "-q", "1+1?", check=False), "NVIDIA H100", "--force")
    assert "answer:" in ttsplan("run", "--plan", plan, "--force", "-q", "What is 2 + 3?").stdout


def test_bad_input(tmp_path, smollm2_dir):
    one_line_error(ttsplan("profile", "--model", "llama-99b", "--out-dir", tmp_path, check=False), "unknown model")
    one_line_error(ttsplan("profile", "--model", smollm2_dir, "--dataset", "gsm9k", "--out-dir", tmp_path, check=False),
                   "unknown dataset 'gsm9k'")
    one_line_error(ttsplan("profile", "--model", smollm2_dir, "--dataset", "gsm8k", "--n-max", "0", "--skip-device",
                           "--out-dir", tmp_path, check=False), "--n-max must be at least 1")
    # 10^6 branches of KV cannot fit: refused before anything is allocated or written.
    proc = ttsplan("profile", "--model", smollm2_dir, "--quick", "--branches", "1,1000000", "--out-dir", tmp_path,
                   check=False)
    one_line_error(proc, "b=1000000", "GiB of KV cache", "is free")
    assert not list((tmp_path / "device").glob("*.yaml")) if (tmp_path / "device").exists() else True
    one_line_error(ttsplan("optimize", "--device-profile", tmp_path / "none.yaml", "--task-profile",
                           tmp_path / "none.yaml", "--budget", "10s", check=False), "no such profile")
    one_line_error(ttsplan("optimize", "--device-profile", tmp_path / "a.yaml", "--task-profile", tmp_path / "b.yaml",
                           "--budget", "ten seconds", check=False), "cannot read the budget")
