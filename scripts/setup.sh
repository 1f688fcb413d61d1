#!/usr/bin/env bash
# Set up a fresh machine: espeak-ng + sox (synthetic speech for the demo and the tests), the CPU build of torch,
# this package with its test extra, and the NeMo parity harness (parity/, which brings NeMo 3.0, the reference:
# a test-only dependency).
# Python: the active virtual environment if there is one; else .venv in the repository when it exists, or when
# python3 is a distribution's own Python, where pip may not install (PEP 668 "externally managed", e.g. Debian 12,
# Ubuntu 24.04): then .venv is created. demo.sh and test.sh use .venv the same way.
# GPU users: install the CUDA build of torch (https://pytorch.org) first and skip the torch line.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
if ! command -v espeak-ng >/dev/null || ! command -v sox >/dev/null; then
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq espeak-ng sox >/dev/null
fi
PY=python3
if [ -z "${VIRTUAL_ENV:-}" ]; then
    if [ ! -x .venv/bin/python3 ] && python3 -c '
import os, sys, sysconfig
sys.exit(sys.prefix != sys.base_prefix
         or not os.path.isfile(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")))'; then
        echo "setup.sh: $(command -v python3) is externally managed (PEP 668): installing into .venv"
        # Debian and Ubuntu ship venv's pip bootstrap in a package of its own (python3-venv)
        if ! python3 -m venv .venv; then
            rm -rf .venv
            $SUDO apt-get update -qq && $SUDO apt-get install -y -qq python3-venv >/dev/null
            python3 -m venv .venv
        fi
    fi
    if [ -x .venv/bin/python3 ]; then PY="$PWD/.venv/bin/python3"; fi
fi
$PY -m pip install -q --disable-pip-version-check "torch==2.13.0"
$PY -m pip install -q --disable-pip-version-check -e ".[test]"
$PY -m pip install -q --disable-pip-version-check -e ./parity
