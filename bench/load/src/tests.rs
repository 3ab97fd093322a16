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
