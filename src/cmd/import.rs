//! `edgelink import`: links from a CSV file, in batches.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use edgelink_core::config::{Config, ConfigError, StorageMode};
use edgelink_core::import::{import_csv, ImportError, ImportOptions};

use super::{apply_store, checked, load, open_store, runtime};
use crate::cli::{Common, StoreArgs};
use crate::{Failure, EXIT_DATA};

/// `edgelink import`.
pub(crate) fn run(
    file: PathBuf,
    batch_size: usize,
    common: Common,
    store: StoreArgs,
) -> Result<ExitCode, Failure> {
    let (config, mode) = load(&common, |c| apply_store(c, &store))?;
    if batch_size == 0 || batch_size > 100_000 {
        return Err(ConfigError::Invalid("--batch-size must be 1..=100000".into()).into());
    }
    if let Some(code) = checked(common.check) {
        return Ok(code);
    }
    let options = ImportOptions {
        batch_size,
        default_status: config.redirect.default_status,
    };
    runtime(1)?.block_on(import(&config, mode, &file, &options))
}

async fn import(
    config: &Config,
    mode: StorageMode,
    file: &Path,
    options: &ImportOptions,
) -> Result<ExitCode, Failure> {
    let store = open_store(config, mode).await?;
    let input: Box<dyn std::io::Read> = if file.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(
            std::fs::File::open(file)
                .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", file.display()))?,
        )
    };
    let report = match import_csv(std::io::BufReader::new(input), store.as_ref(), options).await {
        Ok(r) => r,
        Err(e) => {
            if let ImportError::Store { partial, .. } = &e {
                for p in &partial.problems {
                    eprintln!("line {}: {}", p.line, p.message);
                }
            }
            return Err(anyhow::Error::from(e).into());
        }
    };
    for p in &report.problems {
        eprintln!("line {}: {}", p.line, p.message);
    }
    let hidden = (report.existing + report.rejected).saturating_sub(report.problems.len() as u64);
    if hidden > 0 {
        eprintln!("... and {hidden} more skipped rows");
    }
    println!(
        "imported {} of {} rows into {} ({} skipped: {} malformed, {} already existing)",
        report.inserted,
        report.rows,
        store.name(),
        report.existing + report.rejected,
        report.rejected,
        report.existing
    );
    Ok(if report.rejected > 0 {
        ExitCode::from(EXIT_DATA)
    } else {
        ExitCode::SUCCESS
    })
}
