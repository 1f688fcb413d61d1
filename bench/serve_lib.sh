# Sourced by the server benchmarks (server_vs_inprocess.sh, ray_vs_server.sh): waiting for a server to listen.
# wait_listening LOG PID -> sets PORT from the server's "listening on http://127.0.0.1:PORT" line in LOG; fails
# (printing LOG) if the server PID exits first or after 5 minutes.
wait_listening() {
    for _ in $(seq 1500); do
        PORT=$(sed -n 's/.*listening on http:\/\/127\.0\.0\.1:\([0-9]*\).*/\1/p' "$1" | head -1)
        [ -n "$PORT" ] && return 0
        kill -0 "$2" 2>/dev/null || { cat "$1"; return 1; }
        sleep 0.2
    done
    cat "$1"; return 1
}
