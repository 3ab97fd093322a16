//! The write-ahead log of scaling actions: every action is written (and
//! fsynced) as `intended` before the actuator is called and as `done` (or
//! `failed`) after. An action found `intended` at start-up was interrupted
//! by a crash: it is reconciled against the replica count the actuator
//! reports, never repeated blindly.
//!
//! One JSON object per line, appended; a torn last line (a crash mid-write)
//! is ignored.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Intended,
    Done,
    Failed,
    /// Found `intended` at start-up; `actual` is what the actuator reported.
    Reconciled,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub seq: u64,
    pub phase: Phase,
    /// Seconds since the Unix epoch.
    pub at: u64,
    pub from: u32,
    pub to: u32,
    /// The replica count after the action (done, reconciled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actual: Option<u32>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub note: String,
}

/// The log file, open for appending.
#[derive(Debug)]
pub struct Wal {
    path: PathBuf,
    file: File,
    next_seq: u64,
    /// The last action left `intended`, until [`Wal::reconcile`].
    pending: Option<Record>,
}

impl Wal {
    /// Opens (or creates) the log and finds an interrupted action.
    pub fn open(path: &Path) -> io::Result<Wal> {
        let mut last: Option<Record> = None;
        let mut max_seq = 0;
        if let Ok(f) = File::open(path) {
            for line in BufReader::new(f).lines() {
                let line = line?;
                // A torn line from a crash mid-append is skipped.
                let Ok(r) = serde_json::from_str::<Record>(&line) else {
                    continue;
                };
                max_seq = max_seq.max(r.seq);
                last = Some(r);
            }
        }
        let mut file = OpenOptions::new().create(true).append(true).open(path)?;
        // End a torn last line so the next record starts on its own.
        let len = file.metadata()?.len();
        if len > 0 {
            let mut tail = [0u8; 1];
            let f = File::open(path)?;
            std::os::unix::fs::FileExt::read_exact_at(&f, &mut tail, len - 1)?;
            if tail[0] != b'\n' {
                file.write_all(b"\n")?;
            }
        }
        let pending = last.filter(|r| r.phase == Phase::Intended);
        Ok(Wal {
            path: path.to_owned(),
            file,
            next_seq: max_seq + 1,
            pending,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The action a crash interrupted, if any.
    pub fn pending(&self) -> Option<&Record> {
        self.pending.as_ref()
    }

    fn append(&mut self, r: &Record) -> io::Result<()> {
        let mut line = serde_json::to_vec(r).map_err(io::Error::other)?;
        line.push(b'\n');
        self.file.write_all(&line)?;
        self.file.sync_data()
    }

    /// Records an action as intended (durably) and returns its sequence.
    pub fn intend(&mut self, at: u64, from: u32, to: u32, note: &str) -> io::Result<u64> {
        let seq = self.next_seq;
        self.append(&Record {
            seq,
            phase: Phase::Intended,
            at,
            from,
            to,
            actual: None,
            note: note.to_owned(),
        })?;
        self.next_seq += 1;
        Ok(seq)
    }

    /// Records how the action `seq` ended.
    pub fn finish(
        &mut self,
        seq: u64,
        at: u64,
        (from, to): (u32, u32),
        result: Result<u32, String>,
    ) -> io::Result<()> {
        let (phase, actual, note) = match result {
            Ok(n) => (Phase::Done, Some(n), String::new()),
            Err(e) => (Phase::Failed, None, e),
        };
        self.append(&Record {
            seq,
            phase,
            at,
            from,
            to,
            actual,
            note,
        })
    }

    /// Closes an interrupted action with the replica count the actuator
    /// reports now. Whether the action took effect or not, the next
    /// evaluation decides afresh from that count: nothing is replayed.
    pub fn reconcile(&mut self, at: u64, actual: u32) -> io::Result<Option<Record>> {
        let Some(p) = self.pending.take() else {
            return Ok(None);
        };
        let note = if actual == p.to {
            "the interrupted action had taken effect"
        } else if actual == p.from {
            "the interrupted action had not taken effect"
        } else {
            "the interrupted action had partly taken effect"
        };
        let r = Record {
            seq: p.seq,
            phase: Phase::Reconciled,
            at,
            from: p.from,
            to: p.to,
            actual: Some(actual),
            note: note.to_owned(),
        };
        self.append(&r)?;
        Ok(Some(r))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn an_intended_action_survives_a_crash_and_is_reconciled_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("actions.wal");
        {
            let mut w = Wal::open(&path).unwrap();
            assert!(w.pending().is_none());
            let s = w.intend(10, 2, 3, "hpa").unwrap();
            w.finish(s, 11, (2, 3), Ok(3)).unwrap();
            // Crash between intended and done, with half a line after it.
            w.intend(20, 3, 6, "spike").unwrap();
            w.file.write_all(b"{\"seq\":3,\"pha").unwrap();
        }
        let mut w = Wal::open(&path).unwrap();
        let p = w.pending().unwrap().clone();
        assert_eq!((p.seq, p.from, p.to), (2, 3, 6));
        let r = w.reconcile(30, 6).unwrap().unwrap();
        assert_eq!(r.phase, Phase::Reconciled);
        assert!(r.note.contains("had taken effect"), "{r:?}");
        // The next action takes a new sequence number, after the torn line.
        assert_eq!(w.intend(31, 6, 5, "hpa").unwrap(), 3);
        drop(w);
        // Reconciled once: a second restart finds the new action pending,
        // not the old one.
        let w = Wal::open(&path).unwrap();
        assert_eq!(w.pending().unwrap().seq, 3);
    }
}
