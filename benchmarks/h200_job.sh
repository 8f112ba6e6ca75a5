#!/usr/bin/env bash
# The H200 profiling job, run on the device machine in the background so that it outlives one call:
#   bash benchmarks/h200_job.sh start     profiles of every shipped shape, then plans drawn at random
#   bash benchmarks/h200_job.sh wait S    wait up to S seconds, then copy what is done to $OUT/h200.tar.gz
# Stages run in priority order under one deadline (JOB_SECONDS); profiles resume, so a stage cut off by
# the deadline keeps what it measured.
set -u
R=/tmp/h200
case "$1" in
start)
    mkdir -p $R/profiles $R/validation
    setsid nohup bash "$0" run >$R/log 2>&1 < /dev/null &
    ;;
run)
    export PYTHONPATH=. PYTHONUNBUFFERED=1 COLUMNS=160
    deadline=$(( $(date +%s) + ${JOB_SECONDS:-1400} ))
    left() { echo $(( deadline - $(date +%s) )); }
    prof() {
        [ "$(left)" -gt 20 ] || return
        echo "=== profile $1 ${2:-} $(date +%T)"
        timeout "$(left)" python -m ttsplan profile --random-weights "$1" ${2:+--draft "$2"} --device cuda \
            --out-dir $R/profiles
        echo "=== done $1 $(date +%T)"
    }
    val() {
        local s=$(( $(left) - 30 )); [ "$s" -gt "$2" ] && s=$2
        [ "$s" -gt 15 ] || return
        echo "=== validate $1 ${3:-} ${s}s $(date +%T)"
        timeout $(( s + 120 )) python benchmarks/validate_latency.py measure --shape "$1" ${3:+--draft "$3"} \
            --seconds "$s" --out $R/validation/$1.json
    }
    nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv
    prof qwen2.5-1.5b qwen2.5-0.5b; val qwen2.5-1.5b 150 qwen2.5-0.5b
    prof qwen2.5-7b qwen2.5-0.5b; val qwen2.5-7b 120 qwen2.5-0.5b
    prof qwen2.5-0.5b; prof qwen2.5-3b; prof qwen2.5-14b
    prof qwen2.5-32b qwen2.5-0.5b
    val qwen2.5-32b 60 qwen2.5-0.5b; val qwen2.5-0.5b 40; val qwen2.5-3b 40; val qwen2.5-14b 40
    touch $R/done
    ;;
wait)
    end=$(( $(date +%s) + $2 ))
    while [ ! -f $R/done ] && [ "$(date +%s)" -lt $end ]; do sleep 5; done
    tar czf "$OUT/h200.tar.gz" -C $R . 2>/dev/null
    grep "===" $R/log; tail -c 1500 $R/log | tr '\r' '\n' | tail -8
    [ -f $R/done ] && echo JOB DONE
    ;;
esac
