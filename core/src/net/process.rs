//! Process metrics in Prometheus text, read from `/proc/self` when
//! `/metrics` is rendered (every role's admin listener appends them): CPU
//! seconds, resident memory, open and allowed file descriptors, threads
//! and start time, under the names Prometheus client libraries use. Off
//! Linux (no `/proc`) there are none.

use std::fmt::Write as _;

/// `/proc` reports CPU time in USER_HZ ticks, 100 a second on Linux.
const TICKS_PER_SECOND: f64 = 100.0;

/// The process metrics, in exposition format (empty without `/proc`).
pub fn render() -> String {
    let mut out = String::new();
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return out;
    };
    // Fields after the command name (which may hold spaces), 1-based from
    // field 3 (state): utime is field 14, stime 15, threads 20, starttime 22.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return out;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<f64>().ok());
    let mut metric = |name: &str, kind: &str, help: &str, value: Option<f64>| {
        if let Some(v) = value {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
            );
        }
    };
    let cpu = field(14)
        .zip(field(15))
        .map(|(u, s)| (u + s) / TICKS_PER_SECOND);
    metric(
        "process_cpu_seconds_total",
        "counter",
        "User and system CPU time spent, in seconds.",
        cpu,
    );
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
            .map(|v| v * 1024.0)
    };
    metric(
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory size, in bytes.",
        kib("VmRSS:"),
    );
    metric(
        "process_virtual_memory_bytes",
        "gauge",
        "Virtual memory size, in bytes.",
        kib("VmSize:"),
    );
    let fds = std::fs::read_dir("/proc/self/fd")
        .ok()
        .map(|d| d.count() as f64);
    metric("process_open_fds", "gauge", "Open file descriptors.", fds);
    let max_fds = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|l| {
            l.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3))
                .and_then(|v| v.parse::<f64>().ok())
        });
    metric(
        "process_max_fds",
        "gauge",
        "Most open file descriptors allowed (the soft limit).",
        max_fds,
    );
    metric("process_threads", "gauge", "OS threads.", field(20));
    let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("btime "))
            .and_then(|v| v.trim().parse::<f64>().ok())
    });
    let start = boot.zip(field(22)).map(|(b, t)| b + t / TICKS_PER_SECOND);
    metric(
        "process_start_time_seconds",
        "gauge",
        "Start time of the process, in seconds since the Unix epoch.",
        start,
    );
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_this_process() {
        let text = super::render();
        if !std::path::Path::new("/proc/self/stat").exists() {
            assert!(text.is_empty());
            return;
        }
        for name in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_max_fds",
            "process_threads",
            "process_start_time_seconds",
        ] {
            let value: f64 = text
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{name} ")))
                .unwrap_or_else(|| panic!("{name} missing:\n{text}"))
                .parse()
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            let least = if name == "process_cpu_seconds_total" {
                0.0
            } else {
                1.0
            };
            assert!(value >= least, "{name} = {value}");
        }
    }
}
