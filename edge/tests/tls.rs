//! TLS termination: h2 and http/1.1 over rustls, certificates by SNI, a
//! certificate swapped under load, a broken certificate refused, and the
//! plain-HTTP listener's redirect to HTTPS. A real rustls client talks to
//! the edge; certificates come from a test CA made with rcgen.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod support;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use edgelink_core::config::CertificateFiles;
use http::{Request, StatusCode};
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use support::*;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new() -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        Ca {
            issuer: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    /// A leaf for `names`, written as `<stem>.crt` / `<stem>.key` in `dir`.
    fn leaf(
        &self,
        dir: &Path,
        stem: &str,
        names: &[&str],
    ) -> (CertificateFiles, CertificateDer<'static>) {
        self.leaf_until(dir, stem, names, rcgen::date_time_ymd(4096, 1, 1))
    }

    /// [`Ca::leaf`] valid until `not_after`.
    fn leaf_until(
        &self,
        dir: &Path,
        stem: &str,
        names: &[&str],
        not_after: time::OffsetDateTime,
    ) -> (CertificateFiles, CertificateDer<'static>) {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.not_after = not_after;
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let files = CertificateFiles {
            cert: dir.join(format!("{stem}.crt")),
            key: dir.join(format!("{stem}.key")),
        };
        std::fs::write(&files.cert, cert.pem() + &self.issuer.pem()).unwrap();
        std::fs::write(&files.key, key.serialize_pem()).unwrap();
        (files, cert.der().clone())
    }

    fn client(&self, alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.issuer.der().clone()).unwrap();
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        // Full handshakes only: a resumed session reports the certificate
        // of the session it resumes, not the one served now.
        config.resumption = rustls::client::Resumption::disabled();
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }
}

async fn connect(
    connector: &tokio_rustls::TlsConnector,
    addr: std::net::SocketAddr,
    name: &str,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    connector
        .connect(ServerName::try_from(name.to_owned()).unwrap(), tcp)
        .await
}

fn peer_cert(s: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    s.get_ref().1.peer_certificates().unwrap()[0]
        .clone()
        .into_owned()
}

fn alpn(s: &TlsStream<TcpStream>) -> Option<Vec<u8>> {
    s.get_ref().1.alpn_protocol().map(<[u8]>::to_vec)
}

/// One GET over an HTTP/1.1 connection: (status, Location).
async fn get_h1(
    s: TlsStream<TcpStream>,
    host: &str,
    path: &str,
) -> hyper::Result<(StatusCode, Option<String>)> {
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s)).await?;
    tokio::spawn(conn);
    let req = Request::get(path)
        .header("host", host)
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await?;
    Ok((resp.status(), location(&resp)))
}

fn location<B>(resp: &http::Response<B>) -> Option<String> {
    resp.headers()
        .get("location")
        .map(|v| v.to_str().unwrap().to_owned())
}

async fn tls_edge(
    dir: &tempfile::TempDir,
    certs: Vec<CertificateFiles>,
    f: impl FnOnce(&mut edgelink_core::Config),
) -> TestEdge {
    let mut config = test_config();
    config.tls.certificates = certs;
    f(&mut config);
    let stores = sqlite_stores(dir, &mut config).await;
    insert(
        stores.source.as_ref(),
        &[link("abc", "https://example.com/abc")],
    )
    .await;
    TestEdge::start(config, stores).await
}

#[tokio::test]
async fn h2_and_http11_redirects_over_tls_with_the_certificate_sni_names() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    let (a, a_der) = ca.leaf(dir.path(), "a", &["a.test"]);
    let (b, b_der) = ca.leaf(dir.path(), "b", &["b.test", "*.wild.test"]);
    let edge = tls_edge(&dir, vec![a, b], |_| {}).await;

    // HTTP/2, chosen by ALPN.
    let s = connect(&ca.client(&[b"h2", b"http/1.1"]), edge.addr, "a.test")
        .await
        .unwrap();
    assert_eq!(alpn(&s).as_deref(), Some(&b"h2"[..]));
    assert_eq!(peer_cert(&s), a_der);
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(s))
            .await
            .unwrap();
    tokio::spawn(conn);
    let resp = send
        .send_request(
            Request::get("https://a.test/abc")
                .body(Empty::<Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.status(), StatusCode::FOUND);
    assert_eq!(location(&resp).as_deref(), Some("https://example.com/abc"));

    // HTTP/1.1, and the other certificate by SNI (exact and wildcard).
    let s = connect(&ca.client(&[b"http/1.1"]), edge.addr, "b.test")
        .await
        .unwrap();
    assert_eq!(alpn(&s).as_deref(), Some(&b"http/1.1"[..]));
    assert_eq!(peer_cert(&s), b_der);
    let (status, loc) = get_h1(s, "b.test", "/abc").await.unwrap();
    assert_eq!(status, StatusCode::FOUND);
    assert_eq!(loc.as_deref(), Some("https://example.com/abc"));
    let s = connect(&ca.client(&[]), edge.addr, "x.wild.test")
        .await
        .unwrap();
    assert_eq!(peer_cert(&s), b_der);

    // Plain HTTP on the TLS port is not served.
    let mut raw = TcpStream::connect(edge.addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    raw.write_all(b"GET /abc HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), raw.read_to_end(&mut buf)).await;
    assert!(
        !buf.starts_with(b"HTTP/1.1 302"),
        "no redirect over plain text"
    );
    edge.stop().await;
}

/// Replaces `files` with a new leaf the way a secret volume does: new files
/// beside, then renamed over the old names.
fn swap_in(
    ca: &Ca,
    dir: &Path,
    files: &CertificateFiles,
    names: &[&str],
) -> CertificateDer<'static> {
    let (fresh, der) = ca.leaf(dir, "incoming", names);
    std::fs::rename(&fresh.key, &files.key).unwrap();
    std::fs::rename(&fresh.cert, &files.cert).unwrap();
    der
}

#[tokio::test]
async fn a_certificate_swapped_under_load_fails_no_request_and_new_handshakes_see_it() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    let (a, old_der) = ca.leaf(dir.path(), "a", &["a.test"]);
    let edge = tls_edge(&dir, vec![a.clone()], |_| {}).await;
    let connector = ca.client(&[b"http/1.1"]);

    // A connection opened before the swap, used again after it.
    let early = connect(&connector, edge.addr, "a.test").await.unwrap();
    let (mut early, conn) = hyper::client::conn::http1::handshake(TokioIo::new(early))
        .await
        .unwrap();
    tokio::spawn(conn);

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let seen_new = Arc::new(std::sync::Mutex::new(Vec::<CertificateDer<'static>>::new()));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (stop, ok, failed, seen, connector) = (
            stop.clone(),
            ok.clone(),
            failed.clone(),
            seen_new.clone(),
            connector.clone(),
        );
        let addr = edge.addr;
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let outcome = async {
                    let s = connect(&connector, addr, "a.test").await.ok()?;
                    let der = peer_cert(&s);
                    let (status, _) = get_h1(s, "a.test", "/abc").await.ok()?;
                    (status == StatusCode::FOUND).then_some(der)
                }
                .await;
                match outcome {
                    Some(der) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                        seen.lock().unwrap().push(der);
                    }
                    None => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let new_der = swap_in(&ca, dir.path(), &a, &["a.test"]);
    let switched = eventually(Duration::from_secs(10), || async {
        seen_new
            .lock()
            .unwrap()
            .iter()
            .rev()
            .take(4)
            .all(|d| *d == new_der)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.unwrap();
    }
    assert!(switched, "new handshakes present the new certificate");
    {
        let seen = seen_new.lock().unwrap();
        assert!(seen.contains(&old_der) && seen.contains(&new_der));
    }
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "no request failed ({} ok)",
        ok.load(Ordering::Relaxed)
    );

    // The connection from before the swap is still served.
    let resp = early
        .send_request(
            Request::get("/abc")
                .header("host", "a.test")
                .body(Empty::<Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FOUND);
    edge.stop().await;
}

#[tokio::test]
async fn a_certificate_that_does_not_load_keeps_the_old_one() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    let (a, old_der) = ca.leaf(dir.path(), "a", &["a.test"]);
    let edge = tls_edge(&dir, vec![a.clone()], |_| {}).await;
    let connector = ca.client(&[]);
    let s = connect(&connector, edge.addr, "a.test").await.unwrap();
    assert_eq!(peer_cert(&s), old_der);

    std::fs::write(
        &a.cert,
        "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    // A key that does not match the certificate is refused too.
    let other = KeyPair::generate().unwrap();
    let (b, _) = ca.leaf(dir.path(), "b", &["a.test"]);
    std::fs::write(&a.key, other.serialize_pem()).unwrap();
    std::fs::copy(&b.cert, &a.cert).unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await; // the watch has seen both writes

    let s = connect(&connector, edge.addr, "a.test").await.unwrap();
    assert_eq!(peer_cert(&s), old_der, "still the old certificate");
    let (status, _) = get_h1(s, "a.test", "/abc").await.unwrap();
    assert_eq!(status, StatusCode::FOUND);
    edge.stop().await;
}

#[tokio::test]
async fn the_plain_http_listener_redirects_to_https_except_health_checks() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    let (a, _) = ca.leaf(dir.path(), "a", &["a.test"]);
    let edge = tls_edge(&dir, vec![a], |c| {
        c.tls.redirect_listen = Some("127.0.0.1:0".parse().unwrap());
        c.tls.https_port = 8443;
    })
    .await;
    let plain = edge.redirect.unwrap();
    let mut s = TcpStream::connect(plain).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(b"GET /abc?x=1 HTTP/1.1\r\nHost: sho.rt:8080\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.unwrap();
    assert!(buf.starts_with("HTTP/1.1 308"), "{buf}");
    assert!(
        buf.contains("location: https://sho.rt:8443/abc?x=1\r\n"),
        "{buf}"
    );

    let r = edge.request_to(plain, http::Method::GET, "/healthz").await;
    assert_eq!(r.status, StatusCode::OK);
    let r = edge.request_to(plain, http::Method::GET, "/readyz").await;
    assert_eq!(r.status, StatusCode::OK);
    edge.stop().await;
}

#[tokio::test]
async fn each_served_certificate_exports_its_expiry_and_a_renewal_moves_it() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    let until = |y| rcgen::date_time_ymd(y, 1, 2);
    let (a, _) = ca.leaf_until(dir.path(), "a", &["a.test"], until(2031));
    let edge = tls_edge(&dir, vec![a.clone()], |_| {}).await;
    let series = format!(
        "edgelink_tls_certificate_expiry_seconds{{certificate=\"{}\"}}",
        a.cert.display()
    );
    expiry_becomes(&edge, &series, until(2031).unix_timestamp() as f64).await;
    // The renewal (a file swap) is followed: the new notAfter.
    let (fresh, _) = ca.leaf_until(dir.path(), "incoming", &["a.test"], until(2032));
    std::fs::rename(&fresh.key, &a.key).unwrap();
    std::fs::rename(&fresh.cert, &a.cert).unwrap();
    expiry_becomes(&edge, &series, until(2032).unix_timestamp() as f64).await;
}

/// Waits (up to 10 s) for `series` on the edge's `/metrics` to read `want`.
async fn expiry_becomes(edge: &TestEdge, series: &str, want: f64) {
    for _ in 0..100 {
        let text = edge.metrics_text().await;
        let value = text
            .lines()
            .find_map(|l| l.strip_prefix(series))
            .and_then(|v| v.trim().parse::<f64>().ok());
        if value == Some(want) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{series} never {want}: {}", edge.metrics_text().await);
}

/// A Kubernetes Secret volume as the kubelet writes it: the files are
/// symlinks through `..data`, itself a symlink to a timestamped directory;
/// an update writes a new directory and renames a new `..data` over the old.
#[tokio::test]
async fn a_secret_volume_update_is_followed_like_the_kubelet_writes_it() {
    use std::os::unix::fs::symlink;
    let dir = tempfile::tempdir().unwrap();
    let mount = dir.path().join("edge-tls");
    std::fs::create_dir(&mount).unwrap();
    let ca = Ca::new();
    let until = |y| rcgen::date_time_ymd(y, 1, 2);
    // `..<stamp>/tls.crt`, `..data -> ..<stamp>`, `tls.crt -> ..data/tls.crt`.
    let write_version = |stamp: &str, year: i32| {
        let version = mount.join(format!("..{stamp}"));
        std::fs::create_dir(&version).unwrap();
        let (files, _) = ca.leaf_until(&version, "tls", &["a.test"], until(year));
        std::fs::rename(&files.cert, version.join("tls.crt")).unwrap();
        std::fs::rename(&files.key, version.join("tls.key")).unwrap();
        let tmp = mount.join("..data_tmp");
        symlink(format!("..{stamp}"), &tmp).unwrap();
        std::fs::rename(&tmp, mount.join("..data")).unwrap();
    };
    write_version("2026_12_04_01", 2031);
    for f in ["tls.crt", "tls.key"] {
        symlink(format!("..data/{f}"), mount.join(f)).unwrap();
    }
    let files = CertificateFiles {
        cert: mount.join("tls.crt"),
        key: mount.join("tls.key"),
    };
    let edge = tls_edge(&dir, vec![files.clone()], |_| {}).await;
    let series = format!(
        "edgelink_tls_certificate_expiry_seconds{{certificate=\"{}\"}}",
        files.cert.display()
    );
    expiry_becomes(&edge, &series, until(2031).unix_timestamp() as f64).await;
    write_version("2026_12_05_01", 2033);
    expiry_becomes(&edge, &series, until(2033).unix_timestamp() as f64).await;
}
