//! `edgelink-load`: open-loop HTTP/1.1 load at a fixed rate, with each
//! answer's latency measured from when its request was *due*.
//!
//! `bench/run.sh` measures latency at half nginx's rate. On this project's
//! 2-CPU machines oha could not send that rate from the one CPU the load
//! gets when the servers are pinned (`bench/RESULTS.md`): its requests go
//! through a tick channel and a multi-threaded runtime's scheduling, so at
//! high rates what it reports is partly its own queueing. This tool keeps
//! everything on one thread with nothing between a socket being readable
//! and the time being taken.
//!
//! # Model
//!
//! Request `k` is due at `start + k / rate`, whatever happened before (open
//! loop). It is written on any idle keep-alive connection as soon as it is
//! due; when none is idle it waits, and the wait counts in its latency, so a
//! stalled server cannot hide its stall by slowing the load down (no
//! coordinated omission). The send lag (due to written) is reported beside
//! the latency: when it is large while the server is idle, the generator
//! fell behind and the run says nothing about the server.
//!
//! Between sends the thread sleeps in epoll with a timerfd armed for the
//! next due time (epoll's own timeout is whole milliseconds), and polls
//! without sleeping when that time is under `--spin-us` away (50 µs: at
//! 75,000 req/s, a send every 13 µs, it then never sleeps).
//!
//! # Layout
//!
//! - [`Args`]: the command line.
//! - [`Requests`]: every request, pre-built from the path file.
//! - [`Conn`]: a keep-alive connection and its one request in flight.
//! - [`Load`]: the event loop; [`Tally`]: what it counted; [`Summary`]: the
//!   percentiles, printed and written as JSON.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use mio::net::TcpStream;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};

/// Open-loop HTTP/1.1 GETs at a fixed rate; latency from each request's due
/// time.
#[derive(Parser, Debug)]
#[command(name = "edgelink-load", version)]
struct Args {
    /// The server, IP:PORT (plain HTTP/1.1, keep-alive).
    addr: SocketAddr,
    /// Requests a second, due at even intervals.
    #[arg(long)]
    rate: u64,
    /// Seconds of load.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Leading seconds whose requests are sent but not recorded.
    #[arg(long, default_value_t = 1)]
    warmup: u64,
    /// Keep-alive connections.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Request paths, one a line, each starting with `/`; every request
    /// takes one at random (uniformly, seeded).
    #[arg(long)]
    paths: PathBuf,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Seconds to wait at the end for answers still out; those not back by
    /// then are errors.
    #[arg(long, default_value_t = 5)]
    drain: u64,
    /// Also write the summary here, as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write each recorded request slower than `--slow-ms` here, one a
    /// line: its due time (ms from the start) and its latency (ms); to see
    /// when stalls happen, e.g. against a once-a-second job.
    #[arg(long)]
    slow_log: Option<PathBuf>,
    #[arg(long, default_value_t = 1.0)]
    slow_ms: f64,
    /// A send due within this many microseconds is waited for by polling
    /// without sleeping rather than by the timer: a sleep and wake-up cost
    /// the thread several microseconds each, which at high rates is the
    /// lateness it reports. Spinning keeps its CPU busy: give it one of its
    /// own (`taskset`) or lower this.
    #[arg(long, default_value_t = 50)]
    spin_us: u64,
}

/// Largest answer head and body accepted.
const MAX_ANSWER: usize = 64 * 1024;
const TIMER: Token = Token(usize::MAX);

/// Every request's bytes, built once.
struct Requests {
    bytes: Vec<u8>,
    /// `bytes[ends[i - 1]..ends[i]]` is request `i`.
    ends: Vec<usize>,
}

impl Requests {
    fn build(paths: &str, addr: SocketAddr) -> Result<Requests, String> {
        let mut bytes = Vec::new();
        let mut ends = Vec::new();
        for (n, line) in paths.lines().enumerate() {
            let path = line.trim_end_matches('\r');
            if path.is_empty() {
                continue;
            }
            if !path.starts_with('/') || path.bytes().any(|b| b <= b' ' || b == 0x7f) {
                return Err(format!(
                    "line {}: a path starts with / and has no spaces or control bytes",
                    n + 1
                ));
            }
            write!(
                bytes,
                "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: edgelink-load/{}\r\n\r\n",
                env!("CARGO_PKG_VERSION")
            )
            .map_err(|e| e.to_string())?;
            ends.push(bytes.len());
        }
        if ends.is_empty() {
            return Err("no paths".into());
        }
        Ok(Requests { bytes, ends })
    }

    fn get(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.bytes[start..self.ends[i]]
    }
}

/// splitmix64: a seeded, repeatable choice of paths.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        // Multiply-shift: no modulo bias worth speaking of for n << 2^64.
        ((u128::from(z) * n as u128) >> 64) as usize
    }
}

struct Conn {
    stream: TcpStream,
    /// Bytes of the answer read so far.
    buf: Vec<u8>,
    /// The request in flight: its number and due time.
    out: Option<(u64, Instant)>,
}

fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_nodelay(true)?;
    stream.set_nonblocking(true)?;
    Ok(TcpStream::from_std(stream))
}

/// What a run counted; latencies and lags of recorded requests only.
#[derive(Default)]
struct Tally {
    latency_ns: Vec<u64>,
    lag_ns: Vec<u64>,
    /// Answers by status, recorded requests only.
    statuses: BTreeMap<u16, u64>,
    sent: u64,
    answered: u64,
    /// Requests that got no whole answer (write failed, connection closed
    /// or answer unreadable, or still out after the drain).
    errors: u64,
    reconnects: u64,
    /// (due, latency) in ns from the start, of recorded requests slower
    /// than `--slow-ms`, when `--slow-log` is given.
    slow: Vec<(u64, u64)>,
    /// First error seen, for the report.
    first_error: Option<String>,
}

impl Tally {
    fn error(&mut self, what: impl FnOnce() -> String) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(what());
        }
    }
}

/// An answer parsed off the front of a connection's buffer.
enum Parsed {
    /// Head and body are `len` bytes; the server will close after it.
    Whole {
        status: u16,
        len: usize,
        close: bool,
    },
    More,
    Bad(String),
}

fn parse(buf: &[u8]) -> Parsed {
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

/// The event loop's state.
struct Load<'a> {
    args: &'a Args,
    requests: &'a Requests,
    poll: Poll,
    conns: Vec<Option<Conn>>,
    idle: Vec<usize>,
    in_flight: usize,
    /// Requests numbered below this are not recorded.
    record_from: u64,
    /// When request 0 is due.
    start: Instant,
    /// Latency from which a request goes into `Tally::slow` (`u64::MAX`:
    /// none does).
    slow_ns: u64,
    tally: Tally,
}

impl Load<'_> {
    /// Replaces connection `c` (after an error or a `Connection: close`)
    /// and makes it idle; a request it had out is an error. A connection
    /// that cannot be re-made is gone for the rest of the run.
    fn reconnect(&mut self, c: usize, why: &str) {
        let mut was_idle = false;
        if let Some(mut old) = self.conns[c].take() {
            let _ = self.poll.registry().deregister(&mut old.stream);
            match old.out {
                Some((k, _)) => {
                    self.in_flight -= 1;
                    self.tally.error(|| format!("request {k}: {why}"));
                }
                None => was_idle = self.idle.contains(&c),
            }
        }
        if was_idle {
            self.idle.retain(|&i| i != c);
        }
        self.tally.reconnects += 1;
        match connect(self.args.addr) {
            Ok(mut stream) => {
                if let Err(e) =
                    self.poll
                        .registry()
                        .register(&mut stream, Token(c), Interest::READABLE)
                {
                    self.tally.error(|| format!("register: {e}"));
                    return;
                }
                self.conns[c] = Some(Conn {
                    stream,
                    buf: Vec::with_capacity(4096),
                    out: None,
                });
                self.idle.push(c);
            }
            Err(e) => self.tally.error(|| format!("reconnect: {e}")),
        }
    }

    /// Writes request `k`, due at `due`, on idle connection `c`.
    fn send(&mut self, c: usize, k: u64, due: Instant, rng: &mut Rng, now: Instant) {
        let req = self.requests.get(rng.below(self.requests.ends.len()));
        let Some(conn) = self.conns[c].as_mut() else {
            return;
        };
        self.tally.sent += 1;
        match conn.stream.write(req) {
            // An idle connection's send buffer is empty: a request of a few
            // dozen bytes is written whole or not at all.
            Ok(n) if n == req.len() => {
                conn.out = Some((k, due));
                self.in_flight += 1;
                if k >= self.record_from {
                    self.tally.lag_ns.push(nanos(now - due));
                }
            }
            Ok(_) => {
                self.tally.error(|| format!("request {k}: written in part"));
                self.reconnect(c, "written in part");
            }
            Err(e) => {
                self.tally.error(|| format!("request {k}: write: {e}"));
                self.reconnect(c, "write failed");
            }
        }
    }

    /// Reads what connection `c` has and takes whole answers off it.
    fn readable(&mut self, c: usize) {
        let mut chunk = [0u8; 8192];
        loop {
            let Some(conn) = self.conns[c].as_mut() else {
                return;
            };
            match conn.stream.read(&mut chunk) {
                Ok(0) => {
                    self.reconnect(c, "closed by the server");
                    return;
                }
                Ok(n) => conn.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.reconnect(c, &format!("read: {e}"));
                    return;
                }
            }
            let Some(conn) = self.conns[c].as_mut() else {
                return;
            };
            let Some((k, due)) = conn.out else {
                self.reconnect(c, "bytes with no request out");
                return;
            };
            match parse(&conn.buf) {
                Parsed::More => {}
                Parsed::Bad(why) => {
                    self.reconnect(c, &why);
                    return;
                }
                Parsed::Whole { status, len, close } => {
                    let latency = Instant::now().saturating_duration_since(due);
                    if conn.buf.len() > len {
                        self.reconnect(c, "bytes after the answer");
                        return;
                    }
                    conn.buf.clear();
                    conn.out = None;
                    self.in_flight -= 1;
                    self.tally.answered += 1;
                    if k >= self.record_from {
                        let ns = nanos(latency);
                        self.tally.latency_ns.push(ns);
                        if ns >= self.slow_ns {
                            let at = nanos(due.saturating_duration_since(self.start));
                            self.tally.slow.push((at, ns));
                        }
                        *self.tally.statuses.entry(status).or_default() += 1;
                    }
                    if close {
                        // Not an error: the answer was whole.
                        self.reconnect(c, "closed");
                    } else {
                        self.idle.push(c);
                    }
                    return;
                }
            }
        }
    }

    fn run(mut self) -> io::Result<(Tally, u64, Duration)> {
        let args = self.args;
        let timer = TimerFd::new(
            ClockId::CLOCK_MONOTONIC,
            TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
        )
        .map_err(io::Error::from)?;
        let timer_fd = timer.as_fd().as_raw_fd();
        self.poll
            .registry()
            .register(&mut SourceFd(&timer_fd), TIMER, Interest::READABLE)?;
        let mut events = Events::with_capacity(1024);
        let mut rng = Rng(args.seed);
        let total = args.rate * args.duration;
        let start = self.start;
        let due = |k: u64| {
            let ns = u128::from(k) * 1_000_000_000 / u128::from(args.rate);
            start + Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX))
        };
        let hard_end = due(total) + Duration::from_secs(args.drain);
        let mut k = 0u64;
        let mut armed: Option<Instant> = None;
        loop {
            let now = Instant::now();
            while k < total && due(k) <= now {
                let Some(c) = self.idle.pop() else { break };
                self.send(c, k, due(k), &mut rng, now);
                k += 1;
            }
            if (k >= total && self.in_flight == 0) || now >= hard_end {
                break;
            }
            if self.conns.iter().all(Option::is_none) {
                return Err(io::Error::other(format!(
                    "every connection is gone; first error: {}",
                    self.tally.first_error.as_deref().unwrap_or("none")
                )));
            }
            let timeout = if k < total && !self.idle.is_empty() {
                let next = due(k);
                let wait = next.saturating_duration_since(Instant::now());
                if wait <= Duration::from_micros(args.spin_us) {
                    Some(Duration::ZERO)
                } else {
                    if armed != Some(next) {
                        timer
                            .set(
                                Expiration::OneShot(TimeSpec::from_duration(wait)),
                                TimerSetTimeFlags::empty(),
                            )
                            .map_err(io::Error::from)?;
                        armed = Some(next);
                    }
                    // The timer wakes the poll; this bounds a lost wake.
                    Some(Duration::from_millis(100))
                }
            } else {
                // Waiting for answers (all connections busy, or the drain).
                Some(
                    hard_end
                        .saturating_duration_since(now)
                        .min(Duration::from_millis(100)),
                )
            };
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            for event in events.iter() {
                match event.token() {
                    TIMER => armed = None,
                    Token(c) => self.readable(c),
                }
            }
        }
        let elapsed = Instant::now().saturating_duration_since(start);
        let still_out = self.in_flight as u64;
        for _ in 0..still_out {
            self.tally
                .error(|| "no answer before the drain ended".into());
        }
        Ok((self.tally, total - k, elapsed))
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Percentiles of a set of nanosecond figures, in milliseconds.
fn percentiles(mut ns: Vec<u64>) -> serde_json::Value {
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
fn ms(ns: u64) -> f64 {
    (ns / 1000) as f64 / 1000.0
}

/// The run's summary, as printed and as written with `--json`, and the
/// lines for `--slow-log`.
struct Summary(serde_json::Value, Option<String>);

impl Summary {
    fn new(args: &Args, tally: Tally, unsent: u64, elapsed: Duration) -> Summary {
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

    fn print(&self) {
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

fn main() -> ExitCode {
    let args = Args::parse();
    let bad = |msg: String| {
        eprintln!("edgelink-load: {msg}");
        ExitCode::from(64)
    };
    if args.rate == 0 || args.connections == 0 || args.connections > 10_000 {
        return bad("--rate must be at least 1 and --connections 1..=10000".into());
    }
    if args.warmup >= args.duration {
        return bad("--warmup must be shorter than --duration".into());
    }
    let requests = match std::fs::read_to_string(&args.paths)
        .map_err(|e| format!("{}: {e}", args.paths.display()))
        .and_then(|text| Requests::build(&text, args.addr))
    {
        Ok(r) => r,
        Err(e) => return bad(e),
    };
    let summary = match measure(&args, &requests) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("edgelink-load: {e}");
            return ExitCode::FAILURE;
        }
    };
    summary.print();
    if let (Some(path), Some(slow)) = (&args.slow_log, &summary.1) {
        if let Err(e) = std::fs::write(path, slow) {
            eprintln!("edgelink-load: {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    if let Some(path) = &args.json {
        if let Err(e) = std::fs::write(path, summary.0.to_string()) {
            eprintln!("edgelink-load: {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

/// Connects, runs the load and sums it up.
fn measure(args: &Args, requests: &Requests) -> io::Result<Summary> {
    let poll = Poll::new()?;
    let mut conns = Vec::with_capacity(args.connections);
    for c in 0..args.connections {
        let mut stream = connect(args.addr)?;
        poll.registry()
            .register(&mut stream, Token(c), Interest::READABLE)?;
        conns.push(Some(Conn {
            stream,
            buf: Vec::with_capacity(4096),
            out: None,
        }));
    }
    let expected = usize::try_from(args.rate * (args.duration - args.warmup)).unwrap_or(0);
    let load = Load {
        args,
        requests,
        poll,
        conns,
        idle: (0..args.connections).rev().collect(),
        in_flight: 0,
        record_from: args.rate * args.warmup,
        start: Instant::now() + Duration::from_millis(20),
        slow_ns: match args.slow_log {
            Some(_) => (args.slow_ms.max(0.0) * 1e6) as u64,
            None => u64::MAX,
        },
        tally: Tally {
            latency_ns: Vec::with_capacity(expected),
            lag_ns: Vec::with_capacity(expected),
            ..Tally::default()
        },
    };
    let (tally, unsent, elapsed) = load.run()?;
    Ok(Summary::new(args, tally, unsent, elapsed))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn an_answer_is_whole_only_with_its_body() {
        let head = b"HTTP/1.1 302 Found\r\nLocation: /x\r\nContent-Length: 5\r\n\r\n";
        assert!(matches!(parse(head), Parsed::More));
        let mut whole = head.to_vec();
        whole.extend_from_slice(b"hello");
        match parse(&whole) {
            Parsed::Whole { status, len, close } => {
                assert_eq!((status, len, close), (302, whole.len(), false));
            }
            _ => panic!("a whole answer was not taken"),
        }
    }

    #[test]
    fn close_chunked_and_missing_lengths_are_told_apart() {
        let close = b"HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";
        assert!(matches!(parse(close), Parsed::Whole { close: true, .. }));
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(matches!(parse(chunked), Parsed::Bad(_)));
        let no_length = b"HTTP/1.1 200 OK\r\n\r\n";
        assert!(matches!(parse(no_length), Parsed::Bad(_)));
        let not_modified = b"HTTP/1.1 304 Not Modified\r\n\r\n";
        assert!(matches!(parse(not_modified), Parsed::Whole { len: 29, .. }));
    }

    #[test]
    fn paths_must_be_request_targets() {
        let addr: SocketAddr = "127.0.0.1:8080".parse().unwrap_or_else(|_| unreachable!());
        let r = Requests::build("/a\n\n/bc\r\n", addr).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.ends.len(), 2);
        assert!(r
            .get(1)
            .starts_with(b"GET /bc HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"));
        assert!(r.get(1).ends_with(b"\r\n\r\n"));
        assert!(Requests::build("a\n", addr).is_err());
        assert!(Requests::build("/a b\n", addr).is_err());
        assert!(Requests::build("\n", addr).is_err());
    }

    /// A server on a random loopback port that answers every request with
    /// a 302 and closes every `close_every`-th connection after its
    /// 50th answer (with `Connection: close`).
    fn server(close_every: usize) -> SocketAddr {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for (n, conn) in listener.incoming().enumerate() {
                let Ok(mut conn) = conn else { return };
                std::thread::spawn(move || {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    let mut answered = 0;
                    while let Ok(read) = conn.read(&mut chunk) {
                        if read == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..read]);
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            buf.drain(..end + 4);
                            answered += 1;
                            let close = n % close_every == 0 && answered == 50;
                            let answer = if close {
                                "HTTP/1.1 302 Found\r\nLocation: /x\r\nConnection: close\r\nContent-Length: 3\r\n\r\nbye"
                            } else {
                                "HTTP/1.1 302 Found\r\nLocation: /x\r\nContent-Length: 0\r\n\r\n"
                            };
                            if conn.write_all(answer.as_bytes()).is_err() || close {
                                return;
                            }
                        }
                    }
                });
            }
        });
        addr
    }

    fn args(addr: SocketAddr) -> Args {
        Args {
            addr,
            rate: 2_000,
            duration: 2,
            warmup: 1,
            connections: 8,
            paths: PathBuf::new(),
            seed: 1,
            drain: 2,
            json: None,
            slow_log: None,
            slow_ms: 1.0,
            spin_us: 50,
        }
    }

    #[test]
    fn every_scheduled_request_is_answered_and_the_second_second_recorded() {
        let addr = server(3);
        let requests = Requests::build("/a\n/b\n", addr).unwrap();
        let mut args = args(addr);
        args.slow_log = Some(PathBuf::from("unused"));
        args.slow_ms = 0.0;
        let Summary(summary, slow) = measure(&args, &requests).unwrap();
        // At a threshold of 0 every recorded request is "slow": one line
        // each, after the header.
        assert_eq!(slow.unwrap().lines().count(), 1 + 2_000);
        assert_eq!(summary["scheduled"], 4_000);
        assert_eq!(summary["sent"], 4_000);
        assert_eq!(summary["answered"], 4_000, "{summary}");
        assert_eq!(summary["errors"], 0, "{summary}");
        // Closed connections were replaced, losing nothing.
        assert!(summary["reconnects"].as_u64().unwrap() >= 1, "{summary}");
        assert_eq!(summary["recorded"], 2_000);
        assert_eq!(summary["status"]["302"], 2_000);
        let p99 = summary["latency_ms"]["p99"].as_f64().unwrap();
        assert!(p99 > 0.0, "{summary}");
    }

    #[test]
    fn a_server_that_never_answers_leaves_errors_not_a_hang() {
        // Accepts and reads, never writes.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                std::thread::spawn(move || {
                    let mut chunk = [0u8; 4096];
                    while matches!(conn.read(&mut chunk), Ok(n) if n > 0) {}
                });
            }
        });
        let requests = Requests::build("/a\n", addr).unwrap();
        let mut args = args(addr);
        args.drain = 1;
        let summary = measure(&args, &requests).unwrap().0;
        // One request a connection went out; the rest never could.
        assert_eq!(summary["sent"], 8, "{summary}");
        assert_eq!(summary["errors"], 8, "{summary}");
        assert_eq!(summary["answered"], 0);
        assert_eq!(summary["unsent"], 4_000 - 8);
    }

    #[test]
    fn draws_cover_the_paths_evenly() {
        let mut rng = Rng(42);
        let mut seen = [0u32; 8];
        for _ in 0..80_000 {
            seen[rng.below(8)] += 1;
        }
        assert!(
            seen.iter().all(|&n| (9_000..11_000).contains(&n)),
            "{seen:?}"
        );
    }
}
