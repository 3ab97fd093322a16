#!/usr/bin/env python3
"""Summarises a bench/run.sh output folder.

  report.py half-rate OUT MODE   -> half of nginx's median uniform req/s (for oha -q)
  report.py report OUT COMMAND   -> bench/RESULTS.md on stdout
"""
import glob
import json
import os
import re
import statistics
import sys

UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0}


def wrk(path):
    text = open(path).read()
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    requests = int(re.search(r"(\d+) requests in", text).group(1))
    # Server CPU (user + system) per request, from run.sh's /proc reading.
    cpu = path[: -len(".wrk.txt")] + ".cpu"
    cpu_us = float("nan")
    if os.path.exists(cpu):
        ticks, hz = open(cpu).read().split()
        cpu_us = int(ticks) / int(hz) / requests * 1e6
    lat = {}
    for pct, val, unit in re.findall(r"^\s+(\d+)%\s+([\d.]+)(us|ms|s)\s*$", text, re.M):
        lat[int(pct)] = float(val) * UNITS[unit]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    errors = re.search(r"Socket errors: (.*)", text)
    return {
        "rps": rps,
        "cpu_us": cpu_us,
        "lat": lat,
        "bad": int(bad.group(1)) if bad else 0,
        "errors": errors.group(1).strip() if errors else "",
    }


def runs(out, pattern, parse):
    return [parse(p) for p in sorted(glob.glob(os.path.join(out, pattern)))]


def oha(path):
    d = json.load(open(path))
    return {
        "rps": d["summary"]["requestsPerSec"],
        "lat": d["latencyPercentiles"],
        "status": d.get("statusCodeDistribution", {}),
        "errors": d.get("errorDistribution", {}),
        "success": d["summary"]["successRate"],
    }


def load(path):
    """An edgelink-load summary (bench/load): latencies in ms."""
    return json.load(open(path))


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def ms(x):
    return f"{x * 1000:.3f} ms"


def half_rate(out, mode):
    r = runs(out, f"{mode}-wrk-uniform-nginx-*.wrk.txt", wrk)
    print(int(median([x["rps"] for x in r]) / 2))


def report(out, command):
    machine = open(os.path.join(out, "machine.txt")).read().strip()
    stamp = os.path.basename(out.rstrip("/"))
    lines = [
        "# Benchmark results",
        "",
        f"Run `{stamp}` (UTC). Command: `{command}` from the repository root.",
        "",
        "```",
        machine,
        "```",
        "",
        "Method: nginx `return 302` (2 workers, access log off) is the baseline; the edge runs",
        "with its defaults (one runtime thread per core) and `EDGELINK_CACHE_TTL_SECS=3600`. Both",
        "share the machine's cores with the load generator. Every code of the seeded set is",
        "requested once before measuring, so the edge answers from tier 0 (cache hits; the",
        "lookup count during measurement below proves it). Closed loop: `wrk` with",
        "`bench/wrk/codes.lua`, nginx and edge alternating (A B A B ...); each figure is the",
        "median of the rounds, every round listed. Server CPU per request: the user and system",
        "time of all the server's threads (nginx: master and workers) over a round, from",
        "`/proc`, divided by the requests wrk counted; on a shared box it moves less than req/s",
        "does, and it is what the throughput ratio comes down to when the load generator and",
        "the server share the cores. Open loop, at a fixed rate of half nginx's median uniform",
        "req/s (the issue's target point): `oha` (`--latency-correction`, redirects not",
        "followed), then `edgelink-load` (bench/load: one thread; each request is due at its",
        "slot whatever came before, and its latency runs from that slot, so waiting for a",
        "free connection counts; the first second is left out). Its send lag (slot to",
        "written) shows whether the generator kept its schedule: a large lag with the server",
        "idle is the generator's, not the server's.",
        "",
    ]
    for mode in ("embedded", "distributed"):
        meta_path = os.path.join(out, f"{mode}.meta.json")
        if not os.path.exists(meta_path):
            continue
        meta = json.load(open(meta_path))
        store = "SQLite" if mode == "embedded" else "Redis + PostgreSQL"
        workers = meta.get("edge_workers", 0)
        serving = meta.get("serving_threads")
        threads = (
            f"{workers} thread" + ("s" if workers != 1 else "")
            if workers
            else "one thread per core (default)" + (f": {serving} here" if serving else "")
        )
        pin = meta.get("pin", "")
        where = (
            f"; servers pinned to CPU {pin.split(':')[0]}, load generator to CPU {pin.split(':')[1]}"
            if pin
            else ""
        )
        clicks = "" if meta.get("clicks", "on") == "on" else ", click counting off"
        lines += [f"## {mode} mode ({store} behind tier 0), edge with {threads}{where}{clicks}", ""]
        lines += [
            f"Tier 0 held {meta['entries']:.0f} entries after warm-up; "
            f"{meta['lookups_during_measurement']} backend lookups happened during measurement.",
            "",
            "| draw | nginx req/s | edge req/s | edge / nginx | server CPU per request, nginx / edge (edge / nginx) | nginx p50 / p99 | edge p50 / p99 | non-3xx, errors |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for dist in ("uniform", "zipf"):
            a = runs(out, f"{mode}-wrk-{dist}-nginx-*.wrk.txt", wrk)
            b = runs(out, f"{mode}-wrk-{dist}-edge-*.wrk.txt", wrk)
            if not a or not b:
                continue
            ra, rb = median([x["rps"] for x in a]), median([x["rps"] for x in b])
            fmt_runs = lambda xs: ", ".join(f"{x['rps']:.0f}" for x in xs)
            lat = lambda xs, p: median([x["lat"].get(p, float("nan")) for x in xs])
            bad = sum(x["bad"] for x in a + b)
            errs = "; ".join(sorted({x["errors"] for x in a + b if x["errors"]})) or "none"
            ca, cb = median([x["cpu_us"] for x in a]), median([x["cpu_us"] for x in b])
            lines.append(
                f"| {dist} | **{ra:.0f}** ({fmt_runs(a)}) | **{rb:.0f}** ({fmt_runs(b)}) "
                f"| **{rb / ra:.2f}×** | {ca:.2f} / {cb:.2f} us ({cb / ca:.2f}×) "
                f"| {ms(lat(a, 50))} / {ms(lat(a, 99))} "
                f"| {ms(lat(b, 50))} / {ms(lat(b, 99))} | {bad}, {errs} |"
            )
        lines += [
            "",
            "Open loop (oha, latency-corrected; median of rounds, every round's p99 listed):",
            "",
            "| rate | target | achieved req/s | p50 | p90 | p99 | p99.9 | statuses | errors |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for rate, target in [(r, t) for r in meta["rates"] for t in ("nginx", "edge")]:
            rs = runs(out, f"{mode}-oha{rate}-{target}-*.oha.json", oha)
            if not rs:
                continue
            p = lambda k: median([x["lat"].get(k) or float("nan") for x in rs])
            statuses = {}
            errors = {}
            for x in rs:
                for k, v in x["status"].items():
                    statuses[k] = statuses.get(k, 0) + v
                for k, v in x["errors"].items():
                    errors[k] = errors.get(k, 0) + v
            p99s = ", ".join(ms(x["lat"].get("p99") or float("nan")) for x in rs)
            lines.append(
                f"| {rate} | {target} | {median([x['rps'] for x in rs]):.0f} | {ms(p('p50'))} | {ms(p('p90'))} "
                f"| **{ms(p('p99'))}** ({p99s}) | {ms(p('p99.9'))} "
                f"| {json.dumps(statuses)} | {json.dumps(errors) if errors else 'none'} |"
            )
        lines += [
            "",
            "Open loop (edgelink-load, latency from each request's due time; median of rounds,",
            "every round's p99 listed; send lag = due to written):",
            "",
            "| rate | target | answered / scheduled | p50 | p90 | p99 | p99.9 | send lag p99 | statuses | errors |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for rate, target in [(r, t) for r in meta.get("load_rates", []) for t in ("nginx", "edge")]:
            rs = runs(out, f"{mode}-load{rate}-{target}-*.load.json", load)
            if not rs:
                continue
            p = lambda k: median([(x["latency_ms"] or {}).get(k, float("nan")) for x in rs])
            lag = median([(x["send_lag_ms"] or {}).get("p99", float("nan")) for x in rs])
            statuses = {}
            for x in rs:
                for k, v in x["status"].items():
                    statuses[k] = statuses.get(k, 0) + v
            errors = sum(x["errors"] for x in rs)
            first = next((x["first_error"] for x in rs if x["first_error"]), None)
            p99s = ", ".join(f"{(x['latency_ms'] or {}).get('p99', float('nan')):.3f}" for x in rs)
            answered = sum(x["answered"] for x in rs)
            scheduled = sum(x["scheduled"] for x in rs)
            lines.append(
                f"| {rate} | {target} | {answered} / {scheduled} | {p('p50'):.3f} ms | {p('p90'):.3f} ms "
                f"| **{p('p99'):.3f} ms** ({p99s}) | {p('p99.9'):.3f} ms | {lag:.3f} ms "
                f"| {json.dumps(statuses)} | {errors}{' (' + first + ')' if first else ''} |"
            )
        lines.append("")
    print("\n".join(lines))


if __name__ == "__main__":
    if sys.argv[1] == "half-rate":
        half_rate(sys.argv[2], sys.argv[3])
    elif sys.argv[1] == "report":
        report(sys.argv[2], sys.argv[3])
    else:
        sys.exit("usage: report.py half-rate OUT MODE | report OUT COMMAND")
