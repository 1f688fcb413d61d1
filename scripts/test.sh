#!/usr/bin/env bash
# Set up and run the whole test-suite (parity against live NeMo included; CUDA tests skip without a GPU), then the
# Ray Serve tests, a step of their own (scripts/test_ray.sh: it installs the `ray` extra and starts a local cluster).
# Arguments go to pytest (a selection), and then the Ray step is left out.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# the project virtual environment that setup.sh made, unless one is active
[ -n "${VIRTUAL_ENV:-}" ] || [ ! -x .venv/bin/python3 ] || PATH="$PWD/.venv/bin:$PATH"
python3 -m pytest -q -m "not ray" tests "$@"
[ $# -gt 0 ] || bash scripts/test_ray.sh
