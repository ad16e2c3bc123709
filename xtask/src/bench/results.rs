//! The results of a suite as `docs/bench/results.json` holds them: the machine, and every
//! run of every scenario as the load generator reported it (its [`Report`]).
//!
//! The file is written with its object keys sorted (through [`serde_json::Value`]), so a
//! rerun changes only the figures, and partial runs (`--only`) are merged into it.

use std::fs;
use std::path::Path;
use std::process::Command;

use anyhow::Context;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use simpletextim_loadgen::report::Report;

use super::suite::Metric;

/// `docs/bench/results.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Results {
    /// Where the figures come from.
    pub machine: Machine,
    /// A `--quick` smoke run (tiny counts, not figures to quote).
    pub quick: bool,
    /// The server's command line, the same for every run.
    pub server_command: String,
    /// Wall seconds of the suite (of every partial run, for a merged file).
    pub suite_seconds: u64,
    /// In the order they ran (a partial run's new scenarios last).
    pub scenarios: Vec<ScenarioResult>,
}

/// Facts about the machine the figures come from. Strings are `unknown` where the
/// machine could not tell; numbers are `null`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    /// Cores the suite could use.
    pub cores: Option<usize>,
    /// `model name` of `/proc/cpuinfo`.
    pub cpu: String,
    /// Linux release.
    pub kernel: String,
    /// Total memory, GiB, one decimal.
    pub memory_gib: Option<f64>,
    /// `git rev-parse --short=12 HEAD`.
    pub commit: String,
    /// Whether tracked files had uncommitted changes.
    pub dirty: bool,
    /// `rustc --version`.
    pub rustc: String,
    /// When the suite ran, `YYYY-MM-DD HH:MM UTC`.
    pub date: String,
}

/// All runs of one scenario.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScenarioResult {
    /// [`super::suite::Scenario::id`].
    pub id: String,
    /// [`super::suite::Scenario::title`].
    pub title: String,
    /// The load generator's command line.
    pub command: String,
    /// The load generator's command line of the quiet run before each run (the soak).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quiet_command: Option<String>,
    /// The server's command line, where it is not [`Results::server_command`] (the soak).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_command: Option<String>,
    /// When and on what it ran ([`Machine::describe`]), where that is not the results'
    /// [`Results::machine`]: a scenario of a partial run (`--only`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measured: Option<String>,
    /// Every run, failed ones included.
    pub runs: Vec<Run>,
    /// The median run by the scenario's metric; `None` when no run has it.
    pub median: Option<Report>,
    /// The reference beside it (Redis pub/sub beside the open-loop fan-out), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<Reference>,
}

/// A reference run beside each run of a scenario: the same load against another server
/// (Redis pub/sub, through `simpletextim-loadgen redis-fanout`), in the same suite on the
/// same machine, the two alternating which goes first; its median is its own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reference {
    /// What the report calls it: `Redis 7.0.15 pub/sub`.
    pub name: String,
    /// The reference server's command line.
    pub server_command: String,
    /// The load generator's command line.
    pub command: String,
    /// Every run, failed ones included, in order.
    pub runs: Vec<Run>,
    /// The median run by the scenario's metric; `None` when no run has it.
    pub median: Option<Report>,
}

/// One run of a scenario.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Run {
    /// The load generator's report, with the harness's figures (wall time, server CPU).
    Done(Box<Report>),
    /// The run failed: `{"error": "..."}`.
    Failed {
        /// What went wrong.
        error: String,
    },
}

impl<'de> Deserialize<'de> for Run {
    /// `{"error": …}` alone is a failed run, anything else a report. Read through a
    /// [`Value`] rather than `#[serde(untagged)]`, whose buffering cannot read the numeric
    /// keys of [`Report::fails`], and whose error would not say what is wrong.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Run, D::Error> {
        let v = Value::deserialize(d)?;
        let error = v
            .as_object()
            .filter(|o| o.len() == 1)
            .and_then(|o| o.get("error"));
        if let Some(error) = error.and_then(Value::as_str) {
            return Ok(Run::Failed {
                error: error.to_owned(),
            });
        }
        serde_json::from_value(v)
            .map(|r| Run::Done(Box::new(r)))
            .map_err(serde::de::Error::custom)
    }
}

impl Machine {
    /// `2026-12-01 05:33 UTC, commit abc (with uncommitted changes)`.
    pub fn describe(&self) -> String {
        let dirty = if self.dirty {
            " (with uncommitted changes)"
        } else {
            ""
        };
        format!("{}, commit `{}`{dirty}", self.date, self.commit)
    }
}

impl Run {
    /// The report of a run that did not fail.
    pub fn report(&self) -> Option<&Report> {
        match self {
            Run::Done(r) => Some(r),
            Run::Failed { .. } => None,
        }
    }
}

impl Results {
    /// Reads a results file; `None` when there is none.
    pub fn load(path: &Path) -> anyhow::Result<Option<Results>> {
        let text = match fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        Results::parse(&text)
            .with_context(|| format!("{} is not a results file", path.display()))
            .map(Some)
    }

    /// Parses the text of a results file.
    pub fn parse(text: &str) -> anyhow::Result<Results> {
        Ok(serde_json::from_str(text)?)
    }

    /// The text of the results file: pretty JSON, keys sorted, a final newline.
    pub fn to_json(&self) -> String {
        let sorted = serde_json::to_value(self)
            .expect("results serialize: map keys are numbers or strings, no float fails");
        serde_json::to_string_pretty(&sorted).expect("a JSON value serializes") + "\n"
    }

    /// The scenario with this id.
    pub fn scenario(&self, id: &str) -> Option<&ScenarioResult> {
        self.scenarios.iter().find(|s| s.id == id)
    }

    /// The median run of a scenario, if it ran and a run succeeded.
    pub fn median(&self, id: &str) -> Option<&Report> {
        self.scenario(id)?.median.as_ref()
    }

    /// A scenario's title, or its id when it did not run.
    pub fn title<'a>(&'a self, id: &'a str) -> &'a str {
        self.scenario(id).map_or(id, |s| s.title.as_str())
    }

    /// `(rate, median run)` of the open-loop scenarios (`fanout-rate-RATE`), by rate.
    pub fn open_loop_points(&self) -> Vec<(u64, &Report)> {
        let mut pts: Vec<(u64, &Report)> = self
            .scenarios
            .iter()
            .filter_map(|sc| {
                let rate = sc.id.strip_prefix("fanout-rate-")?.parse().ok()?;
                Some((rate, sc.median.as_ref()?))
            })
            .collect();
        pts.sort_by_key(|(rate, _)| *rate);
        pts
    }

    /// `(rate, reference median run)` of the open-loop scenarios that ran with a reference
    /// (Redis pub/sub), by rate.
    pub fn open_loop_reference_points(&self) -> Vec<(u64, &Report)> {
        let mut pts: Vec<(u64, &Report)> = self
            .scenarios
            .iter()
            .filter_map(|sc| {
                let rate = sc.id.strip_prefix("fanout-rate-")?.parse().ok()?;
                Some((rate, sc.reference.as_ref()?.median.as_ref()?))
            })
            .collect();
        pts.sort_by_key(|(rate, _)| *rate);
        pts
    }
}

/// The index of the median run by `metric`, among the runs that have it (a failed run
/// has none); the lower middle for an even count.
pub fn median_index(runs: &[Run], metric: Metric) -> Option<usize> {
    let mut found: Vec<(usize, f64)> = runs
        .iter()
        .enumerate()
        .filter_map(|(i, run)| Some((i, metric.of(run.report()?)?)))
        .filter(|(_, v)| v.is_finite())
        .collect();
    found.sort_by(|a, b| a.1.total_cmp(&b.1));
    found
        .get(found.len().saturating_sub(1) / 2)
        .map(|&(i, _)| i)
}

/// The scenarios of earlier results with those of `new` put in their place (by id) or
/// added at the end.
pub fn merge(old: Option<Results>, new: Vec<ScenarioResult>) -> Vec<ScenarioResult> {
    let mut all = old.map_or_else(Vec::new, |o| o.scenarios);
    for sc in new {
        match all.iter_mut().find(|o| o.id == sc.id) {
            Some(slot) => *slot = sc,
            None => all.push(sc),
        }
    }
    all
}

/// Facts about this machine, `unknown` (or `None`) where it cannot tell.
pub fn machine() -> Machine {
    const UNKNOWN: &str = "unknown";
    let proc_line = |file: &str, key: &str| -> Option<String> {
        let text = fs::read_to_string(file).ok()?;
        let line = text.lines().find(|l| l.starts_with(key))?;
        Some(line[key.len()..].to_owned())
    };
    let cpu = proc_line("/proc/cpuinfo", "model name")
        .and_then(|rest| Some(rest.split_once(':')?.1.trim().to_owned()))
        .unwrap_or_else(|| UNKNOWN.to_owned());
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| UNKNOWN.to_owned(), |k| k.trim().to_owned());
    let mem_kib = proc_line("/proc/meminfo", "MemTotal:")
        .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok());
    let output = |cmd: &str, args: &[&str]| -> Option<String> {
        let o = Command::new(cmd).args(args).output().ok()?;
        o.status
            .success()
            .then(|| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let or_unknown = |s: Option<String>| s.unwrap_or_else(|| UNKNOWN.to_owned());
    // Without git there is no commit to be dirty against.
    let dirty = output("git", &["status", "--porcelain", "--untracked-files=no"])
        .is_some_and(|s| !s.is_empty());
    Machine {
        cores: std::thread::available_parallelism().ok().map(usize::from),
        cpu,
        kernel,
        memory_gib: mem_kib.map(|k| (k as f64 / 1024.0 / 1024.0 * 10.0).round() / 10.0),
        commit: or_unknown(output("git", &["rev-parse", "--short=12", "HEAD"])),
        dirty,
        rustc: or_unknown(output("rustc", &["--version"])),
        date: or_unknown(output("date", &["-u", "+%Y-%m-%d %H:%M UTC"])),
    }
}
