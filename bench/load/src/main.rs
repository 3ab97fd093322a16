//! `edgelink-load`: open-loop HTTP/1.1 load at a fixed rate, with each
//! answer's latency measured from when its request was *due*.
//!
//! One thread and nothing between a readable socket and the time taken
//! (oha's channels and scheduling were most of what it reported at the
//! rates `bench/run.sh` needs on one CPU). Request `k` is due at
//! `start + k / rate` whatever happened before, and waiting for a free
//! connection counts in its latency (no coordinated omission); the send lag
//! is reported beside it, so a generator that fell behind is seen.
//!
//! [`Args`] the command line, [`Requests`] every request pre-built,
//! [`Conn`] a keep-alive connection, [`Load`] the event loop, [`Tally`]
//! and [`Summary`] what it counted. The model: `docs/design/load-generator.md`.

mod tally;

use tally::{nanos, parse, Parsed, Summary, Tally};

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
mod tests;
