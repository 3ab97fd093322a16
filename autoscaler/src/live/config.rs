//! The live autoscaler's configuration: a TOML file of its own
//! (`edgelink autoscale run --config FILE`), every field checked at start-up.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub autoscaler: Settings,
    pub signals: SignalsConfig,
    pub actuator: ActuatorConfig,
    #[serde(default)]
    pub lease: LeaseConfig,
}

/// `[autoscaler]`: the policy and its fleet model.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Seconds between evaluations (the HPA's sync period is 15 s).
    pub interval_secs: u64,
    /// A policy name of the simulator: `hpa`, `layered`, ...
    pub policy: String,
    /// Requests per second one edge serves at 100% (measure it: bench/).
    pub node_capacity: f64,
    pub min_replicas: u32,
    pub max_replicas: u32,
    /// Seconds from asking for an edge until it serves (forecast horizon).
    pub startup_seconds: u64,
    /// The fleet's local time zone, hours east of UTC (schedules).
    pub utc_offset_hours: i64,
    /// Local peak hours `FROM-TO` of the scheduled thresholds.
    pub peak_hours: String,
    /// The write-ahead log, the rate history and the decision log live here.
    pub state_dir: PathBuf,
    /// `/metrics`, `/healthz` and `/status`; loopback by default.
    pub admin_listen: SocketAddr,
    /// Per-scrape (and per Prometheus query) timeout.
    pub scrape_timeout_ms: u64,
    /// Per-actuator-call timeout (a process start, a scale request).
    pub actuator_timeout_ms: u64,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            interval_secs: 15,
            policy: "layered".to_owned(),
            node_capacity: 10_000.0,
            min_replicas: 1,
            max_replicas: 20,
            startup_seconds: 120,
            utc_offset_hours: 0,
            peak_hours: "9-18".to_owned(),
            state_dir: PathBuf::from("autoscaler-state"),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9095)),
            scrape_timeout_ms: 2_000,
            actuator_timeout_ms: 30_000,
        }
    }
}

/// `[signals]`: where the edges' load is read.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "source", rename_all = "lowercase", deny_unknown_fields)]
pub enum SignalsConfig {
    /// Scrape each edge's admin `/metrics`: `targets = ["host:port", ...]`.
    Static { targets: Vec<String> },
    /// Scrape every address a name resolves to: `name = "edge-admin:9090"`
    /// (a Kubernetes headless Service, a round-robin DNS name).
    Dns { name: String },
    /// Scrape the addresses of a Service's Endpoints (ready pods only), on
    /// `port`, read from the Kubernetes API.
    Kubernetes {
        namespace: String,
        service: String,
        port: u16,
        /// API server URL; in-cluster configuration when absent.
        #[serde(default)]
        api_url: Option<String>,
    },
    /// Scrape the edges the actuator runs (the `process` actuator knows
    /// their admin addresses).
    Actuator,
    /// Ask a Prometheus server: `url = "http://prometheus:9090"`; the rate
    /// query and the ready-replica query are PromQL.
    Prometheus {
        url: String,
        #[serde(default = "default_rate_query")]
        rate_query: String,
        #[serde(default = "default_ready_query")]
        ready_query: String,
    },
}

fn default_rate_query() -> String {
    "sum(rate(edgelink_http_requests_total[1m]))".to_owned()
}

fn default_ready_query() -> String {
    "count(up{job=\"edgelink-edge\"} == 1)".to_owned()
}

/// `[actuator]`: how the replica count is changed.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum ActuatorConfig {
    /// Local `edgelink edge` processes sharing one port (SO_REUSEPORT).
    Process {
        /// The binary; the running `edgelink` when absent.
        #[serde(default)]
        binary: Option<PathBuf>,
        /// Its arguments, e.g. `["edge", "--config", "edge.toml"]`.
        args: Vec<String>,
        /// Edge `i` (from 0) gets admin port `admin_port_base + i`.
        admin_port_base: u16,
        /// SIGTERM, then this long to drain before SIGKILL.
        #[serde(default = "default_drain_secs")]
        drain_secs: u64,
        /// Environment variables for the edges (beside the autoscaler's own).
        #[serde(default)]
        env: BTreeMap<String, String>,
    },
    /// Local edges as instances of a systemd template unit, started and
    /// stopped with `systemctl` (see [`crate::live::actuator::SystemdFleet`]).
    /// The instance name is the edge's admin port: `unit =
    /// "edgelink-edge@.service"` and `admin_port_base = 9210` start
    /// `edgelink-edge@9210.service`, `@9211`, ... They are units of their
    /// own, so they outlive the autoscaler: a restart (or a crash) adopts
    /// them, and a stop leaves the fleet serving at its size. systemd drains
    /// them: SIGTERM, then SIGKILL after the unit's `TimeoutStopSec=`.
    Systemd {
        /// The template, `NAME@.service`.
        unit: String,
        /// Instance names (admin ports) are taken from here up.
        admin_port_base: u16,
        /// The command and leading arguments: `["systemctl"]`, or
        /// `["systemctl", "--user"]` for a user's service manager.
        #[serde(default = "default_systemctl")]
        systemctl: Vec<String>,
    },
    /// A Deployment's `scale` subresource.
    Kubernetes {
        namespace: String,
        deployment: String,
        /// API server URL; in-cluster configuration when absent.
        #[serde(default)]
        api_url: Option<String>,
    },
    /// Shadow mode: a fleet of a fixed `replicas` that is never changed;
    /// the decision log and metrics say what the policy would do.
    Observe { replicas: u32 },
    /// Runs `command` with `{replicas}` replaced by the desired count;
    /// `current_command` prints the current count on stdout.
    Command {
        command: Vec<String>,
        current_command: Vec<String>,
    },
}

fn default_drain_secs() -> u64 {
    30
}

fn default_systemctl() -> Vec<String> {
    vec!["systemctl".to_owned()]
}

/// Whether `unit` is a template service's name, `NAME@.service`, with a
/// name systemd accepts.
fn is_template(unit: &str) -> bool {
    unit.strip_suffix("@.service").is_some_and(|name| {
        !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
    })
}

/// `[lease]`: only one autoscaler acts at a time.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum LeaseConfig {
    /// No lease: run one autoscaler only.
    #[default]
    None,
    /// A PostgreSQL session advisory lock on `key`. Without `url`, the
    /// URL is `EDGELINK_POSTGRES_URL` from the environment (as for the
    /// other roles: credentials stay out of the file).
    Postgres {
        #[serde(default)]
        url: Option<String>,
        #[serde(default = "default_lock_key")]
        key: i64,
    },
    /// A `coordination.k8s.io/v1` Lease in `namespace`, held by `identity`
    /// (default: `$HOSTNAME`, the pod's name) and taken over by another
    /// once unrenewed for `duration_secs` (at least three evaluations).
    Kubernetes {
        namespace: String,
        #[serde(default = "default_lease_name")]
        name: String,
        #[serde(default)]
        identity: Option<String>,
        #[serde(default = "default_lease_secs")]
        duration_secs: u64,
        /// API server URL; in-cluster configuration when absent.
        #[serde(default)]
        api_url: Option<String>,
    },
}

fn default_lease_name() -> String {
    "edgelink-autoscaler".to_owned()
}

fn default_lease_secs() -> u64 {
    60
}

fn default_lock_key() -> i64 {
    // "edgelink-autoscaler" folded to an i64 once, fixed forever.
    0x6564_6765_6c6e_6b61
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config: Config = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })?;
        match &mut config.lease {
            LeaseConfig::Postgres {
                url: url @ None, ..
            } => {
                *url = std::env::var("EDGELINK_POSTGRES_URL").ok();
            }
            LeaseConfig::Kubernetes {
                identity: identity @ None,
                ..
            } => {
                *identity = std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty());
            }
            _ => {}
        }
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let s = &self.autoscaler;
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_owned()));
        if !(1..=3_600).contains(&s.interval_secs) {
            return bad("autoscaler.interval_secs must be 1..=3600");
        }
        if crate::NAMES.iter().all(|n| *n != s.policy) {
            return Err(ConfigError::Invalid(format!(
                "autoscaler.policy must be one of {}",
                crate::NAMES.join(", ")
            )));
        }
        if !(s.node_capacity.is_finite() && s.node_capacity > 0.0) {
            return bad("autoscaler.node_capacity must be a positive number");
        }
        if s.min_replicas == 0 || s.min_replicas > s.max_replicas || s.max_replicas > 10_000 {
            return bad("autoscaler: need 1 <= min_replicas <= max_replicas <= 10000");
        }
        if crate::parse_peak_hours(&s.peak_hours).is_none() {
            return bad("autoscaler.peak_hours must be FROM-TO, hours 0-24");
        }
        if !(-14..=14).contains(&s.utc_offset_hours) {
            return bad("autoscaler.utc_offset_hours must be -14..=14");
        }
        if !(10..=60_000).contains(&s.scrape_timeout_ms)
            || !(10..=600_000).contains(&s.actuator_timeout_ms)
        {
            return bad(
                "autoscaler: scrape_timeout_ms 10..=60000, actuator_timeout_ms 10..=600000",
            );
        }
        match &self.signals {
            SignalsConfig::Static { targets } if targets.is_empty() => {
                return bad("signals.targets must not be empty");
            }
            SignalsConfig::Kubernetes {
                namespace,
                service,
                port,
                ..
            } if namespace.is_empty() || service.is_empty() || *port == 0 => {
                return bad("signals: namespace, service and port are required");
            }
            SignalsConfig::Actuator
                if !matches!(
                    self.actuator,
                    ActuatorConfig::Process { .. } | ActuatorConfig::Systemd { .. }
                ) =>
            {
                return bad("signals.source = \"actuator\" needs the process or systemd actuator");
            }
            _ => {}
        }
        match &self.lease {
            LeaseConfig::Postgres { url: None, .. } => {
                return bad("lease.url, or EDGELINK_POSTGRES_URL in the environment, is required");
            }
            LeaseConfig::Kubernetes {
                namespace,
                name,
                identity,
                duration_secs,
                ..
            } => {
                if namespace.is_empty() || name.is_empty() {
                    return bad("lease: namespace and name must not be empty");
                }
                if identity.as_deref().is_none_or(str::is_empty) {
                    return bad("lease.identity, or HOSTNAME in the environment, is required");
                }
                if *duration_secs < 3 * s.interval_secs {
                    return bad("lease.duration_secs must be at least three interval_secs");
                }
            }
            _ => {}
        }
        match &self.actuator {
            ActuatorConfig::Process {
                args,
                admin_port_base,
                ..
            } => {
                if args.is_empty() {
                    return bad("actuator.args must name the role, e.g. [\"edge\", ...]");
                }
                if u32::from(*admin_port_base) + s.max_replicas > 65_535 || *admin_port_base == 0 {
                    return bad("actuator.admin_port_base + max_replicas must be a valid port");
                }
            }
            ActuatorConfig::Systemd {
                unit,
                admin_port_base,
                systemctl,
            } => {
                if !is_template(unit) {
                    return bad("actuator.unit must be a template unit, NAME@.service");
                }
                if u32::from(*admin_port_base) + s.max_replicas > 65_535 || *admin_port_base == 0 {
                    return bad("actuator.admin_port_base + max_replicas must be a valid port");
                }
                if systemctl.is_empty() {
                    return bad("actuator.systemctl must name the command");
                }
            }
            ActuatorConfig::Command {
                command,
                current_command,
            } => {
                if command.is_empty() || current_command.is_empty() {
                    return bad("actuator.command and actuator.current_command must not be empty");
                }
                if !command.iter().any(|a| a.contains("{replicas}")) {
                    return bad("actuator.command must contain {replicas}");
                }
            }
            ActuatorConfig::Observe { replicas } => {
                if *replicas == 0 {
                    return bad("actuator.replicas must be at least 1");
                }
            }
            ActuatorConfig::Kubernetes {
                namespace,
                deployment,
                ..
            } => {
                if namespace.is_empty() || deployment.is_empty() {
                    return bad("actuator.namespace and actuator.deployment must not be empty");
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        let c: Config = toml::from_str(text).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        c.validate()?;
        Ok(c)
    }

    #[test]
    fn a_whole_file_parses_and_bad_values_are_refused() {
        let ok = r#"
            [autoscaler]
            policy = "hpa"
            max_replicas = 8
            [signals]
            source = "actuator"
            [actuator]
            kind = "process"
            args = ["edge", "--config", "edge.toml"]
            admin_port_base = 9200
            [lease]
            kind = "postgres"
            url = "postgres://postgres@127.0.0.1/test"
        "#;
        let c = parse(ok).unwrap();
        assert_eq!(c.autoscaler.max_replicas, 8);
        assert!(matches!(c.lease, LeaseConfig::Postgres { .. }));

        for (from, to) in [
            ("policy = \"hpa\"", "policy = \"magic\""),
            ("max_replicas = 8", "max_replicas = 0"),
            ("admin_port_base = 9200", "admin_port_base = 65530"),
            ("kind = \"process\"", "kind = \"teleport\""),
            ("[lease]", "[lease]\nttl = 3"),
        ] {
            assert!(ok.contains(from));
            assert!(parse(&ok.replace(from, to)).is_err(), "{to}");
        }
        // The actuator signal source needs the process actuator.
        let k8s = ok.replace(
            "kind = \"process\"\n            args = [\"edge\", \"--config\", \"edge.toml\"]\n            admin_port_base = 9200",
            "kind = \"kubernetes\"\n            namespace = \"edgelink\"\n            deployment = \"edge\"",
        );
        assert_ne!(k8s, ok);
        assert!(parse(&k8s).is_err());

        // The systemd actuator: a template, instances from admin_port_base.
        let process =
            "kind = \"process\"\n            args = [\"edge\", \"--config\", \"edge.toml\"]";
        let systemd = ok.replace(
            process,
            "kind = \"systemd\"\n            unit = \"edgelink-edge@.service\"",
        );
        assert_ne!(systemd, ok);
        let c = parse(&systemd).unwrap();
        let ActuatorConfig::Systemd { systemctl, .. } = &c.actuator else {
            panic!("{:?}", c.actuator);
        };
        assert_eq!(systemctl, &["systemctl"]);
        for unit in [
            "edgelink-edge.service",
            "@.service",
            "edge@x.service",
            "a b@.service",
        ] {
            let bad = systemd.replace("edgelink-edge@.service", unit);
            assert!(parse(&bad).is_err(), "{unit}");
        }
        assert!(
            parse(&systemd.replace("admin_port_base = 9200", "admin_port_base = 65530")).is_err()
        );
    }
}
