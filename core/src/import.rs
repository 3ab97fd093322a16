//! CSV import: `code,url[,status[,expires_at]]`, header optional.
//!
//! Rows are checked one by one; a bad row is reported with its line number
//! and skipped. Good rows are written in batches, each batch in one
//! transaction, so a row is either stored whole or not at all. A code that
//! already exists is left as it is and reported, so re-running an import is
//! safe.

use std::io::Read;

use crate::code::check_code;
use crate::link::{now, parse_rfc3339, Link, RedirectStatus};
use crate::store::LinkStore;

/// Rows per transaction.
pub const DEFAULT_BATCH: usize = 1_000;

/// Problems kept in detail; beyond this they are only counted.
pub const MAX_DETAILED: usize = 1_000;

#[derive(Debug, Clone)]
pub struct ImportOptions {
    pub batch_size: usize,
    /// Status for rows that leave the third column empty.
    pub default_status: RedirectStatus,
}

impl Default for ImportOptions {
    fn default() -> Self {
        ImportOptions {
            batch_size: DEFAULT_BATCH,
            default_status: RedirectStatus::Found,
        }
    }
}

/// One row that was not imported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowProblem {
    /// 1-based line number in the file.
    pub line: u64,
    pub message: String,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ImportReport {
    /// Data rows read (header excluded).
    pub rows: u64,
    pub inserted: u64,
    /// Rows skipped because their code was already taken.
    pub existing: u64,
    /// Rows skipped because they were malformed.
    pub rejected: u64,
    /// The first [`MAX_DETAILED`] skipped rows (existing or rejected), by line.
    pub problems: Vec<RowProblem>,
}

impl ImportReport {
    fn problem(&mut self, line: u64, message: String) {
        if self.problems.len() < MAX_DETAILED {
            self.problems.push(RowProblem { line, message });
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("cannot read the CSV: {0}")]
    Read(#[source] csv::Error),
    /// A batch could not be written; batches before it are committed.
    #[error("storing the batch that starts at line {first_line} failed ({source}); rows before that line are stored, and re-running the import is safe")]
    Store {
        first_line: u64,
        partial: Box<ImportReport>,
        #[source]
        source: crate::error::StoreError,
    },
}

/// Parses one data row.
pub fn parse_row(
    fields: &csv::StringRecord,
    default_status: RedirectStatus,
) -> Result<Link, String> {
    if fields.len() < 2 {
        return Err("expected code,url[,status[,expires_at]]".to_owned());
    }
    if fields.len() > 4 {
        return Err(format!(
            "expected at most 4 columns, found {}",
            fields.len()
        ));
    }
    let code = &fields[0];
    check_code(code).map_err(|e| format!("bad code {code:?}: {e}"))?;
    let status = match fields.get(2).unwrap_or("") {
        "" => default_status,
        s => s
            .parse::<u16>()
            .ok()
            .and_then(RedirectStatus::from_code)
            .ok_or_else(|| format!("bad status {s:?}: use 301, 302, 307 or 308"))?,
    };
    let expires_at = match fields.get(3).unwrap_or("") {
        "" => None,
        s => Some(parse_rfc3339(s).map_err(|e| {
            format!("bad expires_at {s:?} (RFC 3339, e.g. 2030-01-01T00:00:00Z): {e}")
        })?),
    };
    Link::new(code, &fields[1], status, now(), expires_at).map_err(|e| e.to_string())
}

fn is_header(fields: &csv::StringRecord) -> bool {
    fields
        .get(0)
        .is_some_and(|f| f.eq_ignore_ascii_case("code"))
        && fields.get(1).is_some_and(|f| f.eq_ignore_ascii_case("url"))
}

/// Imports every row of `input` into `store`.
pub async fn import_csv(
    input: impl Read,
    store: &dyn LinkStore,
    options: &ImportOptions,
) -> Result<ImportReport, ImportError> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .comment(None)
        .from_reader(input);
    let batch_size = options.batch_size.max(1);
    let mut report = ImportReport::default();
    let mut batch: Vec<Link> = Vec::with_capacity(batch_size);
    let mut lines: Vec<u64> = Vec::with_capacity(batch_size);
    let mut record = csv::StringRecord::new();
    let mut first = true;
    loop {
        let line = reader.position().line();
        match reader.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) if e.is_io_error() => return Err(ImportError::Read(e)),
            Err(e) => {
                // Malformed (e.g. not UTF-8): the reader has moved past it.
                let line = e.position().map_or(line, |p| p.line());
                report.rows += 1;
                report.rejected += 1;
                report.problem(line, format!("unreadable row: {e}"));
                first = false;
                continue;
            }
        }
        let line = record.position().map_or(line, |p| p.line());
        if std::mem::take(&mut first) && is_header(&record) {
            continue;
        }
        if record.len() == 1 && record[0].is_empty() {
            continue; // blank line
        }
        report.rows += 1;
        match parse_row(&record, options.default_status) {
            Ok(link) => {
                batch.push(link);
                lines.push(line);
            }
            Err(message) => {
                report.rejected += 1;
                report.problem(line, message);
            }
        }
        if batch.len() >= batch_size {
            flush(store, &mut batch, &mut lines, &mut report).await?;
        }
    }
    flush(store, &mut batch, &mut lines, &mut report).await?;
    Ok(report)
}

async fn flush(
    store: &dyn LinkStore,
    batch: &mut Vec<Link>,
    lines: &mut Vec<u64>,
    report: &mut ImportReport,
) -> Result<(), ImportError> {
    if batch.is_empty() {
        return Ok(());
    }
    let outcome = match store.insert_links(batch).await {
        Ok(o) => o,
        Err(source) => {
            return Err(ImportError::Store {
                first_line: lines[0],
                partial: Box::new(report.clone()),
                source,
            })
        }
    };
    report.inserted += outcome.inserted as u64;
    report.existing += outcome.existing.len() as u64;
    for i in outcome.existing {
        let message = format!("code {:?} already exists; row skipped", batch[i].code);
        report.problem(lines[i], message);
    }
    batch.clear();
    lines.clear();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(fields: &[&str]) -> csv::StringRecord {
        csv::StringRecord::from(fields.to_vec())
    }

    #[test]
    fn parses_optional_columns() {
        let l = parse_row(&record(&["a", "https://x.example/"]), RedirectStatus::Found).unwrap();
        assert_eq!(l.redirect, RedirectStatus::Found);
        assert_eq!(l.expires_at, None);
        let l = parse_row(
            &record(&["a", "https://x.example/", "301", "2030-01-02T03:04:05Z"]),
            RedirectStatus::Found,
        )
        .unwrap();
        assert_eq!(l.redirect, RedirectStatus::MovedPermanently);
        assert_eq!(l.expires_at.unwrap().unix_timestamp(), 1_893_553_445);
        let l = parse_row(
            &record(&["a", "https://x.example/", ""]),
            RedirectStatus::TemporaryRedirect,
        )
        .unwrap();
        assert_eq!(l.redirect, RedirectStatus::TemporaryRedirect);
    }

    #[test]
    fn explains_bad_rows() {
        let cases: &[(&[&str], &str)] = &[
            (&["only"], "expected code,url"),
            (
                &["a", "https://x.example/", "302", "", "extra"],
                "at most 4",
            ),
            (&["a b", "https://x.example/"], "bad code"),
            (&["a", "ftp://x.example/"], "scheme"),
            (&["a", "https://x.example/", "303"], "bad status"),
            (
                &["a", "https://x.example/", "", "tomorrow"],
                "bad expires_at",
            ),
        ];
        for (fields, needle) in cases {
            let err = parse_row(&record(fields), RedirectStatus::Found).unwrap_err();
            assert!(err.contains(needle), "{fields:?}: {err}");
        }
    }

    #[test]
    fn recognises_a_header() {
        assert!(is_header(&record(&["code", "url", "status"])));
        assert!(is_header(&record(&["Code", "URL"])));
        assert!(!is_header(&record(&["code1", "https://x.example/"])));
    }
}
