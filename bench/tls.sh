#!/usr/bin/env bash
# TLS cache-hit throughput: the edge against nginx `return 302`, both
# terminating TLS with the same certificate, in the same run; plain HTTP too,
# so the cost of TLS on each side is seen beside the comparison.
#
#   bench/tls.sh
#
# Seeds BENCH_N links (10,000) into SQLite, starts `edgelink serve` with a
# [tls] certificate (ECDSA P-256, made here with openssl) and nginx (2
# workers, access log off, the same certificate, TLS 1.2/1.3, keep-alive
# without a request cap), warms every code, then alternates nginx and the edge
# for BENCH_ROUNDS (5) rounds of wrk -t1 -cBENCH_CONNS (64) -dBENCH_DURATION
# (10s) with uniform draws, over https and over http. Prints the medians and
# wrk's latency percentiles; raw outputs in bench/out/tls-<stamp>/.
# Knobs: BENCH_BIN (a release binary; default: build this tree),
# BENCH_EDGE_WORKERS (edge threads; 0 = one per core), BENCH_PIN
# ("SERVER_CPUS:LOAD_CPUS", e.g. "1:0").
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
. "$ROOT/bench/lib.sh"
N=${BENCH_N:-10000}
ROUNDS=${BENCH_ROUNDS:-5}
DURATION=${BENCH_DURATION:-10s}
CONNS=${BENCH_CONNS:-64}
SERVER_PIN=(); LOAD_PIN=()
if [ -n "${BENCH_PIN:-}" ]; then SERVER_PIN=(taskset -c "${BENCH_PIN%%:*}"); LOAD_PIN=(taskset -c "${BENCH_PIN##*:}"); fi
for tool in wrk nginx openssl python3 curl; do
  command -v "$tool" >/dev/null || { echo "missing $tool (Debian: apt-get install wrk nginx-light openssl curl)" >&2; exit 1; }
done
if [ -z "${BENCH_BIN:-}" ]; then cargo build --release --quiet; BENCH_BIN=$ROOT/target/release/edgelink; fi
BIN=$BENCH_BIN
OUT=$ROOT/bench/out/tls-$(date -u +%Y%m%dT%H%M%SZ); mkdir -p "$OUT/nginx/logs"
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; echo "nothing on $1" >&2; return 1; }
PIDS=()
trap 'for p in "${PIDS[@]:-}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true' EXIT

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=localhost \
  -addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout "$OUT/key.pem" -out "$OUT/cert.pem" 2>/dev/null
seed_csv "$N" "$OUT/links.csv"
RUST_LOG=warn "$BIN" import "$OUT/links.csv" --sqlite "$OUT/edge.db" >/dev/null
cp "$OUT/edge.db" "$OUT/edge-plain.db"   # each `serve` its own file (each runs a key pool writer)

NG_TLS=$(port); NG_PLAIN=$(port)
nginx_conf "$OUT/nginx" 2 "        listen 127.0.0.1:$NG_TLS ssl;
        listen 127.0.0.1:$NG_PLAIN;
        ssl_certificate $OUT/cert.pem;
        ssl_certificate_key $OUT/key.pem;" "    ssl_protocols TLSv1.2 TLSv1.3;"
"${SERVER_PIN[@]}" nginx -p "$OUT/nginx" -c "$OUT/nginx/nginx.conf" -g 'daemon off;' & PIDS+=($!)

# The edge: TLS on the public listener, plain HTTP on a second `serve` of a
# copy of the same links.
ED_TLS=$(port); ED_PLAIN=$(port)
cat > "$OUT/edge.toml" <<TOML
[server]
workers = ${BENCH_EDGE_WORKERS:-0}
[cache]
ttl_secs = 3600
[[tls.certificates]]
cert = "$OUT/cert.pem"
key = "$OUT/key.pem"
TOML
RUST_LOG=warn "${SERVER_PIN[@]}" "$BIN" serve --config "$OUT/edge.toml" --sqlite "$OUT/edge.db" \
  --listen "127.0.0.1:$ED_TLS" --admin-listen "127.0.0.1:$(port)" 2> "$OUT/edge-tls.log" & PIDS+=($!)
RUST_LOG=warn EDGELINK_SERVER_WORKERS=${BENCH_EDGE_WORKERS:-0} EDGELINK_CACHE_TTL_SECS=3600 "${SERVER_PIN[@]}" "$BIN" serve \
  --sqlite "$OUT/edge-plain.db" --listen "127.0.0.1:$ED_PLAIN" --admin-listen "127.0.0.1:$(port)" 2> "$OUT/edge-plain.log" & PIDS+=($!)
for p in $NG_TLS $NG_PLAIN $ED_TLS $ED_PLAIN; do wait_port "$p"; done
code=$(curl -sk -o /dev/null -w '%{http_code}' "https://127.0.0.1:$ED_TLS/k0000000")
[ "$code" = 302 ] || { echo "edge over TLS answered $code" >&2; exit 1; }

export BENCH_N=$N
for url in "https://127.0.0.1:$ED_TLS" "http://127.0.0.1:$ED_PLAIN"; do
  BENCH_DIST=seq "${LOAD_PIN[@]}" wrk -t1 -c"$CONNS" -d"$(( N / 5000 + 3 ))s" -s bench/wrk/codes.lua "$url" >/dev/null
done
for r in $(seq 1 "$ROUNDS"); do
  for scheme in https http; do
    for target in nginx edge; do
      case "$target-$scheme" in
        nginx-https) p=$NG_TLS ;; nginx-http) p=$NG_PLAIN ;; edge-https) p=$ED_TLS ;; edge-http) p=$ED_PLAIN ;;
      esac
      BENCH_DIST=uniform "${LOAD_PIN[@]}" wrk -t1 -c"$CONNS" -d"$DURATION" --latency -s bench/wrk/codes.lua \
        "$scheme://127.0.0.1:$p" > "$OUT/$scheme-$target-$r.txt"
      echo "round $r $scheme $target: $(grep Requests/sec "$OUT/$scheme-$target-$r.txt")" >&2
    done
  done
done
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
print(f"| scheme | target | req/s (median of {rounds}) | rounds | p50 / p90 / p99 (median round) | non-3xx | socket errors |")
print("|---|---|---|---|---|---|---|")
med = {}
for scheme in ("https", "http"):
    for target in ("nginx", "edge"):
        runs = [parse(out / f"{scheme}-{target}-{r}.txt") for r in range(1, rounds + 1)]
        rps = [r[0] for r in runs]
        m = statistics.median(rps)
        med[scheme, target] = m
        mid = sorted(runs, key=lambda r: r[0])[len(runs) // 2]
        lat = " / ".join(mid[1].get(k, "?") for k in ("50", "90", "99"))
        bad = sum(int(r[2]) for r in runs)
        errs = "; ".join(sorted({r[3] for r in runs}))
        print(f"| {scheme} | {target} | {m:.0f} | {', '.join(f'{x:.0f}' for x in rps)} | {lat} | {bad} | {errs} |")
for scheme in ("https", "http"):
    print(f"\n{scheme}: edge / nginx = {med[scheme, 'edge'] / med[scheme, 'nginx']:.2f}x")
PY
echo "$(nproc) CPUs, $(lscpu | sed -n 's/^Model name: *//p' | head -1); nginx $(nginx -v 2>&1 | sed 's/.*: //'); tree $(git rev-parse --short HEAD); binary $BIN; raw: $OUT"
