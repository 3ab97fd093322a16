//! The framing guard's scanner: judges request heads whole (httparse) and
//! follows each body by its length or its chunks (hyper's grammar).

use super::super::fault::ClientFault;

/// hyper's request header limit (httparse is given as many slots).
pub(super) const MAX_HEADERS: usize = 100;

/// hyper's limit on the chunk extensions of one body.
pub(super) const MAX_CHUNK_EXTENSIONS: u64 = 16 * 1024;

/// What may be handed to hyper of the bytes judged.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Verdict {
    /// The first `n` bytes; the rest is an unfinished head, held.
    Pass(usize),
    /// The first `pass` bytes; the head that starts there is refused.
    Refuse {
        pass: usize,
        fault: ClientFault,
        why: &'static str,
    },
    /// The first `n` bytes, the last of which hyper will refuse (a body's
    /// framing), then nothing more.
    Cut(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum State {
    /// Between requests, or holding an unfinished head.
    Head,
    /// Skipping a body of this many more bytes.
    Body(u64),
    Chunked(Chunk),
    /// Not HTTP/1 (the h2 preface): nothing more to check on this connection.
    Off,
}

/// hyper's chunked decoder, state for state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Chunk {
    Start,
    Size(u64),
    SizeLws(u64),
    Extension(u64),
    SizeLf(u64),
    Data(u64),
    DataCr,
    DataLf,
    Trailer,
    TrailerLf,
    EndCr,
    EndLf,
}

#[derive(Debug)]
pub(super) struct Scanner {
    pub(super) state: State,
    /// Whole heads judged so far.
    pub(super) heads: u64,
    /// Bytes judged so far (the HTTP/2 preface only counts at 0).
    pub(super) judged: u64,
    pub(super) max_head: usize,
    /// Bytes of the held head already searched for its end.
    pub(super) searched: usize,
    /// Chunk extension bytes of this body so far.
    pub(super) extensions: u64,
    /// Trailer bytes of this body so far.
    pub(super) trailers: usize,
}

impl Scanner {
    pub(super) fn new(max_head: usize) -> Scanner {
        Scanner {
            state: State::Head,
            heads: 0,
            judged: 0,
            max_head,
            searched: 0,
            extensions: 0,
            trailers: 0,
        }
    }

    /// Judges `buf`, the bytes after those already handed over (an
    /// unfinished head comes again, with more).
    pub(super) fn judge(&mut self, buf: &[u8]) -> Verdict {
        let verdict = self.judge_from(buf);
        let (Verdict::Pass(n) | Verdict::Refuse { pass: n, .. } | Verdict::Cut(n)) = verdict;
        self.judged += n as u64;
        verdict
    }

    pub(super) fn judge_from(&mut self, buf: &[u8]) -> Verdict {
        let mut i = 0;
        while i < buf.len() {
            match self.state {
                State::Off => return Verdict::Pass(buf.len()),
                State::Body(n) => {
                    let take = n.min((buf.len() - i) as u64);
                    i += take as usize;
                    self.state = match n - take {
                        0 => State::Head,
                        left => State::Body(left),
                    };
                }
                State::Chunked(chunk) => match self.chunk(chunk, &buf[i..]) {
                    Ok((used, next)) => {
                        i += used;
                        self.state = next;
                    }
                    Err(at) => return Verdict::Cut(i + at + 1),
                },
                State::Head => {
                    // Empty lines before a request line (hyper skips them).
                    match &buf[i..] {
                        [b'\n', ..] => {
                            i += 1;
                            continue;
                        }
                        [b'\r', b'\n', ..] => {
                            i += 2;
                            continue;
                        }
                        [b'\r'] => return Verdict::Pass(i),
                        _ => {}
                    }
                    let at_start = self.judged + i as u64 == 0;
                    match self.head(&buf[i..], at_start) {
                        Ok(Some((len, next))) => {
                            i += len;
                            self.heads += u64::from(next != State::Off);
                            self.searched = 0;
                            self.extensions = 0;
                            self.trailers = 0;
                            self.state = next;
                        }
                        Ok(None) => return Verdict::Pass(i),
                        Err((fault, why)) => {
                            return Verdict::Refuse {
                                pass: i,
                                fault,
                                why,
                            }
                        }
                    }
                }
            }
        }
        Verdict::Pass(i)
    }

    /// A head at the start of `buf`: its length and what follows it, or
    /// `None` while it is unfinished, or why it is refused.
    pub(super) fn head(
        &mut self,
        buf: &[u8],
        at_start: bool,
    ) -> Result<Option<(usize, State)>, (ClientFault, &'static str)> {
        if at_start && buf.starts_with(b"PRI * HTTP/2.0") {
            return Ok(Some((buf.len(), State::Off)));
        }
        let Some(end) = self.head_end(buf) else {
            if buf.len() > self.max_head {
                return Err((ClientFault::HeadTooLarge, "the request head is too large"));
            }
            return Ok(None);
        };
        if end > self.max_head {
            return Err((ClientFault::HeadTooLarge, "the request head is too large"));
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf[..end]) {
            Ok(httparse::Status::Complete(len)) => check_head(&req).map(|next| Some((len, next))),
            Ok(httparse::Status::Partial) => {
                Err((ClientFault::BadFraming, "malformed request head"))
            }
            Err(httparse::Error::TooManyHeaders) => {
                Err((ClientFault::HeadTooLarge, "too many header fields"))
            }
            Err(_) => Err((ClientFault::BadFraming, "malformed request head")),
        }
    }

    /// Where the head at the start of `buf` ends (after its empty line),
    /// searching only what was not searched before.
    pub(super) fn head_end(&mut self, buf: &[u8]) -> Option<usize> {
        let from = self.searched;
        for at in memchr::memchr_iter(b'\n', &buf[from..]).map(|p| from + p) {
            match &buf[at + 1..] {
                [b'\n', ..] => return Some(at + 2),
                [b'\r', b'\n', ..] => return Some(at + 3),
                [] | [b'\r'] => {
                    self.searched = at;
                    return None;
                }
                _ => {}
            }
        }
        self.searched = buf.len();
        None
    }

    /// Follows a chunked body through `buf`: bytes used and the state
    /// after them, or the offset of the first byte hyper refuses.
    pub(super) fn chunk(&mut self, mut state: Chunk, buf: &[u8]) -> Result<(usize, State), usize> {
        let hex = |b: u8| match b {
            b'0'..=b'9' => Some(u64::from(b - b'0')),
            b'a'..=b'f' => Some(u64::from(b - b'a' + 10)),
            b'A'..=b'F' => Some(u64::from(b - b'A' + 10)),
            _ => None,
        };
        let grow = |size: u64, digit: u64| size.checked_mul(16)?.checked_add(digit);
        let mut i = 0;
        while i < buf.len() {
            let b = buf[i];
            state = match state {
                Chunk::Data(n) => {
                    let take = n.min((buf.len() - i) as u64);
                    i += take as usize;
                    state = match n - take {
                        0 => Chunk::DataCr,
                        left => Chunk::Data(left),
                    };
                    continue;
                }
                Chunk::Start => Chunk::Size(hex(b).ok_or(i)?),
                Chunk::Size(size) => match (hex(b), b) {
                    (Some(d), _) => Chunk::Size(grow(size, d).ok_or(i)?),
                    (None, b'\t' | b' ') => Chunk::SizeLws(size),
                    (None, b';') => Chunk::Extension(size),
                    (None, b'\r') => Chunk::SizeLf(size),
                    _ => return Err(i),
                },
                Chunk::SizeLws(size) => match b {
                    b'\t' | b' ' => Chunk::SizeLws(size),
                    b';' => Chunk::Extension(size),
                    b'\r' => Chunk::SizeLf(size),
                    _ => return Err(i),
                },
                Chunk::Extension(size) => match b {
                    b'\r' => Chunk::SizeLf(size),
                    b'\n' => return Err(i),
                    _ => {
                        self.extensions += 1;
                        if self.extensions >= MAX_CHUNK_EXTENSIONS {
                            return Err(i);
                        }
                        Chunk::Extension(size)
                    }
                },
                Chunk::SizeLf(size) => match (b, size) {
                    (b'\n', 0) => Chunk::EndCr,
                    (b'\n', n) => Chunk::Data(n),
                    _ => return Err(i),
                },
                Chunk::DataCr if b == b'\r' => Chunk::DataLf,
                Chunk::DataLf if b == b'\n' => Chunk::Start,
                Chunk::DataCr | Chunk::DataLf => return Err(i),
                Chunk::Trailer => {
                    self.trailers += 1;
                    if self.trailers > self.max_head {
                        return Err(i);
                    }
                    if b == b'\r' {
                        Chunk::TrailerLf
                    } else {
                        Chunk::Trailer
                    }
                }
                Chunk::TrailerLf if b == b'\n' => Chunk::EndCr,
                Chunk::TrailerLf => return Err(i),
                Chunk::EndCr if b == b'\r' => Chunk::EndLf,
                Chunk::EndCr => {
                    self.trailers += 1;
                    Chunk::Trailer
                }
                Chunk::EndLf if b == b'\n' => return Ok((i + 1, State::Head)),
                Chunk::EndLf => return Err(i),
            };
            i += 1;
        }
        Ok((i, State::Chunked(state)))
    }
}

/// The framing a whole head announces, or why it is refused.
pub(super) fn check_head(
    req: &httparse::Request<'_, '_>,
) -> Result<State, (ClientFault, &'static str)> {
    let framing = |why| Err((ClientFault::BadFraming, why));
    let (mut hosts, mut lengths, mut encodings) = (0, 0, 0);
    let (mut length, mut chunked) = (None, false);
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"host") {
            hosts += 1;
            if !is_host_value(h.value) {
                return Err((ClientFault::BadHost, "the Host header is not a host"));
            }
        } else if name.eq_ignore_ascii_case(b"content-length") {
            lengths += 1;
            length = content_length(h.value);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            encodings += 1;
            chunked = h.value.trim_ascii().eq_ignore_ascii_case(b"chunked");
        }
    }
    let http11 = req.version == Some(1);
    if let Some(authority) = req.path.and_then(absolute_authority) {
        // An absolute-form target's authority is the host asked for (RFC
        // 9112 §3.2.2): a host, no user info (RFC 9110 §4.2.4).
        if !is_host_value(authority) {
            return Err((
                ClientFault::BadHost,
                "the request target's authority is not a host",
            ));
        }
    }
    if hosts > 1 || (http11 && hosts == 0) {
        return Err((
            ClientFault::BadHost,
            "an HTTP/1.1 request needs exactly one Host",
        ));
    }
    if encodings > 0 && lengths > 0 {
        return framing("Content-Length and Transfer-Encoding together");
    }
    if lengths > 1 {
        return framing("more than one Content-Length");
    }
    if encodings > 1 || (encodings == 1 && (!chunked || !http11)) {
        return framing("Transfer-Encoding other than chunked");
    }
    Ok(match (chunked, lengths, length) {
        (true, _, _) => State::Chunked(Chunk::Start),
        (false, 0, _) | (false, _, Some(0)) => State::Head,
        (false, _, Some(n)) => State::Body(n),
        (false, _, None) => return framing("Content-Length is not one number"),
    })
}

/// The authority of an absolute-form request target (`scheme://authority/...`).
pub(super) fn absolute_authority(target: &str) -> Option<&[u8]> {
    let (scheme, rest) = target.split_once("://")?;
    let scheme_ok = scheme
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b));
    if scheme.is_empty() || !scheme_ok {
        return None;
    }
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    Some(&rest.as_bytes()[..end])
}

/// A `Content-Length` value: digits only (around optional whitespace).
pub(super) fn content_length(value: &[u8]) -> Option<u64> {
    let digits = value.trim_ascii();
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// Whether `value` may be a `Host` header: `host[:port]` of RFC 3986 (a
/// reg-name or IPv4 address, or an IP literal in brackets; the port
/// digits), or empty. No user info, path, space or control byte.
#[inline]
pub fn is_host_value(value: &[u8]) -> bool {
    let reg_name = |b: &u8| {
        b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'%'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
            )
    };
    let (host_ok, rest) = match value.split_first() {
        Some((b'[', inside)) => match inside.iter().position(|&b| b == b']') {
            // An IPv6 address or IPvFuture: hex, dots, colons and the
            // reg-name characters (`v1.x`); at least one character.
            Some(end) => (
                end > 0 && inside[..end].iter().all(|b| *b == b':' || reg_name(b)),
                &inside[end + 1..],
            ),
            None => return false,
        },
        _ => {
            let end = value.iter().position(|&b| b == b':').unwrap_or(value.len());
            (value[..end].iter().all(reg_name), &value[end..])
        }
    };
    host_ok
        && match rest.split_first() {
            None => true,
            Some((b':', port)) => port.iter().all(u8::is_ascii_digit),
            Some(_) => false,
        }
}
