#!/usr/bin/env bash
# The demo model's recipe, end to end, on a CPU (one phase is about an hour on 2 cores; the shipped model took
# three, 3 h 15 min in all): synthesise the corpus with espeak-ng, train the hybrid RNN-T + CTC model with NeMo,
# convert it, measure WER through the engine beside NeMo's own streaming (token agreement), and ship it to
# weights/demo with example files.
#   [THREADS=1] [RESUME_MINUTES="35 100"] [LONGFORM_MINUTES=60] bash scripts/train_demo.sh [WORK_DIR] [MINUTES]
# THREADS=1 on a machine shared with other work. RESUME_MINUTES: further phases, each resumed from the last with a
# fresh warm-up and cosine decay (peak lr 0.0015, 100 warm-up steps). The shipped weights/demo: MINUTES=60 with
# THREADS=1, then RESUME_MINUTES="35 100" with 2 threads (13,209 steps; one hour alone leaves WER near 40 %).
#
# Long-form phase (issue 16: a model trained on isolated utterances goes silent after the first sentence of a
# continuous stream): LONGFORM_MINUTES=M adds a phase of M minutes after those, in which half of the batches are
# long-form streams (5-30 s, several sentences of one voice with pauses; train_demo.py --longform 0.5), peak lr
# 0.001, 100 warm-up steps, cosine decay. INIT_ENGINE_MODEL=DIR starts that phase from an engine-format model
# instead (the shipped weights/demo) and skips phase 1 and RESUME_MINUTES; the earlier phases are read from
# DIR/MODEL_CARD.md. The eval then adds the long-form sets (60-s streams, a 10-minute stream). Continuing the
# shipped model, one command:
#   THREADS=1 INIT_ENGINE_MODEL=weights/demo LONGFORM_MINUTES=60 bash scripts/train_demo.sh demo-train
# DEST: where the model is shipped (default weights/demo). CORPUS_ARGS (e.g. "--train 2000 --test 40" for a quick
# run) and EVAL_ARGS (default "--nemo-limit 25": NeMo decodes 25 utterances of each isolated set, as for the shipped
# card, and one 60-s stream; e.g. "--limit 10 --nemo-limit 2 --long-limit 1 --max-long-s 120" for a quick run) are
# passed to corpus / demo_eval.
set -euo pipefail
cd "$(dirname "$0")/.."
# the project virtual environment that setup.sh made, unless one is active
[ -n "${VIRTUAL_ENV:-}" ] || [ ! -x .venv/bin/python3 ] || PATH="$PWD/.venv/bin:$PATH"
# this checkout's recipe, whichever checkout the installed nemotron_parity points to
export PYTHONPATH="$PWD/parity${PYTHONPATH:+:$PYTHONPATH}"
# THREADS also bounds the eval's and the shipping's torch threads
[ -z "${THREADS:-}" ] || export OMP_NUM_THREADS="$THREADS"
WORK=${1:-demo-train}
MINUTES=${2:-60}
DEST=${DEST:-weights/demo}
python3 -m nemotron_parity.corpus "$WORK/corpus" ${CORPUS_ARGS:-}
if [ -z "${INIT_ENGINE_MODEL:-}" ]; then
    python3 -m nemotron_parity.train_demo "$WORK" --minutes "$MINUTES" ${THREADS:+--threads $THREADS}
    for M in ${RESUME_MINUTES:-}; do
        python3 -m nemotron_parity.train_demo "$WORK" --resume --minutes "$M" --lr 0.0015 --warmup 100 \
            ${THREADS:+--threads $THREADS}
    done
fi
if [ -n "${LONGFORM_MINUTES:-}" ]; then
    if [ -n "${INIT_ENGINE_MODEL:-}" ]; then FROM=(--init-engine-model "$INIT_ENGINE_MODEL"); else FROM=(--resume); fi
    python3 -m nemotron_parity.train_demo "$WORK" "${FROM[@]}" --minutes "$LONGFORM_MINUTES" --lr 0.001 \
        --warmup 100 --longform 0.5 ${THREADS:+--threads $THREADS}
elif [ -n "${INIT_ENGINE_MODEL:-}" ]; then
    echo "INIT_ENGINE_MODEL needs LONGFORM_MINUTES" >&2
    exit 2
fi
nemotron-engine convert --force "$WORK/demo.nemo" "$WORK/model"
python3 -m nemotron_parity.demo_eval "$WORK" --nemo ${EVAL_ARGS---nemo-limit 25}
python3 -m nemotron_parity.ship_demo "$WORK" --dest "$DEST"
