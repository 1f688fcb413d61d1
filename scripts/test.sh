#!/usr/bin/env bash
# Set up and run the whole test-suite (parity against live NeMo included; CUDA tests skip without a GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
python3 -m pytest -q tests "$@"
