#!/usr/bin/env bash
# The server beside the in-process engine, in one run, on one machine (issue 17's goals), with the demo model:
#   1. in-process real-time load (`nemotron-engine loadtest`) at N streams, 1 torch thread;
#   2. the same N as WebSocket sessions against `nemotron-engine serve` (1 torch thread) from a client process
#      (`loadtest --url --loop-s`: each session one long stream of the examples looped, as the in-process run loops
#      them), transcripts checked against the in-process engine;
#   3. churn: SESSIONS sessions over CHURN_CLIENTS concurrent clients, a tenth vanishing mid-stream (TCP reset),
#      a quarter ending with force_eou; the server's memory and free slots watched over the run.
# Usage: bash bench/server_vs_inprocess.sh OUT_DIR
#   env: LOOKAHEADS ("1120 80"), N_1120 ("61 76"), N_80 ("1 2"), RUN_S (60), SESSIONS (1000), CHURN_CLIENTS (32),
#        CHURN_LA (1120), MODEL (weights/demo). Needs a quiet machine: nothing else running.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: bench/server_vs_inprocess.sh OUT_DIR}
MODEL=${MODEL:-weights/demo}
RUN_S=${RUN_S:-60}
mkdir -p "$OUT"
source bench/serve_lib.sh
serve_start() {  # $1: max streams -> sets PORT, SERVER_PID; the server's log in $OUT/serve-$2.log
    local log="$OUT/serve-$2.log"
    nemotron-engine serve --model "$MODEL" --port 0 --threads 1 --max-streams "$1" --idle-timeout-s 120 \
        2> "$log" &
    SERVER_PID=$!
    wait_listening "$log" "$SERVER_PID"
}
serve_stop() { kill -TERM "$SERVER_PID"; wait "$SERVER_PID" || true; }
for LA in ${LOOKAHEADS:-1120 80}; do
    if [ "$LA" = 80 ]; then NS=${N_80:-1 2}; else NS=${N_1120:-61 76}; fi
    NMAX=$(echo $NS | tr ' ' '\n' | sort -n | tail -1)
    echo "== lookahead $LA ms, N = $NS: in process"
    nemotron-engine loadtest --model "$MODEL" --threads 1 --lookahead-ms "$LA" --streams $NS --run-s "$RUN_S" \
        --out "$OUT/inprocess-$LA"
    echo "== lookahead $LA ms, N = $NS: server"
    serve_start "$NMAX" "$LA"
    nemotron-engine loadtest --url "ws://127.0.0.1:$PORT" --model "$MODEL" --threads 1 --lookahead-ms "$LA" \
        --streams $NS --loop-s "$RUN_S" --eou-fraction 0 --vanish-fraction 0 --timeout-s 120 \
        --out "$OUT/server-$LA" || true
    serve_stop
done
if [ "${SESSIONS:-1000}" != 0 ]; then
    CLIENTS=${CHURN_CLIENTS:-32}
    echo "== churn: ${SESSIONS:-1000} sessions over $CLIENTS clients, lookahead ${CHURN_LA:-1120} ms"
    serve_start "$CLIENTS" churn
    nemotron-engine loadtest --url "ws://127.0.0.1:$PORT" --model "$MODEL" --threads 1 \
        --lookahead-ms "${CHURN_LA:-1120}" --streams "$CLIENTS" --sessions "${SESSIONS:-1000}" \
        --vanish-fraction 0.1 --eou-fraction 0.25 --timeout-s 120 --out "$OUT/churn" || true
    serve_stop
fi
echo "wrote $OUT"
