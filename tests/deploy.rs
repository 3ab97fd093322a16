//! `deploy/` checked, not just written: every kustomize overlay renders
//! (`kubectl kustomize`, offline), every rendered object is a valid
//! Kubernetes object (it survives a round trip through its `k8s-openapi`
//! type, so a misspelt field fails), and the invariants hold: probes on the
//! binary's real ports and paths, grace periods longer than the drains,
//! the autoscaler's RBAC exactly the scale subresource, every container
//! non-root on a read-only root filesystem, no Secret in the repository,
//! every mounted configuration accepted by `edgelink <role> --check`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, PodSpec};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use serde_json::Value;

mod support;

use support::{edgelink, run};

const OVERLAYS: [&str; 2] = ["dev", "prod"];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `kubectl kustomize` of an overlay, as JSON values: plainly, as
/// `kubectl apply -k` reads it (no load-restrictor flag).
fn render(overlay: &str) -> Vec<Value> {
    render_dir(&root().join("deploy/k8s/overlays").join(overlay))
}

fn render_dir(dir: &Path) -> Vec<Value> {
    let overlay = dir.display();
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(dir)
        .output()
        .expect("kubectl is needed to render deploy/k8s (.ci/run installs it)");
    assert!(out.status.success(), "{overlay}: {out:?}");
    let yaml = String::from_utf8(out.stdout).unwrap();
    serde_saphyr::from_multiple::<Value>(&yaml)
        .unwrap()
        .into_iter()
        .filter(|v| !v.is_null())
        .collect()
}

/// `value` deserialised as `T` and serialised back still has all of
/// `value`: no unknown (misspelt) field, no wrong type.
fn round_trips<T: serde::de::DeserializeOwned + serde::Serialize>(what: &str, value: &Value) -> T {
    let typed: T = serde_json::from_value(value.clone())
        .unwrap_or_else(|e| panic!("{what}: not a valid object: {e}"));
    let back = serde_json::to_value(&typed).unwrap();
    if let Err(at) = kept(value, &back, String::new()) {
        panic!("{what}: {at} lost in a round trip through its type (misspelt or misplaced?)");
    }
    typed
}

/// Whether everything in `original` is in `back` (a type may add its own
/// defaults, such as `kind` on embedded objects): the path of the first
/// field that is not.
fn kept(original: &Value, back: &Value, at: String) -> Result<(), String> {
    match (original, back) {
        (Value::Object(o), Value::Object(b)) => {
            for (k, v) in o {
                let next = format!("{at}.{k}");
                kept(v, b.get(k).ok_or_else(|| next.clone())?, next)?;
            }
            Ok(())
        }
        (Value::Array(o), Value::Array(b)) if o.len() == b.len() => o
            .iter()
            .zip(b)
            .enumerate()
            .try_for_each(|(i, (o, b))| kept(o, b, format!("{at}[{i}]"))),
        (o, b) if o == b => Ok(()),
        _ => Err(at),
    }
}

fn check_type(v: &Value) {
    use k8s_openapi::api::core::v1::{Namespace, Service, ServiceAccount};
    use k8s_openapi::api::networking::v1::NetworkPolicy;
    use k8s_openapi::api::policy::v1::PodDisruptionBudget;
    let kind = v["kind"].as_str().unwrap();
    let what = format!("{kind}/{}", v["metadata"]["name"].as_str().unwrap());
    match kind {
        "Deployment" => drop(round_trips::<Deployment>(&what, v)),
        "StatefulSet" => drop(round_trips::<StatefulSet>(&what, v)),
        "Job" => drop(round_trips::<Job>(&what, v)),
        "Service" => drop(round_trips::<Service>(&what, v)),
        "ConfigMap" => drop(round_trips::<ConfigMap>(&what, v)),
        "Role" => drop(round_trips::<Role>(&what, v)),
        "RoleBinding" => drop(round_trips::<RoleBinding>(&what, v)),
        "ServiceAccount" => drop(round_trips::<ServiceAccount>(&what, v)),
        "NetworkPolicy" => drop(round_trips::<NetworkPolicy>(&what, v)),
        "PodDisruptionBudget" => drop(round_trips::<PodDisruptionBudget>(&what, v)),
        "Namespace" => drop(round_trips::<Namespace>(&what, v)),
        other => panic!("{what}: a kind this test does not check: {other}"),
    }
}

/// Pod specs by workload name.
fn pods(objects: &[Value]) -> BTreeMap<String, PodSpec> {
    let mut out = BTreeMap::new();
    for v in objects {
        let name = v["metadata"]["name"].as_str().unwrap().to_owned();
        let spec = match v["kind"].as_str().unwrap() {
            "Deployment" => {
                serde_json::from_value::<Deployment>(v.clone())
                    .unwrap()
                    .spec
                    .template
                    .spec
            }
            "StatefulSet" => {
                serde_json::from_value::<StatefulSet>(v.clone())
                    .unwrap()
                    .spec
                    .template
                    .spec
            }
            "Job" => serde_json::from_value::<Job>(v.clone())
                .unwrap()
                .spec
                .and_then(|s| s.template.spec),
            _ => continue,
        };
        out.insert(name, spec.unwrap());
    }
    out
}

/// The mounted configuration files (`edgelink-config` ConfigMap).
fn configs(objects: &[Value]) -> BTreeMap<String, String> {
    let cm = objects
        .iter()
        .find(|v| {
            v["kind"] == "ConfigMap"
                && v["metadata"]["name"]
                    .as_str()
                    .unwrap()
                    .starts_with("edgelink-config")
        })
        .expect("the edgelink-config ConfigMap");
    serde_json::from_value::<ConfigMap>(cm.clone())
        .unwrap()
        .data
        .unwrap()
}

fn port_of(toml: &toml::Table, section: &str, key: &str) -> Option<i32> {
    toml.get(section)?
        .get(key)?
        .as_str()?
        .rsplit(':')
        .next()?
        .parse()
        .ok()
}

/// What each role's binary answers, by (config key of the listener, path).
fn served(role: &str) -> Vec<(&'static str, &'static str, &'static str)> {
    match role {
        "edge" => vec![
            ("server", "listen", "/healthz"),
            ("server", "listen", "/readyz"),
            ("tls", "redirect_listen", "/healthz"),
            ("tls", "redirect_listen", "/readyz"),
            ("server", "admin_listen", "/healthz"),
            ("server", "admin_listen", "/metrics"),
        ],
        "origin" => vec![
            ("server", "listen", "/healthz"),
            ("server", "listen", "/readyz"),
            ("server", "admin_listen", "/healthz"),
            ("server", "admin_listen", "/metrics"),
        ],
        "keypool" => vec![
            ("server", "admin_listen", "/healthz"),
            ("server", "admin_listen", "/metrics"),
        ],
        "autoscale" => vec![
            ("autoscaler", "admin_listen", "/healthz"),
            ("autoscaler", "admin_listen", "/metrics"),
            ("autoscaler", "admin_listen", "/status"),
        ],
        _ => vec![],
    }
}

/// Defaults of the listeners a config file leaves out.
fn default_port(section: &str, key: &str) -> i32 {
    match (section, key) {
        ("server", "listen") => 8080,
        ("server", "admin_listen") => 9090,
        ("autoscaler", "admin_listen") => 9095,
        _ => unreachable!(),
    }
}

#[test]
fn every_overlay_renders_into_valid_objects_that_keep_the_invariants() {
    for overlay in OVERLAYS {
        let objects = render(overlay);
        assert!(objects.len() > 10, "{overlay}: {} objects", objects.len());
        for v in &objects {
            check_type(v);
            assert_ne!(v["kind"], "Secret", "{overlay}: a Secret in the repository");
            assert!(
                !["ClusterRole", "ClusterRoleBinding"].contains(&v["kind"].as_str().unwrap()),
                "{overlay}: cluster-wide RBAC"
            );
        }
        let configs = configs(&objects);
        let pods = pods(&objects);
        for (name, pod) in &pods {
            let what = format!("{overlay}: {name}");
            let pod_ctx = pod.security_context.clone().unwrap_or_default();
            for c in pod
                .init_containers
                .iter()
                .flatten()
                .chain(pod.containers.iter())
            {
                let sc = c.security_context.clone().unwrap_or_default();
                let non_root = sc.run_as_non_root.or(pod_ctx.run_as_non_root) == Some(true)
                    && sc.run_as_user.or(pod_ctx.run_as_user).unwrap_or(0) != 0;
                assert!(non_root, "{what}/{}: not non-root", c.name);
                assert_eq!(
                    sc.read_only_root_filesystem,
                    Some(true),
                    "{what}/{}",
                    c.name
                );
                assert_eq!(
                    sc.allow_privilege_escalation,
                    Some(false),
                    "{what}/{}",
                    c.name
                );
                assert!(
                    c.resources
                        .as_ref()
                        .and_then(|r| r.limits.as_ref())
                        .is_some(),
                    "{what}/{}: no limits",
                    c.name
                );
                for e in c.env.iter().flatten() {
                    if let Some(s) = e
                        .value_from
                        .as_ref()
                        .and_then(|f| f.secret_key_ref.as_ref())
                    {
                        assert_eq!(s.name, "edgelink-secrets", "{what}: {}", e.name);
                        assert!(
                            SECRET_KEYS.contains(&s.key.as_str()),
                            "{what}: secret key {} is not in deploy/README.md's list",
                            s.key
                        );
                    }
                }
            }
            // The EdgeLink containers: their config, probes and grace.
            for c in &pod.containers {
                let image = c.image.clone().unwrap_or_default();
                if !image.starts_with("localhost/edgelink:") {
                    continue;
                }
                let args = c.args.clone().unwrap_or_default();
                let role = args[0].as_str();
                if role == "migrate" {
                    continue; // a one-shot Job: no listener, no config file
                }
                let file = args
                    .iter()
                    .find_map(|a| a.strip_prefix("/etc/edgelink/"))
                    .unwrap_or_else(|| panic!("{what}: no mounted config"));
                let text = configs
                    .get(file)
                    .unwrap_or_else(|| panic!("{what}: {file} is not in the ConfigMap"));
                let toml: toml::Table = text.parse().unwrap();
                // Every probe is a path the binary answers on the port its config listens on.
                let ports: BTreeMap<String, i32> = c
                    .ports
                    .iter()
                    .flatten()
                    .map(|p| (p.name.clone().unwrap_or_default(), p.container_port))
                    .collect();
                let answers: BTreeSet<(i32, &str)> = served(role)
                    .into_iter()
                    .filter_map(|(s, k, path)| {
                        let port = match port_of(&toml, s, k) {
                            Some(p) => p,
                            None if s == "tls" => return None, // no redirect listener
                            None => default_port(s, k),
                        };
                        Some((port, path))
                    })
                    .collect();
                for probe in [&c.readiness_probe, &c.liveness_probe]
                    .into_iter()
                    .flatten()
                {
                    let get = probe
                        .http_get
                        .as_ref()
                        .unwrap_or_else(|| panic!("{what}: probes are HTTP"));
                    let port = match &get.port {
                        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(p) => *p,
                        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(n) => {
                            *ports
                                .get(n)
                                .unwrap_or_else(|| panic!("{what}: no port named {n}"))
                        }
                    };
                    let path = get.path.clone().unwrap_or_default();
                    assert!(
                        answers.contains(&(port, path.as_str())),
                        "{what}: probe {path} on {port}, but {role} answers {answers:?}"
                    );
                }
                // The grace period outlasts preStop and the drain.
                let server = toml.get("server");
                let ms = |k: &str| {
                    server
                        .and_then(|s| s.get(k))
                        .and_then(toml::Value::as_integer)
                        .unwrap_or(match k {
                            "drain_timeout_ms" => 10_000,
                            _ => 0,
                        })
                };
                let pre_stop = c
                    .lifecycle
                    .as_ref()
                    .and_then(|l| l.pre_stop.as_ref())
                    .and_then(|h| h.sleep.as_ref())
                    .map_or(0, |s| s.seconds);
                let needed = pre_stop * 1000 + ms("drain_timeout_ms") + ms("shutdown_grace_ms");
                let grace = pod.termination_grace_period_seconds.unwrap_or(30) * 1000;
                assert!(
                    grace > needed,
                    "{what}: grace {grace} ms <= {needed} ms of preStop and drain"
                );
            }
        }
        // The edge: readiness on /readyz, a preStop, a PDB, spread.
        let edge = &pods["edge"];
        let c = &edge.containers[0];
        assert_eq!(
            c.readiness_probe
                .as_ref()
                .unwrap()
                .http_get
                .as_ref()
                .unwrap()
                .path
                .as_deref(),
            Some("/readyz")
        );
        assert!(c.lifecycle.as_ref().unwrap().pre_stop.is_some());
        assert!(edge.topology_spread_constraints.is_some() && edge.affinity.is_some());
        assert!(objects.iter().any(|v| v["kind"] == "PodDisruptionBudget"));
        // Migrations: only the Job applies them; origin and keypool wait for
        // them, the edge does not (it serves tier 0 while PostgreSQL is down).
        assert!(pods.contains_key("edgelink-migrate"));
        let waits = |app: &str| {
            pods[app].init_containers.iter().flatten().any(|c| {
                c.args
                    .clone()
                    .unwrap_or_default()
                    .starts_with(&["migrate".into(), "--wait".into()])
            })
        };
        for app in ["origin", "keypool"] {
            assert!(
                waits(app),
                "{overlay}: {app} does not wait for the migrations"
            );
        }
        assert!(
            edge.init_containers.iter().flatten().next().is_none(),
            "{overlay}: the edge waits for something before it serves"
        );
        check_migrate_job(overlay, &objects);
        check_autoscaled_replicas(overlay, &objects, &configs);
        check_edge_tls(overlay, &objects, &pods, &configs);
        check_origin(overlay, &objects, &pods);
        check_zone_spread(overlay, &pods);
        check_autoscaler_rbac(overlay, &objects, &pods, &configs);
        check_network_policies(overlay, &objects);
    }
}

/// The Job can be applied again: finished ones go soon (a Job's template
/// is immutable), and GitOps tools replace it instead of patching it.
fn check_migrate_job(overlay: &str, objects: &[Value]) {
    let job = objects
        .iter()
        .find(|v| v["kind"] == "Job" && v["metadata"]["name"] == "edgelink-migrate")
        .unwrap_or_else(|| panic!("{overlay}: no migrate Job"));
    let ttl = job["spec"]["ttlSecondsAfterFinished"].as_i64();
    assert!(
        ttl.is_some_and(|t| t <= 600),
        "{overlay}: a finished migrate Job stays {ttl:?} s and blocks the next apply"
    );
    let notes = &job["metadata"]["annotations"];
    assert_eq!(notes["argocd.argoproj.io/hook"], "Sync", "{overlay}");
    assert_eq!(
        notes["argocd.argoproj.io/hook-delete-policy"], "BeforeHookCreation",
        "{overlay}"
    );
}

/// What the autoscaler scales carries no `replicas`, so an apply does not
/// put a number back over the autoscaler's choice.
fn check_autoscaled_replicas(overlay: &str, objects: &[Value], configs: &BTreeMap<String, String>) {
    let autoscaler: toml::Table = configs["autoscaler.toml"].parse().unwrap();
    let deployment = autoscaler["actuator"]["deployment"].as_str().unwrap();
    let scaled = objects
        .iter()
        .find(|v| v["kind"] == "Deployment" && v["metadata"]["name"] == deployment)
        .unwrap_or_else(|| panic!("{overlay}: no Deployment {deployment}"));
    assert!(
        scaled["spec"].get("replicas").is_none(),
        "{overlay}: Deployment {deployment} sets replicas {}; the autoscaler owns it",
        scaled["spec"]["replicas"]
    );
}

/// HTTPS on the Service's 443 and the redirect listener on 80, from the
/// certificate files of the `edge-tls` Secret the pod mounts.
fn check_edge_tls(
    overlay: &str,
    objects: &[Value],
    pods: &BTreeMap<String, PodSpec>,
    configs: &BTreeMap<String, String>,
) {
    use k8s_openapi::api::core::v1::Service;
    let service: Service = objects
        .iter()
        .find(|v| v["kind"] == "Service" && v["metadata"]["name"] == "edge")
        .map(|v| serde_json::from_value(v.clone()).unwrap())
        .unwrap_or_else(|| panic!("{overlay}: no edge Service"));
    let ports: BTreeMap<i32, String> = service
        .spec
        .unwrap()
        .ports
        .unwrap()
        .into_iter()
        .map(|p| (p.port, format!("{:?}", p.target_port)))
        .collect();
    assert!(
        ports.contains_key(&443) && ports.contains_key(&80),
        "{overlay}: {ports:?}"
    );
    let edge: toml::Table = configs["edge.toml"].parse().unwrap();
    let pod = &pods["edge"];
    let c = &pod.containers[0];
    let named = |n: &str| {
        c.ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(n))
            .map(|p| p.container_port)
    };
    assert_eq!(
        named("https"),
        port_of(&edge, "server", "listen"),
        "{overlay}"
    );
    assert_eq!(
        named("http"),
        port_of(&edge, "tls", "redirect_listen"),
        "{overlay}"
    );
    // Every certificate file is in the mounted edge-tls Secret.
    let secret_volume = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.secret.as_ref().and_then(|s| s.secret_name.as_deref()) == Some("edge-tls"))
        .unwrap_or_else(|| panic!("{overlay}: the edge does not mount the edge-tls Secret"));
    let mount = c
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == secret_volume.name)
        .unwrap_or_else(|| panic!("{overlay}: edge-tls is not mounted"));
    let files = edge["tls"]["certificates"].as_array().unwrap();
    assert!(!files.is_empty(), "{overlay}: no certificate");
    for f in files {
        for k in ["cert", "key"] {
            let path = Path::new(f[k].as_str().unwrap());
            assert_eq!(
                path.parent(),
                Some(Path::new(&mount.mount_path)),
                "{overlay}: {k} {} is not in the edge-tls mount",
                path.display()
            );
            let name = path.file_name().unwrap().to_str().unwrap();
            assert!(["tls.crt", "tls.key"].contains(&name), "{overlay}: {name}");
        }
    }
    assert_ne!(
        edge["tls"].get("watch").and_then(toml::Value::as_bool),
        Some(false)
    );
}

/// The origin: ready only with its store, spread over hosts, a PDB, a preStop.
fn check_origin(overlay: &str, objects: &[Value], pods: &BTreeMap<String, PodSpec>) {
    let origin = &pods["origin"];
    let c = &origin.containers[0];
    let ready = c.readiness_probe.as_ref().and_then(|p| p.http_get.as_ref());
    assert_eq!(
        ready.and_then(|g| g.path.as_deref()),
        Some("/readyz"),
        "{overlay}"
    );
    assert!(
        c.lifecycle
            .as_ref()
            .and_then(|l| l.pre_stop.as_ref())
            .is_some(),
        "{overlay}"
    );
    assert!(
        origin
            .affinity
            .as_ref()
            .and_then(|a| a.pod_anti_affinity.as_ref())
            .is_some(),
        "{overlay}: origins may share a host"
    );
    assert!(
        objects.iter().any(|v| v["kind"] == "PodDisruptionBudget"
            && v["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] == "edgelink-origin"),
        "{overlay}: no PodDisruptionBudget for the origin"
    );
}

/// No spread that leaves pods Pending on a cluster without zone labels.
fn check_zone_spread(overlay: &str, pods: &BTreeMap<String, PodSpec>) {
    for (name, pod) in pods {
        for c in pod.topology_spread_constraints.iter().flatten() {
            assert!(
                !(c.topology_key == "topology.kubernetes.io/zone"
                    && c.when_unsatisfiable == "DoNotSchedule"),
                "{overlay}: {name} spreads strictly by zone"
            );
        }
    }
}

/// The secret keys deploy/README.md tells operators to create.
const SECRET_KEYS: [&str; 6] = [
    "postgres-url",
    "redis-url",
    "admin-token",
    "bootstrap-api-key",
    "postgres-password",
    "grafana-admin-password",
];

fn check_autoscaler_rbac(
    overlay: &str,
    objects: &[Value],
    pods: &BTreeMap<String, PodSpec>,
    configs: &BTreeMap<String, String>,
) {
    let sa = pods["autoscaler"].service_account_name.clone().unwrap();
    let bindings: Vec<RoleBinding> = objects
        .iter()
        .filter(|v| v["kind"] == "RoleBinding")
        .map(|v| serde_json::from_value(v.clone()).unwrap())
        .filter(|b: &RoleBinding| {
            b.subjects
                .iter()
                .flatten()
                .any(|s| s.kind == "ServiceAccount" && s.name == sa)
        })
        .collect();
    assert_eq!(bindings.len(), 1, "{overlay}: one binding for {sa}");
    let role_name = &bindings[0].role_ref.name;
    let role: Role = objects
        .iter()
        .filter(|v| v["kind"] == "Role" && v["metadata"]["name"] == role_name.as_str())
        .map(|v| serde_json::from_value(v.clone()).unwrap())
        .next()
        .unwrap();
    let autoscaler: toml::Table = configs["autoscaler.toml"].parse().unwrap();
    let deployment = autoscaler["actuator"]["deployment"].as_str().unwrap();
    let rules = role.rules.unwrap();
    // Exactly: get/patch on the edge's scale subresource; get/update on its
    // own Lease; create on leases (not restrictable by name).
    let lease = autoscaler["lease"]["name"].as_str().unwrap();
    let mut want = vec![
        (
            "apps",
            "deployments/scale",
            Some(deployment),
            vec!["get", "patch"],
        ),
        (
            "coordination.k8s.io",
            "leases",
            Some(lease),
            vec!["get", "update"],
        ),
        ("coordination.k8s.io", "leases", None, vec!["create"]),
    ];
    assert_eq!(
        rules.len(),
        want.len(),
        "{overlay}: the autoscaler's Role: {rules:?}"
    );
    for r in &rules {
        let got = (
            r.api_groups.clone().unwrap_or_default().join(","),
            r.resources.clone().unwrap_or_default().join(","),
            r.resource_names.clone().map(|n| n.join(",")),
            r.verbs.iter().map(String::as_str).collect::<BTreeSet<_>>(),
        );
        let i = want
            .iter()
            .position(|(g, res, name, verbs)| {
                got.0 == *g
                    && got.1 == *res
                    && got.2.as_deref() == *name
                    && got.3 == verbs.iter().copied().collect::<BTreeSet<_>>()
            })
            .unwrap_or_else(|| {
                panic!("{overlay}: a rule beyond the scale subresource and the Lease: {r:?}")
            });
        want.remove(i);
    }
    // Only the autoscaler gets a token.
    for (name, pod) in pods {
        if pod.service_account_name.is_none() {
            assert_eq!(
                pod.automount_service_account_token,
                Some(false),
                "{overlay}: {name}"
            );
        }
    }
}

fn check_network_policies(overlay: &str, objects: &[Value]) {
    use k8s_openapi::api::networking::v1::NetworkPolicy;
    let policies: Vec<NetworkPolicy> = objects
        .iter()
        .filter(|v| v["kind"] == "NetworkPolicy")
        .map(|v| serde_json::from_value(v.clone()).unwrap())
        .collect();
    let selected = |p: &NetworkPolicy, app: &str| {
        p.spec
            .as_ref()
            .and_then(|s| s.pod_selector.as_ref())
            .and_then(|s| s.match_labels.as_ref())
            .and_then(|l| l.get("app.kubernetes.io/name"))
            .is_some_and(|n| n == app)
    };
    let origin = policies
        .iter()
        .find(|p| selected(p, "edgelink-origin"))
        .unwrap_or_else(|| panic!("{overlay}: no policy for the origin"));
    // The origin's public port only from the edge.
    for rule in origin.spec.as_ref().unwrap().ingress.iter().flatten() {
        let ports: Vec<_> = rule
            .ports
            .iter()
            .flatten()
            .filter_map(|p| p.port.clone())
            .collect();
        let from: Vec<String> = rule
            .from
            .iter()
            .flatten()
            .filter_map(|f| {
                f.pod_selector
                    .as_ref()?
                    .match_labels
                    .as_ref()?
                    .get("app.kubernetes.io/name")
                    .cloned()
            })
            .collect();
        if ports.contains(&k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(8081)) {
            assert_eq!(from, ["edgelink-edge"], "{overlay}");
        }
        assert!(!from.is_empty(), "{overlay}: an origin rule open to all");
    }
    // Prometheus from whichever namespace carries the monitoring label, on
    // every role's admin port; never Prometheus pods of any namespace.
    let mut admitted = BTreeSet::new();
    for p in &policies {
        let spec = p.spec.as_ref().unwrap();
        for rule in spec.ingress.iter().flatten() {
            for peer in rule.from.iter().flatten() {
                let pod = peer
                    .pod_selector
                    .as_ref()
                    .and_then(|s| s.match_labels.as_ref())
                    .and_then(|l| l.get("app.kubernetes.io/name"));
                if pod.map(String::as_str) != Some("prometheus") {
                    continue;
                }
                let ns = peer
                    .namespace_selector
                    .as_ref()
                    .and_then(|s| s.match_labels.as_ref())
                    .and_then(|l| l.get(MONITORING_LABEL));
                assert_eq!(
                    ns.map(String::as_str),
                    Some("true"),
                    "{overlay}: {:?} admits Prometheus without the namespace label",
                    p.metadata.name
                );
                let app = spec
                    .pod_selector
                    .as_ref()
                    .unwrap()
                    .match_labels
                    .as_ref()
                    .unwrap()["app.kubernetes.io/name"]
                    .clone();
                admitted.insert(app);
            }
        }
    }
    for app in [
        "edgelink-edge",
        "edgelink-origin",
        "edgelink-keypool",
        "edgelink-autoscaler",
    ] {
        assert!(
            admitted.contains(app),
            "{overlay}: Prometheus cannot scrape {app}"
        );
    }
    // Where the overlay runs its own Prometheus, its namespace is labelled.
    let runs_prometheus = objects
        .iter()
        .any(|v| v["kind"] == "Deployment" && v["metadata"]["name"] == "prometheus");
    if runs_prometheus {
        let ns = objects.iter().find(|v| v["kind"] == "Namespace").unwrap();
        assert_eq!(
            ns["metadata"]["labels"][MONITORING_LABEL], "true",
            "{overlay}"
        );
    }
}

/// The namespace label that admits a namespace's Prometheus.
const MONITORING_LABEL: &str = "edgelink.io/monitoring";

#[test]
fn the_optional_components_render_on_the_prod_overlay() {
    // An overlay of the operator's own, as deploy/README.md shows it.
    // Kustomize takes relative paths only: from the temporary directory up
    // to `/`, then down to the repository.
    let dir = tempfile::tempdir().unwrap();
    let up = "../".repeat(dir.path().components().count() - 1);
    let k8s = format!(
        "{up}{}",
        root()
            .join("deploy/k8s")
            .display()
            .to_string()
            .trim_start_matches('/')
    );
    std::fs::write(
        dir.path().join("kustomization.yaml"),
        format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n\
             namespace: edgelink\n\
             resources: [{k8s}/overlays/prod]\n\
             components: [{k8s}/components/prometheus-operator, {k8s}/components/cert-manager]\n",
        ),
    )
    .unwrap();
    let objects = render_dir(dir.path());
    // Everything lands in the edges' namespace (a Certificate elsewhere
    // would issue a Secret the edges never see; a monitor elsewhere selects
    // nothing).
    for v in &objects {
        if v["kind"] != "Namespace" {
            assert_eq!(
                v["metadata"]["namespace"], "edgelink",
                "{}",
                v["metadata"]["name"]
            );
        }
    }
    let kinds: BTreeMap<&str, usize> = objects.iter().fold(BTreeMap::new(), |mut m, v| {
        *m.entry(v["kind"].as_str().unwrap()).or_default() += 1;
        m
    });
    assert_eq!(kinds.get("PrometheusRule"), Some(&1), "{kinds:?}");
    assert_eq!(
        kinds.get("ServiceMonitor").unwrap_or(&0) + kinds.get("PodMonitor").unwrap_or(&0),
        4,
        "one monitor per role: {kinds:?}"
    );
    let cert = objects.iter().find(|v| v["kind"] == "Certificate").unwrap();
    assert_eq!(cert["spec"]["secretName"], "edge-tls");
    // Each monitor selects something that exists, on a port named admin.
    for m in objects
        .iter()
        .filter(|v| v["kind"] == "ServiceMonitor" || v["kind"] == "PodMonitor")
    {
        let want = m["spec"]["selector"]["matchLabels"].as_object().unwrap();
        let target = if m["kind"] == "ServiceMonitor" {
            "Service"
        } else {
            "Deployment"
        };
        let labels = |v: &Value| -> Value {
            if target == "Service" {
                v["metadata"]["labels"].clone()
            } else {
                v["spec"]["template"]["metadata"]["labels"].clone()
            }
        };
        let found = objects
            .iter()
            .find(|v| v["kind"] == target && want.iter().all(|(k, val)| labels(v)[k] == *val));
        let found = found.unwrap_or_else(|| panic!("{} selects nothing", m["metadata"]["name"]));
        let ports = if target == "Service" {
            found["spec"]["ports"].clone()
        } else {
            found["spec"]["template"]["spec"]["containers"][0]["ports"].clone()
        };
        assert!(
            ports
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["name"] == "admin"),
            "{}: no admin port",
            m["metadata"]["name"]
        );
    }
}

#[test]
fn every_mounted_config_passes_check() {
    for overlay in OVERLAYS {
        let objects = render(overlay);
        let dir = tempfile::tempdir().unwrap();
        // The edge-tls Secret's files (check_edge_tls: the paths are the
        // mount's), here in the temporary directory.
        let cert = rcgen::generate_simple_self_signed(vec!["sho.rt".into()]).unwrap();
        std::fs::write(dir.path().join("tls.crt"), cert.cert.pem()).unwrap();
        std::fs::write(dir.path().join("tls.key"), cert.signing_key.serialize_pem()).unwrap();
        for (file, text) in &configs(&objects) {
            let path = dir.path().join(file);
            let text = text.replace("/etc/edgelink-tls/", &format!("{}/", dir.path().display()));
            std::fs::write(&path, text).unwrap();
            let out = check_config(
                &path,
                &[
                    (
                        "EDGELINK_POSTGRES_URL",
                        "postgres://edgelink@postgres:5432/edgelink",
                    ),
                    ("EDGELINK_REDIS_URL", "redis://redis:6379/0"),
                ],
            );
            assert!(out.status.success(), "{overlay}: {file}: {out:?}");
        }
    }
}

/// The role a config file is for (by its name) and how to check it.
fn check_config(path: &Path, env: &[(&str, &str)]) -> std::process::Output {
    let role = path.file_stem().unwrap().to_str().unwrap();
    let mut cmd = edgelink();
    if role == "autoscaler" {
        // A pod's name, for a Kubernetes lease's identity.
        cmd.env("HOSTNAME", "autoscaler-7d9f-x2x4q");
        cmd.args(["autoscale", "run", "--check", "--config"]);
    } else {
        cmd.args([role, "--check", "--config"]);
    }
    cmd.arg(path);
    for (k, v) in env {
        cmd.env(k, v);
    }
    run(&mut cmd)
}

/// The systemd units in deploy/systemd: (file name, text).
fn service_units() -> Vec<(String, String)> {
    let mut units: Vec<(String, String)> = std::fs::read_dir(root().join("deploy/systemd"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "service"))
        .map(|p| {
            let name = p.file_name().unwrap().to_str().unwrap().to_owned();
            (name, std::fs::read_to_string(&p).unwrap())
        })
        .collect();
    units.sort();
    units
}

#[test]
fn systemd_units_verify_and_are_hardened_and_their_configs_pass_check() {
    let dir = root().join("deploy/systemd");
    let staged = tempfile::tempdir().unwrap();
    let mut units = Vec::new();
    for (name, text) in service_units() {
        let has = |line: &str| text.lines().any(|l| l.trim() == line);
        for line in [
            "DynamicUser=yes",
            "ProtectSystem=strict",
            "NoNewPrivileges=yes",
            "ProtectHome=yes",
            "PrivateTmp=yes",
        ] {
            assert!(has(line), "{name}: no {line}");
        }
        let oneshot = has("Type=oneshot");
        if !oneshot {
            assert!(has("Restart=always"), "{name}: no restart policy");
            assert!(text.contains("\nLimitNOFILE="), "{name}: no LimitNOFILE");
        }
        // Binding ports below 1024 is for the units that run edges only
        // (the autoscaler's edges are units of their own).
        let binds = text.contains("AmbientCapabilities=CAP_NET_BIND_SERVICE");
        assert_eq!(
            binds,
            name == "edgelink-edge.service" || name == "edgelink-edge@.service",
            "{name}: CAP_NET_BIND_SERVICE"
        );
        assert!(
            !text.lines().any(|l| l.starts_with("AmbientCapabilities=")
                && l != "AmbientCapabilities=CAP_NET_BIND_SERVICE"),
            "{name}: another capability"
        );
        // Every config a unit names is in deploy/systemd and passes --check.
        for word in text.split_whitespace() {
            if let Some(file) = word.strip_prefix("/etc/edgelink/") {
                if file.ends_with(".toml") {
                    let out = check_config(
                        &dir.join(file),
                        &[
                            (
                                "EDGELINK_POSTGRES_URL",
                                "postgres://edgelink@10.0.0.31/edgelink",
                            ),
                            ("EDGELINK_REDIS_URL", "redis://10.0.0.32:6379/0"),
                        ],
                    );
                    assert!(out.status.success(), "{name}: {file}: {out:?}");
                }
            }
        }
        // Staged for systemd-analyze: the built binary instead of the
        // installed one, the secrets file optional (it is not here), a
        // template as an instance the autoscaler would start.
        let staged_text = text
            .replace("/usr/local/bin/edgelink", env!("CARGO_BIN_EXE_edgelink"))
            .replace("EnvironmentFile=/etc", "EnvironmentFile=-/etc");
        let staged_name = name.replace("@.service", "@9210.service");
        std::fs::write(staged.path().join(&staged_name), staged_text).unwrap();
        units.push(staged_name);
    }
    assert_eq!(units.len(), 6, "{units:?}");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(units.iter().map(|u| staged.path().join(u)))
        .output()
        .expect("systemd-analyze is needed (.ci/run installs systemd)");
    // Unknown or misspelt directives are only warnings: fail on any output.
    assert!(
        out.status.success() && out.stderr.is_empty() && out.stdout.is_empty(),
        "systemd-analyze verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_compose_file_parses_and_runs_only_what_the_repo_builds() {
    let deploy = root().join("deploy");
    let text = std::fs::read_to_string(deploy.join("compose.yaml")).unwrap();
    let compose: Value = serde_saphyr::from_str(&text).unwrap();
    let services = compose["services"].as_object().unwrap();
    let names: BTreeSet<&str> = services.keys().map(String::as_str).collect();
    for want in [
        "edge-1",
        "edge-2",
        "origin",
        "keypool",
        "autoscaler",
        "postgres",
        "redis",
        "prometheus",
        "grafana",
    ] {
        assert!(names.contains(want), "no {want} in compose.yaml");
    }
    let containerfile = std::fs::read_to_string(deploy.join("Containerfile")).unwrap();
    assert!(
        containerfile.contains("USER 65532"),
        "the image runs as non-root"
    );
    for (name, s) in services {
        let image = s["image"].as_str().unwrap_or_default();
        if image.starts_with("localhost/edgelink") {
            // Built here, from deploy/Containerfile, running a real role.
            assert_eq!(s["build"]["dockerfile"], "deploy/Containerfile", "{name}");
            assert_eq!(s["build"]["context"], "..", "{name}");
            assert_eq!(s["user"], "65532:65532", "{name}");
            assert_eq!(s["read_only"], true, "{name}");
            let command: Vec<&str> = s["command"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c.as_str().unwrap())
                .collect();
            // The subcommand words, then --help: a real command of the binary.
            let words: Vec<&str> = command
                .iter()
                .copied()
                .take_while(|w| !w.starts_with('-'))
                .collect();
            let mut help = edgelink();
            help.args(&words).arg("--help");
            let out = run(&mut help);
            assert!(
                out.status.success(),
                "{name}: {command:?} is not a command of edgelink: {out:?}"
            );
            let env: Vec<(String, String)> = s["environment"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                        .collect()
                })
                .unwrap_or_default();
            let env: Vec<(&str, &str)> =
                env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            for v in s["volumes"].as_array().into_iter().flatten() {
                let source = v.as_str().unwrap().split(':').next().unwrap();
                if let Some(rel) = source.strip_prefix("./") {
                    let path = deploy.join(rel);
                    assert!(path.exists(), "{name}: {source} is not in deploy/");
                    if rel.ends_with(".toml") {
                        let out = check_config(&path, &env);
                        assert!(out.status.success(), "{name}: {rel}: {out:?}");
                    }
                }
            }
        } else {
            // Others' images, pinned to a version.
            let tag = image.rsplit_once(':').map(|(_, t)| t).unwrap_or("");
            assert!(
                !tag.is_empty() && tag != "latest",
                "{name}: {image} is not pinned"
            );
            for v in s["volumes"].as_array().into_iter().flatten() {
                let source = v.as_str().unwrap().split(':').next().unwrap();
                if let Some(rel) = source.strip_prefix("./") {
                    assert!(
                        deploy.join(rel).exists(),
                        "{name}: {source} is not in deploy/"
                    );
                }
            }
        }
    }
}

// === systemd: the autoscaled fleet, directories, ports ===

/// The values of `key=` in a unit file, in order (comments skipped).
fn directives<'a>(unit: &'a str, key: &str) -> Vec<&'a str> {
    unit.lines()
        .filter_map(|l| l.trim().strip_prefix(key)?.strip_prefix('='))
        .collect()
}

fn systemd_file(name: &str) -> String {
    std::fs::read_to_string(root().join("deploy/systemd").join(name))
        .unwrap_or_else(|e| panic!("deploy/systemd/{name}: {e}"))
}

fn toml_file(path: &Path) -> toml::Table {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .parse()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `TimeoutStopSec=` in milliseconds (plain seconds, as the units write it).
fn stop_timeout_ms(unit: &str) -> i64 {
    let secs = directives(unit, "TimeoutStopSec");
    secs.last().expect("TimeoutStopSec").parse::<i64>().unwrap() * 1000
}

#[test]
fn the_autoscaler_runs_its_edges_as_systemd_units_that_outlive_it() {
    let dir = root().join("deploy/systemd");
    let config = toml_file(&dir.join("autoscaler.toml"));
    let actuator = &config["actuator"];
    // Children of the autoscaler die with its cgroup: the edges are
    // instances of a template shipped beside it.
    assert_eq!(actuator["kind"].as_str(), Some("systemd"), "{actuator}");
    let template_name = actuator["unit"].as_str().unwrap();
    let template = systemd_file(template_name);
    let autoscaler = systemd_file("edgelink-autoscaler.service");
    let standalone = systemd_file("edgelink-edge.service");
    assert!(
        directives(&autoscaler, "KillMode")
            .iter()
            .all(|m| *m == "control-group"),
        "the autoscaler's stop or restart must not reach past its own cgroup"
    );
    // The instance is the admin port the actuator scrapes.
    assert_eq!(
        directives(&template, "Environment"),
        ["EDGELINK_SERVER_ADMIN_LISTEN=127.0.0.1:%i"]
    );
    assert_eq!(
        directives(&template, "ExecStart"),
        directives(&standalone, "ExecStart"),
        "the same edge as edgelink-edge.service"
    );
    // SO_REUSEPORT: every edge on the host is one user.
    let user = directives(&template, "User");
    assert_eq!(user.len(), 1, "{template_name}: User=");
    assert_eq!(directives(&standalone, "User"), user);
    assert_eq!(
        directives(&template, "Conflicts"),
        ["edgelink-edge.service"]
    );
    // Started by the autoscaler only, never at boot on their own.
    assert!(
        !template.contains("[Install]"),
        "{template_name}: [Install]"
    );
    // Each wait outlasts the one inside it: the edge's drain < the unit's
    // stop timeout (then SIGKILL) < the actuator's call < the autoscaler's
    // own stop timeout.
    let edge = toml_file(&dir.join("edge.toml"));
    let ms = |k: &str, default: i64| {
        edge.get("server")
            .and_then(|s| s.get(k))
            .and_then(toml::Value::as_integer)
            .unwrap_or(default)
    };
    let drain = ms("shutdown_grace_ms", 0) + ms("drain_timeout_ms", 10_000);
    let unit_stop = stop_timeout_ms(&template);
    let call = config["autoscaler"]
        .get("actuator_timeout_ms")
        .and_then(toml::Value::as_integer)
        .unwrap_or(30_000);
    let autoscaler_stop = stop_timeout_ms(&autoscaler);
    assert!(
        drain < unit_stop && unit_stop < call && call < autoscaler_stop,
        "drain {drain} < {template_name} stop {unit_stop} < actuator call {call} < autoscaler stop {autoscaler_stop} (ms)"
    );
}

#[test]
fn the_polkit_rule_lets_the_autoscaler_start_and_stop_edge_instances_only() {
    let rules = systemd_file("edgelink-autoscaler.rules");
    let autoscaler = systemd_file("edgelink-autoscaler.service");
    let user = directives(&autoscaler, "User")[0];
    let config = toml_file(&root().join("deploy/systemd/autoscaler.toml"));
    // The name the actuator gives its first instance.
    let instance = config["actuator"]["unit"].as_str().unwrap().replace(
        "@.service",
        &format!(
            "@{}.service",
            config["actuator"]["admin_port_base"].as_integer().unwrap()
        ),
    );
    let manage = "org.freedesktop.systemd1.manage-units";
    let cases = serde_json::json!([
        [manage, instance, "start", user, "yes"],
        [manage, instance, "stop", user, "yes"],
        [manage, instance, "restart", user, null],
        [manage, instance, "start", "nobody", null],
        [manage, "edgelink-edge.service", "stop", user, null],
        [manage, "edgelink-origin.service", "stop", user, null],
        [manage, "edgelink-edge@x.service", "start", user, null],
        [manage, "edgelink-edge@9210.service.d", "start", user, null],
        [
            "org.freedesktop.systemd1.manage-unit-files",
            instance,
            "start",
            user,
            null
        ],
    ]);
    // polkit's API as its rules see it (polkit(8)); the rule file is
    // ES5, which node runs as polkit's duktape does.
    let harness = format!(
        r#"
const rules = [];
const polkit = {{
  Result: {{ YES: "yes", NO: "no", AUTH_ADMIN: "auth_admin", NOT_HANDLED: null }},
  addRule: (f) => rules.push(f),
}};
{rules}
for (const [id, unit, verb, user, want] of {cases}) {{
  const action = {{ id, lookup: (k) => ({{ unit, verb }})[k] }};
  const subject = {{ user }};
  let got = null;
  for (const r of rules) {{
    got = r(action, subject);
    if (got) break;
  }}
  if ((got || null) !== want) {{
    console.log(`${{id}} ${{verb}} ${{unit}} by ${{user}}: ${{got}}, want ${{want}}`);
    process.exitCode = 1;
  }}
}}
"#
    );
    let out = Command::new("node")
        .args(["-e", &harness])
        .output()
        .expect("node is needed to run the polkit rule (.ci/run installs nodejs)");
    assert!(
        out.status.success(),
        "edgelink-autoscaler.rules: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn systemd_units_that_write_declare_their_directories() {
    // ProtectSystem=strict: a unit writes only where it declares.
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let access_log = readme
        .split("access_log.path = \"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("README.md's access log path");
    let dir = root().join("deploy/systemd");
    for (name, text) in service_units() {
        let mut writable = Vec::new();
        for (key, under) in [
            ("LogsDirectory", "/var/log"),
            ("StateDirectory", "/var/lib"),
        ] {
            for d in directives(&text, key)
                .iter()
                .flat_map(|v| v.split_whitespace())
            {
                writable.push(format!("{under}/{d}"));
            }
        }
        let mut writes: Vec<String> = directives(&text, "WorkingDirectory")
            .iter()
            .map(|d| (*d).to_owned())
            .collect();
        let exec = directives(&text, "ExecStart").join(" ");
        if exec.contains("edgelink edge ") {
            writes.push(access_log.to_owned());
        }
        // Every /var path in the configs it runs with.
        for word in exec.split_whitespace() {
            if let Some(file) = word.strip_prefix("/etc/edgelink/") {
                let config = toml_file(&dir.join(file));
                let mut values: Vec<&toml::Value> = config.values().collect();
                while let Some(v) = values.pop() {
                    match v {
                        toml::Value::String(s) if s.starts_with("/var/") => writes.push(s.clone()),
                        toml::Value::Table(t) => values.extend(t.values()),
                        toml::Value::Array(a) => values.extend(a),
                        _ => {}
                    }
                }
            }
        }
        for w in &writes {
            assert!(
                writable
                    .iter()
                    .any(|d| w == d || w.starts_with(&format!("{d}/"))),
                "{name} writes {w}, but declares only {writable:?} (LogsDirectory=, StateDirectory=)"
            );
        }
    }
}

/// Ports a host running EdgeLink may well run something else on: the
/// Prometheus stack and common neighbours. No admin listener of a shipped
/// configuration takes one.
const TAKEN_PORTS: [(i64, &str); 7] = [
    (9090, "Prometheus"),
    (9091, "the Pushgateway"),
    (9092, "Kafka"),
    (9093, "Alertmanager"),
    (9094, "Alertmanager's cluster"),
    (9100, "node_exporter"),
    (9200, "Elasticsearch"),
];

/// The admin ports a configuration file listens on (defaults included;
/// an autoscaler's with its process or systemd edges').
fn admin_ports(config: &toml::Table) -> Vec<i64> {
    let Some(actuator) = config.get("actuator") else {
        return vec![i64::from(
            port_of(config, "server", "admin_listen")
                .unwrap_or_else(|| default_port("server", "admin_listen")),
        )];
    };
    let mut ports = vec![i64::from(
        port_of(config, "autoscaler", "admin_listen")
            .unwrap_or_else(|| default_port("autoscaler", "admin_listen")),
    )];
    if let Some(base) = actuator
        .get("admin_port_base")
        .and_then(toml::Value::as_integer)
    {
        let max = config["autoscaler"]
            .get("max_replicas")
            .and_then(toml::Value::as_integer)
            .unwrap_or(20);
        ports.extend(base..base + max);
    }
    ports
}

#[test]
fn shipped_configs_keep_admin_ports_off_prometheus_and_its_neighbours() {
    // One folder is one host (systemd, one machine) or one Compose project.
    for folder in ["deploy/systemd", "deploy/autoscaler", "deploy/compose"] {
        let mut used: BTreeMap<i64, String> = BTreeMap::new();
        let mut files = 0;
        for entry in std::fs::read_dir(root().join(folder)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "toml") {
                continue;
            }
            files += 1;
            let file = format!("{folder}/{}", path.file_name().unwrap().to_str().unwrap());
            for port in admin_ports(&toml_file(&path)) {
                if let Some((_, who)) = TAKEN_PORTS.iter().find(|(p, _)| *p == port) {
                    panic!("{file}: admin port {port} is {who}'s");
                }
                if let Some(other) = used.insert(port, file.clone()) {
                    panic!("{file} and {other} both listen on {port}");
                }
            }
        }
        assert!(files > 0, "{folder}: no configuration");
    }
}

// === the container image ===

/// One Containerfile instruction, continuation lines joined.
#[derive(Debug)]
struct Instruction {
    op: String,
    args: String,
}

fn instructions(text: &str) -> Vec<Instruction> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || (line.is_empty() && current.is_empty()) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(line);
                let (op, args) = current.trim().split_once(' ').unwrap_or((&current, ""));
                out.push(Instruction {
                    op: op.to_uppercase(),
                    args: args.trim().to_owned(),
                });
                current.clear();
            }
        }
    }
    out
}

/// `key="value" key=value ...` (LABEL) as pairs.
fn label_pairs(args: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = args.trim_start();
    while let Some((key, after)) = rest.split_once('=') {
        let (value, tail) = match after.strip_prefix('"') {
            Some(quoted) => quoted.split_once('"').unwrap(),
            None => after.split_once(' ').unwrap_or((after, "")),
        };
        out.push((key.trim().to_owned(), value.to_owned()));
        rest = tail.trim_start();
    }
    out
}

/// The `cargo build ...` command in a RUN, up to the next `&&`.
fn cargo_build(run: &str) -> Option<&str> {
    let from = run.find("cargo build")?;
    Some(run[from..].split("&&").next().unwrap().trim())
}

#[test]
fn the_containerfile_caches_dependencies_owns_data_and_labels_the_image() {
    let text = std::fs::read_to_string(root().join("deploy/Containerfile")).unwrap();
    let all = instructions(&text);
    let stages: Vec<&[Instruction]> = {
        let starts: Vec<usize> = (0..all.len()).filter(|i| all[*i].op == "FROM").collect();
        starts
            .iter()
            .enumerate()
            .map(|(n, s)| &all[*s..starts.get(n + 1).copied().unwrap_or(all.len())])
            .collect()
    };
    let build = stages
        .iter()
        .find(|s| s[0].args.ends_with(" AS build"))
        .expect("a stage named build");
    let run = stages.last().unwrap();

    // Dependencies first: the stub step runs here as in the build (manifests
    // copied, stub sources made), and cargo loads the workspace it leaves.
    let deps = build
        .iter()
        .position(|i| i.op == "RUN" && cargo_build(&i.args).is_some())
        .expect("a cargo build in the build stage");
    let stub = tempfile::tempdir().unwrap();
    for i in &build[..deps] {
        match i.op.as_str() {
            "COPY" => {
                let words: Vec<&str> = i.args.split_whitespace().collect();
                let (dest, sources) = words.split_last().unwrap();
                for source in sources {
                    assert_ne!(
                        *source, ".",
                        "the sources are copied before the dependencies build"
                    );
                    let to = stub.path().join(dest);
                    std::fs::create_dir_all(&to).unwrap();
                    let from = root().join(source);
                    std::fs::copy(&from, to.join(from.file_name().unwrap()))
                        .unwrap_or_else(|e| panic!("COPY {source}: {e}"));
                }
            }
            "RUN" => {
                let out = Command::new("sh")
                    .args(["-ec", &i.args])
                    .current_dir(stub.path())
                    .output()
                    .unwrap();
                assert!(out.status.success(), "RUN {}: {out:?}", i.args);
            }
            _ => {}
        }
    }
    let workspace = toml_file(&root().join("Cargo.toml"));
    let members = workspace["workspace"]["members"].as_array().unwrap();
    let mut packages: Vec<&str> = members.iter().map(|m| m.as_str().unwrap()).collect();
    packages.push(".");
    for package in packages {
        let manifest = toml_file(&root().join(package).join("Cargo.toml"));
        // The targets cargo needs a file for: the discovered lib and main,
        // and every declared one.
        let mut targets: Vec<String> = ["src/lib.rs", "src/main.rs"]
            .into_iter()
            .filter(|t| root().join(package).join(t).exists())
            .map(str::to_owned)
            .collect();
        for (kind, dir) in [
            ("bin", "src/bin"),
            ("bench", "benches"),
            ("test", "tests"),
            ("example", "examples"),
        ] {
            for t in manifest
                .get(kind)
                .and_then(toml::Value::as_array)
                .into_iter()
                .flatten()
            {
                let path = t.get("path").and_then(toml::Value::as_str).map_or_else(
                    || format!("{dir}/{}.rs", t["name"].as_str().unwrap()),
                    str::to_owned,
                );
                targets.push(path);
            }
        }
        for t in targets {
            assert!(
                stub.path().join(package).join(&t).exists(),
                "the dependency layer leaves out {package}/{t}"
            );
        }
    }
    let host = String::from_utf8(Command::new("rustc").arg("-vV").output().unwrap().stdout)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_owned))
        .unwrap();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--locked",
            "--offline",
            "--format-version",
            "1",
            "--filter-platform",
            &host,
        ])
        .current_dir(stub.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the stub workspace does not load: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Then the sources, touched (COPY keeps times older than the stubs'
    // build), built with the same command, so the dependencies are reused.
    let rest = &build[deps + 1..];
    let copy_all = rest
        .iter()
        .position(|i| i.op == "COPY" && i.args == ". .")
        .expect("COPY . . after the dependencies");
    let real = rest[copy_all..]
        .iter()
        .find(|i| i.op == "RUN" && cargo_build(&i.args).is_some())
        .expect("the build of the sources");
    let at = real.args.find("cargo build").unwrap();
    assert!(
        real.args[..at].contains("touch"),
        "sources not touched: {}",
        real.args
    );
    assert_eq!(cargo_build(&real.args), cargo_build(&build[deps].args));

    // /data: made in the build stage, copied owned by the runtime user (the
    // final stage has no shell), and where the default command writes.
    let user = run
        .iter()
        .rfind(|i| i.op == "USER")
        .expect("USER")
        .args
        .clone();
    assert_eq!(user, "65532:65532");
    let data = run
        .iter()
        .filter(|i| i.op == "COPY" && i.args.contains(&format!("--chown={user}")))
        .find_map(|i| {
            let words: Vec<&str> = i
                .args
                .split_whitespace()
                .filter(|w| !w.starts_with("--"))
                .collect();
            match words[..] {
                [from, "/"] => Some(format!("{}/data", from.trim_end_matches('/'))),
                [from, "/data" | "/data/"] => Some(from.trim_end_matches('/').to_owned()),
                _ => None,
            }
        })
        .expect("a COPY --chown of /data to the runtime user");
    assert!(
        build.iter().any(|i| i.op == "RUN"
            && i.args.split("&&").any(|c| {
                (c.contains("mkdir") || c.contains("install -d"))
                    && c.split_whitespace().any(|w| w == data)
            })),
        "the build stage does not make {data}"
    );
    let cmd: Vec<String> =
        serde_json::from_str(&run.iter().rfind(|i| i.op == "CMD").unwrap().args).unwrap();
    let sqlite = cmd.iter().skip_while(|a| *a != "--sqlite").nth(1).unwrap();
    assert!(sqlite.starts_with("/data/"), "{sqlite}");
    // Its ports: no admin listener on a neighbour's.
    let admin = cmd
        .iter()
        .skip_while(|a| *a != "--admin-listen")
        .nth(1)
        .unwrap();
    let exposed: Vec<i64> = run
        .iter()
        .filter(|i| i.op == "EXPOSE")
        .flat_map(|i| i.args.split_whitespace().map(|p| p.parse::<i64>().unwrap()))
        .collect();
    for port in exposed
        .iter()
        .chain(&[admin.rsplit(':').next().unwrap().parse().unwrap()])
    {
        assert!(TAKEN_PORTS.iter().all(|(p, _)| p != port), "port {port}");
    }

    // OCI labels, with the workspace's version, license and repository.
    let args: BTreeMap<String, String> = run
        .iter()
        .filter(|i| i.op == "ARG")
        .filter_map(|i| i.args.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let labels: BTreeMap<String, String> = run
        .iter()
        .filter(|i| i.op == "LABEL")
        .flat_map(|i| label_pairs(&i.args))
        .map(|(k, mut v)| {
            for (name, default) in &args {
                v = v.replace(&format!("${{{name}}}"), default);
            }
            (k, v)
        })
        .collect();
    let package = &workspace["workspace"]["package"];
    let oci = |k: &str| {
        labels
            .get(&format!("org.opencontainers.image.{k}"))
            .unwrap_or_else(|| panic!("no label org.opencontainers.image.{k}: {labels:?}"))
            .as_str()
    };
    assert_eq!(oci("version"), package["version"].as_str().unwrap());
    assert_eq!(oci("licenses"), package["license"].as_str().unwrap());
    assert_eq!(oci("source"), package["repository"].as_str().unwrap());
    for k in ["title", "description", "revision", "base.name"] {
        assert!(!oci(k).is_empty(), "{k}");
    }
    assert!(
        run[0].args.starts_with(oci("base.name")),
        "base.name is the final stage's FROM"
    );
}

#[test]
fn compose_sends_prometheus_alerts_through_alertmanager_to_a_webhook() {
    let deploy = root().join("deploy");
    let compose: Value =
        serde_saphyr::from_str(&std::fs::read_to_string(deploy.join("compose.yaml")).unwrap())
            .unwrap();
    let services = &compose["services"];
    let mounted = |service: &str, target: &str| -> std::path::PathBuf {
        let v = services[service]["volumes"]
            .as_array()
            .unwrap_or_else(|| panic!("{service}: no volumes"))
            .iter()
            .map(|v| v.as_str().unwrap())
            .find(|v| v.split(':').nth(1) == Some(target))
            .unwrap_or_else(|| panic!("{service}: nothing mounted on {target}"));
        deploy.join(v.split(':').next().unwrap())
    };
    // Alertmanager with its configuration where the image's command reads it.
    assert!(services["alertmanager"]["image"]
        .as_str()
        .unwrap()
        .starts_with("docker.io/prom/alertmanager:v"));
    let alertmanager: Value = serde_saphyr::from_str(
        &std::fs::read_to_string(mounted(
            "alertmanager",
            "/etc/alertmanager/alertmanager.yml",
        ))
        .expect("deploy/observability/alertmanager/alertmanager.yml"),
    )
    .unwrap();
    // Its default route ends at the webhook of a service here, on the port
    // that service listens on.
    let log = &services["alert-log"];
    assert_eq!(log["image"], "docker.io/mendhak/http-https-echo:37");
    let url = format!(
        "http://alert-log:{}/",
        log["environment"]["HTTP_PORT"].as_str().unwrap()
    );
    let receiver = alertmanager["route"]["receiver"].as_str().unwrap();
    let hooks: Vec<&str> = alertmanager["receivers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["name"] == receiver)
        .flat_map(|r| r["webhook_configs"].as_array().into_iter().flatten())
        .map(|w| w["url"].as_str().unwrap())
        .collect();
    assert_eq!(hooks, [url.as_str()], "the default route's webhooks");
    // And Prometheus sends its alerts there.
    let prometheus: Value = serde_saphyr::from_str(
        &std::fs::read_to_string(mounted("prometheus", "/etc/prometheus/prometheus.yml")).unwrap(),
    )
    .unwrap();
    let targets: Vec<&str> = prometheus["alerting"]["alertmanagers"]
        .as_array()
        .expect("an alerting: block in deploy/compose/prometheus.yml")
        .iter()
        .flat_map(|a| a["static_configs"].as_array().into_iter().flatten())
        .flat_map(|c| c["targets"].as_array().into_iter().flatten())
        .map(|t| t.as_str().unwrap())
        .collect();
    assert!(targets.contains(&"alertmanager:9093"), "{targets:?}");
}
