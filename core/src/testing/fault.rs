//! A TCP fault proxy for fault-injection tests: it sits between a client
//! (the edge) and a server (PostgreSQL, Redis) on a random loopback port and
//! passes bytes through until told to misbehave.
//!
//! - [`Fault::Delay`]: every chunk, either way, waits this long first.
//! - [`Fault::Blackhole`]: nothing moves either way, on open connections
//!   and new ones, until the fault is cleared (a network partition: bytes
//!   sent meanwhile are delivered after it heals, as TCP would).
//! - [`Fault::Reset`]: every open connection is reset (RST) and new ones are
//!   reset as soon as they are accepted.
//! - [`Fault::CloseAfter`]: each connection, open or new, is closed after
//!   this many more bytes from the server (counted from when the fault was
//!   set, or the connection opened).
//!
//! Only the proxy's own sockets are touched; the server behind it never is.

use std::net::SocketAddr;
use std::time::Duration;

use socket2::SockRef;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Pass,
    Delay(Duration),
    Blackhole,
    Reset,
    CloseAfter(u64),
}

/// A running proxy; stops (closing every connection) when dropped.
pub struct FaultProxy {
    addr: SocketAddr,
    mode: watch::Sender<Fault>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on `127.0.0.1:0` and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<FaultProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (mode, rx) = watch::channel(Fault::Pass);
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((client, _)) = accepted else { continue };
                        conns.spawn(relay(client, upstream, rx.clone()));
                    }
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
        });
        Ok(FaultProxy { addr, mode, task })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Switches the fault; `Fault::Pass` heals.
    pub fn set(&self, fault: Fault) {
        self.mode.send_replace(fault);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        // Aborting the accept task drops its JoinSet, which aborts (and
        // closes) every connection.
        self.task.abort();
    }
}

fn reset(stream: &TcpStream) {
    let _ = SockRef::from(stream).set_linger(Some(Duration::ZERO));
}

async fn relay(client: TcpStream, upstream: SocketAddr, mut mode: watch::Receiver<Fault>) {
    // A partition stalls the connect too.
    loop {
        let now = *mode.borrow_and_update();
        match now {
            Fault::Reset => return reset(&client),
            Fault::Blackhole => {
                if mode.changed().await.is_err() {
                    return;
                }
            }
            _ => break,
        }
    }
    let Ok(server) = TcpStream::connect(upstream).await else {
        return reset(&client);
    };
    let _ = server.set_nodelay(true);
    let _ = client.set_nodelay(true);
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let mut up = vec![0u8; 16 * 1024];
    let mut down = vec![0u8; 16 * 1024];
    // Bytes from the server since the fault last changed.
    let mut sent_down = 0u64;
    loop {
        // Which way a chunk goes, and how much of it.
        let (to_server, n) = tokio::select! {
            r = cr.read(&mut up) => (true, r.unwrap_or(0)),
            r = sr.read(&mut down) => (false, r.unwrap_or(0)),
            changed = mode.changed() => {
                if changed.is_err() {
                    return;
                }
                if *mode.borrow() == Fault::Reset {
                    reset(cr.as_ref());
                    reset(sr.as_ref());
                    return;
                }
                sent_down = 0;
                continue;
            }
        };
        if n == 0 {
            return;
        }
        // Apply the fault in force now to this chunk.
        loop {
            let now = *mode.borrow_and_update();
            match now {
                Fault::Blackhole => {
                    if mode.changed().await.is_err() {
                        return;
                    }
                }
                Fault::Reset => {
                    reset(cr.as_ref());
                    reset(sr.as_ref());
                    return;
                }
                Fault::Delay(d) => {
                    tokio::time::sleep(d).await;
                    break;
                }
                Fault::Pass | Fault::CloseAfter(_) => break,
            }
        }
        let limit = match *mode.borrow() {
            Fault::CloseAfter(n) => Some(n),
            _ => None,
        };
        let wrote = if to_server {
            sw.write_all(&up[..n]).await
        } else {
            let n = match limit {
                Some(limit) => (limit.saturating_sub(sent_down)).min(n as u64) as usize,
                None => n,
            };
            sent_down += n as u64;
            let w = cw.write_all(&down[..n]).await;
            if limit.is_some_and(|l| sent_down >= l) {
                let _ = cw.shutdown().await;
                return;
            }
            w
        };
        if wrote.is_err() {
            return;
        }
    }
}
