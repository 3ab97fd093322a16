//! What a run counted: each answer's latency and send lag ([`Tally`]),
//! the answer parser, and the percentiles printed and written as JSON
//! ([`Summary`]).

use std::collections::BTreeMap;
use std::time::Duration;

use crate::{Args, MAX_ANSWER};

/// What a run counted; latencies and lags of recorded requests only.
#[derive(Default)]
pub(crate) struct Tally {
    pub(crate) latency_ns: Vec<u64>,
    pub(crate) lag_ns: Vec<u64>,
    /// Answers by status, recorded requests only.
    pub(crate) statuses: BTreeMap<u16, u64>,
    pub(crate) sent: u64,
    pub(crate) answered: u64,
    /// Requests that got no whole answer (write failed, connection closed
    /// or answer unreadable, or still out after the drain).
    pub(crate) errors: u64,
    pub(crate) reconnects: u64,
    /// (due, latency) in ns from the start, of recorded requests slower
    /// than `--slow-ms`, when `--slow-log` is given.
    pub(crate) slow: Vec<(u64, u64)>,
    /// First error seen, for the report.
    pub(crate) first_error: Option<String>,
}

impl Tally {
    pub(crate) fn error(&mut self, what: impl FnOnce() -> String) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(what());
        }
    }
}

/// An answer parsed off the front of a connection's buffer.
pub(crate) enum Parsed {
    /// Head and body are `len` bytes; the server will close after it.
    Whole {
        status: u16,
        len: usize,
        close: bool,
    },
    More,
    Bad(String),
}

pub(crate) fn parse(buf: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut answer = httparse::Response::new(&mut headers);
    let head = match answer.parse(buf) {
        Ok(httparse::Status::Complete(head)) => head,
        Ok(httparse::Status::Partial) if buf.len() < MAX_ANSWER => return Parsed::More,
        Ok(httparse::Status::Partial) => return Parsed::Bad("answer head too large".into()),
        Err(e) => return Parsed::Bad(format!("unparsable answer: {e}")),
    };
    let status = answer.code.unwrap_or(0);
    let mut body = None;
    let mut close = false;
    for h in answer.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            match std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
            {
                Some(n) if n <= MAX_ANSWER => body = Some(n),
                _ => return Parsed::Bad("bad or too large Content-Length".into()),
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Parsed::Bad("chunked answers are not supported".into());
        } else if h.name.eq_ignore_ascii_case("connection") {
            close |= h.value.eq_ignore_ascii_case(b"close");
        }
    }
    let body = match body {
        Some(n) => n,
        None if status == 204 || status == 304 || (100..200).contains(&status) => 0,
        None => return Parsed::Bad(format!("a {status} answer without Content-Length")),
    };
    if buf.len() < head + body {
        return Parsed::More;
    }
    Parsed::Whole {
        status,
        len: head + body,
        close,
    }
}

pub(crate) fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Percentiles of a set of nanosecond figures, in milliseconds.
pub(crate) fn percentiles(mut ns: Vec<u64>) -> serde_json::Value {
    if ns.is_empty() {
        return serde_json::Value::Null;
    }
    ns.sort_unstable();
    let at = |q: f64| {
        let rank = (q * ns.len() as f64).ceil() as usize;
        ms(ns[rank.clamp(1, ns.len()) - 1])
    };
    let mean = ns.iter().map(|&v| v as f64).sum::<f64>() / ns.len() as f64 / 1e6;
    serde_json::json!({
        "p50": at(0.50),
        "p90": at(0.90),
        "p99": at(0.99),
        "p99.9": at(0.999),
        "max": ms(ns[ns.len() - 1]),
        "mean": (mean * 1000.0).round() / 1000.0,
    })
}

/// Milliseconds to the microsecond.
pub(crate) fn ms(ns: u64) -> f64 {
    (ns / 1000) as f64 / 1000.0
}

/// The run's summary, as printed and as written with `--json`, and the
/// lines for `--slow-log`.
pub(crate) struct Summary(pub(crate) serde_json::Value, pub(crate) Option<String>);

impl Summary {
    pub(crate) fn new(args: &Args, tally: Tally, unsent: u64, elapsed: Duration) -> Summary {
        let slow = args.slow_log.as_ref().map(|_| {
            let mut lines = String::from("# due_ms latency_ms\n");
            for (at, ns) in &tally.slow {
                lines.push_str(&format!(
                    "{:.3} {:.3}\n",
                    *at as f64 / 1e6,
                    *ns as f64 / 1e6
                ));
            }
            lines
        });
        let statuses: serde_json::Map<String, serde_json::Value> = tally
            .statuses
            .iter()
            .map(|(s, n)| (s.to_string(), (*n).into()))
            .collect();
        Summary(
            serde_json::json!({
                "addr": args.addr.to_string(),
                "rate": args.rate,
                "duration_s": args.duration,
                "warmup_s": args.warmup,
                "connections": args.connections,
                "scheduled": args.rate * args.duration,
                "sent": tally.sent,
                "unsent": unsent,
                "answered": tally.answered,
                "errors": tally.errors,
                "reconnects": tally.reconnects,
                "first_error": tally.first_error,
                "elapsed_s": (elapsed.as_secs_f64() * 1000.0).round() / 1000.0,
                "recorded": tally.latency_ns.len(),
                "status": statuses,
                "latency_ms": percentiles(tally.latency_ns),
                "send_lag_ms": percentiles(tally.lag_ns),
            }),
            slow,
        )
    }

    pub(crate) fn print(&self) {
        let v = &self.0;
        println!(
            "{} req/s for {} s to {} over {} connections (first {} s not recorded)",
            v["rate"], v["duration_s"], v["addr"], v["connections"], v["warmup_s"]
        );
        println!(
            "sent {} of {} ({} never sent), answered {}, errors {}, reconnects {}",
            v["sent"], v["scheduled"], v["unsent"], v["answered"], v["errors"], v["reconnects"]
        );
        if let Some(e) = v["first_error"].as_str() {
            println!("first error: {e}");
        }
        println!("recorded {}, status {}", v["recorded"], v["status"]);
        for (name, key) in [("latency", "latency_ms"), ("send lag", "send_lag_ms")] {
            let p = &v[key];
            println!(
                "{name} ms: p50 {} p90 {} p99 {} p99.9 {} max {} mean {}",
                p["p50"], p["p90"], p["p99"], p["p99.9"], p["max"], p["mean"]
            );
        }
    }
}
