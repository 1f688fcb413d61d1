#!/usr/bin/env bash
# The demo model's recipe, end to end, on a CPU (one phase is about an hour on 2 cores; the shipped model took
# three, 3 h 15 min in all): synthesise the corpus with espeak-ng, train the hybrid RNN-T + CTC model with NeMo,
# convert it, measure WER through the engine beside NeMo's own streaming (token agreement), and ship it to
# weights/demo with example files.
#   [THREADS=1] [RESUME_MINUTES="35 100"] bash scripts/train_demo.sh [WORK_DIR] [MINUTES]
# THREADS=1 on a machine shared with other work. RESUME_MINUTES: further phases, each resumed from the last with a
# fresh warm-up and cosine decay (peak lr 0.0015, 100 warm-up steps). The shipped weights/demo: MINUTES=60 with
# THREADS=1, then RESUME_MINUTES="35 100" with 2 threads (13,209 steps; one hour alone leaves WER near 40 %).
set -euo pipefail
cd "$(dirname "$0")/.."
# the project virtual environment that setup.sh made, unless one is active
[ -n "${VIRTUAL_ENV:-}" ] || [ ! -x .venv/bin/python3 ] || PATH="$PWD/.venv/bin:$PATH"
WORK=${1:-demo-train}
MINUTES=${2:-60}
python3 -m nemotron_parity.corpus "$WORK/corpus"
python3 -m nemotron_parity.train_demo "$WORK" --minutes "$MINUTES" ${THREADS:+--threads $THREADS}
for M in ${RESUME_MINUTES:-}; do
    python3 -m nemotron_parity.train_demo "$WORK" --resume --minutes "$M" --lr 0.0015 --warmup 100 \
        ${THREADS:+--threads $THREADS}
done
nemotron-engine convert --force "$WORK/demo.nemo" "$WORK/model"
python3 -m nemotron_parity.demo_eval "$WORK" --nemo
python3 -m nemotron_parity.ship_demo "$WORK" --dest weights/demo
