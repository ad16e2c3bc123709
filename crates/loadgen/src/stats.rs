//! Latency recording: every receiving task buffers samples locally and merges them into
//! one shared HDR histogram in batches, so thousands of clients share one histogram
//! (a few hundred KiB) and the lock is taken once per [`FLUSH_EVERY`] samples.

use std::sync::{Arc, Mutex, PoisonError};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Samples a recorder buffers before merging them into the shared histogram.
pub const FLUSH_EVERY: usize = 512;
/// Largest latency recorded, in microseconds (longer ones are clamped to it): 10 minutes.
pub const MAX_US: u64 = 600_000_000;

/// A histogram of latencies in microseconds, shared by the recorders of one run.
#[derive(Debug, Clone)]
pub struct SharedHistogram(Arc<Mutex<Histogram<u64>>>);

impl Default for SharedHistogram {
    fn default() -> Self {
        SharedHistogram::new()
    }
}

impl SharedHistogram {
    /// An empty histogram: 1 µs to [`MAX_US`], 3 significant digits.
    pub fn new() -> SharedHistogram {
        // Valid constant bounds: creation cannot fail.
        #[allow(clippy::expect_used)]
        let h = Histogram::new_with_bounds(1, MAX_US, 3).expect("valid histogram bounds");
        SharedHistogram(Arc::new(Mutex::new(h)))
    }

    /// A recorder that buffers samples and merges them into this histogram.
    pub fn recorder(&self) -> Recorder {
        Recorder {
            shared: self.clone(),
            buf: Vec::new(),
        }
    }

    fn merge(&self, samples: &[u64]) {
        let mut h = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        for &us in samples {
            h.saturating_record(us.clamp(1, MAX_US));
        }
    }

    /// The summary of everything recorded so far (flush the recorders first).
    pub fn summary(&self) -> Summary {
        let h = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        Summary::of(&h)
    }
}

/// Buffers latency samples of one task.
#[derive(Debug)]
pub struct Recorder {
    shared: SharedHistogram,
    buf: Vec<u64>,
}

impl Recorder {
    /// Records one latency in microseconds.
    #[inline]
    pub fn record(&mut self, us: u64) {
        if self.buf.capacity() == 0 {
            self.buf.reserve_exact(FLUSH_EVERY);
        }
        self.buf.push(us);
        if self.buf.len() >= FLUSH_EVERY {
            self.flush();
        }
    }

    /// Merges the buffered samples into the shared histogram.
    pub fn flush(&mut self) {
        if !self.buf.is_empty() {
            self.shared.merge(&self.buf);
            self.buf.clear();
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.flush();
    }
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Summary {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest.
    pub max: u64,
    /// Mean, rounded.
    pub mean: u64,
}

impl Summary {
    /// Summarizes a histogram (all zero when it is empty).
    pub fn of(h: &Histogram<u64>) -> Summary {
        if h.is_empty() {
            return Summary::default();
        }
        Summary {
            count: h.len(),
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            mean: h.mean().round() as u64,
        }
    }
}

/// Reads a process's resident set size in bytes from `/proc/PID/status` (`VmRSS`).
///
/// # Errors
/// When the file cannot be read or has no `VmRSS` line.
pub fn rss_bytes(pid: u32) -> std::io::Result<u64> {
    status_bytes(pid, "VmRSS:")
}

/// Reads a process's peak resident set size in bytes from `/proc/PID/status` (`VmHWM`,
/// the high-water mark since it started).
///
/// # Errors
/// When the file cannot be read or has no `VmHWM` line.
pub fn peak_rss_bytes(pid: u32) -> std::io::Result<u64> {
    status_bytes(pid, "VmHWM:")
}

/// The figure of `key` (`VmRSS:`) in `/proc/PID/status`, in bytes.
fn status_bytes(pid: u32, key: &str) -> std::io::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    parse_status_kb(&status, key).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("no {key} in /proc/{pid}/status"),
        )
    })
}

/// The `VmRSS` of a `/proc/PID/status` text, in bytes.
pub fn parse_vm_rss(status: &str) -> Option<u64> {
    parse_status_kb(status, "VmRSS:")
}

/// A `KEY: N kB` line of a `/proc/PID/status` text, in bytes.
pub fn parse_status_kb(status: &str, key: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(key))?;
    let mut words = line[key.len()..].split_whitespace();
    let n: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") | None => Some(n * 1024),
        _ => None,
    }
}

/// Clock ticks per second of `/proc/PID/stat` times (`CLK_TCK`, 100 on Linux).
pub const CLOCK_TICKS: f64 = 100.0;

/// CPU seconds (user + system) a process used, from a `/proc/PID/stat` text; with
/// `children`, those of its waited-for children too.
pub fn parse_cpu_seconds(stat: &str, children: bool) -> Option<f64> {
    // The command name (field 2) is in parentheses and may hold spaces: count from after it.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14–17 of the file (utime, stime, cutime, cstime) are 11–14 after the name.
    let tick = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    let mut ticks = tick(11)? + tick(12)?;
    if children {
        ticks += tick(13)? + tick(14)?;
    }
    Some(ticks as f64 / CLOCK_TICKS)
}

/// CPU seconds this process and its waited-for children used so far.
pub fn own_cpu_seconds() -> Option<f64> {
    parse_cpu_seconds(&std::fs::read_to_string("/proc/self/stat").ok()?, true)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn summary_of_one_to_a_thousand() {
        let shared = SharedHistogram::new();
        let mut a = shared.recorder();
        let mut b = shared.recorder();
        for us in 1..=1000u64 {
            if us % 2 == 0 {
                a.record(us)
            } else {
                b.record(us)
            }
        }
        drop(a);
        b.flush();
        let s = shared.summary();
        assert_eq!(
            s,
            Summary {
                count: 1000,
                p50: 500,
                p90: 900,
                p99: 990,
                p999: 999,
                max: 1000,
                mean: 501,
            }
        );
    }

    #[test]
    fn empty_summary_is_zero_and_big_values_are_clamped() {
        let shared = SharedHistogram::new();
        assert_eq!(shared.summary(), Summary::default());
        let mut r = shared.recorder();
        r.record(0);
        r.record(u64::MAX);
        r.flush();
        let s = shared.summary();
        assert_eq!(s.count, 2);
        assert_eq!(s.p50, 1);
        // 3 significant digits: the bucket of MAX_US reports a value within 0.1 %.
        assert!(s.max >= MAX_US && s.max <= MAX_US + MAX_US / 1000, "{s:?}");
    }

    #[test]
    fn parses_cpu_seconds() {
        let stat = "4242 (simpletextim (x)) S 1 4242 4242 0 -1 4194560 2000 0 0 0 150 50 7 3 20 0 3 0 100 1000 200";
        assert_eq!(parse_cpu_seconds(stat, false), Some(2.0));
        assert_eq!(parse_cpu_seconds(stat, true), Some(2.1));
        assert_eq!(parse_cpu_seconds("1 (x) S 1", false), None);
        assert!(own_cpu_seconds().is_some());
    }

    #[test]
    fn parses_vm_rss() {
        let status =
            "Name:\tsimpletextim-se\nVmPeak:\t  200 kB\nVmRSS:\t   12345 kB\nThreads:\t3\n";
        assert_eq!(parse_vm_rss(status), Some(12345 * 1024));
        assert_eq!(parse_status_kb(status, "VmPeak:"), Some(200 * 1024));
        assert_eq!(parse_vm_rss("Name: x\n"), None);
        assert!(rss_bytes(std::process::id()).unwrap() > 0);
        assert!(peak_rss_bytes(std::process::id()).unwrap() > 0);
    }
}
