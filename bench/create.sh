#!/usr/bin/env bash
# Link creation throughput and latency of one origin on PostgreSQL.
#
#   bench/create.sh
#
# Starts a fresh database, `edgelink keypool` (fills the pool to 300,000
# keys) and one `edgelink origin`, creates an API key, then drives
# POST /api/v1/links with oha for BENCH_DURATION (10s) at BENCH_CONNS (32)
# connections, BENCH_ROUNDS (3) times, and prints creates/s and latency
# percentiles. Knobs: BENCH_POSTGRES_URL (admin URL; a database
# edgelink_bench_create is recreated), BENCH_PIN ("SERVER_CPUS:LOAD_CPUS").
set -euo pipefail
export PGOPTIONS=--client-min-messages=warning
cd "$(dirname "$0")/.."
DURATION=${BENCH_DURATION:-10s}
CONNS=${BENCH_CONNS:-32}
ROUNDS=${BENCH_ROUNDS:-3}
PG_ADMIN=${BENCH_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}
PG_URL=${PG_ADMIN%/*}/edgelink_bench_create
SERVER_PIN=(); LOAD_PIN=()
if [ -n "${BENCH_PIN:-}" ]; then SERVER_PIN=(taskset -c "${BENCH_PIN%%:*}"); LOAD_PIN=(taskset -c "${BENCH_PIN##*:}"); fi
export PATH="$HOME/.cargo/bin:$PATH"
command -v oha >/dev/null || cargo install oha --locked
cargo build --release --quiet
BIN=$PWD/target/release/edgelink
OUT=bench/out/create-$(date -u +%Y%m%dT%H%M%SZ); mkdir -p "$OUT"
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; return 1; }
PIDS=()
trap 'for p in "${PIDS[@]:-}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true' EXIT

psql "$PG_ADMIN" -qc 'DROP DATABASE IF EXISTS edgelink_bench_create WITH (FORCE)' -c 'CREATE DATABASE edgelink_bench_create' >/dev/null
RUST_LOG=warn "$BIN" migrate --postgres-url "$PG_URL" >/dev/null
KP_ADMIN=$(port); TOKEN=bench-create-token-0123456789
EDGELINK_ADMIN_TOKEN=$TOKEN EDGELINK_KEYPOOL_LOW_WATERMARK=200000 EDGELINK_KEYPOOL_HIGH_WATERMARK=300000 RUST_LOG=warn \
  "${SERVER_PIN[@]}" "$BIN" keypool --postgres-url "$PG_URL" --admin-listen "127.0.0.1:$KP_ADMIN" & PIDS+=($!)
for _ in $(seq 1 300); do
  free=$(curl -fsS -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$KP_ADMIN/admin/keypool" 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["free"])' 2>/dev/null || echo 0)
  [ "$free" -ge 300000 ] && break; sleep 0.2
done
KEY=$(RUST_LOG=warn "$BIN" apikey create --name bench --postgres-url "$PG_URL" 2>/dev/null)
API=$(port); ADMIN=$(port)
RUST_LOG=warn EDGELINK_KEYPOOL_LEASE_BATCH=2000 "${SERVER_PIN[@]}" "$BIN" origin --postgres-url "$PG_URL" \
  --listen "127.0.0.1:$API" --admin-listen "127.0.0.1:$ADMIN" & PIDS+=($!)
wait_port "$API"
for r in $(seq 1 "$ROUNDS"); do
  "${LOAD_PIN[@]}" oha --no-tui -z "$DURATION" -c "$CONNS" -m POST -T application/json \
    -H "Authorization: Bearer $KEY" -d '{"url": "https://example.com/landing?campaign=bench"}' \
    --output-format json -o "$OUT/round$r.json" "http://127.0.0.1:$API/api/v1/links"
  python3 - "$OUT/round$r.json" "$r" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
s, p = d["summary"], d["latencyPercentiles"]
codes = d.get("statusCodeDistribution", {})
print(f"round {sys.argv[2]}: {s['requestsPerSec']:.0f} creates/s  p50 {p['p50']*1000:.2f} ms  p99 {p['p99']*1000:.2f} ms  statuses {codes}")
PY
done
stored=$(psql "$PG_URL" -Atc 'SELECT count(*) FROM links')
echo "links stored: $stored; $(nproc) CPUs, $(lscpu | sed -n 's/^Model name: *//p' | head -1); raw: $OUT"
