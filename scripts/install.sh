#!/usr/bin/env bash
# Create a virtual environment and install adapterdeploy with every extra needed for the quick start and
# the tests. torch must come first, as exactly torch==2.13.0 (the local CPU wheel); any other torch pin
# would pull GBs of CUDA packages.
#   VENV=path   where to create it (default .venv)
#   EXTRAS=...  extras to install (default export,adapterhub,peft,serve,ray,bench,dev)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
EXTRAS=${EXTRAS:-export,adapterhub,peft,serve,ray,bench,dev}
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
"$VENV/bin/python" -m pip install -q "torch==2.13.0" 2>&1 | grep -v "^WARNING: Location" || true
"$VENV/bin/python" -m pip install -q -e ".[$EXTRAS]" 2>&1 | grep -v "^WARNING: Location" || true
"$VENV/bin/python" -c "import torch, adapterdeploy; assert torch.__version__.startswith('2.13.0'), torch.__version__"
echo "installed adapterdeploy into $VENV (extras: $EXTRAS)"
