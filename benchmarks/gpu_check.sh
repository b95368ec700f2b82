#!/usr/bin/env bash
# The GPU checks in one run, for a machine with a CUDA device and a torch that sees it:
#   1. the CUDA tests (tests/test_cuda.py: CPU parity of loss, LARS, network and augmentation; the pipeline and
#      torchrun/NCCL on the GPU);
#   2. `simclrv2 info` for the demo on the GPU; pretraining throughput (benchmarks/pretrain_throughput.py --device
#      cuda): the matmul peak, ResNet-18 at 28 px (fashion_mnist_gpu's network and batch) in bf16, exact fp32 and
#      tf32, and the paper's bigger networks at 224 px;
#   3. `simclrv2 pipeline --config demo` on the GPU, with its wall time and final table.
# Each part has its own time limit, so a slow or failing part leaves the others' results.
#
#   bash benchmarks/gpu_check.sh OUT_DIR FASHION_MNIST_DIR
# writes OUT_DIR/{gpu.txt,test_cuda.txt,info.txt,throughput.jsonl,throughput.log,demo.log,demo-summary.json}.
set -u
out=${1:?usage: gpu_check.sh OUT_DIR FASHION_MNIST_DIR}
data=${2:?usage: gpu_check.sh OUT_DIR FASHION_MNIST_DIR}
mkdir -p "$out"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python=${PYTHON:-python3}

bash benchmarks/gpu_header.sh "$python" > "$out/gpu.txt" 2>&1

timeout 300 "$python" -m pytest -q -p no:cacheprovider tests/test_cuda.py > "$out/test_cuda.txt" 2>&1
echo "test_cuda exit $?" >> "$out/test_cuda.txt"

timeout 120 "$python" -m simclrv2.cli info --config demo --run.device cuda --data.data_dir "$data" \
    > "$out/info.txt" 2>&1
echo "info exit $?" >> "$out/info.txt"

bench() {  # one invocation of the throughput benchmark, its JSON lines appended
    timeout 240 "$python" benchmarks/pretrain_throughput.py --device cuda --data-dir "$data" --warmup 3 "$@" \
        2>> "$out/throughput.log" | tee -a "$out/throughput.log" | grep '^{' >> "$out/throughput.jsonl"
}
bench --width 1 --precision auto fp32 tf32 --batch 1024 --head-layers 3 --steps 20 --gemm-peak
bench --width 1 --precision auto --batch 1024 --head-layers 3 --steps 20 --no-cudnn-benchmark
bench --depth 50 --width 1 --image-size 224 --batch 256 --head-layers 3 --steps 10
bench --depth 50 --width 2 --sk-ratio 0.0625 --image-size 224 --batch 128 --head-layers 3 --steps 10
bench --depth 152 --width 3 --sk-ratio 0.0625 --image-size 224 --batch 32 --head-layers 3 --steps 10

start=$(date +%s)
timeout "${DEMO_LIMIT_S:-240}" "$python" -m simclrv2.cli pipeline --config demo --run.device cuda \
    --data.data_dir "$data" --run.progress false --run-dir "$out/demo-run" > "$out/demo.log" 2>&1
echo "demo exit $? after $(( $(date +%s) - start )) s" >> "$out/demo.log"
cp "$out/demo-run/summary.json" "$out/demo-summary.json" 2>/dev/null
rm -rf "$out/demo-run"  # checkpoints: too large to bring back, and the summary holds the numbers
