//! `edgelink autoscale`: the live sidecar (`run`) and the simulator
//! (`simulate`, which prints a table or JSON lines).

use std::path::Path;
use std::process::ExitCode;

use edgelink_core::config::ConfigError;
use edgelink_core::shutdown::{cancel_on_signal, CancellationToken};

use super::runtime;
use crate::cli::SimulateArgs;
use crate::Failure;

/// `autoscale run`: the sidecar, until SIGTERM.
pub(crate) fn run(config: &Path, check: bool) -> Result<ExitCode, Failure> {
    use edgelink_autoscaler::live;
    let config = live::config::Config::load(config).map_err(|e| {
        Failure::Config(ConfigError::Invalid(format!(
            "autoscaler configuration: {e}"
        )))
    })?;
    if check {
        println!("configuration ok");
        return Ok(ExitCode::SUCCESS);
    }
    runtime(2)?.block_on(async move {
        let addr = config.autoscaler.admin_listen;
        let admin = edgelink_core::net::listener::bind(addr, 128)
            .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
        let shutdown = CancellationToken::new();
        cancel_on_signal(shutdown.clone());
        let deps = live::Deps::open(&config).await?;
        live::run(live::Listeners { admin }, config, deps, shutdown).await?;
        Ok(ExitCode::SUCCESS)
    })
}

/// `autoscale simulate`: each policy over the trace.
pub(crate) fn simulate(args: SimulateArgs) -> Result<ExitCode, Failure> {
    let SimulateArgs {
        trace,
        policy,
        scale,
        node_capacity,
        startup_seconds,
        train_days,
        utc_offset_hours,
        peak_hours,
        min_replicas,
        max_replicas,
        json,
    } = args;
    use edgelink_autoscaler::{policies, sim, NAMES};
    let bad = |m: String| Failure::Config(ConfigError::Invalid(m));
    let peak = edgelink_autoscaler::parse_peak_hours(&peak_hours).ok_or_else(|| {
        bad(format!(
            "--peak-hours {peak_hours:?}: want FROM-TO, e.g. 9-18"
        ))
    })?;
    if !(scale > 0.0 && node_capacity > 0.0) || min_replicas > max_replicas {
        return Err(bad(
            "--scale and --node-capacity must be > 0, --min-replicas <= --max-replicas".into(),
        ));
    }
    let trace = sim::Trace::load(&trace, scale)
        .map_err(|e| Failure::Run(anyhow::anyhow!("{}: {e}", trace.display())))?;
    let model = sim::Model {
        capacity: node_capacity,
        startup_secs: startup_seconds,
        scrape_secs: 15,
        train_secs: train_days * 86_400,
        min: min_replicas,
        max: max_replicas,
        utc_offset: utc_offset_hours * 3_600,
    };
    let names: Vec<&str> = match policy.as_str() {
        "all" => std::iter::once("static-peak")
            .chain(NAMES)
            .chain(std::iter::once("oracle"))
            .collect(),
        one => vec![one],
    };
    let mut reports = Vec::new();
    for name in names {
        reports.push(match name {
            "static-peak" => sim::static_peak(&trace, &model),
            "oracle" => sim::oracle(&trace, &model),
            _ => {
                let mut p = policies(name, &model, peak)
                    .ok_or_else(|| bad(format!("--policy {name:?}: unknown")))?;
                sim::simulate(&trace, &model, name, p.as_mut())
            }
        });
    }
    if json {
        for r in &reports {
            println!(
                "{}",
                serde_json::to_string(r).map_err(|e| Failure::Run(e.into()))?
            );
        }
    } else {
        print!("{}", sim::markdown_table(&reports));
    }
    Ok(ExitCode::SUCCESS)
}
