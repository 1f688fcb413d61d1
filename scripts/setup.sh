#!/usr/bin/env bash
# Set up a fresh machine: espeak-ng + sox (synthetic speech for the demo and the tests), the CPU build of torch,
# and this package with its test extra (NeMo 3.0, the reference, is a test-only dependency).
# GPU users: install the CUDA build of torch (https://pytorch.org) first and skip the torch line.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v espeak-ng >/dev/null || ! command -v sox >/dev/null; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq espeak-ng sox >/dev/null
fi
python3 -m pip install -q --disable-pip-version-check "torch==2.13.0"
python3 -m pip install -q --disable-pip-version-check -e ".[test]"
