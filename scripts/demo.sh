#!/usr/bin/env bash
# The main job: stream the shipped example recordings through the shipped demo model (weights/demo, a small
# cache-aware FastConformer RNN-T trained on synthetic speech), chunk by chunk as live audio, and print the words.
# Extra arguments go to `nemotron-engine transcribe` (e.g. --lookahead-ms 80, --json, or your own WAV files).
set -euo pipefail
cd "$(dirname "$0")/.."
# the project virtual environment that setup.sh made, unless one is active
[ -n "${VIRTUAL_ENV:-}" ] || [ ! -x .venv/bin/python3 ] || PATH="$PWD/.venv/bin:$PATH"
nemotron-engine transcribe --timing --tokens "$@"
