"""Shared fixtures: the real models from ASSETS.md, pulled (and cached under TTSPLAN_HOME) on first use."""
import os

import pytest

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
