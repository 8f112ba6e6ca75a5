"""`ttsplan run` end to end on a real model: tables printed, dataset runs resume."""
import json

from conftest import run_cli


def ttsplan(*args):
    return run_cli(*args, check=True).stdout


def test_question_prints_answer_votes_and_latency(smollm2_dir):
    out = ttsplan("run", "--model", str(smollm2_dir), "-n", "3", "--max-new-tokens", "24", "--vote", "min-window",
                  "-q", "What is 2 + 3?")
    for heading in ("branches", "votes", "latency", "decode tok/s", "bandwidth achieved", "answer:"):
        assert heading in out


def test_dataset_run_resumes_after_interruption(smollm2_dir, tmp_path):
    results = tmp_path / "gsm8k.jsonl"
    args = ("run", "--model", str(smollm2_dir), "--dataset", "gsm8k", "--limit", "2", "-n", "2",
            "--max-new-tokens", "16", "--results", str(results))
    ttsplan(*args)
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["gsm8k-0", "gsm8k-1"] and rows[0]["gold"] == "18"
    # Simulate an interruption: drop the second problem and leave a line cut mid-write.
    results.write_text(json.dumps(rows[0]) + "\n" + '{"id": "gsm8k-1", "gol')
    out = ttsplan(*args)
    again = [json.loads(line) for line in results.read_text().splitlines()]
    assert [r["id"] for r in again] == ["gsm8k-0", "gsm8k-1"]
    assert again[0] == rows[0], "the finished problem is kept, not run again"
    assert "total" in out and "/2" in out and "measured against predicted" in out


def test_random_weight_timing_draws_the_given_acceptance(smollm2_dir):
    """`run --random-weights --draft --acceptance`: a timing run whose acceptance is drawn from the
    given rate, not from the random models (a draft identical to the target would accept all)."""
    config = str(smollm2_dir / "config.json")
    for rate, want in (("0", "0.00"), ("1", "1.00")):
        out = ttsplan("run", "--random-weights", config, "--draft", config, "-k", "2", "-n", "2",
                      "--max-new-tokens", "24", "--prompt-len", "32", "--acceptance", rate)
        lines = out.splitlines()
        spec = next(i for i, line in enumerate(lines) if "speculative decoding, draft length 2" in line)
        row = next(line for line in lines[spec:] if line.startswith("│"))
        assert row.split("│")[3].strip() == want, out  # rounds | tokens/round | acceptance
