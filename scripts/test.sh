#!/usr/bin/env bash
# Sets everything up (scripts/setup.sh) and runs the whole test suite, slow tests included.
# Real-data tests read ../shared/data (or $MEDCLASS_DATA); they skip with a reason when it is absent,
# and fail instead when CI=true.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/system-deps.sh
export MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=8589934592
exec .venv/bin/python -m pytest -q --durations=15 "$@"
