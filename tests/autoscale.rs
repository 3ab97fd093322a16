//! The live autoscaler end to end: the process actuator's edges serve
//! traffic and drain; the systemd actuator's edges outlive the autoscaler
//! and are adopted by the next; the lease keeps a second autoscaler
//! passive; an action a crash interrupted is reconciled, not repeated.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use edgelink_autoscaler::live::actuator::ProcessFleet;
use edgelink_core::testing::{unique, TestDb};

mod support;

use support::{edgelink, free_addr, get, request, run, signal, Server};

/// `edgelink edge` arguments on `db`, answering on `public`.
fn edge_args(db: &TestDb, public: SocketAddr) -> Vec<String> {
    let mut args = support::edge_args(&db.url);
    args.extend(["--listen".to_owned(), public.to_string()]);
    args
}

/// A fresh database with one link, `/hi`.
fn database_with_a_link(dir: &Path) -> TestDb {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let db = rt.block_on(TestDb::create());
    let csv = dir.join("links.csv");
    std::fs::write(&csv, "hi,https://example.com/hi\n").unwrap();
    let out = run(edgelink()
        .arg("import")
        .arg(&csv)
        .args(["--postgres-url", &db.url]));
    assert!(out.status.success(), "{out:?}");
    db
}

/// A port `p` with `p + 1` also free, below the ephemeral range (where an
/// outgoing connection could take `p + 1` at any time).
fn free_port_pair() -> u16 {
    loop {
        let p = 20_000 + rand::random::<u16>() % 10_000;
        let bind = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p));
        if let (Ok(_a), Ok(_b)) = (bind(p), bind(p + 1)) {
            return p;
        }
    }
}

/// One GET /hi on a new connection: the status, or where it failed.
fn raw_get(addr: SocketAddr) -> Result<u16, String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /hi HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut text = String::new();
    s.read_to_string(&mut text)
        .map_err(|e| format!("read after {} bytes: {e}", text.len()))?;
    text.get(9..12)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("answer: {text:?}"))
}

fn wait_until(what: &str, secs: u64, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn requests_served(admin: SocketAddr) -> f64 {
    let (status, text) = request(admin, "GET", "/metrics", None, "");
    assert_eq!(status, 200);
    edgelink_autoscaler::live::signals::sum_of(&text, "edgelink_http_requests_total").unwrap_or(0.0)
}

/// Kills the edges listed in `edges.json` when the test ends, passed or
/// not (a failed assertion must not leave edges running).
struct KillEdges<'a>(&'a Path);

impl Drop for KillEdges<'_> {
    fn drop(&mut self) {
        let Ok(text) = std::fs::read_to_string(self.0.join("edges.json")) else {
            return;
        };
        let saved: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap_or_default();
        for pid in saved.iter().filter_map(|e| e["pid"].as_u64()) {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}

#[test]
fn the_process_actuator_starts_edges_that_serve_and_drains_them_lifo() {
    let dir = tempfile::tempdir().unwrap();
    let _cleanup = KillEdges(dir.path());
    let db = database_with_a_link(dir.path());
    let public = free_addr();
    let admin_base = free_port_pair();
    let env = vec![
        (
            "EDGELINK_REDIS_KEY_PREFIX".to_owned(),
            unique("scale") + ":",
        ),
        ("RUST_LOG".to_owned(), "warn".to_owned()),
    ];
    let rt = tokio::runtime::Runtime::new().unwrap();
    let open = || {
        ProcessFleet::open(
            env!("CARGO_BIN_EXE_edgelink").into(),
            edge_args(&db, public),
            env.clone(),
            admin_base,
            Duration::from_secs(10),
            dir.path(),
        )
        .unwrap()
    };
    let mut fleet = open();
    assert_eq!(rt.block_on(fleet.scale(2)).unwrap(), 2);
    let targets = fleet.targets();
    assert_eq!(
        targets,
        [
            format!("127.0.0.1:{admin_base}"),
            format!("127.0.0.1:{}", admin_base + 1)
        ]
    );
    let admins: Vec<SocketAddr> = targets.iter().map(|t| t.parse().unwrap()).collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !(admins
        .iter()
        .all(|a| std::net::TcpStream::connect(a).is_ok())
        && std::net::TcpStream::connect(public).is_ok())
    {
        if Instant::now() > deadline {
            let logs: Vec<String> = (0..2)
                .map(|i| {
                    std::fs::read_to_string(dir.path().join(format!("edge-{i}.log")))
                        .unwrap_or_default()
                })
                .collect();
            panic!("the edges did not start: {logs:#?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }

    // Both serve the one public port: the kernel spreads connections.
    for _ in 0..200 {
        assert_eq!(get(public, "/hi").0, 302);
    }
    let served: Vec<f64> = admins.iter().map(|a| requests_served(*a)).collect();
    assert!(
        served.iter().all(|n| *n > 0.0) && served.iter().sum::<f64>() >= 200.0,
        "requests per edge: {served:?}"
    );

    // Scale in under load: the newest edge gets SIGTERM and drains; no
    // request fails.
    let stop = Arc::new(AtomicBool::new(false));
    let counters = || Arc::new(AtomicU64::new(0));
    let (ok, failed, refused) = (counters(), counters(), counters());
    let load: Vec<_> = (0..4)
        .map(|_| {
            let (stop, ok, failed, refused) =
                (stop.clone(), ok.clone(), failed.clone(), refused.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match raw_get(public) {
                        Ok(302) => ok.fetch_add(1, Ordering::Relaxed),
                        // Refused or reset before a byte of the answer.
                        Err(e)
                            if e.starts_with("connect:")
                                || (e.contains("reset by peer")
                                    && (e.starts_with("write:")
                                        || e.starts_with("read after 0 bytes"))) =>
                        {
                            eprintln!("refused: {e}");
                            refused.fetch_add(1, Ordering::Relaxed)
                        }
                        other => {
                            eprintln!("failed: {other:?}");
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(rt.block_on(fleet.scale(1)).unwrap(), 1);
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.join().unwrap();
    }
    assert_eq!((fleet.drained, fleet.killed), (1, 0), "drained, not killed");
    assert_eq!(fleet.targets(), [format!("127.0.0.1:{admin_base}")], "LIFO");
    assert!(std::net::TcpStream::connect(admins[1]).is_err());
    let [ok, failed, refused] = [ok, failed, refused].map(|c| c.load(Ordering::Relaxed));
    assert!(ok > 100, "{ok} served during the scale-in");
    assert_eq!(failed, 0, "{failed} of {} failed", ok + failed + refused);
    // A handshake that completes in the microseconds between the draining
    // edge's last accept and its close is reset by the kernel unless
    // net.ipv4.tcp_migrate_req moves it to the other edge (README
    // "Autoscaler"). The client's connect has succeeded by then (it saw the
    // SYN-ACK), so the reset comes on its write or read, before any byte of
    // an answer. An edge that closed connections it had accepted would
    // reset them the same way, but on every scale-in, not once in many.
    let migrate = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_migrate_req")
        .is_ok_and(|v| v.trim() == "1");
    let allowed = if migrate { 0 } else { 2 };
    assert!(refused <= allowed, "{refused} connections reset at connect");

    // A restarted autoscaler adopts the running edge instead of starting
    // another.
    drop(fleet);
    let mut again = open();
    assert_eq!(again.current(), 1);
    rt.block_on(again.stop_all());
    assert_eq!(again.drained, 1);
    assert!(std::net::TcpStream::connect(public).is_err());
    drop(db);
}

/// An autoscaler config on the command actuator: the "fleet" is a number
/// in `count`, and every scaling command is logged to `calls`.
fn command_config(
    dir: &Path,
    name: &str,
    min: u32,
    lease: &str,
    count: &Path,
) -> (std::path::PathBuf, SocketAddr) {
    let admin = free_addr();
    let state = dir.join(name);
    let calls = dir.join(format!("{name}.calls"));
    let text = format!(
        r#"
[autoscaler]
interval_secs = 1
policy = "hpa"
min_replicas = {min}
max_replicas = 10
state_dir = "{state}"
admin_listen = "{admin}"
[signals]
source = "static"
targets = ["127.0.0.1:1"]
[actuator]
kind = "command"
command = ["sh", "-c", "echo {{replicas}} > {count} && echo {{replicas}} >> {calls}"]
current_command = ["cat", "{count}"]
{lease}
"#,
        state = state.display(),
        count = count.display(),
        calls = calls.display(),
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    (path, admin)
}

fn start_autoscaler(config: &Path, admin: SocketAddr) -> Server {
    let server = Server::spawn(
        edgelink()
            .args(["autoscale", "run", "--config"])
            .arg(config),
        admin,
    );
    wait_until("the autoscaler's admin listener", 20, || {
        std::net::TcpStream::connect(admin).is_ok()
    });
    server
}

fn status(admin: SocketAddr) -> serde_json::Value {
    let (code, body) = request(admin, "GET", "/status", None, "");
    assert_eq!(code, 200);
    serde_json::from_str(&body).unwrap()
}

fn count(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap().trim().to_owned()
}

#[test]
fn the_lease_keeps_a_second_autoscaler_passive_until_the_first_dies() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let db = rt.block_on(TestDb::create());
    let key = rand::random::<u32>();
    let lease = format!(
        "[lease]\nkind = \"postgres\"\nurl = \"{}\"\nkey = {key}",
        db.url
    );
    let fleet = dir.path().join("count");
    std::fs::write(&fleet, "1\n").unwrap();
    // A wants 3, B wants 4: the count says who acted.
    let (a_config, a_admin) = command_config(dir.path(), "a", 3, &lease, &fleet);
    let (b_config, b_admin) = command_config(dir.path(), "b", 4, &lease, &fleet);
    let a = start_autoscaler(&a_config, a_admin);
    wait_until("A active", 20, || status(a_admin)["active"] == true);
    wait_until("A's scale-out", 20, || count(&fleet) == "3");
    let b = start_autoscaler(&b_config, b_admin);
    std::thread::sleep(Duration::from_secs(4));
    let s = status(b_admin);
    assert_eq!(s["active"], false, "{s}");
    assert!(s["reason"].as_str().unwrap().contains("passive"), "{s}");
    assert_eq!(count(&fleet), "3", "B did not act while A held the lease");
    assert!(!dir.path().join("b.calls").exists());

    // A dies without a word: its session ends, B takes the lease.
    signal(&a, "-KILL");
    let _ = a.stop_waiting();
    wait_until("B active", 20, || status(b_admin)["active"] == true);
    wait_until("B's scale-out", 20, || count(&fleet) == "4");
    assert_eq!(b.stop().code(), Some(0));
    drop(db);
}

#[test]
fn an_action_a_crash_interrupted_is_reconciled_not_repeated() {
    for (actual, note) in [("5", "had taken effect"), ("2", "had not taken effect")] {
        let dir = tempfile::tempdir().unwrap();
        let fleet = dir.path().join("count");
        std::fs::write(&fleet, format!("{actual}\n")).unwrap();
        // min 2: once reconciled, the policy is content with 2 or 5 (no
        // load, scale-in waits out the stabilisation window).
        let (config, admin) = command_config(dir.path(), "x", 2, "", &fleet);
        let state = dir.path().join("x");
        std::fs::create_dir_all(&state).unwrap();
        // The crash: 2 -> 5 written as intended, never as done.
        std::fs::write(
            state.join("actions.wal"),
            "{\"seq\":1,\"phase\":\"intended\",\"at\":1,\"from\":2,\"to\":5,\"note\":\"forecast\"}\n",
        )
        .unwrap();
        let a = start_autoscaler(&config, admin);
        wait_until("an evaluation", 20, || status(admin)["active"] == true);
        std::thread::sleep(Duration::from_secs(2));
        assert_eq!(a.stop().code(), Some(0));
        let wal = std::fs::read_to_string(state.join("actions.wal")).unwrap();
        let records: Vec<serde_json::Value> = wal
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(records.len(), 2, "{wal}");
        assert_eq!(records[1]["phase"], "reconciled");
        assert_eq!(records[1]["seq"], 1);
        assert_eq!(records[1]["actual"], actual.parse::<u32>().unwrap());
        assert!(records[1]["note"].as_str().unwrap().contains(note), "{wal}");
        assert!(
            !dir.path().join("x.calls").exists(),
            "the interrupted 2 -> 5 was not replayed"
        );
        assert_eq!(count(&fleet), actual);
    }
}

/// The units of `autoscaler/testdata/fake-systemctl.sh` in `dir` that run.
fn fake_units_running(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(unit) = name.strip_suffix(".pid") else {
            continue;
        };
        let pid = std::fs::read_to_string(entry.path()).unwrap();
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid.trim()));
        // Not a zombie: PID 1 here may not reap.
        if stat.is_ok_and(|s| s.split_whitespace().nth(2) != Some("Z")) {
            out.push(unit.to_owned());
        }
    }
    out.sort();
    out
}

#[test]
fn a_restarted_autoscaler_adopts_the_systemd_edges_it_left() {
    let dir = tempfile::tempdir().unwrap();
    let units = dir.path().join("units");
    std::fs::create_dir_all(&units).unwrap();
    let kill_units = KillFakeUnits(&units);
    let admin = free_addr();
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("autoscaler/testdata/fake-systemctl.sh");
    let config = dir.path().join("autoscaler.toml");
    // The edges' admin ports answer nothing: every edge is stale, so the
    // autoscaler never scales in; min_replicas is the fleet.
    std::fs::write(
        &config,
        format!(
            "[autoscaler]\ninterval_secs = 1\npolicy = \"hpa\"\nmin_replicas = 2\nmax_replicas = 4\n\
             state_dir = \"{}\"\nadmin_listen = \"{admin}\"\n\
             [signals]\nsource = \"actuator\"\n\
             [actuator]\nkind = \"systemd\"\nunit = \"edgelink-edge@.service\"\nadmin_port_base = 9210\n\
             systemctl = [\"sh\", \"{}\", \"{}\"]\n",
            dir.path().join("state").display(),
            script.display(),
            units.display(),
        ),
    )
    .unwrap();
    let want = ["edgelink-edge@9210.service", "edgelink-edge@9211.service"];
    let starts = || {
        std::fs::read_to_string(units.join("calls"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(" start "))
            .count()
    };

    let a = start_autoscaler(&config, admin);
    wait_until("the scale-out to min_replicas", 20, || {
        fake_units_running(&units) == want
    });
    // SIGTERM (`systemctl stop` or `restart` of the autoscaler): its edges
    // are not its children and run on.
    assert_eq!(a.stop().code(), Some(0));
    assert_eq!(fake_units_running(&units), want);
    assert_eq!(starts(), 1);

    for how in ["-TERM", "-KILL"] {
        let b = start_autoscaler(&config, admin);
        wait_until("an evaluation", 20, || status(admin)["current"] == 2);
        std::thread::sleep(Duration::from_secs(2));
        let s = status(admin);
        assert_eq!(
            (s["current"].clone(), s["desired"].clone()),
            (2.into(), 2.into()),
            "{s}"
        );
        assert_eq!(starts(), 1, "adopted, nothing started");
        signal(&b, how);
        let _ = b.stop_waiting();
        assert_eq!(fake_units_running(&units), want, "after {how}");
    }
    drop(kill_units);
}

/// Kills the fake systemctl's units when a test ends, passed or not.
struct KillFakeUnits<'a>(&'a Path);

impl Drop for KillFakeUnits<'_> {
    fn drop(&mut self) {
        for entry in std::fs::read_dir(self.0).into_iter().flatten().flatten() {
            if entry.path().extension().is_some_and(|e| e == "pid") {
                let pid = std::fs::read_to_string(entry.path()).unwrap_or_default();
                let _ = std::process::Command::new("kill")
                    .args(["-KILL", pid.trim()])
                    .status();
            }
        }
    }
}

#[test]
fn the_one_machine_example_is_a_valid_configuration() {
    // (The Kubernetes one is checked with the manifests: tests/deploy.rs.)
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/autoscaler/one-machine.toml");
    let out = run(edgelink()
        .args(["autoscale", "run", "--check", "--config"])
        .arg(&file));
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn observe_mode_says_what_it_would_do_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let admin = free_addr();
    let state = dir.path().join("state");
    let config = dir.path().join("observe.toml");
    std::fs::write(
        &config,
        format!(
            "[autoscaler]\ninterval_secs = 1\npolicy = \"hpa\"\nmin_replicas = 3\nstate_dir = \"{}\"\nadmin_listen = \"{admin}\"\n\
             [signals]\nsource = \"static\"\ntargets = [\"127.0.0.1:1\"]\n\
             [actuator]\nkind = \"observe\"\nreplicas = 1\n",
            state.display()
        ),
    )
    .unwrap();
    let a = start_autoscaler(&config, admin);
    wait_until("a decision", 20, || status(admin)["desired"] == 3);
    let s = status(admin);
    assert_eq!(s["current"], 1, "{s}");
    assert_eq!(s["action"], "would scale 1 -> 3 (observe only)", "{s}");
    assert_eq!(a.stop().code(), Some(0));
    let wal = std::fs::read_to_string(state.join("actions.wal")).unwrap();
    assert!(wal.is_empty(), "nothing was acted on: {wal}");
}
