//! A proxied request's body: none, whole (replayable on a retry), or
//! streamed from the client under its limits.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use edgelink_core::net::LimitedBody;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;

/// A request body on its way upstream.
#[derive(Default)]
pub enum ReqBody {
    #[default]
    Empty,
    Full(Bytes),
    /// Streamed from the client under its limits.
    Stream(LimitedBody<Incoming>),
}

impl std::fmt::Debug for ReqBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReqBody::Empty => f.write_str("Empty"),
            ReqBody::Full(b) => write!(f, "Full({} bytes)", b.len()),
            ReqBody::Stream(_) => f.write_str("Stream"),
        }
    }
}

impl ReqBody {
    /// A copy to send again, when this body can be replayed.
    pub(super) fn replay(&self) -> Option<ReqBody> {
        match self {
            ReqBody::Empty => Some(ReqBody::Empty),
            ReqBody::Full(b) => Some(ReqBody::Full(b.clone())),
            ReqBody::Stream(_) => None,
        }
    }
}

impl http_body::Body for ReqBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        match this {
            ReqBody::Empty => Poll::Ready(None),
            ReqBody::Full(_) => match std::mem::take(this) {
                ReqBody::Full(b) => Poll::Ready(Some(Ok(Frame::data(b)))),
                _ => Poll::Ready(None),
            },
            ReqBody::Stream(s) => Pin::new(s).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ReqBody::Empty => true,
            ReqBody::Full(_) => false,
            ReqBody::Stream(s) => s.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ReqBody::Empty => SizeHint::with_exact(0),
            ReqBody::Full(b) => SizeHint::with_exact(b.len() as u64),
            ReqBody::Stream(s) => s.size_hint(),
        }
    }
}
