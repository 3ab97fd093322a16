//! The access log: one JSON line per request, written by a thread of its
//! own, so a request only hands a small record to a bounded queue (no I/O,
//! no formatting); when the queue is full the line is dropped and counted
//! (`edgelink_access_log_dropped_total`). Off unless `access_log.path` is
//! set; `-` writes to standard output.
//!
//! ```json
//! {"ts":"2026-11-26T20:41:07.123Z","client":"203.0.113.9","method":"GET","path":"/abc","status":302,"duration_us":41,"user_agent":"curl/8.5.0"}
//! ```

use std::io::Write;
use std::net::IpAddr;
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::{Duration, SystemTime};

use edgelink_core::config::AccessLogConfig;
use http::{HeaderValue, Method};
use metrics::Counter;

/// Longest path kept in a line.
const MAX_PATH: usize = 512;

/// What a request leaves for its line.
pub struct Record {
    pub at: SystemTime,
    pub client: IpAddr,
    pub method: Method,
    pub path: String,
    pub status: u16,
    pub duration: Duration,
    pub user_agent: Option<HeaderValue>,
}

enum Msg {
    Line(Box<Record>),
    Close(std::sync::mpsc::Sender<()>),
}

/// The request side of the log.
pub struct AccessLog {
    tx: SyncSender<Msg>,
    dropped: Counter,
}

impl AccessLog {
    /// Opens the log (appending) and starts its writer, or `None` when no
    /// path is set.
    pub fn open(config: &AccessLogConfig, dropped: Counter) -> std::io::Result<Option<AccessLog>> {
        let Some(path) = &config.path else {
            return Ok(None);
        };
        let out: Box<dyn Write + Send> = if path.as_os_str() == "-" {
            Box::new(std::io::stdout())
        } else {
            Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            )
        };
        let (tx, rx) = sync_channel(config.max_queue.max(1));
        std::thread::Builder::new()
            .name("edgelink-access-log".into())
            .spawn(move || write_lines(rx, std::io::BufWriter::new(out)))?;
        Ok(Some(AccessLog { tx, dropped }))
    }

    /// Queues a line; drops it (counted) when the writer is behind.
    pub fn log(&self, record: Record) {
        match self.tx.try_send(Msg::Line(Box::new(record))) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => self.dropped.increment(1),
        }
    }

    /// Writes what is queued and flushes (at shutdown), waiting at most
    /// `within`.
    pub fn close(&self, within: Duration) {
        let (done, wait) = std::sync::mpsc::channel();
        if self.tx.send(Msg::Close(done)).is_ok() {
            let _ = wait.recv_timeout(within);
        }
    }
}

fn write_lines(rx: Receiver<Msg>, mut out: std::io::BufWriter<Box<dyn Write + Send>>) {
    let mut failed = false;
    loop {
        // Flush when the queue runs dry (or once a second while busy).
        let msg = match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(m) => m,
            Err(RecvTimeoutError::Timeout) => {
                let _ = out.flush();
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => {
                let _ = out.flush();
                return;
            }
        };
        match msg {
            Msg::Line(r) => {
                let line = line(&r);
                if let Err(e) = out.write_all(line.as_bytes()) {
                    if !failed {
                        tracing::error!(error = %e, "access log write failed; lines are lost until it works again");
                    }
                    failed = true;
                } else {
                    failed = false;
                }
            }
            Msg::Close(done) => {
                let _ = out.flush();
                let _ = done.send(());
            }
        }
    }
}

/// One JSON line (with its newline).
pub fn line(r: &Record) -> String {
    let ts = time::OffsetDateTime::from(r.at);
    let ts = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        ts.year(),
        u8::from(ts.month()),
        ts.day(),
        ts.hour(),
        ts.minute(),
        ts.second(),
        ts.millisecond()
    );
    let mut path = r.path.as_str();
    if path.len() > MAX_PATH {
        let mut end = MAX_PATH;
        while !path.is_char_boundary(end) {
            end -= 1;
        }
        path = &path[..end];
    }
    let mut v = serde_json::json!({
        "ts": ts,
        "client": r.client.to_string(),
        "method": r.method.as_str(),
        "path": path,
        "status": r.status,
        "duration_us": u64::try_from(r.duration.as_micros()).unwrap_or(u64::MAX),
    });
    if let Some(ua) = &r.user_agent {
        v["user_agent"] = String::from_utf8_lossy(ua.as_bytes()).into_owned().into();
    }
    let mut s = v.to_string();
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_line_is_one_json_object_with_long_paths_cut() {
        let r = Record {
            at: SystemTime::UNIX_EPOCH + Duration::from_millis(1_764_189_667_123),
            client: "203.0.113.9".parse().unwrap(),
            method: Method::GET,
            path: format!("/{}", "é".repeat(400)),
            status: 302,
            duration: Duration::from_micros(41),
            user_agent: Some(HeaderValue::from_static("curl/8.5.0 \"quoted\"")),
        };
        let l = line(&r);
        assert!(l.ends_with('\n') && l.matches('\n').count() == 1);
        let v: serde_json::Value = serde_json::from_str(&l).unwrap();
        assert_eq!(v["ts"], "2025-11-26T20:41:07.123Z");
        assert_eq!(v["status"], 302);
        assert_eq!(v["duration_us"], 41);
        assert_eq!(v["user_agent"], "curl/8.5.0 \"quoted\"");
        assert!(v["path"].as_str().unwrap().len() <= MAX_PATH);
    }
}
