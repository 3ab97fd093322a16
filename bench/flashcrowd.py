#!/usr/bin/env python3
"""Synthetic request-rate traces with flash crowds, for the autoscaling
simulator (`edgelink autoscale simulate --trace FILE`).

    bench/flashcrowd.py --days 21 --kind scheduled --out bench/out/scheduled.txt.gz
    bench/flashcrowd.py --days 21 --kind unannounced --out bench/out/unannounced.txt.gz

The trace is the per-second format of ../shared/traces/ (gzip, one integer
per second). Its base is a daily cycle (a trough at 04:00 and a peak at
16:00, local time of the trace's first second) with weekends at
--weekend of weekdays, at --base requests/s on average. On top of it:

- scheduled: a crowd every day at --at (local hour), the same every day
  (a newsletter, a daily live show): up --height times the base rate over
  --rise seconds, holding --hold seconds, back down over --decay seconds;
- unannounced: --count crowds at random times (seeded), of the same shape
  and random heights between 2 and --height.

Counts are Poisson draws around the rate, so the trace has the noise of its
own level. Deterministic for a given --seed.
"""
import argparse
import gzip
import math
import random


def shape(t, start, rise, hold, decay):
    """0 before start, up linearly over rise, 1 over hold, down over decay."""
    x = t - start
    if x < 0:
        return 0.0
    if x < rise:
        return x / rise
    if x < rise + hold:
        return 1.0
    x -= rise + hold
    return max(0.0, 1.0 - x / decay)


def poisson(rng, lam):
    if lam < 30:
        # Knuth, for small rates.
        l, k, p = math.exp(-lam), 0, 1.0
        while True:
            p *= rng.random()
            if p <= l:
                return k
            k += 1
    return max(0, int(round(rng.gauss(lam, math.sqrt(lam)))))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--days", type=int, default=21)
    ap.add_argument("--kind", choices=["scheduled", "unannounced"], required=True)
    ap.add_argument("--base", type=float, default=50.0, help="mean base rate, requests/s")
    ap.add_argument("--weekend", type=float, default=0.5)
    ap.add_argument("--height", type=float, default=5.0, help="crowd peak as a multiple of the base")
    ap.add_argument("--at", type=float, default=20.0, help="scheduled crowd's local hour")
    ap.add_argument("--rise", type=int, default=120)
    ap.add_argument("--hold", type=int, default=600)
    ap.add_argument("--decay", type=int, default=1200)
    ap.add_argument("--count", type=int, default=15, help="unannounced crowds")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    seconds = a.days * 86_400
    if a.kind == "scheduled":
        crowds = [(d * 86_400 + a.at * 3_600, a.height) for d in range(a.days)]
    else:
        # After the first week, so a forecaster's training days are calm.
        crowds = sorted((rng.uniform(7 * 86_400, seconds - 3_600), rng.uniform(2.0, a.height)) for _ in range(a.count))
    with gzip.open(a.out, "wt") as out:
        line = []
        for t in range(seconds):
            day = (t // 86_400) % 7
            daily = 1.0 + 0.6 * math.sin(2 * math.pi * ((t % 86_400) / 86_400 - 10 / 24))
            rate = a.base * daily * (a.weekend if day >= 5 else 1.0)
            boost = sum((h - 1.0) * shape(t, s, a.rise, a.hold, a.decay) for s, h in crowds if s - 1 <= t <= s + a.rise + a.hold + a.decay)
            line.append(str(poisson(rng, rate * (1.0 + boost))))
            if len(line) == 86_400:
                out.write(" ".join(line) + " ")
                line = []
        out.write(" ".join(line) + "\n")


if __name__ == "__main__":
    main()
