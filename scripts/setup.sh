#!/usr/bin/env bash
# Creates ./.venv (if needed) and installs medclass with everything it needs. Idempotent; safe to re-run.
# Torch 2.14.1 / torchvision 0.29.1 are named explicitly: on the team's machines pip serves them from local
# disk; elsewhere pip downloads them. MEDCLASS_PYTHON picks the interpreter (default python3, needs 3.11+).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${MEDCLASS_PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.medclass-installed
want="$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
  .venv/bin/python -m pip install -q -e ".[dev,onnx,parquet,ray,benchmark,pacs]"
  echo "$want" > "$stamp"
fi
