//! Actuators: what changes the number of edges.
//!
//! - [`ProcessFleet`]: local `edgelink edge` processes sharing one public
//!   port (`SO_REUSEPORT`), each with an admin port of its own; removed
//!   last-in-first-out with SIGTERM (the edge drains) and SIGKILL after
//!   the drain time. Their pids are kept in the state directory, so an
//!   autoscaler that restarts adopts the fleet it left instead of starting
//!   a second one. They are its children: it drains them when it stops.
//! - [`SystemdFleet`]: the same edges as instances of a systemd template
//!   unit, started and stopped with `systemctl`; units of their own, they
//!   outlive the autoscaler (`deploy/systemd`).
//! - [`Kubernetes`]: a Deployment's `scale` subresource, with `kube`.
//! - [`CommandActuator`]: external commands (cloud instance groups).

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use super::config::ActuatorConfig;

mod systemd;

pub use systemd::SystemdFleet;

/// One of the actuators.
#[derive(Debug)]
pub enum Actuator {
    /// Shadow mode: this many replicas, never changed.
    Observe(u32),
    Process(ProcessFleet),
    Systemd(SystemdFleet),
    Kubernetes(Kubernetes),
    Command(CommandActuator),
}

impl Actuator {
    pub async fn open(
        config: &ActuatorConfig,
        state_dir: &Path,
        timeout: Duration,
    ) -> Result<Actuator, String> {
        Ok(match config {
            ActuatorConfig::Process {
                binary,
                args,
                admin_port_base,
                drain_secs,
                env,
            } => {
                let binary = match binary {
                    Some(b) => b.clone(),
                    None => std::env::current_exe().map_err(|e| format!("own binary: {e}"))?,
                };
                Actuator::Process(ProcessFleet::open(
                    binary,
                    args.clone(),
                    env.clone().into_iter().collect(),
                    *admin_port_base,
                    Duration::from_secs(*drain_secs),
                    state_dir,
                )?)
            }
            ActuatorConfig::Systemd {
                unit,
                admin_port_base,
                systemctl,
            } => Actuator::Systemd(
                SystemdFleet::open(
                    systemctl.clone(),
                    unit,
                    *admin_port_base,
                    timeout,
                    state_dir,
                )
                .await?,
            ),
            ActuatorConfig::Observe { replicas } => Actuator::Observe(*replicas),
            ActuatorConfig::Kubernetes {
                namespace,
                deployment,
                api_url,
            } => Actuator::Kubernetes(
                Kubernetes::connect(api_url.as_deref(), namespace, deployment, timeout).await?,
            ),
            ActuatorConfig::Command {
                command,
                current_command,
            } => Actuator::Command(CommandActuator {
                command: command.clone(),
                current_command: current_command.clone(),
                timeout,
            }),
        })
    }

    /// Replicas running or starting, as the actuator sees them.
    pub async fn current(&mut self) -> Result<u32, String> {
        match self {
            Actuator::Observe(n) => Ok(*n),
            Actuator::Process(p) => Ok(p.current()),
            Actuator::Systemd(s) => s.current().await,
            Actuator::Kubernetes(k) => k.current().await,
            Actuator::Command(c) => c.current().await,
        }
    }

    /// Changes the count to `n`; the count after.
    pub async fn scale(&mut self, n: u32) -> Result<u32, String> {
        match self {
            Actuator::Observe(current) => Err(format!(
                "observe only: would scale {current} -> {n}, the fleet is not changed"
            )),
            Actuator::Process(p) => p.scale(n).await,
            Actuator::Systemd(s) => s.scale(n).await,
            Actuator::Kubernetes(k) => k.scale(n).await,
            Actuator::Command(c) => c.scale(n).await,
        }
    }

    /// The edges' admin addresses, when the actuator knows them.
    pub fn targets(&mut self) -> Option<Vec<String>> {
        match self {
            Actuator::Process(p) => Some(p.targets()),
            Actuator::Systemd(s) => Some(s.targets()),
            _ => None,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Actuator::Observe(_) => "observe",
            Actuator::Process(_) => "process",
            Actuator::Systemd(_) => "systemd",
            Actuator::Kubernetes(_) => "kubernetes",
            Actuator::Command(_) => "command",
        }
    }
}

/// One local edge process.
#[derive(Debug)]
struct Member {
    slot: u16,
    pid: u32,
    /// `None` for a process adopted from an earlier run.
    child: Option<tokio::process::Child>,
}

impl Member {
    fn alive(&mut self) -> bool {
        match &mut self.child {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => pid_alive(self.pid),
        }
    }
}

fn pid_alive(pid: u32) -> bool {
    i32::try_from(pid).is_ok_and(|p| kill(Pid::from_raw(p), None).is_ok())
}

fn signal(pid: u32, sig: Signal) {
    if let Ok(p) = i32::try_from(pid) {
        let _ = kill(Pid::from_raw(p), sig);
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Saved {
    slot: u16,
    pid: u32,
}

/// The kernel's ephemeral port range (Linux).
fn ephemeral_ports() -> Option<(u32, u32)> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut it = text.split_whitespace().map(|p| p.parse::<u32>().ok());
    Some((it.next()??, it.next()??))
}

/// Local edge processes: see the module docs.
#[derive(Debug)]
pub struct ProcessFleet {
    binary: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    admin_base: u16,
    drain: Duration,
    state_dir: PathBuf,
    /// In start order: the last is removed first.
    members: Vec<Member>,
    /// Edges removed that exited within the drain time.
    pub drained: u64,
    /// Edges removed that had to be killed after it.
    pub killed: u64,
}

impl ProcessFleet {
    /// Adopts the processes an earlier run left (their pids are in
    /// `state_dir/edges.json` and still run `binary`).
    pub fn open(
        binary: PathBuf,
        args: Vec<String>,
        env: Vec<(String, String)>,
        admin_base: u16,
        drain: Duration,
        state_dir: &Path,
    ) -> Result<ProcessFleet, String> {
        let mut fleet = ProcessFleet {
            binary,
            args,
            env,
            admin_base,
            drain,
            state_dir: state_dir.to_owned(),
            members: Vec::new(),
            drained: 0,
            killed: 0,
        };
        if let Some((low, high)) = ephemeral_ports() {
            if u32::from(admin_base) <= high && u32::from(admin_base) + 64 >= low {
                tracing::warn!(
                    admin_base,
                    "actuator.admin_port_base is near the ephemeral port range {low}-{high}: an outgoing connection can take an edge's admin port"
                );
            }
        }
        if let Ok(text) = std::fs::read_to_string(fleet.saved_path()) {
            let saved: Vec<Saved> = serde_json::from_str(&text).unwrap_or_default();
            for s in saved {
                if pid_alive(s.pid) && fleet.runs_our_binary(s.pid) {
                    tracing::info!(
                        pid = s.pid,
                        slot = s.slot,
                        "adopted an edge of an earlier run"
                    );
                    fleet.members.push(Member {
                        slot: s.slot,
                        pid: s.pid,
                        child: None,
                    });
                }
            }
        }
        fleet.save()?;
        Ok(fleet)
    }

    fn saved_path(&self) -> PathBuf {
        self.state_dir.join("edges.json")
    }

    /// A pid can be reused by another program: adopt it only if its
    /// command line is ours.
    fn runs_our_binary(&self, pid: u32) -> bool {
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            return false;
        };
        let argv: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let name = |p: &Path| p.file_name().map(|n| n.as_encoded_bytes().to_vec());
        let ours = name(&self.binary);
        argv.first()
            .is_some_and(|a0| name(Path::new(std::ffi::OsStr::from_bytes(a0))) == ours)
            && self
                .args
                .first()
                .is_none_or(|role| argv.get(1).is_some_and(|a| *a == role.as_bytes()))
    }

    fn save(&self) -> Result<(), String> {
        let saved: Vec<Saved> = self
            .members
            .iter()
            .map(|m| Saved {
                slot: m.slot,
                pid: m.pid,
            })
            .collect();
        let tmp = self.state_dir.join("edges.json.tmp");
        let text = serde_json::to_vec(&saved).map_err(|e| e.to_string())?;
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, self.saved_path()))
            .map_err(|e| format!("{}: {e}", self.saved_path().display()))
    }

    fn prune(&mut self) {
        let before = self.members.len();
        self.members.retain_mut(|m| {
            let alive = m.alive();
            if !alive {
                tracing::warn!(pid = m.pid, slot = m.slot, "an edge exited on its own");
            }
            alive
        });
        if self.members.len() != before {
            let _ = self.save();
        }
    }

    pub fn current(&mut self) -> u32 {
        self.prune();
        self.members.len() as u32
    }

    pub fn targets(&mut self) -> Vec<String> {
        self.prune();
        self.members
            .iter()
            .map(|m| format!("127.0.0.1:{}", self.admin_base + m.slot))
            .collect()
    }

    fn start(&mut self) -> Result<(), String> {
        let slot = (0u16..)
            .find(|s| self.members.iter().all(|m| m.slot != *s))
            .unwrap_or(0);
        let admin = format!("127.0.0.1:{}", self.admin_base + slot);
        let log_path = self.state_dir.join(format!("edge-{slot}.log"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| format!("{}: {e}", log_path.display()))?;
        let err = log.try_clone().map_err(|e| e.to_string())?;
        let child = tokio::process::Command::new(&self.binary)
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("EDGELINK_SERVER_ADMIN_LISTEN", &admin)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.binary.display()))?;
        let pid = child.id().unwrap_or(0);
        tracing::info!(pid, slot, %admin, "started an edge");
        self.members.push(Member {
            slot,
            pid,
            child: Some(child),
        });
        self.save()
    }

    /// SIGTERM, then up to the drain time for it to finish its requests,
    /// then SIGKILL. Whether it exited by itself.
    async fn stop(mut m: Member, drain: Duration) -> bool {
        signal(m.pid, Signal::SIGTERM);
        let deadline = Instant::now() + drain;
        let exited = match &mut m.child {
            Some(c) => tokio::time::timeout(drain, c.wait()).await.is_ok(),
            None => loop {
                if !pid_alive(m.pid) {
                    break true;
                }
                if Instant::now() >= deadline {
                    break false;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            },
        };
        if !exited {
            tracing::warn!(pid = m.pid, "an edge did not drain in time: killed");
            signal(m.pid, Signal::SIGKILL);
            if let Some(c) = &mut m.child {
                let _ = c.wait().await;
            }
        } else {
            tracing::info!(pid = m.pid, slot = m.slot, "an edge drained and exited");
        }
        exited
    }

    pub async fn scale(&mut self, n: u32) -> Result<u32, String> {
        self.prune();
        while (self.members.len() as u32) < n {
            self.start()?;
        }
        let mut leaving = Vec::new();
        while (self.members.len() as u32) > n {
            if let Some(m) = self.members.pop() {
                leaving.push(m);
            }
        }
        if !leaving.is_empty() {
            // Out of the saved set first: a crash mid-drain must not adopt
            // an edge that is on its way out.
            self.save()?;
            let drain = self.drain;
            let stops: Vec<_> = leaving
                .into_iter()
                .map(|m| tokio::spawn(ProcessFleet::stop(m, drain)))
                .collect();
            for s in stops {
                match s.await {
                    Ok(true) => self.drained += 1,
                    _ => self.killed += 1,
                }
            }
        }
        Ok(self.members.len() as u32)
    }

    /// Drains every edge (the autoscaler is stopping).
    pub async fn stop_all(&mut self) {
        let _ = self.scale(0).await;
    }
}

/// A Kubernetes client: in-cluster configuration (the pod's service
/// account) unless `api_url` names an API server (plain HTTP is for tests
/// only).
pub fn kube_client(api_url: Option<&str>, timeout: Duration) -> Result<kube::Client, String> {
    let mut config = match api_url {
        Some(url) => kube::Config::new(url.parse().map_err(|e| format!("{url}: {e}"))?),
        None => kube::Config::incluster().map_err(|e| format!("in-cluster config: {e}"))?,
    };
    config.connect_timeout = Some(timeout);
    config.read_timeout = Some(timeout);
    config.write_timeout = Some(timeout);
    kube::Client::try_from(config).map_err(|e| e.to_string())
}

/// A Deployment's scale subresource.
pub struct Kubernetes {
    api: kube::Api<k8s_openapi::api::apps::v1::Deployment>,
    deployment: String,
    timeout: Duration,
}

impl std::fmt::Debug for Kubernetes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kubernetes")
            .field("deployment", &self.deployment)
            .finish()
    }
}

impl Kubernetes {
    /// See [`kube_client`] for `api_url`.
    pub async fn connect(
        api_url: Option<&str>,
        namespace: &str,
        deployment: &str,
        timeout: Duration,
    ) -> Result<Kubernetes, String> {
        let client = kube_client(api_url, timeout)?;
        Ok(Kubernetes {
            api: kube::Api::namespaced(client, namespace),
            deployment: deployment.to_owned(),
            timeout,
        })
    }

    async fn bounded<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, String> {
        tokio::time::timeout(self.timeout, f)
            .await
            .map_err(|_| "the API server did not answer in time".to_owned())?
            .map_err(|e| e.to_string())
    }

    /// The Deployment's `spec.replicas`.
    pub async fn current(&self) -> Result<u32, String> {
        let scale = self.bounded(self.api.get_scale(&self.deployment)).await?;
        Ok(scale
            .spec
            .and_then(|s| s.replicas)
            .map_or(0, |r| r.max(0) as u32))
    }

    pub async fn scale(&self, n: u32) -> Result<u32, String> {
        let patch = serde_json::json!({ "spec": { "replicas": n } });
        let scale = self
            .bounded(self.api.patch_scale(
                &self.deployment,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(&patch),
            ))
            .await?;
        Ok(scale
            .spec
            .and_then(|s| s.replicas)
            .map_or(n, |r| r.max(0) as u32))
    }
}

/// External commands; see [`ActuatorConfig::Command`].
#[derive(Debug)]
pub struct CommandActuator {
    command: Vec<String>,
    current_command: Vec<String>,
    timeout: Duration,
}

/// Runs `argv` to its end within `timeout`: its standard output, or why
/// it failed (with its standard error).
async fn run_command(argv: &[String], timeout: Duration) -> Result<String, String> {
    let (program, args) = argv.split_first().ok_or("empty command")?;
    let child = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("{program}: {e}"))?;
    let out = tokio::time::timeout(timeout, child.wait_with_output())
        .await
        .map_err(|_| format!("{program}: timed out after {timeout:?}"))?
        .map_err(|e| format!("{program}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{program}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl CommandActuator {
    async fn run(&self, argv: &[String]) -> Result<String, String> {
        run_command(argv, self.timeout).await
    }

    pub async fn current(&self) -> Result<u32, String> {
        let out = self.run(&self.current_command).await?;
        out.trim()
            .parse()
            .map_err(|_| format!("current_command printed {:?}, not a count", out.trim()))
    }

    pub async fn scale(&self, n: u32) -> Result<u32, String> {
        let argv: Vec<String> = self
            .command
            .iter()
            .map(|a| a.replace("{replicas}", &n.to_string()))
            .collect();
        self.run(&argv).await?;
        self.current().await
    }
}

#[cfg(test)]
mod tests;
