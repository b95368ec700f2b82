#!/usr/bin/env bash
# The scale study (benchmarks/scale_study.py, size part) on one GPU, in one bounded run: one study process per
# width at once, since at these sizes a single process leaves the GPU mostly idle (launch-bound), with the CUDA
# tests beside them and, once they end, exact fp32 against tf32 throughput (alone on the GPU, so it is timed).
#
#   bash benchmarks/scale_study_gpu.sh OUT_DIR DATA_DIR [STUDY_LIMIT_S]
# DATA_DIR holds fashion-mnist/; writes OUT_DIR/{gpu.txt,test_cuda.txt,scale_w<width>.jsonl,throughput.jsonl,
# logs.tar.gz}. Each width's JSONL is the study's --results file for that width: merge them with
#   cat OUT_DIR/scale_w*.jsonl > benchmarks/results/scale_study_gpu.jsonl
# and report with `python benchmarks/scale_report.py --results benchmarks/results/scale_study_gpu.jsonl` (it writes
# scale_study_gpu.md and .png beside it; leave out --readme, whose block holds the CPU study).
# Widths, epochs, subsets, seeds and the base config: WIDTHS, EPOCHS, SUBSETS, SEEDS, CONFIG in the environment
# (defaults below).
set -u
out=${1:?usage: scale_study_gpu.sh OUT_DIR DATA_DIR [STUDY_LIMIT_S]}
data=${2:?usage: scale_study_gpu.sh OUT_DIR DATA_DIR [STUDY_LIMIT_S]}
limit=${3:-470}
widths=${WIDTHS:-2 1 0.5 0.25}  # the slowest first, so it starts first
epochs=${EPOCHS:-20}
subsets=${SUBSETS:-10/class 1%}
seeds=${SEEDS:-0 1 2}
runs=${RUNS:-/tmp/scale-gpu-runs}
config=${CONFIG:-benchmarks/configs/scale_gpu.toml}
mkdir -p "$out" "$out/logs" "$runs"
export PYTHONPATH="$PWD/src:$PWD/benchmarks${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 SIMCLRV2_DATA="$data"
python=${PYTHON:-python3}

{
    bash benchmarks/gpu_header.sh "$python"
    echo "widths $widths; epochs $epochs; subsets $subsets; seeds $seeds; limit $limit s"
} > "$out/gpu.txt" 2>&1

timeout "$limit" "$python" -m pytest -q -p no:cacheprovider tests/test_cuda.py > "$out/test_cuda.txt" 2>&1 &
tests=$!
for width in $widths; do
    # shellcheck disable=SC2086  # subsets and seeds are word lists
    timeout "$limit" "$python" benchmarks/scale_study.py --config "$config" --parts size \
        --widths "$width" --subsets $subsets --seeds $seeds --pretrain-epochs "$epochs" \
        --out "$runs" --results "$out/scale_w$width.jsonl" > "$out/logs/scale_w$width.log" 2>&1 &
done
wait $tests
echo "test_cuda exit $?" >> "$out/test_cuda.txt"
wait
date -u >> "$out/gpu.txt"

timeout "${BENCH_LIMIT_S:-60}" "$python" benchmarks/pretrain_throughput.py --device cuda --data-dir "$data/fashion-mnist" \
    --width 1 --precision fp32 tf32 auto --batch 1024 --head-layers 3 --steps 15 --warmup 3 \
    2> "$out/logs/throughput.log" | grep '^{' > "$out/throughput.jsonl"
tar -czf "$out/logs.tar.gz" -C "$out" logs && rm -rf "$out/logs"
