//! [`SystemdFleet`]: local edges as instances of a systemd template unit
//! (`deploy/systemd/edgelink-edge@.service`), started and stopped with
//! `systemctl`.
//!
//! Why not child processes under systemd: children live in the
//! autoscaler's own cgroup, so stopping or restarting its unit kills them
//! (or, with a kill mode that spares them, leaves strays in a stopped unit
//! that nothing accounts for). Instances are units of their own: their own
//! cgroup, sandbox and journal, restarted by systemd when they crash, and
//! untouched when the autoscaler restarts, crashes or stops.
//!
//! An instance is named by its admin port (`edgelink-edge@9210.service`
//! serves `/metrics` on `127.0.0.1:9210`), so systemd's list of the
//! template's running instances is the fleet: an autoscaler that starts
//! adopts it, with no pid to trust. systemd drains: `systemctl stop` sends
//! SIGTERM and SIGKILLs after the unit's `TimeoutStopSec=`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::run_command;

/// An instance as `systemctl list-units` shows it (its ACTIVE column).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// `active`, `activating` (a restart's wait too), `reloading`: running.
    Up,
    /// `deactivating`: draining, its admin port still taken.
    Leaving,
    /// `inactive`, `failed`.
    Down,
}

impl State {
    fn of(active: &str) -> State {
        match active {
            "active" | "activating" | "reloading" | "refreshing" => State::Up,
            "deactivating" => State::Leaving,
            _ => State::Down,
        }
    }
}

/// The template's instances, by admin port, in the output of
/// `systemctl list-units --plain --no-legend` (`UNIT LOAD ACTIVE SUB
/// DESCRIPTION`; a failed unit's line may start with a bullet).
fn parse_list(text: &str, prefix: &str) -> BTreeMap<u16, State> {
    text.lines()
        .filter_map(|line| {
            let mut words = line
                .split_whitespace()
                .skip_while(|w| !w.starts_with(prefix));
            let port = words
                .next()?
                .strip_prefix(prefix)?
                .strip_suffix(".service")?
                .parse()
                .ok()?;
            let _load = words.next()?;
            Some((port, State::of(words.next()?)))
        })
        .collect()
}

/// `Result=` by `Id=` in the output of `systemctl show
/// --property=Id,Result UNIT...` (one block per unit).
fn parse_results(text: &str) -> BTreeMap<String, String> {
    text.split("\n\n")
        .filter_map(|block| {
            let field = |name: &str| {
                block
                    .lines()
                    .find_map(|l| l.strip_prefix(name)?.strip_prefix('='))
                    .map(str::to_owned)
            };
            Some((field("Id")?, field("Result")?))
        })
        .collect()
}

/// Local edges as systemd units: see the module docs.
#[derive(Debug)]
pub struct SystemdFleet {
    /// `systemctl` and its leading arguments (`--user`).
    systemctl: Vec<String>,
    /// `NAME@`: instance `PORT` is `NAME@PORT.service`.
    prefix: String,
    admin_base: u16,
    /// Per `systemctl` call; a stop waits for the drain.
    timeout: Duration,
    state_dir: PathBuf,
    /// Admin ports of the running instances, in start order: the last is
    /// removed first.
    members: Vec<u16>,
    /// Edges removed that exited within their unit's stop timeout.
    pub drained: u64,
    /// Edges removed that systemd had to kill after it.
    pub killed: u64,
}

impl SystemdFleet {
    /// Adopts the template's running instances (in the start order kept in
    /// `state_dir/units.json`, instances it does not list last).
    pub async fn open(
        systemctl: Vec<String>,
        unit: &str,
        admin_base: u16,
        timeout: Duration,
        state_dir: &Path,
    ) -> Result<SystemdFleet, String> {
        let prefix = unit.strip_suffix(".service").unwrap_or(unit).to_owned();
        let mut fleet = SystemdFleet {
            systemctl,
            prefix,
            admin_base,
            timeout,
            state_dir: state_dir.to_owned(),
            members: Vec::new(),
            drained: 0,
            killed: 0,
        };
        if let Ok(text) = std::fs::read_to_string(fleet.saved_path()) {
            fleet.members = serde_json::from_str(&text).unwrap_or_default();
        }
        fleet.prune().await?;
        fleet.save()?;
        Ok(fleet)
    }

    fn saved_path(&self) -> PathBuf {
        self.state_dir.join("units.json")
    }

    fn save(&self) -> Result<(), String> {
        let tmp = self.state_dir.join("units.json.tmp");
        let text = serde_json::to_vec(&self.members).map_err(|e| e.to_string())?;
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, self.saved_path()))
            .map_err(|e| format!("{}: {e}", self.saved_path().display()))
    }

    fn unit(&self, port: u16) -> String {
        format!("{}{port}.service", self.prefix)
    }

    async fn systemctl(&self, args: &[&str], units: &[String]) -> Result<String, String> {
        let mut argv = self.systemctl.clone();
        argv.push("--no-ask-password".to_owned());
        argv.extend(args.iter().map(|a| (*a).to_owned()));
        argv.extend(units.iter().cloned());
        run_command(&argv, self.timeout).await
    }

    async fn list(&self) -> Result<BTreeMap<u16, State>, String> {
        let pattern = format!("{}*", self.prefix);
        let out = self
            .systemctl(
                &[
                    "list-units",
                    "--all",
                    "--plain",
                    "--no-legend",
                    "--no-pager",
                    "--type=service",
                    &pattern,
                ],
                &[],
            )
            .await?;
        Ok(parse_list(&out, &self.prefix))
    }

    /// Brings `members` in line with what systemd runs: instances that
    /// stopped leave, running ones it does not have (left by an earlier
    /// run, a start cut short, an operator) join at the end.
    async fn prune(&mut self) -> Result<BTreeMap<u16, State>, String> {
        let listed = self.list().await?;
        let before = self.members.clone();
        let up = |p: &u16| listed.get(p) == Some(&State::Up);
        self.members.retain(up);
        for p in &before {
            if !up(p) {
                tracing::warn!(unit = %self.unit(*p), "an edge is no longer running");
            }
        }
        for (p, state) in &listed {
            if *state == State::Up && !self.members.contains(p) {
                tracing::info!(unit = %self.unit(*p), "adopted a running edge");
                self.members.push(*p);
            }
        }
        if self.members != before {
            if let Err(e) = self.save() {
                tracing::warn!(error = %e, "cannot save the fleet");
            }
        }
        Ok(listed)
    }

    pub async fn current(&mut self) -> Result<u32, String> {
        self.prune().await?;
        Ok(self.members.len() as u32)
    }

    /// The admin addresses, as of the last [`SystemdFleet::current`].
    pub fn targets(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect()
    }

    pub async fn scale(&mut self, n: u32) -> Result<u32, String> {
        let listed = self.prune().await?;
        let want = n as usize;
        if self.members.len() < want {
            // The lowest free ports; a draining instance still holds its own.
            let mut ports = Vec::new();
            let mut p = self.admin_base;
            while self.members.len() + ports.len() < want {
                let free =
                    !self.members.contains(&p) && listed.get(&p).is_none_or(|s| *s == State::Down);
                if free {
                    ports.push(p);
                }
                p = p.checked_add(1).ok_or("no admin port left")?;
            }
            let units: Vec<String> = ports.iter().map(|p| self.unit(*p)).collect();
            if let Err(e) = self.systemctl(&["start"], &units).await {
                // Some may have started: the next look counts them.
                let _ = self.prune().await;
                return Err(e);
            }
            for u in &units {
                tracing::info!(unit = %u, "started an edge");
            }
            self.members.extend(ports);
            self.save()?;
        }
        if self.members.len() > want {
            let leaving = self.members.split_off(want);
            // Out of the saved set first: an autoscaler that restarts
            // mid-drain must not count them.
            self.save()?;
            let units: Vec<String> = leaving.iter().map(|p| self.unit(*p)).collect();
            if let Err(e) = self.systemctl(&["stop"], &units).await {
                // Those still running are members again.
                let _ = self.prune().await;
                return Err(e);
            }
            let results = self
                .systemctl(&["show", "--property=Id,Result"], &units)
                .await
                .map(|out| parse_results(&out))
                .unwrap_or_default();
            for u in &units {
                if results.get(u).is_some_and(|r| r == "timeout") {
                    tracing::warn!(unit = %u, "an edge did not drain in time: killed");
                    self.killed += 1;
                } else {
                    tracing::info!(unit = %u, "an edge drained and stopped");
                    self.drained += 1;
                }
            }
        }
        Ok(self.members.len() as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_units_output_gives_the_instances_by_admin_port() {
        let out = "edgelink-edge@9210.service loaded active running EdgeLink edge 9210\n\
                   edgelink-edge@9211.service loaded activating auto-restart EdgeLink edge 9211\n\
                   \u{25cf} edgelink-edge@9212.service loaded failed failed EdgeLink edge 9212\n\
                   edgelink-edge@9213.service loaded deactivating stop-sigterm EdgeLink edge 9213\n\
                   edgelink-edge@x.service loaded active running not ours\n\
                   edgelink-edge.service loaded active running not an instance\n";
        let got: Vec<(u16, State)> = parse_list(out, "edgelink-edge@").into_iter().collect();
        assert_eq!(
            got,
            [
                (9210, State::Up),
                (9211, State::Up),
                (9212, State::Down),
                (9213, State::Leaving)
            ]
        );
    }

    #[test]
    fn show_output_gives_each_units_result() {
        let out = "Result=success\nId=edgelink-edge@9211.service\n\n\
                   Id=edgelink-edge@9212.service\nResult=timeout\n";
        let got = parse_results(out);
        assert_eq!(got["edgelink-edge@9211.service"], "success");
        assert_eq!(got["edgelink-edge@9212.service"], "timeout");
    }
}
