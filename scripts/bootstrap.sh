#!/usr/bin/env bash
# Create .venv (if missing) and install aiida-alml with its dependencies into it. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
# torch first and pinned: a bare requirement pulls a multi-GB CUDA build; this one is the CPU wheel.
TORCH_SPEC=${ALML_TORCH_SPEC:-torch==2.13.0}

if [ ! -x .venv/bin/python ]; then
    echo "==> creating .venv with $($PYTHON --version)"
    "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
if ! python -c 'import torch' 2>/dev/null; then
    echo "==> installing $TORCH_SPEC"
    python -m pip install -q "$TORCH_SPEC" 2>&1 | grep -v '^WARNING: Location' || true
fi
echo "==> installing aiida-alml and its dependencies"
python -m pip install -q -e '.[dev]' 2>&1 | grep -v '^WARNING: Location' || true
python -c 'import aiida_alml, torch, mace, aiida; print(f"aiida-core {aiida.__version__}, torch {torch.__version__}")'
