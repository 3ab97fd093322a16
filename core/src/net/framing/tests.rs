use super::scan::*;
use super::*;

const MAX_HEAD: usize = 8192;

/// Feeds `pieces` to a scanner as the guard does (held bytes come
/// again with the next piece): the bytes it lets through, and the
/// verdict that stopped it, if one did.
fn feed(pieces: &[&[u8]]) -> (Vec<u8>, Option<Verdict>) {
    let mut scanner = Scanner::new(MAX_HEAD);
    let (mut pending, mut passed) = (Vec::new(), Vec::new());
    for piece in pieces {
        pending.extend_from_slice(piece);
        let verdict = scanner.judge(&pending);
        let n = match verdict {
            Verdict::Pass(n) | Verdict::Refuse { pass: n, .. } | Verdict::Cut(n) => n,
        };
        passed.extend(pending.drain(..n));
        if !matches!(verdict, Verdict::Pass(_)) {
            return (passed, Some(verdict));
        }
    }
    (passed, None)
}

fn refused(bytes: &[u8]) -> Option<(usize, ClientFault, &'static str)> {
    match feed(&[bytes]).1 {
        Some(Verdict::Refuse { pass, fault, why }) => Some((pass, fault, why)),
        _ => None,
    }
}

const GOOD: &[u8] = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n\r\nPOST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhelloPOST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\nA\r\n0123456789\r\n0\r\nT: 1\r\n\r\nGET /d HTTP/1.0\r\n\r\n";

#[test]
fn plain_requests_pass_whole_or_byte_by_byte() {
    assert_eq!(feed(&[GOOD]), (GOOD.to_vec(), None));
    let bytes: Vec<&[u8]> = GOOD.chunks(1).collect();
    assert_eq!(feed(&bytes), (GOOD.to_vec(), None));
}

#[test]
fn an_unfinished_head_is_held_until_it_is_whole() {
    let (passed, verdict) = feed(&[b"GET /a HTTP/1.1\r\nHost: x\r\n", b"X: y\r\n"]);
    assert!(passed.is_empty() && verdict.is_none());
    let (passed, _) = feed(&[b"GET /a HTTP/1.1\r\nHost: x\r\n", b"\r\n"]);
    assert_eq!(passed.len(), 28);
}

#[test]
fn content_length_with_transfer_encoding_is_refused_where_its_head_starts() {
    let first: &[u8] = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n";
    let bad: &[u8] = b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    assert_eq!(
        refused(&[first, bad].concat()),
        Some((
            first.len(),
            ClientFault::BadFraming,
            "Content-Length and Transfer-Encoding together"
        ))
    );
    let te_first: &[u8] =
        b"POST / HTTP/1.1\r\nHost: x\r\ntransfer-encoding: chunked\r\ncontent-length: 4\r\n\r\n";
    assert!(refused(te_first).is_some());
}

#[test]
fn repeated_or_listed_or_odd_content_lengths_are_refused() {
    for head in [
        &b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\ncontent-length: 3\r\n\r\nabc"[..],
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3, 3\r\n\r\nabc",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +3\r\n\r\nabc",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3 3\r\n\r\nabc",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999\r\n\r\n",
    ] {
        let (pass, fault, _) = refused(head).unwrap_or_else(|| panic!("{head:?}"));
        assert_eq!((pass, fault), (0, ClientFault::BadFraming), "{head:?}");
    }
}

#[test]
fn only_one_final_chunked_transfer_encoding_is_taken() {
    for head in [
        &b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n"[..],
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
    ] {
        assert!(refused(head).is_some(), "{head:?}");
    }
    assert!(refused(
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:  Chunked \r\n\r\n0\r\n\r\n"
    )
    .is_none());
}

#[test]
fn http11_needs_exactly_one_valid_host() {
    for head in [
        &b"GET / HTTP/1.1\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n",
        b"GET / HTTP/1.0\r\nHost: a\r\nhost: b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: user@a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: ]]]:x:y\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x:abc\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a:1:2\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: [::1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: []\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: [::1]x\r\n\r\n",
    ] {
        let (_, fault, _) = refused(head).unwrap_or_else(|| panic!("{head:?}"));
        assert_eq!(fault, ClientFault::BadHost, "{head:?}");
    }
    for head in [
        &b"GET / HTTP/1.0\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: sho.rt:8443\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: 10.0.0.1:\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost:\r\n\r\n",
    ] {
        assert_eq!(refused(head), None, "{head:?}");
    }
}

#[test]
fn an_absolute_form_target_needs_a_host_for_its_authority() {
    for head in [
        &b"GET http://user:pw@evil.example:99/a HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        b"GET http://evil.example:abc/a HTTP/1.1\r\nHost: x\r\n\r\n",
    ] {
        let (_, fault, _) = refused(head).unwrap_or_else(|| panic!("{head:?}"));
        assert_eq!(fault, ClientFault::BadHost, "{head:?}");
    }
    assert_eq!(
        refused(b"GET http://sho.rt:8443/a?b HTTP/1.1\r\nHost: x\r\n\r\n"),
        None
    );
}

#[test]
fn body_bytes_that_look_like_headers_are_not_read_as_headers() {
    let body = b"Content-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
    let head = format!(
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let req = [head.as_bytes(), body, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"].concat();
    assert_eq!(feed(&[&req]), (req.clone(), None));
}

/// A long header line used to leave the guard without a length, and it
/// then let every later request of the connection through unchecked.
#[test]
fn no_line_is_too_long_to_be_read_whole() {
    let padded = format!(
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length:{}5\r\n\r\nhello",
        " ".repeat(100)
    );
    let smuggle: &[u8] = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    let (pass, fault, _) = refused(&[padded.as_bytes(), smuggle].concat()).unwrap();
    assert_eq!((pass, fault), (padded.len(), ClientFault::BadFraming));
}

#[test]
fn the_hundredth_request_is_checked_like_the_first() {
    let one: &[u8] = b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi";
    let many = one.repeat(99);
    let bad: &[u8] =
        b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nhi";
    let (pass, _, _) = refused(&[&many[..], bad].concat()).unwrap();
    assert_eq!(pass, many.len());
}

#[test]
fn a_head_over_the_limit_is_431_finished_or_not() {
    let big = format!("GET / HTTP/1.1\r\nHost: x\r\nX: {}", "y".repeat(MAX_HEAD));
    let (_, fault, _) = refused(big.as_bytes()).unwrap();
    assert_eq!(fault, ClientFault::HeadTooLarge);
    let many: String = (0..150).map(|i| format!("X-{i}: 1\r\n")).collect();
    let many = format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n");
    let (_, fault, why) = refused(many.as_bytes()).unwrap();
    assert_eq!(
        (fault, why),
        (ClientFault::HeadTooLarge, "too many header fields")
    );
}

#[test]
fn a_chunk_hyper_refuses_is_handed_over_then_the_stream_ends() {
    let head: &[u8] = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
    for (body, bad_at) in [
        (&b"zz\r\n"[..], 0),
        (b"5\r\nhelloX\r\n", 8),
        (b"5\nhello\r\n", 1),
        (b"5;a\nb\r\n", 3),
        (b"11111111111111111\r\n", 16),
        (b"0\r\nT: 1\rX", 8),
    ] {
        let (passed, verdict) = feed(&[&[head, body].concat()]);
        assert_eq!(
            verdict,
            Some(Verdict::Cut(head.len() + bad_at + 1)),
            "{body:?}"
        );
        assert_eq!(passed.len(), head.len() + bad_at + 1);
    }
}

#[test]
fn the_http2_preface_counts_only_where_a_connection_starts() {
    let first: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    let pri: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let (pass, fault, _) = refused(&[first, pri].concat()).unwrap();
    assert_eq!((pass, fault), (first.len(), ClientFault::BadFraming));
}

#[test]
fn http2_is_left_alone() {
    let preface: &[u8] =
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n";
    assert_eq!(feed(&[preface]), (preface.to_vec(), None));
}

fn guard<IO>(io: IO) -> FramingGuard<IO> {
    FramingGuard::new(
        io,
        GuardLimits {
            head_timeout: Duration::from_secs(30),
            max_head: MAX_HEAD,
            write_timeout: Duration::from_secs(30),
        },
        ClientFaults::default(),
    )
}

#[tokio::test]
async fn a_refused_first_request_is_answered_before_end_of_stream() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut client, server) = tokio::io::duplex(4096);
    let mut guard = guard(server);
    client
        .write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut seen = Vec::new();
    let n = guard
        .read_to_end(&mut seen)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(n, 0, "nothing of the refused request reaches hyper");
    drop(guard);
    let mut reply = String::new();
    client
        .read_to_string(&mut reply)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        reply.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{reply:?}"
    );
    assert!(reply.contains("connection: close\r\n"), "{reply:?}");
    assert!(
        reply.ends_with(r#""message":"more than one Content-Length"}}"#),
        "{reply:?}"
    );
}

/// Writes `bytes` one at a time (each its own read on the other side),
/// then ends the stream; returns what the guard hands on and what the
/// client got back.
async fn dribble(bytes: &'static [u8]) -> (Vec<u8>, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (client, server) = tokio::io::duplex(4096);
    let (mut from_server, mut to_server) = tokio::io::split(client);
    let writer = tokio::spawn(async move {
        for b in bytes {
            to_server
                .write_all(&[*b])
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            tokio::task::yield_now().await;
        }
        to_server.shutdown().await.unwrap_or_else(|e| panic!("{e}"));
    });
    let mut guard = guard(server);
    let mut handed = Vec::new();
    guard
        .read_to_end(&mut handed)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    writer.await.unwrap_or_else(|e| panic!("{e}"));
    drop(guard);
    let mut reply = String::new();
    from_server
        .read_to_string(&mut reply)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    (handed, reply)
}

#[tokio::test]
async fn a_head_that_arrives_byte_by_byte_is_judged_whole() {
    let good: &[u8] =
        b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nPOST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi";
    let (handed, reply) = dribble(good).await;
    assert_eq!(handed, good);
    assert_eq!(reply, "");
    let bad: &[u8] =
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    let (handed, reply) = dribble(bad).await;
    assert!(handed.is_empty(), "{:?}", String::from_utf8_lossy(&handed));
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply:?}");
}
