//! Request bodies read under the client's limits: a size, a timeout for
//! each read and one for the whole body. [`LimitedBody`] wraps a body on its
//! way to a route or an upstream and remembers, in a [`BodyWatch`] the
//! caller keeps, whether the client failed it: an upstream request that
//! fails because its body did is the client's fault, not the upstream's.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::time::{Instant, Sleep};

use super::fault::{ClientFault, ClientFaults};
use super::{json_error, Body};
use crate::config::ServerConfig;

/// How much of a body, and how slowly, a client may send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyLimits {
    /// Bytes at most (413 beyond).
    pub max_bytes: usize,
    /// Longest wait for the next piece (408 beyond).
    pub read_timeout: Duration,
    /// The whole body must have arrived within this of the first read (408).
    pub total_timeout: Duration,
}

impl BodyLimits {
    /// `max_bytes` under the body timeouts of `server`.
    pub fn new(server: &ServerConfig, max_bytes: usize) -> BodyLimits {
        BodyLimits {
            max_bytes,
            read_timeout: Duration::from_millis(server.body_read_timeout_ms),
            total_timeout: Duration::from_millis(server.body_timeout_ms),
        }
    }
}

/// Why a request body could not be had: always the client's fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyError {
    pub fault: ClientFault,
    /// The size limit the body was read under (for the 413's message).
    pub limit: usize,
}

impl BodyError {
    pub fn status(&self) -> StatusCode {
        self.fault.status()
    }

    pub fn code(&self) -> &'static str {
        self.fault.code()
    }

    pub fn message(&self) -> String {
        match self.fault {
            ClientFault::BodyTooLarge => format!("the body must be at most {} bytes", self.limit),
            ClientFault::BodySlow => "the request body did not arrive in time".to_owned(),
            ClientFault::BodyAborted => "the request body ended before it was complete".to_owned(),
            _ => "the request body could not be read".to_owned(),
        }
    }

    /// The answer for this failure, in the JSON error shape.
    pub fn response(&self) -> Response<Body> {
        json_error(self.status(), self.code(), &self.message())
    }
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message())
    }
}

impl std::error::Error for BodyError {}

/// What the caller keeps of a [`LimitedBody`] body once it has handed it on.
#[derive(Debug, Clone, Default)]
pub struct BodyWatch(Arc<Shared>);

#[derive(Debug, Default)]
struct Shared {
    /// 0: no fault; else 1 + the fault's index in [`ClientFault::ALL`].
    fault: AtomicU8,
    /// Waiting for the client's next piece (the last read was pending).
    waiting: AtomicBool,
    ended: AtomicBool,
}

impl BodyWatch {
    /// The client's fault, once the body failed because of it.
    pub fn fault(&self) -> Option<ClientFault> {
        match self.0.fault.load(Ordering::Acquire) {
            0 => None,
            n => ClientFault::ALL.get(usize::from(n) - 1).copied(),
        }
    }

    /// Whether the body is not complete and its reader is waiting for the
    /// client (as opposed to not reading it: an upstream that stopped
    /// taking it).
    pub fn waiting_on_client(&self) -> bool {
        !self.0.ended.load(Ordering::Acquire) && self.0.waiting.load(Ordering::Acquire)
    }

    /// Whether the whole body has been read.
    pub fn ended(&self) -> bool {
        self.0.ended.load(Ordering::Acquire)
    }
}

/// A request body read under [`BodyLimits`]; a failure is a [`BodyError`]
/// (counted once in `faults`), and stays one.
pub struct LimitedBody<B> {
    inner: B,
    limits: BodyLimits,
    read: usize,
    /// The whole body's deadline, from the first read.
    ends: Option<Instant>,
    /// Armed while waiting for the client; `progress` says it must move.
    timer: Option<Pin<Box<Sleep>>>,
    progress: bool,
    failed: Option<BodyError>,
    watch: BodyWatch,
    faults: ClientFaults,
}

impl<B> LimitedBody<B> {
    pub fn new(inner: B, limits: BodyLimits, faults: ClientFaults) -> LimitedBody<B> {
        LimitedBody {
            inner,
            limits,
            read: 0,
            ends: None,
            timer: None,
            progress: false,
            failed: None,
            watch: BodyWatch::default(),
            faults,
        }
    }

    pub fn watch(&self) -> BodyWatch {
        self.watch.clone()
    }

    fn fail(&mut self, fault: ClientFault) -> BodyError {
        let e = BodyError {
            fault,
            limit: self.limits.max_bytes,
        };
        if self.failed.is_none() {
            self.faults.count(fault);
            let index = ClientFault::ALL
                .iter()
                .position(|f| *f == fault)
                .unwrap_or(0);
            self.watch.0.fault.store(
                u8::try_from(index + 1).unwrap_or(u8::MAX),
                Ordering::Release,
            );
            self.failed = Some(e);
        }
        e
    }
}

/// The fault behind a body's read error: bytes that do not parse are
/// malformed; a stream that ends, resets or fails otherwise was aborted.
fn classify(e: &(dyn std::error::Error + 'static)) -> ClientFault {
    let mut source = Some(e);
    while let Some(err) = source {
        if let Some(b) = err.downcast_ref::<BodyError>() {
            return b.fault;
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return match io.kind() {
                std::io::ErrorKind::InvalidData | std::io::ErrorKind::InvalidInput => {
                    ClientFault::BodyMalformed
                }
                _ => ClientFault::BodyAborted,
            };
        }
        source = err.source();
    }
    ClientFault::BodyAborted
}

impl<B> http_body::Body for LimitedBody<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        if let Some(e) = this.failed {
            return Poll::Ready(Some(Err(e)));
        }
        if this.ends.is_none() {
            if this.inner.size_hint().lower() > this.limits.max_bytes as u64 {
                return Poll::Ready(Some(Err(this.fail(ClientFault::BodyTooLarge))));
            }
            this.ends = Some(Instant::now() + this.limits.total_timeout);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.watch.0.waiting.store(false, Ordering::Release);
                this.progress = true;
                if let Some(data) = frame.data_ref() {
                    this.read += data.len();
                    if this.read > this.limits.max_bytes {
                        return Poll::Ready(Some(Err(this.fail(ClientFault::BodyTooLarge))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                let e: Box<dyn std::error::Error + Send + Sync> = e.into();
                let fault = classify(&*e);
                Poll::Ready(Some(Err(this.fail(fault))))
            }
            Poll::Ready(None) => {
                this.watch.0.ended.store(true, Ordering::Release);
                this.watch.0.waiting.store(false, Ordering::Release);
                Poll::Ready(None)
            }
            Poll::Pending => {
                this.watch.0.waiting.store(true, Ordering::Release);
                let ends = this.ends.unwrap_or_else(Instant::now);
                match &mut this.timer {
                    Some(timer) if this.progress => {
                        timer
                            .as_mut()
                            .reset((Instant::now() + this.limits.read_timeout).min(ends));
                    }
                    Some(_) => {}
                    None => {
                        let at = (Instant::now() + this.limits.read_timeout).min(ends);
                        this.timer = Some(Box::pin(tokio::time::sleep_until(at)));
                    }
                }
                this.progress = false;
                if let Some(timer) = &mut this.timer {
                    if timer.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Some(Err(this.fail(ClientFault::BodySlow))));
                    }
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.failed.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

use std::future::Future as _;

/// Reads a whole request body under `limits`; a failure is counted in
/// `faults`.
pub async fn read_body<B>(
    body: B,
    limits: BodyLimits,
    faults: &ClientFaults,
) -> Result<Bytes, BodyError>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    LimitedBody::new(body, limits, faults.clone())
        .collect()
        .await
        .map(|c| c.to_bytes())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

    use super::*;
    use http_body_util::Full;
    use std::collections::VecDeque;

    const LIMITS: BodyLimits = BodyLimits {
        max_bytes: 10,
        read_timeout: Duration::from_millis(100),
        total_timeout: Duration::from_millis(1_000),
    };

    /// A body that yields each piece (or read error) after its pause.
    struct Script {
        steps: VecDeque<(Duration, Result<&'static [u8], std::io::ErrorKind>)>,
        pause: Option<Pin<Box<Sleep>>>,
    }

    fn script(gap: Duration, pieces: &[Result<&'static [u8], std::io::ErrorKind>]) -> Script {
        Script {
            steps: pieces.iter().map(|p| (gap, *p)).collect(),
            pause: None,
        }
    }

    impl http_body::Body for Script {
        type Data = Bytes;
        type Error = std::io::Error;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
            let Some((gap, _)) = self.steps.front().copied() else {
                return Poll::Ready(None);
            };
            let pause = self
                .pause
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(gap)));
            if pause.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.pause = None;
            let (_, step) = self.steps.pop_front().unwrap();
            Poll::Ready(Some(
                step.map(|b| Frame::data(Bytes::from_static(b)))
                    .map_err(|kind| std::io::Error::new(kind, "scripted")),
            ))
        }
    }

    fn none() -> ClientFaults {
        ClientFaults::default()
    }

    #[tokio::test]
    async fn a_body_within_its_limits_is_read_whole() {
        let got = read_body(Full::new(Bytes::from_static(b"hello")), LIMITS, &none())
            .await
            .unwrap();
        assert_eq!(got, "hello");
        let gap = Duration::from_millis(20);
        let got = read_body(script(gap, &[Ok(b"he"), Ok(b"llo")]), LIMITS, &none())
            .await
            .unwrap();
        assert_eq!(got, "hello");
    }

    #[tokio::test]
    async fn too_large_is_413_by_its_length_or_by_what_arrives() {
        let e = read_body(
            Full::new(Bytes::from_static(b"01234567890")),
            LIMITS,
            &none(),
        )
        .await
        .unwrap_err();
        assert_eq!(e.fault, ClientFault::BodyTooLarge);
        assert_eq!(e.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(e.message(), "the body must be at most 10 bytes");
        let e = read_body(
            script(Duration::ZERO, &[Ok(b"012345"), Ok(b"67890")]),
            LIMITS,
            &none(),
        )
        .await
        .unwrap_err();
        assert_eq!(e.fault, ClientFault::BodyTooLarge);
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_longer_than_the_read_timeout_is_408() {
        let gap = Duration::from_millis(150);
        let e = read_body(script(gap, &[Ok(b"a"), Ok(b"b")]), LIMITS, &none())
            .await
            .unwrap_err();
        assert_eq!(e.fault, ClientFault::BodySlow);
        assert_eq!(e.status(), StatusCode::REQUEST_TIMEOUT);
    }

    #[tokio::test(start_paused = true)]
    async fn steady_dribbling_is_cut_at_the_total_timeout() {
        let started = Instant::now();
        let limits = BodyLimits {
            max_bytes: 100,
            ..LIMITS
        };
        let e = read_body(
            script(Duration::from_millis(90), &[Ok(&b"a"[..]); 20]),
            limits,
            &none(),
        )
        .await
        .unwrap_err();
        assert_eq!(e.fault, ClientFault::BodySlow);
        let took = started.elapsed();
        assert!(took >= LIMITS.total_timeout, "{took:?}");
        assert!(
            took < LIMITS.total_timeout + Duration::from_millis(100),
            "{took:?}"
        );
    }

    #[tokio::test]
    async fn read_errors_are_malformed_or_aborted_and_stay_failed() {
        use std::io::ErrorKind;
        for (kind, fault) in [
            (ErrorKind::InvalidData, ClientFault::BodyMalformed),
            (ErrorKind::InvalidInput, ClientFault::BodyMalformed),
            (ErrorKind::UnexpectedEof, ClientFault::BodyAborted),
            (ErrorKind::ConnectionReset, ClientFault::BodyAborted),
        ] {
            let body = script(Duration::ZERO, &[Ok(b"a"), Err(kind)]);
            let mut guarded = LimitedBody::new(body, LIMITS, none());
            let watch = guarded.watch();
            let e = (&mut guarded).collect().await.unwrap_err();
            assert_eq!(e.fault, fault, "{kind:?}");
            assert_eq!(watch.fault(), Some(fault));
            assert!(guarded.frame().await.unwrap().is_err());
        }
    }

    #[tokio::test]
    async fn the_watch_tells_waiting_on_the_client_from_ended() {
        let body = script(Duration::from_millis(200), &[Ok(b"x")]);
        let mut guarded = LimitedBody::new(body, LIMITS, none());
        let watch = guarded.watch();
        assert!(!watch.waiting_on_client());
        let early = tokio::time::timeout(Duration::from_millis(20), guarded.frame()).await;
        assert!(early.is_err(), "nothing sent yet");
        assert!(watch.waiting_on_client());
        let read = BodyLimits {
            read_timeout: Duration::from_secs(5),
            ..LIMITS
        };
        let mut guarded =
            LimitedBody::new(script(Duration::from_millis(20), &[Ok(b"x")]), read, none());
        let watch = guarded.watch();
        assert!(guarded.frame().await.unwrap().is_ok());
        assert!(guarded.frame().await.is_none());
        assert!(watch.ended());
        assert!(!watch.waiting_on_client());
        assert_eq!(watch.fault(), None);
    }
}
