//! Listening sockets, built with socket2 so the options are ours to set.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

/// Binds a non-blocking TCP listener with `SO_REUSEADDR`, `SO_REUSEPORT`
/// (several edge processes may share one port; the kernel spreads
/// connections) and `TCP_NODELAY` (redirects are one small write; Nagle
/// would hold it back), listening with `backlog`.
pub fn bind(addr: SocketAddr, backlog: u32) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    #[cfg(all(unix, not(any(target_os = "solaris", target_os = "illumos"))))]
    socket.set_reuse_port(true)?;
    socket.set_tcp_nodelay(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    Ok(socket.into())
}

/// Binds `count` listeners on one address. When `addr` has port 0 the
/// first one picks the port and the others join it.
pub fn bind_many(
    addr: SocketAddr,
    count: usize,
    backlog: u32,
) -> io::Result<Vec<std::net::TcpListener>> {
    let first = bind(addr, backlog)?;
    let actual = first.local_addr()?;
    let mut all = vec![first];
    for _ in 1..count.max(1) {
        all.push(bind(actual, backlog)?);
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_listeners_share_a_port() {
        let a = bind("127.0.0.1:0".parse().unwrap(), 128).unwrap();
        let addr = a.local_addr().unwrap();
        let b = bind(addr, 128).unwrap();
        assert_eq!(b.local_addr().unwrap(), addr);
    }

    #[test]
    fn bind_many_shares_the_port_picked_by_the_first() {
        let all = bind_many("127.0.0.1:0".parse().unwrap(), 3, 128).unwrap();
        assert_eq!(all.len(), 3);
        let port = all[0].local_addr().unwrap().port();
        assert_ne!(port, 0);
        assert!(all.iter().all(|l| l.local_addr().unwrap().port() == port));
    }
}
