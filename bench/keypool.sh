#!/usr/bin/env bash
# Key generation: how long the key pool takes to generate BENCH_KEYS keys
# (default 1,000,000) into PostgreSQL, in batches of BENCH_BATCH (100,000),
# one transaction each. Runs `edgelink keypool` against a fresh database
# with the low watermark just under the target, so its first refill makes
# all of them, and reads the refill's duration from /admin/keypool.
#
#   bench/keypool.sh            (BENCH_ROUNDS rounds, default 3; prints the
#                                durations and their median)
#
# Knobs: BENCH_KEYS, BENCH_BATCH, BENCH_ROUNDS, BENCH_POSTGRES_URL (admin URL;
# a database edgelink_bench_keys is recreated each round).
set -euo pipefail
export PGOPTIONS=--client-min-messages=warning
cd "$(dirname "$0")/.."
KEYS=${BENCH_KEYS:-1000000}
BATCH=${BENCH_BATCH:-100000}
ROUNDS=${BENCH_ROUNDS:-3}
PG_ADMIN=${BENCH_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}
PG_URL=${PG_ADMIN%/*}/edgelink_bench_keys
TOKEN=bench-token-$(date +%s)-0123456789

cargo build --release --quiet
BIN=$PWD/target/release/edgelink
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

durations=()
for r in $(seq 1 "$ROUNDS"); do
  psql "$PG_ADMIN" -qc 'DROP DATABASE IF EXISTS edgelink_bench_keys WITH (FORCE)' -c 'CREATE DATABASE edgelink_bench_keys' >/dev/null
  RUST_LOG=warn "$BIN" migrate --postgres-url "$PG_URL" >/dev/null
  ADMIN=127.0.0.1:$(port)
  EDGELINK_ADMIN_TOKEN=$TOKEN EDGELINK_KEYPOOL_LOW_WATERMARK=$((KEYS - 1)) \
  EDGELINK_KEYPOOL_HIGH_WATERMARK=$KEYS EDGELINK_KEYPOOL_BATCH_SIZE=$BATCH RUST_LOG=warn \
    "$BIN" keypool --postgres-url "$PG_URL" --admin-listen "$ADMIN" &
  PID=$!
  ms=""
  for _ in $(seq 1 600); do
    ms=$(curl -fsS -H "Authorization: Bearer $TOKEN" "http://$ADMIN/admin/keypool" 2>/dev/null \
      | python3 -c 'import json,sys; d=json.load(sys.stdin); r=d["last_refill"]; print(r["duration_ms"] if r and d["free"] >= '"$KEYS"' else "")' 2>/dev/null || true)
    [ -n "$ms" ] && break
    sleep 0.2
  done
  kill "$PID"; wait "$PID" 2>/dev/null || true
  [ -n "$ms" ] || { echo "round $r: the pool never reached $KEYS keys" >&2; exit 1; }
  echo "round $r: $KEYS keys in $ms ms ($(( KEYS * 1000 / (ms > 0 ? ms : 1) )) keys/s)"
  durations+=("$ms")
done
median=$(printf '%s\n' "${durations[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
echo "median: $KEYS keys in $median ms; batches of $BATCH; $(nproc) CPUs, $(lscpu | sed -n 's/^Model name: *//p' | head -1)"
psql "$PG_ADMIN" -qc 'DROP DATABASE IF EXISTS edgelink_bench_keys WITH (FORCE)' >/dev/null
