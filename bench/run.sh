#!/usr/bin/env bash
# EdgeLink benchmark: the edge against nginx `return 302` on this machine.
#
#   bench/run.sh [embedded|distributed|all]        (default: all)
#
# Builds release, seeds BENCH_N links (default 100,000) through `edgelink
# import`, starts nginx (2 workers, access log off, `return 302`: the
# baseline) and the edge, warms both, then:
#   1. closed loop, wrk: A (nginx) B (edge) alternating, BENCH_ROUNDS rounds,
#      uniform and Zipf code draws (bench/wrk/codes.lua), with each server's
#      CPU time per request (from /proc: steadier than req/s on a shared box);
#   2. open loop at a fixed rate (half nginx's median uniform rate), A B
#      alternating: oha (latency-corrected, redirects not followed), then
#      edgelink-load (bench/load: one thread, latency from each request's
#      due time; it holds rates oha cannot on one CPU, and reports its own
#      send lag so a run where the generator fell behind shows as such).
# Raw outputs go to bench/out/<stamp>/, the report to
# bench/runs/<stamp>-edge.md (a new file each run: bench/RESULTS.md, the
# curated page, is edited by hand from it; see bench/README.md).
#
# Knobs (environment): BENCH_N, BENCH_ROUNDS (3), BENCH_DURATION (10s),
# BENCH_CONNS (64), BENCH_THREADS (wrk threads, 1), BENCH_OHA_DURATION (10s:
# each open-loop run, oha's and edgelink-load's; edgelink-load leaves its
# first second out of the figures), BENCH_EDGE_WORKERS (edge threads;
# default: one per core, like nginx's 2 workers here), BENCH_SEED (42),
# BENCH_PIN ("SERVER_CPUS:LOAD_CPUS", e.g. "1:0": nginx and the edge run on
# the first CPU list, the load generators on the second, so the servers are compared
# on equal cores instead of on how the scheduler interleaves them with the
# load generator; default: not pinned),
# BENCH_POSTGRES_URL (admin URL; a database edgelink_bench is recreated),
# BENCH_REDIS_URL, BENCH_RESULTS (the report's file instead of
# bench/runs/<stamp>-edge.md), BENCH_BIN (an edgelink
# binary to measure instead of building this checkout's release),
# BENCH_CLICKS (on: the edge counts clicks, its default; off: it does not,
# the same work as nginx's `return 302`; bench/clicks.sh measures the cost).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
. "$ROOT/bench/lib.sh"

MODES=${1:-all}
case "$MODES" in all) MODES="embedded distributed" ;; embedded|distributed) ;; *)
  echo "usage: $0 [embedded|distributed|all]" >&2; exit 64 ;; esac
N=${BENCH_N:-100000}
ROUNDS=${BENCH_ROUNDS:-3}
DURATION=${BENCH_DURATION:-10s}
CONNS=${BENCH_CONNS:-64}
THREADS=${BENCH_THREADS:-1}
OHA_DURATION=${BENCH_OHA_DURATION:-10s}
OPEN_SECS=${OHA_DURATION%s}
[[ "$OPEN_SECS" =~ ^[0-9]+$ ]] && [ "$OPEN_SECS" -ge 2 ] || { echo "BENCH_OHA_DURATION must be whole seconds, at least 2s" >&2; exit 64; }
EDGE_WORKERS=${BENCH_EDGE_WORKERS:-0}
SEED=${BENCH_SEED:-42}
CLICKS=${BENCH_CLICKS:-on}
case "$CLICKS" in on) ANALYTICS=true ;; off) ANALYTICS=false ;; *)
  echo "BENCH_CLICKS must be on or off" >&2; exit 64 ;; esac
PIN=${BENCH_PIN:-}
SERVER_PIN=(); LOAD_PIN=()
if [ -n "$PIN" ]; then
  [[ "$PIN" == *:* ]] || { echo "BENCH_PIN must be SERVER_CPUS:LOAD_CPUS, e.g. 1:0" >&2; exit 64; }
  command -v taskset >/dev/null || { echo "BENCH_PIN needs taskset (util-linux)" >&2; exit 1; }
  SERVER_PIN=(taskset -c "${PIN%%:*}"); LOAD_PIN=(taskset -c "${PIN##*:}")
fi
PG_ADMIN=${BENCH_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}
REDIS_URL=${BENCH_REDIS_URL:-redis://127.0.0.1:6379/0}
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
RESULTS=${BENCH_RESULTS:-bench/runs/$STAMP-edge.md}
OUT=$ROOT/bench/out/$STAMP
mkdir -p "$OUT" "$(dirname "$RESULTS")"
export BENCH_N=$N BENCH_SEED=$SEED

log() { printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
  for _ in $(seq 1 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "nothing listens on port $1" >&2; return 1
}

for tool in wrk nginx python3 psql curl; do
  command -v "$tool" >/dev/null || { echo "missing $tool (Debian: apt-get install wrk nginx-light postgresql-client curl)" >&2; exit 1; }
done
if ! command -v oha >/dev/null; then
  log "installing oha (cargo install oha --locked)"
  cargo install oha --locked
  export PATH="$HOME/.cargo/bin:$PATH"
fi

TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
if [ -n "${BENCH_BIN:-}" ]; then
  BIN=$BENCH_BIN
  # The generator always from this checkout, whatever built BENCH_BIN.
  log "building edgelink-load"
  cargo build --release --quiet -p edgelink-load
  LOAD=$TARGET/release/edgelink-load
else
  log "building release"
  cargo build --release --quiet   # the edgelink binary and edgelink-load
  BIN=$TARGET/release/edgelink
  LOAD=$TARGET/release/edgelink-load
fi

PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

# --- the seeded set ----------------------------------------------------------
CSV=$OUT/links.csv
seed_csv "$N" "$CSV"

# --- nginx, the baseline -----------------------------------------------------
NGINX_PORT=$(free_port)
nginx_conf "$OUT/nginx" 2 "        listen 127.0.0.1:$NGINX_PORT;"
"${SERVER_PIN[@]}" nginx -p "$OUT/nginx" -c "$OUT/nginx/nginx.conf" -g 'daemon off;' &
NGINX_PID=$!
PIDS+=($NGINX_PID)
wait_port "$NGINX_PORT"

# CPU ticks (user + system, every thread) used so far by a server: the
# process and its children (nginx's workers).
cpu_ticks() { # pid
  local t=0 p
  for p in "$1" $(pgrep -P "$1" || true); do
    t=$(( t + $(awk '{ print $14 + $15 }' "/proc/$p/stat") ))
  done
  echo "$t"
}

run_wrk() { # name port dist server_pid
  local before; before=$(cpu_ticks "$4")
  BENCH_DIST=$3 "${LOAD_PIN[@]}" wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency -s "$ROOT/bench/wrk/codes.lua" \
    "http://127.0.0.1:$2" > "$OUT/$1.wrk.txt"
  echo "$(( $(cpu_ticks "$4") - before )) $(getconf CLK_TCK)" > "$OUT/$1.cpu"
  grep -E 'Requests/sec' "$OUT/$1.wrk.txt" | sed "s/^/  $1 /" >&2
}

warm() { # name port
  BENCH_DIST=seq "${LOAD_PIN[@]}" wrk -t1 -c"$CONNS" -d"$(( N / 10000 + 5 ))s" -s "$ROOT/bench/wrk/codes.lua" \
    "http://127.0.0.1:$2" > "$OUT/$1.warm.txt"
}

run_oha() { # name port rate
  awk -v n="$N" -v port="$2" -v seed="$SEED" 'BEGIN { srand(seed); for (i = 0; i < 65536; i++) printf "http://127.0.0.1:%d/k%07d\n", port, int(rand() * n) }' > "$OUT/urls-$2.txt"
  "${LOAD_PIN[@]}" oha --no-tui --urls-from-file -z "$OHA_DURATION" -q "$3" --latency-correction -r 0 -c "$CONNS" \
    --output-format json -o "$OUT/$1.oha.json" "$OUT/urls-$2.txt"
}

# The same seeded draws as oha's URL list, as paths.
awk -v n="$N" -v seed="$SEED" 'BEGIN { srand(seed); for (i = 0; i < 65536; i++) printf "/k%07d\n", int(rand() * n) }' > "$OUT/paths.txt"
run_load() { # name port rate
  "${LOAD_PIN[@]}" "$LOAD" "127.0.0.1:$2" --rate "$3" --duration "$OPEN_SECS" --warmup 1 --connections "$CONNS" \
    --paths "$OUT/paths.txt" --seed "$SEED" --json "$OUT/$1.load.json" > "$OUT/$1.load.txt"
}

metric() { # admin_port series
  curl -fsS "http://127.0.0.1:$1/metrics" | awk -v s="$2" '$1 == s { print $2 }'
}

for MODE in $MODES; do
  EDGE_PORT=$(free_port); ADMIN_PORT=$(free_port)
  export EDGELINK_CACHE_TTL_SECS=3600   # no expiry inside a run: this measures tier-0 hits
  export EDGELINK_SERVER_WORKERS=$EDGE_WORKERS
  export EDGELINK_ANALYTICS_ENABLED=$ANALYTICS
  export RUST_LOG=warn
  if [ "$MODE" = embedded ]; then
    DB=$OUT/embedded.db
    "$BIN" import "$CSV" --sqlite "$DB" > "$OUT/import-$MODE.txt"
    "${SERVER_PIN[@]}" "$BIN" serve --sqlite "$DB" --listen "127.0.0.1:$EDGE_PORT" --admin-listen "127.0.0.1:$ADMIN_PORT" 2> "$OUT/edge-$MODE.log" &
    STORE=sqlite
  else
    psql "$PG_ADMIN" -qc 'DROP DATABASE IF EXISTS edgelink_bench WITH (FORCE)' -c 'CREATE DATABASE edgelink_bench' >/dev/null
    PG_URL=${PG_ADMIN%/*}/edgelink_bench
    "$BIN" import "$CSV" --postgres-url "$PG_URL" > "$OUT/import-$MODE.txt"
    EDGELINK_REDIS_KEY_PREFIX="elbench-$STAMP:" "${SERVER_PIN[@]}" "$BIN" edge --postgres-url "$PG_URL" --redis-url "$REDIS_URL" \
      --listen "127.0.0.1:$EDGE_PORT" --admin-listen "127.0.0.1:$ADMIN_PORT" 2> "$OUT/edge-$MODE.log" &
    STORE=postgres
  fi
  EDGE_PID=$!
  PIDS+=($EDGE_PID)
  wait_port "$EDGE_PORT"
  cat "$OUT/import-$MODE.txt" >&2
  code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$EDGE_PORT/k0000000")
  [ "$code" = 302 ] || { echo "edge answered $code for a seeded code" >&2; exit 1; }

  log "$MODE: warming nginx and the edge (every code once)"
  warm "$MODE-nginx" "$NGINX_PORT"
  warm "$MODE-edge" "$EDGE_PORT"
  # A pass is time-bound; where misses are slow (Redis + PostgreSQL on
  # these 2 cores) one may not reach every code: walk again (the codes
  # already cached are quick hits), at most 3 more times.
  for pass in 2 3 4; do
    entries=$(metric "$ADMIN_PORT" edgelink_cache_entries)
    [ "${entries%.*}" -ge "$N" ] && break
    log "$MODE: tier 0 holds $entries of $N codes; warming again"
    warm "$MODE-edge-$pass" "$EDGE_PORT"
  done
  entries=$(metric "$ADMIN_PORT" edgelink_cache_entries)
  # Serving threads: the main one (first listener) and one per further
  # listener (per-core mode); the default is one per CPU the edge may run on.
  serving=$(( 1 + $(cat /proc/"$EDGE_PID"/task/*/comm | grep -c '^edgelink-io-' || true) ))
  lookups_before=$(metric "$ADMIN_PORT" "edgelink_backend_lookups_total{backend=\"$STORE\"}")
  log "$MODE: tier 0 holds $entries entries after warm-up; $lookups_before $STORE lookups so far"

  for r in $(seq 1 "$ROUNDS"); do
    for dist in uniform zipf; do
      run_wrk "$MODE-wrk-$dist-nginx-$r" "$NGINX_PORT" "$dist" "$NGINX_PID"
      run_wrk "$MODE-wrk-$dist-edge-$r" "$EDGE_PORT" "$dist" "$EDGE_PID"
    done
  done
  RATE=$(python3 "$ROOT/bench/report.py" half-rate "$OUT" "$MODE")
  log "$MODE: open loop at $RATE req/s (oha, then edgelink-load)"
  for r in $(seq 1 "$ROUNDS"); do
    run_oha "$MODE-oha$RATE-nginx-$r" "$NGINX_PORT" "$RATE"
    run_oha "$MODE-oha$RATE-edge-$r" "$EDGE_PORT" "$RATE"
  done
  for r in $(seq 1 "$ROUNDS"); do
    run_load "$MODE-load$RATE-nginx-$r" "$NGINX_PORT" "$RATE"
    run_load "$MODE-load$RATE-edge-$r" "$EDGE_PORT" "$RATE"
  done
  lookups_after=$(metric "$ADMIN_PORT" "edgelink_backend_lookups_total{backend=\"$STORE\"}")
  echo "{\"entries\": $entries, \"lookups_during_measurement\": $(( ${lookups_after%.*} - ${lookups_before%.*} )), \"rates\": [$RATE], \"load_rates\": [$RATE], \"edge_workers\": $EDGE_WORKERS, \"serving_threads\": $serving, \"pin\": \"$PIN\", \"clicks\": \"$CLICKS\"}" > "$OUT/$MODE.meta.json"
  kill "$EDGE_PID"; wait "$EDGE_PID" 2>/dev/null || true
done

{
  echo "nproc: $(nproc)"
  echo "cpu: $(lscpu | sed -n 's/^Model name: *//p' | head -1)"
  echo "kernel: $(uname -r)"
  echo "nginx: $(nginx -v 2>&1 | sed 's/.*: //')"
  echo "wrk: $(wrk --version 2>&1 | head -1 | cut -d' ' -f1-2)"
  echo "oha: $(oha --version)"
  echo "edgelink-load: $("$LOAD" --version)"
  echo "rustc: $(rustc --version)"
  echo "commit: $(git rev-parse --short HEAD)$(git diff --quiet || echo '+dirty')"
  if [ -n "${BENCH_BIN:-}" ]; then echo "binary: $BENCH_BIN (given by BENCH_BIN, not built from the commit above)"; fi
} > "$OUT/machine.txt"
python3 "$ROOT/bench/report.py" report "$OUT" "bench/run.sh${*:+ $*}" > "$RESULTS"
log "wrote $RESULTS (raw: $OUT)"
