#!/usr/bin/env bash
# Sets everything up (scripts/setup.sh) and runs the main job: `medclass demo`, offline, on generated DICOM.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=8589934592
exec .venv/bin/medclass demo "$@"
