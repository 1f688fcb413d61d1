#!/usr/bin/env bash
# Ray's fixed cost beside the engine: CPU of every process on the machine over WINDOW_S seconds while a Ray Serve
# deployment (`serve --ray --ray-direct`, REPLICAS replicas of the demo model) is up and holds no session, read
# from /proc (utime + stime). Prints the busiest processes and the total, in % of one core.
# Usage: bash bench/ray_idle_cpu.sh   (env: REPLICAS (1), WINDOW_S (20), PORT (9000)). Needs a quiet machine.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/serve_lib.sh
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
nemotron-engine serve --ray --ray-direct --replicas "${REPLICAS:-1}" --cpus-per-replica 1 --port "${PORT:-9000}" \
    --threads 1 --max-streams 128 2> "$TMP/serve.log" &
PID=$!
wait_listening "$TMP/serve.log" "$PID"
sleep 10  # past the start-up
snap() {  # pid, CPU ticks, command line
    for p in /proc/[0-9]*; do
        read -r -a f < "$p/stat" 2>/dev/null || continue
        echo "${p#/proc/} $((f[13] + f[14])) $(tr '\0' ' ' < "$p/cmdline" 2>/dev/null | cut -c1-80)"
    done
}
snap > "$TMP/a"; sleep "${WINDOW_S:-20}"; snap > "$TMP/b"
python3 - "$TMP/a" "$TMP/b" "${WINDOW_S:-20}" "$(getconf CLK_TCK)" <<'PY'
import sys
a = {l.split()[0]: int(l.split()[1]) for l in open(sys.argv[1]) if len(l.split()) > 1}
window, hz = float(sys.argv[3]), float(sys.argv[4])
rows = []
for l in open(sys.argv[2]):
    f = l.split()
    if len(f) > 1 and f[0] in a and int(f[1]) > a[f[0]]:
        rows.append((100 * (int(f[1]) - a[f[0]]) / hz / window, f[0], " ".join(f[2:])))
for pct, pid, cmd in sorted(rows, reverse=True)[:12]:
    print(f"{pct:6.1f} % of a core  {pid} {cmd}")
print(f"total {sum(r[0] for r in rows):.1f} % of a core over {window:g} s")
PY
kill -TERM "$PID"; wait "$PID" || true
