#!/usr/bin/env bash
# Jobs on the GPU machine with the real models, across device calls (each call within 30 s of the last,
# or the machine and its /tmp are gone):
#   bash benchmarks/gpu_job.sh piece PATH...  move carried pieces (GGUF pieces, pieces/wheels: gguf,
#                                             accelerate, math-verify and their pure-Python deps, and
#                                             pieces/data: the datasets' .jsonl from $TTSPLAN_HOME/data) to /tmp
#   bash benchmarks/gpu_job.sh start JOB      a job below, in the background
#   bash benchmarks/gpu_job.sh fetch S        wait up to S s for new files, copy up to 7 to $OUT (+ the log)
# Jobs:
#   calibrate     join and install the 1.5b (ttsplan models pull checks its sha256 and converts it), time
#                 sampling one problem at a time against the refilled batch, install the 0.5b once its
#                 pieces are all here, then sample the task profiles (--samples-only: graded on the CPU)
#   head-to-head  the 1.5b; 64 branches on each of the first 300 GSM8K test problems (the held-out
#                 samples, graded on the CPU), then every plan of benchmarks/results/head_to_head/plans/gsm8k
#                 run one request at a time on the first 40 (benchmarks/head_to_head.py run)
#   head-to-head-math  the 1.5b and the 0.5b draft; every MATH-500 plan for this card (H200 or H100) run on
#                 the first $H2H_LIMIT problems (40); $H2H_ONLY: only these plans (comma-separated stems)
# The GGUF pieces are `split -b 58000000` of the assembled files, named q15.NN and q05.NN
# (benchmarks/make_pieces.sh builds all of pieces/ on the CPU machine).  The job runs
# from a copy of the repository: each device call re-syncs the working tree, and a job started from it
# saw a module missing mid-sync (2026-12-02).
set -u
C=/tmp/cal
export TTSPLAN_HOME=$C/home PYTHONPATH=.:$C/pylib HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 COLUMNS=160
GGUF15=qwen2.5-coder-1.5b-instruct-q4_k_m.gguf
GGUF05=qwen2.5-coder-0.5b-instruct-q4_k_m.gguf
card() {  # the device profile's card for this GPU: plans are chosen for each (benchmarks/head_to_head.py)
    nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H100 && echo h100 || echo h200
}
join() {  # join pieces $1.* into the model's downloads folder, where `models pull` looks first
    mkdir -p $C/home/downloads/$2
    cat $C/pieces/$1.* > $C/home/downloads/$2/$3
    python -m ttsplan models pull $2
}
sample() {  # model dataset limit n tokens [extra args]
    echo "=== $1 $2 $3 x $4, $5 tokens $(date +%T)"
    python -m ttsplan profile --model "$1" --skip-device --dataset "$2" --limit "$3" --n-max "$4" \
        --max-new-tokens "$5" --device cuda --samples-only --out-dir $C/prof "${@:6}"
    echo "=== done $1 $2 $(date +%T)"
}
case "$1" in
piece)
    shift; mkdir -p $C/pieces; for f in "$@"; do mv "$f" $C/pieces/; done; ls $C/pieces | wc -l ;;
start)
    mkdir -p $C/prof $C/out $C/home/data
    rm -rf $C/src $C/done && cp -r . $C/src
    cd $C/src && setsid nohup bash benchmarks/gpu_job.sh "$2" >$C/log 2>&1 < /dev/null &
    ;;
setup)
    nvidia-smi --query-gpu=name,memory.total --format=csv
    cp $C/pieces/data/*.jsonl $C/home/data/  # no package index here: dataset_file finds them in place
    python3 -m pip install --no-index --no-deps --target $C/pylib -q $C/pieces/wheels/*.whl
    echo "=== pull 1.5b $(date +%T)"; join q15 qwen2.5-coder-1.5b $GGUF15
    ;;
head-to-head)
    bash benchmarks/gpu_job.sh setup
    sample qwen2.5-coder-1.5b gsm8k 300 64 512
    echo "=== runs $(date +%T)"
    python benchmarks/head_to_head.py run --task gsm8k --limit 40 --device cuda --out $C/out
    touch $C/done
    ;;
head-to-head-math)  # the MATH-500 plans, one request at a time on the first 40 (held-out samples: earlier)
    bash benchmarks/gpu_job.sh setup
    if [ "${Q05_PIECES:-9}" -gt 0 ]; then  # Q05_PIECES=0: no draft (H2H_ONLY names no draft plan)
        while [ "$(ls $C/pieces/q05.* 2>/dev/null | wc -l)" -lt "${Q05_PIECES:-9}" ]; do sleep 2; done
        echo "=== pull 0.5b $(date +%T)"; join q05 qwen2.5-coder-0.5b $GGUF05
    fi
    echo "=== runs $(date +%T)"
    python benchmarks/head_to_head.py run --task math500 --card "$(card)" --limit "${H2H_LIMIT:-40}" --only "${H2H_ONLY:-}" --device cuda --out $C/out
    touch $C/done
    ;;
held-out-math)  # after head-to-head, on the same machine: the first plan again through `ttsplan run`
    # itself (its first requests were the process's first of their shapes), then MATH-500's held-out samples
    python -m ttsplan run --plan benchmarks/results/head_to_head/plans/gsm8k/N14_mean-logprob_cap368_earlystop.yaml \
        --dataset gsm8k --limit 40 --device cuda --results $C/out/rerun-gsm8k-N14_mean-logprob_cap368_earlystop.jsonl
    sample qwen2.5-coder-1.5b math500 200 64 1024
    touch $C/done
    ;;
calibrate)
    bash benchmarks/gpu_job.sh setup
    echo "=== bench $(date +%T)"
    python benchmarks/sampling_throughput.py --model qwen2.5-coder-1.5b --dataset math-train --offset 7000 \
        --problems 16 --n 64 --max-new-tokens 1024 --rows 512 --device cuda --out $C/out/sampling_throughput_h200.json
    while [ "$(ls $C/pieces/q05.* 2>/dev/null | wc -l)" -lt "${Q05_PIECES:-9}" ]; do sleep 2; done
    echo "=== pull 0.5b $(date +%T)"; join q05 qwen2.5-coder-0.5b $GGUF05
    sample qwen2.5-coder-1.5b math-train 500 64 1024 --draft qwen2.5-coder-0.5b
    sample qwen2.5-coder-1.5b gsm8k-train 500 64 512
    sample qwen2.5-coder-0.5b gsm8k-train 500 64 512
    # the CPU profiles' problems, for how far fp32 on the CPU and bf16 on the GPU agree
    sample qwen2.5-coder-1.5b gsm8k 32 16 512
    sample qwen2.5-coder-0.5b gsm8k 64 16 512
    sample qwen2.5-coder-1.5b math500 16 16 512
    touch $C/done
    ;;
fetch)
    end=$(( $(date +%s) + $2 ))
    touch $C/fetched
    new() {  # files not yet fetched (or changed since), oldest first
        for f in $(cd $C && ls -tr prof/tasks/*/samples/* out/* 2>/dev/null); do
            key="$f:$(stat -c %s:%Y $C/$f)"; grep -qxF "$key" $C/fetched || echo "$f"
        done
    }
    while [ ! -f $C/done ] && [ "$(date +%s)" -lt $end ] && [ "$(new | wc -l)" -lt 7 ]; do sleep 5; done
    for f in $(new | head -7); do
        cp $C/$f "$OUT/$(echo "$f" | sed 's#^prof/tasks/##; s#/samples/#__#; s#^out/#out__#')"
        echo "$f:$(stat -c %s:%Y $C/$f)" >> $C/fetched
    done
    cp $C/log $OUT/log.txt
    grep "===" $C/log; tail -c 1200 $C/log | tr '\r' '\n' | tail -6
    echo "left to fetch: $(new | wc -l)"; [ -f $C/done ] && echo JOB DONE
    ;;
esac
