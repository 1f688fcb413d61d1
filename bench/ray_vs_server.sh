#!/usr/bin/env bash
# The Ray Serve endpoint beside the single-process server, in one run, on one machine (issue 19's goal: one replica
# holds at least 80 % of the single server's real-time capacity), with the demo model at one lookahead:
#   0. the in-process loadtest's capacity (the same bisection, `nemotron-engine loadtest --capacity`);
#   1. `nemotron-engine serve` (1 torch thread), its real-time capacity found by `loadtest --url --capacity`
#      (bisection in [N_MIN, N_MAX], runs of RUN_S seconds of looped sessions, transcripts checked);
#   2. `nemotron-engine serve --ray --replicas R` (1 torch thread per replica) for each R in REPLICAS, the same
#      measurement through Ray's proxy (out name ray-R) and with --ray-direct (ray-direct-R: each session redirected
#      to its replica's own port), as MODES says.
# The load client is another process than the servers; Ray's own processes (GCS, raylet, proxy, controller) share
# the machine with the replicas, as they would on a GPU node.
# Usage: bash bench/ray_vs_server.sh OUT_DIR
#   env: LOOKAHEAD (1120), N_MIN (24), N_MAX (128), RAY_N_MIN and RAY_N_MAX (the Ray runs' bracket; default N_MIN,
#        N_MAX), REL_TOL (0.1), RUN_S (30), REPLICAS ("1 2 3"), MAX_STREAMS (128), ONLY_RAY (set: skip steps 0 and 1),
#        MODEL (weights/demo), MODES ("proxy direct"), SKIP_INPROCESS (set: skip step 0). Needs a quiet machine:
#        nothing else running.
# The run recorded in bench/results/ray-cpu-2core-epyc: N_MIN=40 N_MAX=120 RUN_S=30 for steps 0 and 1, then
# ONLY_RAY=1 REPLICAS="1 2" RAY_N_MIN=2 RAY_N_MAX=40 RUN_S=30 (the Ray endpoint failed at 40 sessions).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: bench/ray_vs_server.sh OUT_DIR}
MODEL=${MODEL:-weights/demo}
LA=${LOOKAHEAD:-1120}
MAXS=${MAX_STREAMS:-128}
mkdir -p "$OUT"
source bench/serve_lib.sh
capacity() {  # $1: port, $2: out name, $3 $4: the search's bracket
    nemotron-engine loadtest --url "ws://127.0.0.1:$1" --model "$MODEL" --threads 1 --lookahead-ms "$LA" \
        --capacity --n-min "$3" --n-max "$4" --rel-tol "${REL_TOL:-0.1}" \
        --run-s "${RUN_S:-30}" --loop-s "${RUN_S:-30}" --out "$OUT/$2"
}
if [ -z "${ONLY_RAY:-}" ]; then
if [ -z "${SKIP_INPROCESS:-}" ]; then
echo "== in process, lookahead $LA ms"
nemotron-engine loadtest --model "$MODEL" --threads 1 --lookahead-ms "$LA" --capacity --n-min "${N_MIN:-24}" \
    --n-max "${N_MAX:-128}" --rel-tol "${REL_TOL:-0.1}" --run-s "${RUN_S:-30}" --out "$OUT/inprocess"
fi
echo "== single server, lookahead $LA ms"
nemotron-engine serve --model "$MODEL" --port 0 --threads 1 --max-streams "$MAXS" --idle-timeout-s 120 \
    2> "$OUT/serve-single.log" &
PID=$!
wait_listening "$OUT/serve-single.log" "$PID"
capacity "$PORT" single "${N_MIN:-24}" "${N_MAX:-128}"
kill -TERM "$PID"; wait "$PID" || true
fi
for R in ${REPLICAS:-1 2 3}; do
for MODE in ${MODES:-proxy direct}; do
    NAME=$([ "$MODE" = direct ] && echo "ray-direct-$R" || echo "ray-$R")
    FLAG=$([ "$MODE" = direct ] && echo "--ray-direct" || true)
    echo "== Ray Serve, $R replica(s), $MODE, lookahead $LA ms"
    # more replicas than cores: Ray places them with a share of a CPU each (the replicas still run 1 thread)
    CPR=$(python3 -c "import os; print(min(1.0, (os.cpu_count() or 1) / $R))")
    nemotron-engine serve --ray $FLAG --replicas "$R" --cpus-per-replica "$CPR" --model "$MODEL" --port 9000 \
        --threads 1 --max-streams "$MAXS" --idle-timeout-s 120 2> "$OUT/serve-$NAME.log" &
    PID=$!
    wait_listening "$OUT/serve-$NAME.log" "$PID"
    capacity "$PORT" "$NAME" "${RAY_N_MIN:-${N_MIN:-24}}" "${RAY_N_MAX:-${N_MAX:-128}}"
    kill -TERM "$PID"; wait "$PID" || true
    sleep 5
done
done
python3 - "$OUT" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
rows = {}
for d in sorted(out.iterdir()):
    f = next((d / n for n in ("ws_loadtest.json", "loadtest.json") if (d / n).is_file()), None)
    if d.is_dir() and f is not None:
        caps = json.loads(f.read_text())["capacity"]
        rows[d.name] = {la: (c["capacity"], c["at_least"]) for la, c in caps.items()}
(out / "summary.json").write_text(json.dumps(rows, indent=1))
single = {la: c for la, (c, _) in rows.get("single", {}).items()}
for name, caps in rows.items():
    for la, (c, at_least) in caps.items():
        rel = f", {100 * c / single[la]:.0f} % of the single server" if single.get(la) and name != "single" else ""
        print(f"{name}: {la} ms: {c}{'+' if at_least else ''} sessions held in real time{rel}")
EOF
