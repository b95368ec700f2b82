#!/usr/bin/env bash
# Creates the virtual environment and installs simclrv2 into it (editable) with the extras EXTRAS names:
# "report,tensorboard" for running it (make demo), "dev" for the tests (make test: pytest, ruff and every
# extra the tests exercise, TensorFlow's 1.4 GB among them). A torch already importable from the system Python
# (a GPU build, say) is reused; otherwise TORCH_SPEC is installed (the CPU wheel by default).
set -euo pipefail
PYTHON=${1:-python3}
VENV=${2:-.venv}
TORCH_SPEC=${3:-torch==2.13.0}
EXTRAS=${4:-dev}
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv --system-site-packages "$VENV"
PY="$VENV/bin/python"
if ! "$PY" -c "import torch" 2>/dev/null; then
  echo "installing $TORCH_SPEC"
  "$PY" -m pip install -q "$TORCH_SPEC"
fi
"$PY" -m pip install -q -e ".[$EXTRAS]"
"$PY" -c "import torch, simclrv2; print('simclrv2 ready: torch', torch.__version__)"
