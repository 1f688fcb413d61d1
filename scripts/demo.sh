#!/usr/bin/env bash
# The main job: make a small random cache-aware model with NeMo, convert it, stream synthetic speech through the
# engine, and check it token for token against NeMo's own streaming at every lookahead.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-demo}
python3 -m nemotron_parity.demo "$OUT"
nemotron-engine convert --force "$OUT/demo.nemo" "$OUT/model"
echo "== transcripts (default lookahead, then 80 ms) =="
nemotron-engine transcribe --model "$OUT/model" --json "$OUT"/audio/*.wav
nemotron-engine transcribe --model "$OUT/model" --lookahead-ms 80 "$OUT"/audio/*.wav
echo "== parity with NeMo =="
nemotron-engine parity --nemo "$OUT/demo.nemo" --audio "$OUT"/audio/*.wav
