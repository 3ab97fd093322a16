//! A connection handed over to hyper by a lane that read from it first:
//! the bytes it read are put back in front of the socket, so hyper reads
//! the request the lane declined as if it came first.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A connection's IO with bytes already read from it put back in front.
#[derive(Debug)]
pub struct Replay<IO> {
    prefix: Bytes,
    io: IO,
    /// The lane answered requests on this connection before it.
    answered: bool,
}

impl<IO> Replay<IO> {
    /// `io` with nothing to replay.
    pub fn new(io: IO) -> Replay<IO> {
        Replay {
            prefix: Bytes::new(),
            io,
            answered: false,
        }
    }

    /// `io` after a lane read `prefix` from it (and answered requests
    /// before that, if `answered`).
    pub fn after(io: IO, prefix: Bytes, answered: bool) -> Replay<IO> {
        Replay {
            prefix,
            io,
            answered,
        }
    }

    pub fn get_ref(&self) -> &IO {
        &self.io
    }

    /// Whether a lane answered requests before handing over.
    pub fn lane_answered(&self) -> bool {
        self.answered
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Replay<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(out.remaining());
            out.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, out)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Replay<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
