#!/usr/bin/env bash
# Instructions per cache-hit request, the edge against nginx `return 302`,
# counted by valgrind's callgrind.
#
#   bench/callgrind.sh
#
# Callgrind counts the instructions a process runs in user space: the
# kernel's share of a request (TCP over loopback, epoll, recv, writev; about
# the same for both servers, see bench/RESULTS.md) is left out. The count is
# the same for the same binary and the same requests however busy the
# machine is, so a change to the hot path can be judged here, on a shared
# box where req/s swings by a third between rounds.
#
# Both servers run one thread of work: the edge with `server.workers = 1`
# (its click flusher and timers are counted too), nginx with one worker and
# no master process, and the edge with click counting off (its flush is
# once a second, and would be charged to the few requests callgrind lets
# through; bench/clicks.sh measures its cost). Each is warmed (every code
# once); then its instructions are counted for BENCH_SECS idle and for
# BENCH_SECS under wrk -t1 -c16 with uniform draws (bench/wrk/codes.lua):
# (under load - idle) / requests wrk counted.
#
# Knobs (environment): BENCH_BIN (default: build this checkout's release),
# BENCH_N (codes seeded, 10000), BENCH_SECS (10), BENCH_DIST (uniform).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
. "$ROOT/bench/lib.sh"
N=${BENCH_N:-10000}
SECS=${BENCH_SECS:-10}
DIST=${BENCH_DIST:-uniform}
OUT=$ROOT/bench/out/callgrind-$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$OUT"
export BENCH_N=$N

for tool in valgrind callgrind_control wrk nginx python3 curl; do
  command -v "$tool" >/dev/null || { echo "missing $tool (Debian: apt-get install valgrind wrk nginx-light)" >&2; exit 1; }
done
if [ -z "${BENCH_BIN:-}" ]; then
  cargo build --release --quiet
  BENCH_BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/edgelink
fi

PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { # port: valgrind starts a large binary slowly
  for _ in $(seq 1 600); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listens on $1" >&2; exit 1
}

# Instructions the process under callgrind ran between a zeroing and a dump.
counted() { # name pid
  callgrind_control -d "$2" > /dev/null
  awk '/^(summary|totals):/ { print $2; exit }' "$(ls -t "$OUT/$1".callgrind.*.* | head -1)"
}

# "name instructions-under-load idle-instructions requests non-3xx". The idle
# count (the same time with no requests: timers, the key pool's checks) is
# what the process spends anyway; natively it is a fraction of a percent,
# but under callgrind requests are ~50x slower while it is not, so it is
# measured and taken off.
lookups() { # admin_port: backend lookups so far (tier-0 misses); "-" for nginx
  [ -n "$1" ] || { echo -; return; }
  curl -fsS "http://127.0.0.1:$1/metrics" | awk '$1 ~ /^edgelink_backend_lookups_total/ { n += $2 } END { print n + 0 }'
}

measure() { # name port pid [admin_port]
  # Warm until a pass over every code asks the backends nothing (misses
  # are ~50x slower under callgrind, so one pass may not reach every code).
  for _ in 1 2 3 4 5 6; do
    local was; was=$(lookups "${4:-}")
    BENCH_DIST=seq wrk -t1 -c16 -d"$(( N / 1000 + 10 ))s" -s "$ROOT/bench/wrk/codes.lua" "http://127.0.0.1:$2" > "$OUT/$1.warm.txt"
    if [ "$was" = - ] || [ "$(lookups "$4")" = "$was" ]; then break; fi
  done
  callgrind_control -z "$3" > /dev/null
  sleep "$SECS"
  local idle; idle=$(counted "$1" "$3")
  local before; before=$(lookups "${4:-}")
  callgrind_control -z "$3" > /dev/null
  BENCH_DIST=$DIST wrk -t1 -c16 -d"${SECS}s" -s "$ROOT/bench/wrk/codes.lua" "http://127.0.0.1:$2" > "$OUT/$1.wrk.txt"
  local ir; ir=$(counted "$1" "$3")
  local after; after=$(lookups "${4:-}")
  local misses=-; [ "$before" = - ] || misses=$(( after - before ))
  local requests; requests=$(awk '/requests in/ { print $1 }' "$OUT/$1.wrk.txt")
  local bad; bad=$(awk '/Non-2xx or 3xx/ { print $5 }' "$OUT/$1.wrk.txt")
  echo "$1 $ir $idle $requests ${bad:-0} $misses"
}

seed_csv "$N" "$OUT/links.csv"
RUST_LOG=warn "$BENCH_BIN" import "$OUT/links.csv" --sqlite "$OUT/edge.db" > /dev/null

EDGE_PORT=$(free_port); ADMIN_PORT=$(free_port)
# `serve` first fills the key pool (300,000 keys by default): natively, so
# that the run under callgrind does not count the refill's inserts.
RUST_LOG=warn "$BENCH_BIN" serve --sqlite "$OUT/edge.db" --listen "127.0.0.1:$EDGE_PORT" --admin-listen "127.0.0.1:$ADMIN_PORT" 2> "$OUT/fill.log" &
FILL_PID=$!; PIDS+=($FILL_PID)
wait_port "$ADMIN_PORT"
for _ in $(seq 1 240); do
  free=$(curl -fsS "http://127.0.0.1:$ADMIN_PORT/metrics" | awk '$1 == "edgelink_keypool_free_keys" { print int($2) }')
  [ "${free:-0}" -ge 300000 ] && break
  sleep 0.5
done
[ "${free:-0}" -ge 300000 ] || { echo "the key pool did not fill (${free:-0} keys free)" >&2; exit 1; }
kill "$FILL_PID"; wait "$FILL_PID" 2>/dev/null || true
EDGELINK_SERVER_WORKERS=1 EDGELINK_CACHE_TTL_SECS=3600 EDGELINK_ANALYTICS_ENABLED=false RUST_LOG=warn \
  valgrind --tool=callgrind --callgrind-out-file="$OUT/edge.callgrind.%p" \
  "$BENCH_BIN" serve --sqlite "$OUT/edge.db" --listen "127.0.0.1:$EDGE_PORT" --admin-listen "127.0.0.1:$ADMIN_PORT" \
  2> "$OUT/edge.log" &
EDGE_PID=$!; PIDS+=($EDGE_PID)
wait_port "$EDGE_PORT"
EDGE=$(measure edge "$EDGE_PORT" "$EDGE_PID" "$ADMIN_PORT")
kill "$EDGE_PID"; wait "$EDGE_PID" 2>/dev/null || true

NGINX_PORT=$(free_port)
nginx_conf "$OUT/nginx" 1 "        listen 127.0.0.1:$NGINX_PORT;"
valgrind --tool=callgrind --callgrind-out-file="$OUT/nginx.callgrind.%p" \
  nginx -p "$OUT/nginx" -c "$OUT/nginx/nginx.conf" -g 'daemon off; master_process off;' 2> "$OUT/nginx.log" &
NGINX_PID=$!; PIDS+=($NGINX_PID)
wait_port "$NGINX_PORT"
NGINX=$(measure nginx "$NGINX_PORT" "$NGINX_PID")

python3 - "$EDGE" "$NGINX" "$DIST" "$N" <<'PY'
import sys
rows = [a.split() for a in sys.argv[1:3]]
per = {}
print(f"Instructions per request (user space, callgrind), {sys.argv[3]} draws over {sys.argv[4]} cached codes:\n")
print("| server | instructions under load | idle, same time | requests | per request (load - idle) | non-3xx | tier-0 misses |")
print("|---|---|---|---|---|---|---|")
for name, ir, idle, requests, bad, misses in rows:
    per[name] = (int(ir) - int(idle)) / int(requests)
    print(f"| {name} | {int(ir):,} | {int(idle):,} | {int(requests):,} | **{per[name]:,.0f}** | {bad} | {misses} |")
print(f"\nedge / nginx: **{per['edge'] / per['nginx']:.2f}x**")
PY
echo "raw: $OUT" >&2
