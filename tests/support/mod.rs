//! What the binary's end-to-end tests share: running `edgelink` with a
//! clean environment, servers that are killed if a test fails, and plain
//! HTTP/1.1 requests.
#![allow(dead_code)] // each test binary uses its own share of these

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn edgelink() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_edgelink"));
    // Only what the test sets reaches the binary.
    for (k, _) in std::env::vars() {
        if k.starts_with("EDGELINK_") {
            c.env_remove(k);
        }
    }
    c.env("RUST_LOG", "warn");
    c
}

/// `edge` arguments on the PostgreSQL at `db_url` and the test Redis.
pub fn edge_args(db_url: &str) -> Vec<String> {
    let redis = edgelink_core::testing::redis_url();
    ["edge", "--postgres-url", db_url, "--redis-url", &redis]
        .map(str::to_owned)
        .to_vec()
}

/// `edgelink edge` on `db_url`, with a Redis key prefix of its own.
pub fn distributed_edge(db_url: &str, prefix: &str) -> Command {
    let mut c = edgelink();
    c.args(edge_args(db_url)).env(
        "EDGELINK_REDIS_KEY_PREFIX",
        edgelink_core::testing::unique(prefix) + ":",
    );
    c
}

pub fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null()).output().unwrap()
}

pub fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A running `edgelink` server; killed if the test fails before stopping it.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
}

impl Server {
    pub fn start(cmd: &mut Command) -> Server {
        let addr = free_addr();
        let admin = free_addr();
        let child = cmd
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--admin-listen")
            .arg(admin.to_string())
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "server did not start on {addr}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Server { child, addr, admin }
    }

    /// Spawns `cmd` (which listens on `admin` by its own configuration),
    /// without waiting for it.
    pub fn spawn(cmd: &mut Command, admin: SocketAddr) -> Server {
        let child = cmd.stdin(Stdio::null()).spawn().unwrap();
        Server {
            child,
            addr: admin,
            admin,
        }
    }

    /// SIGTERM, then the exit status.
    pub fn stop(self) -> std::process::ExitStatus {
        signal(&self, "-TERM");
        self.stop_waiting()
    }

    /// The exit status, once the process ends (a signal was sent already).
    pub fn stop_waiting(mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "server did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain HTTP/1.1 GET, as curl would send it: (status, location).
pub fn get(addr: SocketAddr, path: &str) -> (u16, Option<String>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text[9..12].parse().unwrap();
    let location = text
        .lines()
        .find_map(|l| l.strip_prefix("location: ").map(str::to_owned));
    (status, location)
}

/// A plain HTTP/1.1 request with an optional bearer token: (status, body).
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, String) {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
    send_raw(addr, method, path, &headers, body)
        .unwrap_or_else(|| panic!("{method} {path} on {addr}: no answer"))
}

/// A plain HTTP/1.1 request with `headers`: (status, body), or `None` when
/// the connection fails or is cut (a server was killed).
pub fn send_raw(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let headers: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{headers}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.get(9..12)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n")?.1.to_owned();
    Some((status, body))
}

/// Sends `signal` (e.g. "-HUP") to the server.
pub fn signal(server: &Server, signal: &str) {
    let pid = server.child.id().to_string();
    assert!(Command::new("kill")
        .args([signal, &pid])
        .status()
        .unwrap()
        .success());
}
