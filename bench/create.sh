#!/usr/bin/env bash
# Link creation throughput and latency of one origin on PostgreSQL.
#
#   bench/create.sh
#
# Starts a fresh database, `edgelink keypool` (fills the pool to 300,000
# keys), one `edgelink origin` and one `edgelink edge` proxying /api/ to it
# (creation rate limit off), creates an API key, then drives
# POST /api/v1/links with oha for BENCH_DURATION (10s) at BENCH_CONNS (32)
# connections, BENCH_ROUNDS (3) times, alternating the origin directly and
# through the edge (the cost of the proxy hop), and prints creates/s and
# latency percentiles; then the hop alone, on a route that reads no database
# (GET /api/v1/openapi.json, 5 s rounds). Knobs: BENCH_POSTGRES_URL (admin URL; a database
# edgelink_bench_create is recreated), BENCH_PIN ("SERVER_CPUS:LOAD_CPUS"),
# BENCH_VIA ("origin", "edge" or "both", the default), BENCH_BIN (a release
# binary; default: build this tree).
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
if [ -z "${BENCH_BIN:-}" ]; then cargo build --release --quiet; BENCH_BIN=$PWD/target/release/edgelink; fi
BIN=$BENCH_BIN
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
EDGE=$(port)
EDGELINK_PROXY_UPSTREAMS="http://127.0.0.1:$API" EDGELINK_LIMITS_CREATE_PER_SEC=0 RUST_LOG=warn \
  "${SERVER_PIN[@]}" "$BIN" edge --postgres-url "$PG_URL" --listen "127.0.0.1:$EDGE" --admin-listen "127.0.0.1:$(port)" & PIDS+=($!)
wait_port "$EDGE"
case "${BENCH_VIA:-both}" in origin) VIA=(origin) ;; edge) VIA=(edge) ;; *) VIA=(origin edge) ;; esac
for r in $(seq 1 "$ROUNDS"); do
  for via in "${VIA[@]}"; do
    [ "$via" = origin ] && p=$API || p=$EDGE
    "${LOAD_PIN[@]}" oha --no-tui -z "$DURATION" -c "$CONNS" -m POST -T application/json \
      -H "Authorization: Bearer $KEY" -d '{"url": "https://example.com/landing?campaign=bench"}' \
      --output-format json -o "$OUT/$via-round$r.json" "http://127.0.0.1:$p/api/v1/links"
    python3 - "$OUT/$via-round$r.json" "$r" "$via" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
s, p = d["summary"], d["latencyPercentiles"]
codes = d.get("statusCodeDistribution", {})
print(f"round {sys.argv[2]} {sys.argv[3]:>6}: {s['requestsPerSec']:.0f} creates/s  p50 {p['p50']*1000:.2f} ms  p99 {p['p99']*1000:.2f} ms  statuses {codes}")
PY
  done
done
python3 - "$OUT" "$ROUNDS" "${VIA[@]}" <<'PY'
import json, statistics, sys, pathlib
out, rounds, vias = pathlib.Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
med = {}
for via in vias:
    runs = [json.load(open(out / f"{via}-round{r}.json")) for r in range(1, rounds + 1)]
    med[via] = (statistics.median(r["summary"]["requestsPerSec"] for r in runs),
                statistics.median(r["latencyPercentiles"]["p50"] for r in runs) * 1000,
                statistics.median(r["latencyPercentiles"]["p99"] for r in runs) * 1000)
    print(f"median {via:>6}: {med[via][0]:.0f} creates/s  p50 {med[via][1]:.2f} ms  p99 {med[via][2]:.2f} ms")
if len(med) == 2:
    print(f"through the edge: {med['edge'][0] / med['origin'][0]:.2f}x the origin's creates/s, "
          f"p50 +{med['edge'][1] - med['origin'][1]:.2f} ms, p99 +{med['edge'][2] - med['origin'][2]:.2f} ms")
PY
# The hop alone: a route that touches no database (the OpenAPI document).
for r in $(seq 1 "$ROUNDS"); do
  for via in "${VIA[@]}"; do
    [ "$via" = origin ] && p=$API || p=$EDGE
    "${LOAD_PIN[@]}" oha --no-tui -z 5s -c "$CONNS" --output-format json -o "$OUT/$via-doc$r.json" \
      "http://127.0.0.1:$p/api/v1/openapi.json"
  done
done
python3 - "$OUT" "$ROUNDS" "${VIA[@]}" <<'PY'
import json, statistics, sys, pathlib
out, rounds, vias = pathlib.Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
for via in vias:
    runs = [json.load(open(out / f"{via}-doc{r}.json")) for r in range(1, rounds + 1)]
    rps = [r["summary"]["requestsPerSec"] for r in runs]
    p50 = statistics.median(r["latencyPercentiles"]["p50"] for r in runs) * 1000
    p99 = statistics.median(r["latencyPercentiles"]["p99"] for r in runs) * 1000
    print(f"GET /api/v1/openapi.json {via:>6}: median {statistics.median(rps):.0f} req/s ({', '.join(f'{x:.0f}' for x in rps)})  p50 {p50:.2f} ms  p99 {p99:.2f} ms")
PY
stored=$(psql "$PG_URL" -Atc 'SELECT count(*) FROM links')
echo "links stored: $stored; $(nproc) CPUs, $(lscpu | sed -n 's/^Model name: *//p' | head -1); raw: $OUT"
