#![allow(clippy::unwrap_used)]
use super::*;

/// The fake API server with a Deployment `edge` (3 replicas, changed
/// by a PATCH of its scale) and the Endpoints of `edge-admin`; every
/// request it saw.
async fn fake_api_server() -> (
    String,
    std::sync::Arc<std::sync::Mutex<Vec<crate::live::fake_api::Seen>>>,
) {
    use crate::live::fake_api;
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let replicas = std::sync::atomic::AtomicU64::new(3);
    let log = seen.clone();
    let url = fake_api::serve(move |req| {
        if req.method == "PATCH" {
            let v: serde_json::Value = serde_json::from_str(&req.body).unwrap();
            let n = v["spec"]["replicas"].as_u64().unwrap();
            replicas.store(n, std::sync::atomic::Ordering::SeqCst);
        }
        log.lock().unwrap().push(req.clone());
        let n = replicas.load(std::sync::atomic::Ordering::SeqCst);
        match req.path.as_str() {
            "/apis/apps/v1/namespaces/edgelink/deployments/edge/scale" => (
                200,
                serde_json::json!({
                    "apiVersion": "autoscaling/v1",
                    "kind": "Scale",
                    "metadata": {"name": "edge", "namespace": "edgelink"},
                    "spec": {"replicas": n},
                    "status": {"replicas": n}
                }),
            ),
            "/api/v1/namespaces/edgelink/endpoints/edge-admin" => (
                200,
                serde_json::json!({
                    "apiVersion": "v1",
                    "kind": "Endpoints",
                    "metadata": {"name": "edge-admin", "namespace": "edgelink"},
                    "subsets": [{
                        "addresses": [{"ip": "10.0.0.7"}, {"ip": "10.0.0.3"}],
                        "notReadyAddresses": [{"ip": "10.0.0.9"}],
                        "ports": [{"port": 9090}]
                    }]
                }),
            ),
            _ => fake_api::status(404, "NotFound"),
        }
    })
    .await;
    (url, seen)
}

#[tokio::test]
async fn the_kubernetes_actuator_reads_and_patches_the_scale_subresource() {
    let (url, seen) = fake_api_server().await;
    let k = Kubernetes::connect(Some(&url), "edgelink", "edge", Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(k.current().await.unwrap(), 3);
    assert_eq!(k.scale(7).await.unwrap(), 7);
    assert_eq!(k.current().await.unwrap(), 7);
    let seen = seen.lock().unwrap().clone();
    let path = "/apis/apps/v1/namespaces/edgelink/deployments/edge/scale";
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert_eq!(
        (seen[0].method.as_str(), seen[0].path.as_str()),
        ("GET", path)
    );
    let patch = &seen[1];
    assert_eq!(
        (patch.method.as_str(), patch.path.as_str()),
        ("PATCH", path)
    );
    assert_eq!(patch.content_type, "application/merge-patch+json");
    let body: serde_json::Value = serde_json::from_str(&patch.body).unwrap();
    assert_eq!(body, serde_json::json!({"spec": {"replicas": 7}}));

    // A wrong Deployment is an error, not a count.
    let k = Kubernetes::connect(Some(&url), "edgelink", "nope", Duration::from_secs(5))
        .await
        .unwrap();
    assert!(k.current().await.is_err());
}

#[tokio::test]
async fn kubernetes_endpoints_give_the_ready_edges_as_targets() {
    let (url, seen) = fake_api_server().await;
    let client = kube_client(Some(&url), Duration::from_secs(5)).unwrap();
    let e = crate::live::signals::Endpoints::new(
        client.clone(),
        "edgelink",
        "edge-admin",
        9090,
        Duration::from_secs(5),
    );
    assert_eq!(
        e.targets().await.unwrap(),
        ["10.0.0.3:9090", "10.0.0.7:9090"]
    );
    assert_eq!(
        seen.lock().unwrap()[0].path,
        "/api/v1/namespaces/edgelink/endpoints/edge-admin"
    );
    let missing = crate::live::signals::Endpoints::new(
        client,
        "edgelink",
        "nope",
        9090,
        Duration::from_secs(5),
    );
    assert!(missing.targets().await.is_err());
}

#[tokio::test]
async fn the_command_actuator_runs_its_commands_and_reads_the_count_back() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("count");
    std::fs::write(&file, "2\n").unwrap();
    let f = file.display().to_string();
    let mut a = CommandActuator {
        command: vec!["sh".into(), "-c".into(), format!("echo {{replicas}} > {f}")],
        current_command: vec!["cat".into(), f.clone()],
        timeout: Duration::from_secs(5),
    };
    assert_eq!(a.current().await.unwrap(), 2);
    assert_eq!(a.scale(5).await.unwrap(), 5);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "5\n");
    // A failing command is an error with its stderr, not a count.
    a.command = vec![
        "sh".into(),
        "-c".into(),
        "echo quota exceeded >&2; exit 3".into(),
    ];
    let e = a.scale(6).await.unwrap_err();
    assert!(e.contains("quota exceeded"), "{e}");
    // A hung one times out.
    a.command = vec!["sleep".into(), "10".into()];
    a.timeout = Duration::from_millis(200);
    assert!(a.scale(6).await.unwrap_err().contains("timed out"));
}

/// `testdata/fake-systemctl.sh` on `dir`: units are `sleep` processes.
fn fake_systemctl(dir: &Path) -> Vec<String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/fake-systemctl.sh");
    vec![
        "sh".into(),
        script.display().to_string(),
        dir.display().to_string(),
    ]
}

/// Kills the fake's units when a test ends, passed or not.
struct KillUnits<'a>(&'a Path);

impl Drop for KillUnits<'_> {
    fn drop(&mut self) {
        for entry in std::fs::read_dir(self.0).into_iter().flatten().flatten() {
            if entry.path().extension().is_some_and(|e| e == "pid") {
                let pid = std::fs::read_to_string(entry.path()).unwrap_or_default();
                if let Ok(pid) = pid.trim().parse::<i32>() {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
            }
        }
    }
}

fn starts(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("calls"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(" start "))
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn systemd_edges_outlive_the_autoscaler_and_leave_last_in_first_out() {
    let units = tempfile::tempdir().unwrap();
    let _cleanup = KillUnits(units.path());
    let state = tempfile::tempdir().unwrap();
    let open = || {
        SystemdFleet::open(
            fake_systemctl(units.path()),
            "edgelink-edge@.service",
            9210,
            Duration::from_secs(10),
            state.path(),
        )
    };
    let unit = |p: u16| format!("edgelink-edge@{p}.service");
    let pid_of = |p: u16| -> i32 {
        let text = std::fs::read_to_string(units.path().join(format!("{}.pid", unit(p))));
        text.unwrap().trim().parse().unwrap()
    };
    let mut fleet = open().await.unwrap();
    assert_eq!(fleet.current().await.unwrap(), 0);
    assert_eq!(fleet.scale(3).await.unwrap(), 3);
    assert_eq!(
        fleet.targets(),
        ["127.0.0.1:9210", "127.0.0.1:9211", "127.0.0.1:9212"],
        "instance = admin port"
    );
    assert_eq!(
        starts(units.path()),
        [format!(
            "--no-ask-password start {} {} {}",
            unit(9210),
            unit(9211),
            unit(9212)
        )]
    );

    // The autoscaler goes (stop, restart, crash: its units are not its
    // children) and the next one adopts the fleet, starting nothing.
    let pids: Vec<i32> = [9210, 9211, 9212].map(pid_of).to_vec();
    drop(fleet);
    assert!(pids.iter().all(|p| kill(Pid::from_raw(*p), None).is_ok()));
    let mut fleet = open().await.unwrap();
    assert_eq!(fleet.current().await.unwrap(), 3);
    assert_eq!(starts(units.path()).len(), 1);

    // An edge that dies leaves the count; the scale-out takes the lowest
    // free port again, and it is now the newest.
    let _ = kill(Pid::from_raw(pid_of(9211)), Signal::SIGKILL);
    assert_eq!(fleet.current().await.unwrap(), 2);
    assert_eq!(fleet.scale(3).await.unwrap(), 3);
    assert_eq!(
        fleet.targets(),
        ["127.0.0.1:9210", "127.0.0.1:9212", "127.0.0.1:9211"]
    );

    // Scale-in: newest first; one stops within its timeout, one is killed.
    std::fs::write(units.path().join(format!("{}.stubborn", unit(9211))), "").unwrap();
    assert_eq!(fleet.scale(1).await.unwrap(), 1);
    assert_eq!(fleet.targets(), ["127.0.0.1:9210"]);
    assert_eq!((fleet.drained, fleet.killed), (1, 1));
    let calls = std::fs::read_to_string(units.path().join("calls")).unwrap();
    assert!(
        calls.contains(&format!(
            "--no-ask-password stop {} {}\n",
            unit(9212),
            unit(9211)
        )),
        "{calls}"
    );

    // A start that fails is an error; what did start is counted.
    std::fs::write(units.path().join(format!("{}.fail", unit(9211))), "").unwrap();
    let e = fleet.scale(3).await.unwrap_err();
    assert!(e.contains("failed"), "{e}");
    assert_eq!(fleet.current().await.unwrap(), 2);
    assert_eq!(fleet.targets(), ["127.0.0.1:9210", "127.0.0.1:9212"]);

    // An instance started by hand is part of the fleet, newest.
    let mut by_hand = std::process::Command::new("sh");
    by_hand
        .args(&fake_systemctl(units.path())[1..])
        .args(["start", &unit(9250)]);
    assert!(by_hand.status().unwrap().success());
    assert_eq!(fleet.current().await.unwrap(), 3);
    drop(fleet);
    let mut fleet = open().await.unwrap();
    assert_eq!(fleet.current().await.unwrap(), 3);
    assert_eq!(
        fleet.targets(),
        ["127.0.0.1:9210", "127.0.0.1:9212", "127.0.0.1:9250"],
        "the start order survives a restart"
    );
    assert_eq!(fleet.scale(0).await.unwrap(), 0);
}

#[tokio::test]
async fn a_systemctl_that_cannot_list_the_units_fails_the_start() {
    let state = tempfile::tempdir().unwrap();
    let e = SystemdFleet::open(
        vec!["false".into()],
        "edgelink-edge@.service",
        9210,
        Duration::from_secs(5),
        state.path(),
    )
    .await
    .unwrap_err();
    assert!(e.contains("false"), "{e}");
}
