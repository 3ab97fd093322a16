#!/usr/bin/env bash
# The cost of click counting on cache hits: the edge with analytics on
# against the same edge with it off, and nginx `return 302` as the
# baseline, in the same run.
#
#   bench/clicks.sh
#
# Seeds BENCH_N links (10,000) into two SQLite files, starts two `edgelink
# serve` (analytics.enabled true and false; everything else the defaults,
# so the counting edge flushes every second into its SQLite file) and nginx
# (2 workers, access log off), warms every code, then alternates nginx, the
# counting edge and the other for BENCH_ROUNDS (5) rounds of
# wrk -t1 -cBENCH_CONNS (64) -dBENCH_DURATION (10s) with uniform draws and a
# browser's User-Agent on every request (what the bot check reads). Prints
# medians, wrk's latency percentiles and the clicks the counting edge
# wrote; raw outputs in bench/out/clicks-<stamp>/.
# Knobs: BENCH_BIN (a release binary; default: build this tree), BENCH_PIN
# ("SERVER_CPUS:LOAD_CPUS", e.g. "1:0"), BENCH_FLUSH_MS (the counting
# edge's analytics.flush_interval_ms, default 1000).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
. "$ROOT/bench/lib.sh"
N=${BENCH_N:-10000}
ROUNDS=${BENCH_ROUNDS:-5}
DURATION=${BENCH_DURATION:-10s}
CONNS=${BENCH_CONNS:-64}
UA="Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"
SERVER_PIN=(); LOAD_PIN=()
if [ -n "${BENCH_PIN:-}" ]; then SERVER_PIN=(taskset -c "${BENCH_PIN%%:*}"); LOAD_PIN=(taskset -c "${BENCH_PIN##*:}"); fi
for tool in wrk nginx python3 curl; do
  command -v "$tool" >/dev/null || { echo "missing $tool (Debian: apt-get install wrk nginx-light curl)" >&2; exit 1; }
done
if [ -z "${BENCH_BIN:-}" ]; then cargo build --release --quiet; BENCH_BIN=$ROOT/target/release/edgelink; fi
BIN=$BENCH_BIN
OUT=$ROOT/bench/out/clicks-$(date -u +%Y%m%dT%H%M%SZ); mkdir -p "$OUT/nginx/logs"
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; echo "nothing on $1" >&2; return 1; }
PIDS=()
trap 'for p in "${PIDS[@]:-}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true' EXIT

seed_csv "$N" "$OUT/links.csv"
RUST_LOG=warn "$BIN" import "$OUT/links.csv" --sqlite "$OUT/on.db" >/dev/null
cp "$OUT/on.db" "$OUT/off.db"

NG=$(port)
nginx_conf "$OUT/nginx" 2 "        listen 127.0.0.1:$NG;"
"${SERVER_PIN[@]}" nginx -p "$OUT/nginx" -c "$OUT/nginx/nginx.conf" -g 'daemon off;' & PIDS+=($!)
ON=$(port); OFF=$(port); ON_ADMIN=$(port)
RUST_LOG=warn EDGELINK_CACHE_TTL_SECS=3600 EDGELINK_ANALYTICS_FLUSH_INTERVAL_MS=${BENCH_FLUSH_MS:-1000} \
  "${SERVER_PIN[@]}" "$BIN" serve --sqlite "$OUT/on.db" \
  --listen "127.0.0.1:$ON" --admin-listen "127.0.0.1:$ON_ADMIN" 2> "$OUT/on.log" & PIDS+=($!)
RUST_LOG=warn EDGELINK_CACHE_TTL_SECS=3600 EDGELINK_ANALYTICS_ENABLED=false "${SERVER_PIN[@]}" "$BIN" serve \
  --sqlite "$OUT/off.db" --listen "127.0.0.1:$OFF" --admin-listen "127.0.0.1:$(port)" 2> "$OUT/off.log" & PIDS+=($!)
for p in $NG $ON $OFF; do wait_port "$p"; done
code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$ON/k0000000")
[ "$code" = 302 ] || { echo "edge answered $code" >&2; exit 1; }

export BENCH_N=$N
for p in $ON $OFF; do
  BENCH_DIST=seq "${LOAD_PIN[@]}" wrk -t1 -c"$CONNS" -d"$(( N / 5000 + 3 ))s" -s bench/wrk/codes.lua "http://127.0.0.1:$p" >/dev/null
done
for r in $(seq 1 "$ROUNDS"); do
  for target in nginx on off; do
    case $target in nginx) p=$NG ;; on) p=$ON ;; off) p=$OFF ;; esac
    BENCH_DIST=uniform "${LOAD_PIN[@]}" wrk -t1 -c"$CONNS" -d"$DURATION" --latency -H "User-Agent: $UA" \
      -s bench/wrk/codes.lua "http://127.0.0.1:$p" > "$OUT/$target-$r.txt"
    echo "round $r $target: $(grep Requests/sec "$OUT/$target-$r.txt")" >&2
  done
done
# The last flushes: wait until nothing is pending (a flush may wait for the
# SQLite writer while `serve` still fills its key pool).
for _ in $(seq 1 60); do
  pending=$(curl -s "http://127.0.0.1:$ON_ADMIN/metrics" | awk '$1 == "edgelink_clicks_pending" { print $2 }')
  [ "${pending:-1}" = 0 ] && break
  sleep 0.5
done
sleep 1.5   # counts of the last second, not yet pending when read
served=$(curl -s "http://127.0.0.1:$ON_ADMIN/metrics" | awk '/^edgelink_http_requests_total\{status="302"/ {s += $2} END {print s}')
written=$(curl -s "http://127.0.0.1:$ON_ADMIN/metrics" | awk '/^edgelink_clicks_total\{/ {s += $2} END {print s}')
python3 - "$OUT" "$ROUNDS" <<'PY'
import re, statistics, sys, pathlib
out, rounds = pathlib.Path(sys.argv[1]), int(sys.argv[2])
def parse(p):
    t = p.read_text()
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", t).group(1))
    lat = dict(re.findall(r"^\s+(50|90|99)%\s+([\d.]+\w+)", t, re.M))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", t)
    errs = re.search(r"Socket errors: (.*)", t)
    return rps, lat, (bad.group(1) if bad else "0"), (errs.group(1) if errs else "none")
names = {"nginx": "nginx return 302", "on": "edge, counting on", "off": "edge, counting off"}
print(f"| target | req/s (median of {rounds}) | rounds | p50 / p90 / p99 (median round) | non-3xx | socket errors |")
print("|---|---|---|---|---|---|")
med = {}
for target in ("nginx", "on", "off"):
    runs = [parse(out / f"{target}-{r}.txt") for r in range(1, rounds + 1)]
    rps = [r[0] for r in runs]
    med[target] = statistics.median(rps)
    mid = sorted(runs, key=lambda r: r[0])[len(runs) // 2]
    lat = " / ".join(mid[1].get(k, "?") for k in ("50", "90", "99"))
    print(f"| {names[target]} | {med[target]:.0f} | {', '.join(f'{x:.0f}' for x in rps)} | {lat} | {sum(int(r[2]) for r in runs)} | {'; '.join(sorted({r[3] for r in runs}))} |")
print(f"\ncounting on / off = {med['on'] / med['off']:.3f}x (cost {100 * (1 - med['on'] / med['off']):.1f}%); "
      f"on / nginx = {med['on'] / med['nginx']:.2f}x; off / nginx = {med['off'] / med['nginx']:.2f}x")
PY
echo "clicks: the counting edge answered $served redirects (warm-up included) and wrote $written clicks"
echo "$(nproc) CPUs, $(lscpu | sed -n 's/^Model name: *//p' | head -1); nginx $(nginx -v 2>&1 | sed 's/.*: //'); tree $(git rev-parse --short HEAD); binary $BIN; raw: $OUT"
