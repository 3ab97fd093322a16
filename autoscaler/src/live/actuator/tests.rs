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
