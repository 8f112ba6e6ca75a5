#!/usr/bin/env bash
# Build on this CPU machine what benchmarks/gpu_job.sh carries to the GPU machine, in pieces/ (add
# `pieces/` to .git/info/exclude): the 1.5b GGUF (q15.NN; with `--draft`, the 0.5b too: q05.NN) as
# `split -b 58000000` of the file `ttsplan models pull` assembles and checks (ttsplan.assets.fetch_gguf),
# pieces/wheels (gguf, accelerate, math-verify and its pure-Python deps) and pieces/data (the held-out
# sets' .jsonl, from ttsplan.assets.dataset_file).  Needs the package installed (`pip install -e .`).
# About a minute here (2026-12-07); the pieces do not survive a fresh checkout, so build them before the
# first device call.
set -eu
P=$PWD/pieces
export TTSPLAN_HOME=$P/.home
mkdir -p $P/wheels $P/data
python - "$@" <<'PY'
import sys
from rich.progress import Progress
from ttsplan.assets import dataset_file, fetch_gguf
with Progress() as progress:
    for name in ["qwen2.5-coder-1.5b"] + ["qwen2.5-coder-0.5b"] * ("--draft" in sys.argv):
        fetch_gguf(name, progress)
for dataset in ("gsm8k", "math500"):
    dataset_file(dataset)
PY
split -b 58000000 -d $TTSPLAN_HOME/downloads/qwen2.5-coder-1.5b/*.gguf $P/q15.
if [ "${1:-}" = --draft ]; then split -b 58000000 -d $TTSPLAN_HOME/downloads/qwen2.5-coder-0.5b/*.gguf $P/q05.; fi
cp $TTSPLAN_HOME/data/gsm8k.jsonl $TTSPLAN_HOME/data/math500.jsonl $P/data/
pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation py --platform any -q \
    -d $P/wheels gguf accelerate "math-verify>=0.8" latex2sympy2_extended antlr4-python3-runtime==4.13.2
rm -rf $TTSPLAN_HOME
ls $P
