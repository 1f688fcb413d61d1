#!/usr/bin/env bash
# Set up and run the whole test-suite (parity against live NeMo included; CUDA tests skip without a GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# the project virtual environment that setup.sh made, unless one is active
[ -n "${VIRTUAL_ENV:-}" ] || [ ! -x .venv/bin/python3 ] || PATH="$PWD/.venv/bin:$PATH"
# the Ray Serve tests are a step of their own: scripts/test_ray.sh
python3 -m pytest -q -m "not ray" tests "$@"
