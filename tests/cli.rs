//! The `edgelink` binary end to end: the README's first-run path, import,
//! config checking and exit codes, and the distributed edge.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use edgelink_core::testing::TestDb;

mod prom;
mod support;

use support::{distributed_edge, edgelink, free_addr, get, request, run, send_raw, signal, Server};

fn write_csv(dir: &Path, name: &str, body: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p
}

#[test]
fn readme_first_run_serve_import_and_follow_a_link() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("edgelink.db");
    let server = Server::start(edgelink().arg("serve").arg("--sqlite").arg(&db));
    let csv = write_csv(dir.path(), "one.csv", "hello,https://example.com/\n");
    let out = run(edgelink().arg("import").arg(&csv).arg("--sqlite").arg(&db));
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("imported 1 of 1 rows"));

    let (status, location) = get(server.addr, "/hello");
    assert_eq!(status, 302);
    assert_eq!(location.as_deref(), Some("https://example.com/"));
    assert_eq!(get(server.addr, "/nope").0, 404);
    assert_eq!(server.stop().code(), Some(0), "SIGTERM drains and exits 0");
}

/// Click counts are collected, frozen and written on a thread of their own
/// (`edgelink-clicks`), not on a thread that serves requests: under uniform
/// traffic a flush handles tens of thousands of codes, which held up every
/// connection of the serving thread it ran on. The thread flushes (the
/// redirects below are counted within seconds, hits of tier 0 included).
#[test]
fn serve_counts_clicks_on_a_thread_of_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("edgelink.db");
    let csv = write_csv(dir.path(), "one.csv", "hello,https://example.com/\n");
    let out = run(edgelink().arg("import").arg(&csv).arg("--sqlite").arg(&db));
    assert!(out.status.success(), "{out:?}");
    let server = Server::start(edgelink().arg("serve").arg("--sqlite").arg(&db));
    for _ in 0..5 {
        assert_eq!(get(server.addr, "/hello").0, 302);
    }
    let threads: Vec<String> = std::fs::read_dir(format!("/proc/{}/task", server.child.id()))
        .unwrap()
        .map(|t| std::fs::read_to_string(t.unwrap().path().join("comm")).unwrap())
        .map(|name| name.trim_end().to_owned())
        .collect();
    assert_eq!(
        threads.iter().filter(|n| *n == "edgelink-clicks").count(),
        1,
        "{threads:?}"
    );
    // The flush runs at idle priority (the default): on a CI machine kept
    // busy by the other tests it may wait, and a write that times out
    // while it goes on is counted when its retry finds it applied.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, metrics) = request(server.admin, "GET", "/metrics", None, "");
        let written: f64 = metrics
            .lines()
            .filter(|l| l.starts_with("edgelink_clicks_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        if written == 5.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{written} clicks written, 5 redirects served"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(server.stop().code(), Some(0));
}

#[test]
fn readme_create_a_link_with_the_api_and_follow_it() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("edgelink.db");
    let server = Server::start(
        edgelink()
            .args(["serve", "--sqlite"])
            .arg(&db)
            .env("EDGELINK_ADMIN_TOKEN", "serve-admin-token-0123456789"),
    );
    let out = run(edgelink()
        .args(["apikey", "create", "--name", "me", "--sqlite"])
        .arg(&db));
    assert!(out.status.success(), "{out:?}");
    let key = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(key.starts_with("el_") && key.len() == 43, "{key:?}");

    let (status, body) = request(
        server.addr,
        "POST",
        "/api/v1/links",
        Some(&key),
        r#"{"url": "https://example.com/"}"#,
    );
    assert_eq!(status, 201, "{body}");
    let link: serde_json::Value = serde_json::from_str(&body).unwrap();
    let code = link["code"].as_str().unwrap();
    assert_eq!(code.len(), 7, "a key from the pool");
    assert_eq!(
        link["short_url"],
        format!("http://{}/{code}", server.addr),
        "serve's short URLs point at its listener"
    );
    let (status, location) = get(server.addr, &format!("/{code}"));
    assert_eq!(status, 302);
    assert_eq!(location.as_deref(), Some("https://example.com/"));

    // A change reaches the running edge's cache at once (in-process invalidation).
    let (status, _) = request(
        server.addr,
        "PATCH",
        &format!("/api/v1/links/{code}"),
        Some(&key),
        r#"{"url": "https://example.com/moved"}"#,
    );
    assert_eq!(status, 200);
    assert_eq!(
        get(server.addr, &format!("/{code}")).1.as_deref(),
        Some("https://example.com/moved")
    );
    let (status, _) = request(
        server.addr,
        "DELETE",
        &format!("/api/v1/links/{code}"),
        Some(&key),
        "",
    );
    assert_eq!(status, 204);
    assert_eq!(get(server.addr, &format!("/{code}")).0, 410);

    let (status, _) = request(
        server.addr,
        "POST",
        "/api/v1/links",
        None,
        r#"{"url": "https://example.com/"}"#,
    );
    assert_eq!(status, 401, "no key, no link");
    // The key pool's admin endpoint is on serve's admin listener.
    let token = Some("serve-admin-token-0123456789");
    let (status, body) = request(server.admin, "GET", "/admin/keypool", token, "");
    assert_eq!(status, 200, "{body}");
    let pool: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(pool["backend"], "sqlite");
    assert!(pool["leased"].as_u64().unwrap() >= 1, "{pool}");
    assert_eq!(
        request(server.admin, "GET", "/admin/keypool", None, "").0,
        401
    );
    let (_, metrics) = request(server.admin, "GET", "/metrics", None, "");
    assert!(
        metrics.contains("edgelink_http_requests_total"),
        "the edge's metrics"
    );
    assert!(
        metrics.contains("edgelink_keypool_free_keys"),
        "and the key pool's"
    );
    let revoked = run(edgelink()
        .args(["apikey", "revoke", &key, "--sqlite"])
        .arg(&db));
    assert!(revoked.status.success(), "{revoked:?}");
    assert_eq!(server.stop().code(), Some(0));
}

#[test]
fn import_reports_bad_rows_with_line_numbers_and_exit_65() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("e.db");
    let csv = write_csv(
        dir.path(),
        "mixed.csv",
        "code,url\ngood,https://example.com/g\nbad code,https://example.com/b\nftp,ftp://example.com/\n",
    );
    let out = run(edgelink().arg("import").arg(&csv).arg("--sqlite").arg(&db));
    assert_eq!(out.status.code(), Some(65));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("line 3: bad code"), "{stderr}");
    assert!(stderr.contains("line 4: url scheme"), "{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("imported 1 of 3 rows"));

    // Re-running is safe: the good row is reported as existing, not duplicated.
    let out = run(edgelink().arg("import").arg(&csv).arg("--sqlite").arg(&db));
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 2: code \"good\" already exists"));

    let out = run(edgelink()
        .args(["import", "/no/such/file.csv", "--sqlite"])
        .arg(&db));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot open"));
}

#[test]
fn check_validates_config_and_bad_config_exits_64() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(edgelink().args(["serve", "--check"]));
    assert_eq!(out.status.code(), Some(0), "{out:?}");

    let out = run(edgelink()
        .args(["serve", "--check"])
        .env("EDGELINK_CACHE_TTL_SECS", "soon"));
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("EDGELINK_CACHE_TTL_SECS"));

    let out = run(edgelink().args(["edge", "--check"]));
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("postgres.url is required"));

    let cfg = write_csv(dir.path(), "bad.toml", "[cache]\nmax_entries = 0\n");
    let out = run(edgelink().args(["serve", "--check", "--config"]).arg(&cfg));
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cache.max_entries"));

    let out = run(edgelink().args(["serve", "--listen", "not-an-address"]));
    assert_eq!(out.status.code(), Some(64));

    let cfg = write_csv(
        dir.path(),
        "good.toml",
        "[postgres]\nurl = \"postgres://u@127.0.0.1/db\"\n[redis]\nurl = \"redis://127.0.0.1:6379\"\n",
    );
    let out = run(edgelink().args(["edge", "--check", "--config"]).arg(&cfg));
    assert_eq!(out.status.code(), Some(0), "{out:?}");
}

#[test]
fn distributed_edge_serves_links_imported_into_postgres() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let db = rt.block_on(TestDb::create());
    let dir = tempfile::tempdir().unwrap();
    for _ in 0..2 {
        let out = run(edgelink().args(["migrate", "--postgres-url", &db.url]));
        assert!(out.status.success(), "migrate is idempotent: {out:?}");
    }
    let csv = write_csv(dir.path(), "pg.csv", "pg,https://example.com/pg,308\n");
    // Only the chosen store's settings are checked: a bad SQLite setting
    // does not stop an import into PostgreSQL, but it does stop `serve`.
    let bad_sqlite = ("EDGELINK_SQLITE_READERS", "0");
    let out = run(edgelink()
        .arg("import")
        .arg(&csv)
        .args(["--postgres-url", &db.url])
        .env(bad_sqlite.0, bad_sqlite.1));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("into postgres"),
        "{out:?}"
    );
    let out = run(edgelink()
        .args(["serve", "--check"])
        .env(bad_sqlite.0, bad_sqlite.1));
    assert_eq!(out.status.code(), Some(64));

    let server = Server::start(&mut distributed_edge(&db.url, "cli"));
    let (status, location) = get(server.addr, "/pg");
    assert_eq!(status, 308);
    assert_eq!(location.as_deref(), Some("https://example.com/pg"));
    assert_eq!(server.stop().code(), Some(0));
    drop(db);
}

#[test]
fn an_edge_starts_and_serves_while_postgresql_is_down() {
    // Nothing listens here: PostgreSQL is down from the start.
    let down = format!("postgres://postgres@{}/edgelink", free_addr());
    let mut cmd = distributed_edge(&down, "pgdown");
    cmd.env("EDGELINK_POSTGRES_CONNECT_TIMEOUT_MS", "200")
        .env("EDGELINK_POSTGRES_TIMEOUT_MS", "300");
    // Kubernetes' setting: stay ready, serve what tier 0 has.
    let server = Server::start(cmd.env("EDGELINK_SERVER_READY_NEEDS_SOURCE", "false"));
    let (code, body) = request(server.addr, "GET", "/readyz", None, "");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("degraded"), "{body}");
    let (code, _) = get(server.addr, "/notcached");
    assert_eq!(code, 503, "a miss with the source down");
    let (_, metrics) = request(server.admin, "GET", "/metrics", None, "");
    assert!(
        metrics.contains("edgelink_build_info{role=\"edge\""),
        "{metrics}"
    );
    assert_eq!(server.stop().code(), Some(0));
    // The default: not ready without the source, but up.
    let mut cmd = distributed_edge(&down, "pgdown");
    cmd.env("EDGELINK_POSTGRES_CONNECT_TIMEOUT_MS", "200");
    let server = Server::start(&mut cmd);
    let (code, body) = request(server.addr, "GET", "/readyz", None, "");
    assert_eq!(code, 503, "{body}");
    assert_eq!(request(server.admin, "GET", "/healthz", None, "").0, 200);
    assert_eq!(server.stop().code(), Some(0));
}

/// Polls `GET /admin/keypool` until `free` is `want`.
fn wait_for_free(admin: SocketAddr, token: &str, want: u64) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if TcpStream::connect(admin).is_ok() {
            let (code, body) = request(admin, "GET", "/admin/keypool", Some(token), "");
            let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            if code == 200 && v["free"] == want {
                return v;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the pool never held {want} free keys"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn keypool_role_fills_the_pool_and_serves_its_admin_endpoint() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let db = rt.block_on(TestDb::create());
    let admin = free_addr();
    let token = "cli-admin-token-0123456789";
    let server = Server::spawn(
        edgelink()
            .args([
                "keypool",
                "--postgres-url",
                &db.url,
                "--admin-listen",
                &admin.to_string(),
            ])
            .env("EDGELINK_ADMIN_TOKEN", token)
            .env("EDGELINK_KEYPOOL_LOW_WATERMARK", "1000")
            .env("EDGELINK_KEYPOOL_HIGH_WATERMARK", "3000")
            .env("EDGELINK_KEYPOOL_BATCH_SIZE", "1000")
            .env("EDGELINK_KEYPOOL_CHECK_INTERVAL_MS", "50"),
        admin,
    );
    let status = wait_for_free(admin, token, 3000);
    assert_eq!(status["backend"], "postgres");
    assert_eq!(status["high_watermark"], 3000);

    let (code, _) = request(
        admin,
        "GET",
        "/admin/keypool",
        Some("wrong-token-000000000000"),
        "",
    );
    assert_eq!(code, 401);
    let (code, _) = request(admin, "GET", "/admin/keypool", None, "");
    assert_eq!(code, 401, "no token, no answer");
    let (code, body) = request(
        admin,
        "POST",
        "/admin/keypool/refill",
        Some(token),
        r#"{"count": 500}"#,
    );
    assert_eq!(code, 202, "{body}");
    wait_for_free(admin, token, 3500);
    let (code, metrics) = request(admin, "GET", "/metrics", None, "");
    assert_eq!(code, 200);
    assert!(
        metrics.contains("edgelink_keypool_free_keys 3500"),
        "{metrics}"
    );
    assert!(
        metrics.contains("edgelink_keypool_refill_duration_seconds"),
        "{metrics}"
    );
    assert_eq!(server.stop().code(), Some(0));
    drop(db);
}

/// `edgelink serve --config <config>` on a database in `dir` holding
/// `/hello` -> https://example.com/.
fn serve_hello(dir: &Path, config: &Path) -> Server {
    let db = dir.join("edgelink.db");
    let server = Server::start(
        edgelink()
            .args(["serve", "--sqlite"])
            .arg(&db)
            .arg("--config")
            .arg(config),
    );
    let csv = write_csv(dir, "one.csv", "hello,https://example.com/\n");
    let out = run(edgelink().arg("import").arg(&csv).arg("--sqlite").arg(&db));
    assert!(out.status.success(), "{out:?}");
    server
}

/// One keep-alive HTTP/1.1 exchange on `s`: the status, or `None` when the
/// connection failed before a whole answer arrived.
fn keep_alive_get(s: &mut TcpStream, path: &str) -> Option<u16> {
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").ok()?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).ok()?;
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).ok()?;
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .map_or(Some(0), |v| v.trim().parse().ok())?;
    let mut body = vec![0u8; length];
    s.read_exact(&mut body).ok()?;
    head[9..12].parse().ok()
}

#[test]
fn sigterm_under_load_fails_no_request_and_lets_in_flight_ones_finish() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;

    // An upstream that takes 1.5 s to answer: the in-flight request.
    let slow = TcpListener::bind("127.0.0.1:0").unwrap();
    let slow_addr = slow.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in slow.incoming() {
            let Ok(mut conn) = conn else { return };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf);
                std::thread::sleep(Duration::from_millis(1_500));
                let _ = conn.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\nslow\n",
                );
            });
        }
    });

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("edgelink.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nshutdown_grace_ms = 1000\ndrain_timeout_ms = 5000\n\n\
             [proxy]\nupstreams = [\"http://{slow_addr}\"]\nprefixes = [\"/slow/\"]\n\
             health_check_path = \"\"\ntimeout_ms = 10000\n\n\
             [limits]\nnot_found_per_sec = 0.0\n"
        ),
    )
    .unwrap();
    let server = serve_hello(dir.path(), &config);

    // A load balancer's view: it stops sending once /readyz says 503.
    let out_of_rotation = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let addr = server.addr;
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (stop, ok, failed) = (out_of_rotation.clone(), ok.clone(), failed.clone());
        workers.push(std::thread::spawn(move || {
            let mut s = TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            while !stop.load(Ordering::Relaxed) {
                match keep_alive_get(&mut s, "/hello") {
                    Some(302) => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    let in_flight = std::thread::spawn(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        keep_alive_get(&mut s, "/slow/x")
    });
    std::thread::sleep(Duration::from_millis(300));
    signal(&server, "-TERM");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        if keep_alive_get(&mut s, "/readyz") == Some(503) {
            break;
        }
        assert!(Instant::now() < deadline, "/readyz never turned 503");
        std::thread::sleep(Duration::from_millis(20));
    }
    out_of_rotation.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    assert_eq!(
        in_flight.join().unwrap(),
        Some(200),
        "the in-flight request finished"
    );
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "{} ok",
        ok.load(Ordering::Relaxed)
    );
    assert!(ok.load(Ordering::Relaxed) > 0);
    assert_eq!(
        server.stop_waiting().code(),
        Some(0),
        "drained, then exit 0"
    );
}

#[test]
fn sighup_reloads_the_config_file_and_keeps_the_old_one_when_it_is_bad() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("edgelink.toml");
    std::fs::write(&config, "[limits]\nmax_uri_bytes = 2048\n").unwrap();
    let server = serve_hello(dir.path(), &config);
    let long = format!("/hello?{}", "q".repeat(100));
    assert_eq!(get(server.addr, &long).0, 302);

    std::fs::write(&config, "[limits]\nmax_uri_bytes = 64\n").unwrap();
    signal(&server, "-HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(server.addr, &long).0 != 414 {
        assert!(Instant::now() < deadline, "the reload did not apply");
        std::thread::sleep(Duration::from_millis(50));
    }

    // An invalid file: refused, the running settings stay.
    std::fs::write(&config, "[limits]\nmax_uri_bytes = 1\n").unwrap();
    signal(&server, "-HUP");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(get(server.addr, &long).0, 414);
    assert_eq!(get(server.addr, "/hello").0, 302);
    assert_eq!(server.stop().code(), Some(0));
}

#[test]
fn the_readme_edge_toml_example_is_a_valid_configuration() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = readme
        .split("## The edge as the front door")
        .nth(1)
        .unwrap();
    let example = section
        .split("```toml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("edge.toml");
    let check = |file: &Path| {
        run(edgelink()
            .args([
                "edge",
                "--check",
                "--postgres-url",
                "postgres://x@127.0.0.1/y",
            ])
            .arg("--config")
            .arg(file))
    };

    // Its certificate paths are examples: `--check` loads them, and says so.
    std::fs::write(&file, example).unwrap();
    let out = check(&file);
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("tls.certificates: /etc/edgelink/tls/sho.rt.crt"),
        "{err}"
    );

    // With the certificates in place, all of it is valid.
    let mut text = example.to_owned();
    for (stem, name) in [("sho.rt", "sho.rt"), ("wildcard.example", "*.example")] {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        for (ext, pem) in [("crt", cert.pem()), ("key", key.serialize_pem())] {
            let path = dir.path().join(format!("{stem}.{ext}"));
            std::fs::write(&path, pem).unwrap();
            text = text.replace(
                &format!("/etc/edgelink/tls/{stem}.{ext}"),
                path.to_str().unwrap(),
            );
        }
    }
    std::fs::write(&file, text).unwrap();
    let out = check(&file);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("configuration is valid"));
}

/// Migrates `db`, starts the `keypool` role on it and waits until the pool
/// holds `keys` free keys.
fn migrated_with_keypool(db: &TestDb, keys: u64) -> Server {
    let out = run(edgelink().args(["migrate", "--postgres-url", &db.url]));
    assert!(out.status.success(), "{out:?}");
    let admin_token = "cli-admin-token-0123456789";
    let admin = free_addr();
    let server = Server::spawn(
        edgelink()
            .args(["keypool", "--postgres-url", &db.url, "--admin-listen"])
            .arg(admin.to_string())
            .env("EDGELINK_ADMIN_TOKEN", admin_token)
            .env("EDGELINK_KEYPOOL_LOW_WATERMARK", (keys / 2).to_string())
            .env("EDGELINK_KEYPOOL_HIGH_WATERMARK", keys.to_string())
            .env("EDGELINK_KEYPOOL_BATCH_SIZE", keys.to_string()),
        admin,
    );
    wait_for_free(admin, admin_token, keys);
    server
}

/// Issue 5: the origin killed with SIGKILL in the middle of a creation
/// load loses nothing it acknowledged: every link that got a 201 resolves
/// afterwards, through an edge, to the URL it was created with.
#[test]
fn origin_killed_mid_load_loses_no_acknowledged_link() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let db = rt.block_on(TestDb::create());
    let keypool = migrated_with_keypool(&db, 5000);

    let api_key = format!("el_{}", "k".repeat(40));
    let origin = || {
        Server::start(
            edgelink()
                .args(["origin", "--postgres-url", &db.url])
                .env("EDGELINK_BOOTSTRAP_API_KEY", &api_key),
        )
    };
    let first = origin();
    let addr = first.addr;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|t| {
            let (stop, key) = (stop.clone(), api_key.clone());
            std::thread::spawn(move || {
                let mut acked = Vec::new();
                let mut i = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    i += 1;
                    let url = format!("https://example.com/{t}/{i}");
                    let body = format!(r#"{{"url": "{url}"}}"#);
                    let auth = format!("Bearer {key}");
                    let headers = [("Authorization", auth.as_str())];
                    let Some((201, reply)) =
                        send_raw(addr, "POST", "/api/v1/links", &headers, &body)
                    else {
                        continue;
                    };
                    let v: serde_json::Value = serde_json::from_str(&reply).unwrap();
                    acked.push((v["code"].as_str().unwrap().to_owned(), url));
                }
                acked
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    drop(first); // SIGKILL, mid-load
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let acked: Vec<(String, String)> = clients
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .collect();
    assert!(acked.len() >= 20, "the load created links: {}", acked.len());

    // Resolved by an edge (no Redis: straight from PostgreSQL).
    let edge = Server::start(edgelink().args(["edge", "--postgres-url", &db.url]));
    let mut lost = Vec::new();
    for (code, url) in &acked {
        let (status, location) = get(edge.addr, &format!("/{code}"));
        if status != 302 || location.as_deref() != Some(url.as_str()) {
            lost.push((code, status, location));
        }
    }
    eprintln!(
        "origin killed: {} links acknowledged, {} lost",
        acked.len(),
        lost.len()
    );
    assert!(lost.is_empty(), "{lost:?}");
    // A restarted origin creates links again.
    let again = origin();
    let (status, body) = request(
        again.addr,
        "POST",
        "/api/v1/links",
        Some(&api_key),
        r#"{"url": "https://example.com/again"}"#,
    );
    assert_eq!(status, 201, "{body}");
    assert_eq!(again.stop().code(), Some(0));
    assert_eq!(edge.stop().code(), Some(0));
    assert_eq!(keypool.stop().code(), Some(0));
    drop(db);
}

/// Issue 6: the `/metrics` of every role parses as Prometheus text, every
/// metric there is in the catalogue (docs/METRICS.md) with its type, every
/// catalogued metric is exported by some role, and the dashboard and the
/// alert rules use only catalogued metrics.
#[test]
fn metrics_of_every_role_parse_and_match_the_catalogue() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let catalogue =
        prom::catalogue(&std::fs::read_to_string(root.join("docs/METRICS.md")).unwrap());
    assert!(catalogue.len() > 30, "{catalogue:?}");

    let rt = tokio::runtime::Runtime::new().unwrap();
    let db = rt.block_on(TestDb::create());
    let dir = tempfile::tempdir().unwrap();
    let keypool = migrated_with_keypool(&db, 1000);
    let roles = [
        (
            "serve",
            Server::start(
                edgelink()
                    .args(["serve", "--sqlite"])
                    .arg(dir.path().join("e.db")),
            ),
        ),
        ("edge", Server::start(&mut distributed_edge(&db.url, "obs"))),
        (
            "origin",
            Server::start(edgelink().args(["origin", "--postgres-url", &db.url])),
        ),
    ];
    let mut exported = std::collections::BTreeMap::new();
    let mut scrape = |role: &str, admin: SocketAddr| {
        let (status, text) = request(admin, "GET", "/metrics", None, "");
        assert_eq!(status, 200, "{role}");
        let families = prom::parse(&text).unwrap_or_else(|e| panic!("{role}: {e}\n{text}"));
        for (name, kind) in families {
            assert_eq!(
                catalogue.get(&name),
                Some(&kind),
                "{role} exports {name} ({kind}): not in docs/METRICS.md with that type"
            );
            exported.insert(name, role.to_owned());
        }
    };
    for (role, server) in &roles {
        // A request first, so per-request series exist.
        let _ = get(server.addr, "/nope");
        scrape(role, server.admin);
    }
    scrape("keypool", keypool.admin);
    // An edge with a certificate: its expiry gauge.
    let cert = rcgen::generate_simple_self_signed(vec!["sho.rt".into()]).unwrap();
    std::fs::write(dir.path().join("tls.crt"), cert.cert.pem()).unwrap();
    std::fs::write(dir.path().join("tls.key"), cert.signing_key.serialize_pem()).unwrap();
    let tls_config = dir.path().join("tls.toml");
    std::fs::write(
        &tls_config,
        format!(
            "[[tls.certificates]]\ncert = \"{0}/tls.crt\"\nkey = \"{0}/tls.key\"\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let tls_edge = Server::start(
        edgelink()
            .args(["serve", "--sqlite"])
            .arg(dir.path().join("tls.db"))
            .arg("--config")
            .arg(&tls_config),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !request(tls_edge.admin, "GET", "/metrics", None, "")
        .1
        .contains("edgelink_tls_certificate_expiry_seconds")
    {
        assert!(Instant::now() < deadline, "no certificate expiry exported");
        std::thread::sleep(Duration::from_millis(100));
    }
    scrape("edge with TLS", tls_edge.admin);
    // The autoscaler, reading the edge above, on the command actuator.
    let autoscaler_admin = free_addr();
    let count = dir.path().join("count");
    std::fs::write(&count, "1\n").unwrap();
    let config = dir.path().join("autoscaler.toml");
    std::fs::write(
        &config,
        format!(
            "[autoscaler]\ninterval_secs = 1\nmin_replicas = 2\nstate_dir = \"{}\"\nadmin_listen = \"{autoscaler_admin}\"\n\
             [signals]\nsource = \"static\"\ntargets = [\"{}\"]\n\
             [actuator]\nkind = \"command\"\ncommand = [\"sh\", \"-c\", \"echo {{replicas}} > {}\"]\ncurrent_command = [\"cat\", \"{}\"]\n",
            dir.path().join("autoscaler").display(),
            roles[1].1.admin,
            count.display(),
            count.display(),
        ),
    )
    .unwrap();
    let mut autoscaler = Server::spawn(
        edgelink()
            .args(["autoscale", "run", "--config"])
            .arg(&config),
        autoscaler_admin,
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::fs::read_to_string(&count).unwrap().trim() != "2" {
        assert!(
            autoscaler.child.try_wait().unwrap().is_none() && Instant::now() < deadline,
            "the autoscaler did not scale to its minimum"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    scrape("autoscale", autoscaler.admin);
    let missing: Vec<&String> = catalogue
        .keys()
        .filter(|m| !exported.contains_key(*m))
        .collect();
    assert!(
        missing.is_empty(),
        "catalogued but exported by no role: {missing:?}"
    );

    for file in [
        "deploy/observability/grafana/dashboards/edgelink.json",
        "deploy/observability/prometheus/alerts.yml",
    ] {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        if file.ends_with(".json") {
            let _: serde_json::Value = serde_json::from_str(&text).unwrap();
        }
        let used = prom::mentioned(&text, &catalogue);
        assert!(used.len() > 5, "{file}: {used:?}");
        let unknown: Vec<&String> = used
            .iter()
            .filter(|m| !catalogue.contains_key(*m))
            .collect();
        assert!(
            unknown.is_empty(),
            "{file} uses metrics not in the catalogue: {unknown:?}"
        );
    }
    for (_, server) in roles {
        assert_eq!(server.stop().code(), Some(0));
    }
    assert_eq!(keypool.stop().code(), Some(0));
    assert_eq!(autoscaler.stop().code(), Some(0));
    drop(db);
}

/// An OTLP/HTTP collector stand-in on a thread: the spans posted to it.
fn collector() -> (
    SocketAddr,
    std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let spans = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let kept = spans.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let kept = kept.clone();
            std::thread::spawn(move || {
                let mut reader = std::io::BufReader::new(s.try_clone().unwrap());
                loop {
                    let mut len = 0;
                    let mut line = String::new();
                    loop {
                        line.clear();
                        if std::io::BufRead::read_line(&mut reader, &mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            break;
                        }
                        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                            len = v.trim().parse().unwrap();
                        }
                    }
                    let mut body = vec![0; len];
                    reader.read_exact(&mut body).unwrap();
                    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
                    kept.lock()
                        .unwrap()
                        .extend(edgelink_core::testing::otlp_spans(&v));
                    let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
                }
            });
        }
    });
    (addr, spans)
}

/// Issue 6: a creation sent to the edge with B3 can be followed edge ->
/// origin -> PostgreSQL: both roles export their spans, in one trace, each
/// hop the child of the one before.
#[test]
fn a_creation_is_traced_from_edge_through_origin_to_postgres() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let db = rt.block_on(TestDb::create());
    let (otlp, spans) = collector();
    let otlp = format!("http://{otlp}");
    let keypool = migrated_with_keypool(&db, 1000);
    let api_key = format!("el_{}", "t".repeat(40));
    let origin = Server::start(
        edgelink()
            .args(["origin", "--postgres-url", &db.url])
            .env("EDGELINK_BOOTSTRAP_API_KEY", &api_key)
            .env("EDGELINK_TRACING_OTLP_ENDPOINT", &otlp)
            .env("EDGELINK_TRACING_SAMPLE_RATIO", "0"),
    );
    let edge = Server::start(
        edgelink()
            .args(["edge", "--postgres-url", &db.url])
            .env(
                "EDGELINK_PROXY_UPSTREAMS",
                format!("http://{}", origin.addr),
            )
            .env("EDGELINK_TRACING_OTLP_ENDPOINT", &otlp)
            .env("EDGELINK_TRACING_SAMPLE_RATIO", "0"),
    );
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let (auth, b3) = (
        format!("Bearer {api_key}"),
        format!("{trace}-00f067aa0ba902b7-1"),
    );
    let (status, reply) = send_raw(
        edge.addr,
        "POST",
        "/api/v1/links",
        &[("Authorization", &auth), ("b3", &b3)],
        r#"{"url": "https://example.com/traced"}"#,
    )
    .unwrap();
    assert_eq!(status, 201, "{reply}");

    let deadline = Instant::now() + Duration::from_secs(10);
    let find = |name: &str| {
        spans
            .lock()
            .unwrap()
            .iter()
            .find(|s| s["traceId"] == trace && s["name"] == name)
            .cloned()
    };
    while [
        "edge.request",
        "proxy.forward",
        "origin.request",
        "store.insert_links",
    ]
    .iter()
    .any(|n| find(n).is_none())
    {
        assert!(
            Instant::now() < deadline,
            "spans of the trace: {:#?}",
            spans.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (edge_span, forward, origin_span, insert) = (
        find("edge.request").unwrap(),
        find("proxy.forward").unwrap(),
        find("origin.request").unwrap(),
        find("store.insert_links").unwrap(),
    );
    assert_eq!(edge_span["parentSpanId"], "00f067aa0ba902b7");
    assert_eq!(edge_span["service"], "edgelink-edge");
    assert_eq!(forward["parentSpanId"], edge_span["spanId"]);
    assert_eq!(origin_span["parentSpanId"], forward["spanId"]);
    assert_eq!(origin_span["service"], "edgelink-origin");
    assert_eq!(insert["parentSpanId"], origin_span["spanId"]);
    assert_eq!(insert["attributes"][0]["value"]["stringValue"], "postgres");
    for server in [edge, origin, keypool] {
        assert_eq!(server.stop().code(), Some(0));
    }
    drop(db);
}

/// Issue 7 (the simulator): `autoscale simulate --json` prints one object
/// per policy with the fields scripts read; the references never violate
/// and a reactive policy pays for a step with a few violation minutes.
#[test]
fn autoscale_simulate_reports_every_policy_as_json() {
    let dir = tempfile::tempdir().unwrap();
    // Three days: 100 requests/s, with an hour at 400 each afternoon (the
    // MSTL forecast needs two days of history).
    let secs: Vec<String> = (0..3 * 86_400)
        .map(|s| {
            if (50_400..54_000).contains(&(s % 86_400)) {
                "400"
            } else {
                "100"
            }
            .to_owned()
        })
        .collect();
    let trace = dir.path().join("trace.txt");
    std::fs::write(&trace, secs.join(" ")).unwrap();
    let out = run(edgelink()
        .args([
            "autoscale",
            "simulate",
            "--json",
            "--train-days",
            "2",
            "--scale",
            "40000",
        ])
        .arg("--trace")
        .arg(&trace));
    assert!(out.status.success(), "{out:?}");
    let reports: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let names: Vec<&str> = reports
        .iter()
        .map(|r| r["policy"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "static-peak",
            "hpa",
            "scheduled",
            "hpa+spike",
            "hpa+forecast",
            "layered",
            "layered-naive",
            "layered+scheduled",
            "oracle"
        ]
    );
    for r in &reports {
        for field in [
            "replica_hours",
            "violation_minutes",
            "unserved_fraction",
            "actions",
            "reversals",
        ] {
            assert!(r[field].is_number(), "{r}");
        }
    }
    let by = |n: &str| reports.iter().find(|r| r["policy"] == n).unwrap();
    assert_eq!(by("static-peak")["violation_minutes"], 0);
    assert_eq!(by("oracle")["violation_minutes"], 0);
    assert!(
        by("hpa")["violation_minutes"].as_u64().unwrap() > 0,
        "the step costs a reactive policy"
    );
    assert!(
        by("hpa+forecast")["violation_minutes"].as_u64().unwrap()
            < by("hpa")["violation_minutes"].as_u64().unwrap(),
        "two days of history see the afternoon coming: {reports:?}"
    );
    assert!(
        by("oracle")["replica_hours"].as_f64().unwrap()
            < by("static-peak")["replica_hours"].as_f64().unwrap()
    );
    let bad = run(edgelink()
        .args(["autoscale", "simulate", "--policy", "nope"])
        .arg("--trace")
        .arg(&trace));
    assert_eq!(bad.status.code(), Some(64));
}

#[test]
fn migrate_wait_returns_once_another_process_has_migrated() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let db = rt.block_on(TestDb::create());
    let out = run(edgelink().args(["migrate", "--wait", "1", "--postgres-url", &db.url]));
    assert_eq!(out.status.code(), Some(1), "nothing migrated it: {out:?}");
    let mut waiting = edgelink()
        .args(["migrate", "--wait", "30", "--postgres-url", &db.url])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(waiting.try_wait().unwrap().is_none(), "still waiting");
    let out = run(edgelink().args(["migrate", "--postgres-url", &db.url]));
    assert!(out.status.success(), "{out:?}");
    let out = waiting.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("schema is current"));
    let out = run(edgelink().args(["migrate", "--wait", "5", "--sqlite", "x.db"]));
    assert_eq!(
        out.status.code(),
        Some(64),
        "--wait is for PostgreSQL: {out:?}"
    );
    drop(db);
}
