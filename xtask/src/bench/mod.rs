//! `cargo xtask bench`: builds release binaries, runs the standard benchmark suite (a fresh
//! server on loopback for every run, the load generator against it), and writes
//! `docs/BENCHMARKS.md`, `docs/bench/results.json` and SVG charts.
//!
//! `--quick` runs a tiny version of every scenario once (about a minute, a smoke check that
//! asserts nothing about speed) and writes to `target/bench-quick/` instead of `docs/`.
//!
//! The generated part of `BENCHMARKS.md` sits between two marker comments; text outside
//! them (the optimisation log) is kept as it is.
//!
//! - [`suite`]: the scenarios and the targets the report checks;
//! - [`server`]: starting and stopping a server, its CPU time;
//! - [`redis`]: the private `redis-server` of the Redis pub/sub reference, which the
//!   open-loop fan-out scenarios run beside ours (installed from the distribution's
//!   packages when missing, [`crate::setup::ensure_redis_server`]);
//! - [`loadgen`]: running the load generator, reading its report;
//! - [`results`]: `results.json`, medians, merging partial runs;
//! - [`markdown`] and [`svg`]: the report.

mod loadgen;
mod markdown;
pub(crate) mod redis;
mod results;
mod server;
mod suite;
mod svg;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};
use simpletextim_loadgen::report::Report;

use redis::{RedisBin, RedisServer};
use results::{Reference, Results, Run, ScenarioResult};
use server::{Limits, Server, ServerBin};
use suite::Scenario;

/// Options of `cargo xtask bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// A tiny suite, each scenario once, written to target/bench-quick/ (smoke check).
    #[arg(long)]
    quick: bool,
    /// Runs per scenario (the median is reported) [default: 3, or 1 with --quick].
    #[arg(long)]
    runs: Option<usize>,
    /// Only the scenarios whose id contains this text, or one of these texts separated by
    /// commas (`--only fanout-flood,fanout-ws`: the fan-out over TCP and over WebSocket).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Skip `cargo build --release` (use the binaries already in target/release).
    #[arg(long)]
    no_build: bool,
    /// Run nothing: write the report and charts again from results.json (after a change
    /// to the report's generator).
    #[arg(long)]
    report_only: bool,
}

/// Entry point.
pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let root = workspace_root()?;
    if args.report_only {
        return report_only(&root, args.quick);
    }
    let selected: Vec<Scenario> = suite::suite(args.quick, args.runs)
        .into_iter()
        .filter(|s| args.only.is_empty() || args.only.iter().any(|o| s.id.contains(o.as_str())))
        .collect();
    // Before the build, so that a machine without it (and without apt-get) fails at once.
    let redis = if selected
        .iter()
        .any(|s| s.reference.is_some() || s.cluster.is_some())
    {
        Some(RedisBin::probe(crate::setup::ensure_redis_server()?)?)
    } else {
        None
    };
    if !args.no_build {
        build(&root)?;
    }
    let release = target_dir(&root).join("release");
    let server_bin = ServerBin::probe(release.join("simpletextim-server"))?;
    let loadgen_bin = release.join("simpletextim-loadgen");
    let out_dir = if args.quick {
        target_dir(&root).join("bench-quick")
    } else {
        root.join("docs")
    };
    let work = target_dir(&root).join("bench-work");
    for dir in [&work, &out_dir.join("bench")] {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let json_path = out_dir.join("bench/results.json");
    // Read before the suite runs, so that a file that cannot be merged stops it early.
    let old = if args.only.is_empty() {
        None
    } else {
        Results::load(&json_path)?
    };

    let machine = results::machine();
    let started = Instant::now();
    let mut scenarios = Vec::new();
    let mut n = 0;
    for s in &selected {
        let bins = Bins {
            server: &server_bin,
            redis: redis.as_ref(),
            loadgen: &loadgen_bin,
        };
        scenarios.push(run_scenario(s, &bins, &work, &mut n)?);
    }
    // A partial run updates its scenarios in the last results and keeps the others, and
    // the header of those (machine, date, server): its own scenarios say when they ran.
    let suite_seconds = started.elapsed().as_secs() + old.as_ref().map_or(0, |o| o.suite_seconds);
    let (machine, server_command) = match &old {
        Some(o) => {
            for sc in &mut scenarios {
                sc.measured = Some(machine.describe());
            }
            (o.machine.clone(), o.server_command.clone())
        }
        None => (machine, server_bin.command(Limits::Bench)),
    };
    let doc = Results {
        machine,
        quick: args.quick,
        server_command,
        suite_seconds,
        scenarios: results::merge(old, scenarios),
    };
    let md_path = out_dir.join("BENCHMARKS.md");
    write_report(&doc, &out_dir, &md_path)?;
    eprintln!(
        "wrote {}, {} and the charts in {:.0} s",
        md_path.display(),
        json_path.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `--report-only`: the report and charts of the last results, written again.
fn report_only(root: &Path, quick: bool) -> anyhow::Result<()> {
    let out_dir = if quick {
        target_dir(root).join("bench-quick")
    } else {
        root.join("docs")
    };
    let json_path = out_dir.join("bench/results.json");
    let doc = Results::load(&json_path)?
        .with_context(|| format!("no {} to write the report from", json_path.display()))?;
    let md_path = out_dir.join("BENCHMARKS.md");
    write_report(&doc, &out_dir, &md_path)?;
    eprintln!("wrote {} from {}", md_path.display(), json_path.display());
    Ok(())
}

/// `cargo build --release` of the server and the load generator.
fn build(root: &Path) -> anyhow::Result<()> {
    cargo_build_release(root, &["simpletextim-server", "simpletextim-loadgen"])
}

/// `cargo build --release -p P` of each package `P`.
pub(crate) fn cargo_build_release(root: &Path, packages: &[&str]) -> anyhow::Result<()> {
    let mut args = vec!["build", "--release"];
    for p in packages {
        args.extend(["-p", p]);
    }
    eprintln!("$ cargo {}", args.join(" "));
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(args)
        .current_dir(root)
        .status()
        .context("cannot run cargo")?;
    if !status.success() {
        bail!("cargo build --release failed ({status})");
    }
    Ok(())
}

/// The binaries a suite runs.
#[derive(Debug, Clone, Copy)]
struct Bins<'a> {
    /// Our server.
    server: &'a ServerBin,
    /// The reference server, when a scenario has the Redis reference.
    redis: Option<&'a RedisBin>,
    /// The load generator.
    loadgen: &'a Path,
}

/// Every run of one scenario (`n` counts the runs of the suite) and its median, and those
/// of its reference beside it, if it has one: round 1 runs ours first, round 2 the
/// reference first, and so on, so that neither always runs on a machine the other has just
/// warmed (or left busy). A failed run is recorded as such; only a server that does not
/// start stops the suite.
fn run_scenario(
    s: &Scenario,
    bins: &Bins,
    work: &Path,
    n: &mut usize,
) -> anyhow::Result<ScenarioResult> {
    let (server_bin, loadgen_bin) = (bins.server, bins.loadgen);
    let mut runs = Vec::new();
    let mut reference_runs = Vec::new();
    for k in 0..s.runs {
        *n += 1;
        let reference_first = k % 2 == 1;
        if reference_first {
            reference_runs.extend(run_reference(s, bins, work, k, *n)?);
        }
        let quiet = match &s.quiet {
            Some(args) => {
                eprintln!("== {} (run {} of {}, quiet)", s.id, k + 1, s.runs);
                let name = format!("{n}-quiet");
                Some(match s.cluster {
                    Some(nodes) => run_cluster_once(s, args, bins, nodes)?,
                    None => run_once(s, args, server_bin, loadgen_bin, work, &name)?,
                })
            }
            None => None,
        };
        eprintln!("== {} (run {} of {})", s.id, k + 1, s.runs);
        let run = match s.cluster {
            Some(nodes) => run_cluster_once(s, &s.args, bins, nodes)?,
            None => run_once(s, &s.args, server_bin, loadgen_bin, work, &n.to_string())?,
        };
        runs.push(match (run, quiet) {
            (Run::Done(mut r), Some(Run::Done(q))) => {
                r.quiet = Some(q);
                Run::Done(r)
            }
            (Run::Done(_), Some(Run::Failed { error })) => Run::Failed {
                error: format!("the quiet run failed: {error}"),
            },
            (run, _) => run,
        });
        if !reference_first {
            reference_runs.extend(run_reference(s, bins, work, k, *n)?);
        }
    }
    let median = results::median_index(&runs, s.metric)
        .and_then(|i| runs[i].report())
        .cloned();
    let server_command = match s.cluster {
        Some(nodes) => Some(cluster_command(nodes)),
        None => (s.limits != Limits::Bench).then(|| server_bin.command(s.limits)),
    };
    let reference = match (s.reference_command(), bins.redis) {
        (Some(command), Some(redis)) => Some(Reference {
            name: redis.name(),
            server_command: redis.command(),
            command,
            median: results::median_index(&reference_runs, s.metric)
                .and_then(|i| reference_runs[i].report())
                .cloned(),
            runs: reference_runs,
        }),
        _ => None,
    };
    Ok(ScenarioResult {
        id: s.id.clone(),
        title: s.title.clone(),
        command: s.command(),
        quiet_command: s.quiet_command(),
        server_command,
        measured: None,
        runs,
        median,
        reference,
    })
}

/// Round `k` of the scenario's reference, if it has one: the load generator with its
/// reference arguments against a private `redis-server` of its own (named after run `n`),
/// stopped afterwards whatever happened.
fn run_reference(
    s: &Scenario,
    bins: &Bins,
    work: &Path,
    k: usize,
    n: usize,
) -> anyhow::Result<Option<Run>> {
    let Some(args) = &s.reference else {
        return Ok(None);
    };
    let redis = bins
        .redis
        .context("a scenario with the Redis reference needs redis-server")?;
    eprintln!(
        "== {} (run {} of {}, {})",
        s.id,
        k + 1,
        s.runs,
        redis.name()
    );
    let mut server = RedisServer::start(redis, work, &n.to_string())?;
    let t = Instant::now();
    let report = loadgen::run(bins.loadgen, &server.addr, None, s, args, "lg");
    let wall = t.elapsed().as_secs_f64();
    let cpu = server.cpu_seconds();
    server.stop();
    Ok(Some(finished(s, report, wall, cpu)))
}

/// One run of the load generator with `args` against a fresh server (named `name` in
/// `work`), with the harness's figures (wall time, server CPU) in its report.
fn run_once(
    s: &Scenario,
    args: &[String],
    server_bin: &ServerBin,
    loadgen_bin: &Path,
    work: &Path,
    name: &str,
) -> anyhow::Result<Run> {
    let mut server = Server::start(server_bin, s.limits, work, name)?;
    // A WebSocket scenario's clients connect to the HTTP listener (`GET /ws`).
    let addr = match (s.websocket(), &server.http_addr) {
        (false, _) => server.addr.clone(),
        (true, Some(http)) => http.clone(),
        (true, None) => {
            server.stop();
            bail!("{}: the server has no HTTP listener", s.id);
        }
    };
    let t = Instant::now();
    let report = loadgen::run(loadgen_bin, &addr, Some(server.pid()), s, args, "lg");
    let wall = t.elapsed().as_secs_f64();
    // The server's CPU over the run, to set beside the load generator's own.
    let cpu = server.cpu_seconds();
    server.stop();
    Ok(finished(s, report, wall, cpu))
}

/// The nodes' command line of a cluster scenario, as the report shows it.
fn cluster_command(nodes: usize) -> String {
    format!(
        "{nodes} nodes (cargo xtask cluster's): RUST_LOG={} SIMPLETEXTIM_DATABASE=postgres://… simpletextim-server --listen 127.0.0.1:0 --listen-http off --cluster-redis redis://127.0.0.1:PORT --node-id node-N {}; a private PostgreSQL (fsync off) and a private redis-server",
        server::SERVER_LOG,
        server::SERVER_ARGS.join(" ")
    )
}

/// One run of the load generator with `args` against a fresh cluster of `nodes` nodes (private
/// PostgreSQL and Redis, `migrate`), the clients spread over the nodes; the report gets
/// each node's CPU seconds over the run ([`Report::node_cpu_s`], their sum as the server's),
/// Redis's ([`Report::bus_cpu_s`]) and PostgreSQL's ([`Report::db_cpu_s`]). A server without cluster mode is a failed run
/// saying so (the scenario is skipped, loudly), not a stop of the suite.
fn run_cluster_once(
    s: &Scenario,
    args: &[String],
    bins: &Bins,
    nodes: usize,
) -> anyhow::Result<Run> {
    if let Err(e) = crate::cluster::require_cluster_support(&bins.server.path) {
        eprintln!("{}: SKIPPED: {e:#}", s.id);
        return Ok(Run::Failed {
            error: format!("skipped: {e:#}"),
        });
    }
    let redis = bins
        .redis
        .context("a cluster scenario needs redis-server")?;
    let config = crate::cluster::ClusterConfig {
        server: &bins.server.path,
        redis,
        nodes: (0..nodes)
            .map(|_| crate::cluster::NodeSpec {
                listen: "127.0.0.1:0".to_owned(),
                http: None,
            })
            .collect(),
        extra_args: server::SERVER_ARGS.iter().map(|&a| a.to_owned()).collect(),
        log_filter: server::SERVER_LOG,
    };
    let mut cluster = crate::cluster::Cluster::start(&config)?;
    let addrs: Vec<&str> = cluster.nodes.iter().map(|n| n.addr.as_str()).collect();
    let addrs = addrs.join(",");
    let before = cluster.cpu_seconds();
    let t = Instant::now();
    let report = loadgen::run(bins.loadgen, &addrs, None, s, args, "lg");
    let wall = t.elapsed().as_secs_f64();
    let (node_cpu, bus_cpu, db_cpu) = cluster.cpu_seconds().since(&before);
    cluster.stop();
    let total = node_cpu.as_ref().map(|v| v.iter().sum::<f64>());
    Ok(match finished(s, report, wall, total) {
        Run::Done(mut r) => {
            r.node_cpu_s = node_cpu;
            r.bus_cpu_s = bus_cpu;
            r.db_cpu_s = db_cpu;
            Run::Done(r)
        }
        failed => failed,
    })
}

/// A run of the load generator as the results keep it, with the harness's figures (wall
/// time, the server's CPU) in its report.
fn finished(s: &Scenario, report: anyhow::Result<Report>, wall: f64, cpu: Option<f64>) -> Run {
    match report {
        Ok(mut r) => {
            r.wall_s = Some(wall);
            if cpu.is_none() {
                eprintln!("{}: the server's CPU time is unknown (no /proc)", s.id);
            }
            r.server_cpu_s = cpu;
            Run::Done(Box::new(r))
        }
        Err(e) => {
            eprintln!("{e:#}");
            Run::Failed {
                error: format!("{e:#}"),
            }
        }
    }
}

/// Writes `results.json`, the charts and the generated part of `BENCHMARKS.md`.
fn write_report(doc: &Results, out_dir: &Path, md_path: &Path) -> anyhow::Result<()> {
    let write = |path: PathBuf, text: String| {
        fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))
    };
    write(out_dir.join("bench/results.json"), doc.to_json())?;
    write(out_dir.join("bench/latency.svg"), svg::latency_chart(doc))?;
    write(
        out_dir.join("bench/throughput.svg"),
        svg::throughput_chart(doc),
    )?;
    // No report yet: the generated part becomes a new one.
    let old = match fs::read_to_string(md_path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", md_path.display())),
    };
    write(
        md_path.to_owned(),
        markdown::splice(&old, &markdown::markdown(doc)),
    )
}

/// Cargo's target directory: `CARGO_TARGET_DIR` (relative to the workspace root), else
/// `target` in the root.
pub(crate) fn target_dir(root: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => root.join(dir),
        _ => root.join("target"),
    }
}

/// The workspace root: the parent of xtask's own directory.
pub(crate) fn workspace_root() -> anyhow::Result<PathBuf> {
    let dir = std::env::var("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .or_else(|_| std::env::current_dir())?;
    Ok(dir
        .parent()
        .filter(|p| p.join("Cargo.toml").exists())
        .map_or(dir.clone(), Path::to_path_buf))
}

#[cfg(test)]
mod tests;
