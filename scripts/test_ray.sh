#!/usr/bin/env bash
# The Ray Serve tests (tests/test_serve_ray.py, marker `ray`): the last step of scripts/test.sh. They start a
# local Ray cluster (2 CPUs, two replicas of the demo model); about 2 minutes on 2 cores, bounded here at 10.
# Ray 2.60 would lift protobuf and packaging past what nvidia-riva-client and lightning pin; these pins keep
# `pip check` clean (docs/ray.md).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -n "${VIRTUAL_ENV:-}" ] || [ ! -x .venv/bin/python3 ] || PATH="$PWD/.venv/bin:$PATH"
python3 -m pip install -q --disable-pip-version-check -e ".[ray]" "protobuf==6.33.5" "grpcio-reflection==1.81.1" \
    "packaging==24.2" "virtualenv==21.14.5"
python3 -m pip check
OMP_NUM_THREADS=1 timeout 600 python3 -m pytest -q -m ray tests/test_serve_ray.py "$@"
