#!/usr/bin/env bash
# The machine a GPU check ran on, for the first lines of its gpu.txt: date, GPU, driver, torch, CUDA and cuDNN, cores
# and commit. Shared by gpu_check.sh and scale_study_gpu.sh, so their reports compare line by line.
#   bash benchmarks/gpu_header.sh PYTHON
python=${1:-python3}
date -u
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1
"$python" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn',
torch.backends.cudnn.version(), torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')"
nproc
git rev-parse --short HEAD 2>/dev/null
