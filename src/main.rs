//! `edgelink`: one binary, one subcommand per role. This file parses the
//! command line and maps failures to exit codes; each subcommand
//! (`src/cmd/`) loads and checks its configuration, sets up the runtime,
//! binds, and hands over to its role's `run`.

mod cli;
mod cmd;

use std::process::ExitCode;

use clap::Parser;
use edgelink_core::config::ConfigError;

use crate::cli::{AutoscaleAction, Cli, Command};

/// Exit code for a bad command line or configuration (sysexits EX_USAGE).
const EXIT_CONFIG: u8 = 64;
/// Exit code for an import that skipped malformed rows (sysexits EX_DATAERR).
const EXIT_DATA: u8 = 65;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_CONFIG } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    edgelink_core::telemetry::init();
    match dispatch(cli.command) {
        Ok(code) => code,
        Err(Failure::Config(e)) => {
            eprintln!("edgelink: bad configuration: {e}");
            ExitCode::from(EXIT_CONFIG)
        }
        Err(Failure::Run(e)) => {
            eprintln!("edgelink: {e:#}");
            ExitCode::FAILURE
        }
    }
}

pub(crate) enum Failure {
    Config(ConfigError),
    Run(anyhow::Error),
}

impl From<ConfigError> for Failure {
    fn from(e: ConfigError) -> Self {
        Failure::Config(e)
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Run(e)
    }
}

/// A role's error says what failed; it ends the process with exit code 1.
macro_rules! role_failures {
    ($($error:ty),*) => {$(
        impl From<$error> for Failure {
            fn from(e: $error) -> Self {
                Failure::Run(e.into())
            }
        }
    )*};
}

role_failures!(
    edgelink_edge::EdgeError,
    edgelink_origin::OriginError,
    edgelink_keypool::KeypoolError,
    edgelink_autoscaler::live::AutoscaleError
);

fn dispatch(command: Command) -> Result<ExitCode, Failure> {
    match command {
        Command::Serve {
            common,
            listen,
            sqlite,
        } => cmd::serve::run(common, listen, sqlite),
        Command::Edge {
            common,
            listen,
            distributed,
        } => cmd::edge::run(common, listen, distributed),
        Command::Keypool {
            common,
            admin_listen,
            postgres_url,
        } => cmd::keypool::run(common, admin_listen, postgres_url),
        Command::Origin {
            common,
            listen,
            distributed,
        } => cmd::origin::run(common, listen, distributed),
        Command::Apikey { action } => cmd::apikey::run(action),
        Command::Migrate {
            common,
            store,
            wait,
        } => cmd::migrate::run(common, store, wait),
        Command::Autoscale {
            action: AutoscaleAction::Run { config, check },
        } => cmd::autoscale::run(&config, check),
        Command::Autoscale {
            action: AutoscaleAction::Simulate(args),
        } => cmd::autoscale::simulate(args),
        Command::Import {
            file,
            batch_size,
            common,
            store,
        } => cmd::import::run(file, batch_size, common, store),
    }
}
