#!/usr/bin/env bash
# The demo model's recipe, end to end, on a CPU (about an hour on 2 cores): synthesise the corpus with espeak-ng,
# train the hybrid RNN-T + CTC model with NeMo, convert it, measure WER through the engine beside NeMo's own
# streaming (token agreement), and ship it to weights/demo with example files.
#   [THREADS=1] bash scripts/train_demo.sh [WORK_DIR] [MINUTES]     (THREADS=1 on a machine shared with other work)
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-demo-train}
MINUTES=${2:-60}
python3 -m nemotron_parity.corpus "$WORK/corpus"
python3 -m nemotron_parity.train_demo "$WORK" --minutes "$MINUTES" ${THREADS:+--threads $THREADS}
nemotron-engine convert --force "$WORK/demo.nemo" "$WORK/model"
python3 -m nemotron_parity.demo_eval "$WORK" --nemo
python3 -m nemotron_parity.ship_demo "$WORK" --dest weights/demo
