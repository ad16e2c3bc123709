//! `cargo xtask cluster`: a cluster of server nodes on this machine, to try cluster mode
//! (issue 13) by hand. Also the cluster the `cluster` benchmark scenario runs on
//! ([`Cluster::start`]).
//!
//! Builds the server in release, starts a private PostgreSQL ([`pg`]) and a private
//! `redis-server` (the bench's, `bench/redis.rs`) in a new temporary directory, runs
//! `simpletextim-server migrate`, then starts `--nodes N` nodes on 127.0.0.1:BASE,
//! BASE+1, … (`--base-port`, default 7001), each with `--cluster-redis`, its own
//! `--node-id` and the database in `SIMPLETEXTIM_DATABASE` (the environment variable of
//! `--database`, so that the password stays out of the process list). It prints how to
//! connect clients and waits for Ctrl-C (or SIGTERM), then stops the nodes, Redis and
//! PostgreSQL in that order and removes the directory.
//!
//! A watchdog (`sh`, in a process group of its own) stops everything and removes the
//! directory if this process dies without doing so (SIGKILL, a panic that aborts), so no
//! server is left behind. The servers run in process groups of their own too: a Ctrl-C in
//! the terminal reaches only this process, which stops them in order.
//!
//! A server without `--cluster-redis` (before the `cluster` branch is merged) is refused
//! with a clear error, before anything starts.

mod pg;

use std::fs;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::bench::redis::{RedisBin, RedisServer};
pub use pg::Postgres;

/// How long a node may take to log its address.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a node may take to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a node may take to subscribe to the bus after it listens.
const BUS_WAIT: Duration = Duration::from_secs(10);
/// How long `migrate` may take.
const MIGRATE_TIMEOUT: Duration = Duration::from_secs(60);

/// Options of `cargo xtask cluster`.
#[derive(Debug, clap::Args)]
pub struct ClusterArgs {
    /// Nodes to start.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=64))]
    nodes: u16,
    /// Framed TCP port of the first node; node i (from 0) listens on 127.0.0.1:BASE+i.
    #[arg(long, default_value_t = 7001)]
    base_port: u16,
    /// HTTP port (web client, WebSocket) of the first node, node i on HTTP_BASE+i; 0 turns
    /// HTTP off.
    #[arg(long, default_value_t = 8001)]
    http_base_port: u16,
    /// Skip `cargo build --release -p simpletextim-server` (use the binary already built).
    #[arg(long)]
    no_build: bool,
}

/// Entry point of `cargo xtask cluster`.
pub fn run(args: &ClusterArgs) -> anyhow::Result<()> {
    let root = crate::bench::workspace_root()?;
    let release = crate::bench::target_dir(&root).join("release");
    if !args.no_build {
        crate::bench::cargo_build_release(&root, &["simpletextim-server"])?;
    }
    let server = release.join("simpletextim-server");
    require_cluster_support(&server)?;
    let redis = RedisBin::probe(crate::setup::ensure_redis_server()?)?;

    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop))
            .context("cannot handle Ctrl-C (SIGINT)")?;
    }

    let n = usize::from(args.nodes);
    let port = |base: u16, i: usize| -> anyhow::Result<u16> {
        u16::try_from(usize::from(base) + i).context("--base-port + --nodes passes 65535")
    };
    let mut nodes = Vec::with_capacity(n);
    for i in 0..n {
        let listen = format!("127.0.0.1:{}", port(args.base_port, i)?);
        let http = if args.http_base_port == 0 {
            None
        } else {
            Some(format!("127.0.0.1:{}", port(args.http_base_port, i)?))
        };
        nodes.push(NodeSpec { listen, http });
    }
    let config = ClusterConfig {
        server: &server,
        redis: &redis,
        nodes,
        extra_args: Vec::new(),
        log_filter: "info",
    };
    eprintln!("starting PostgreSQL, Redis and {n} nodes…");
    let mut cluster = Cluster::start(&config)?;
    print_instructions(&cluster);

    let outcome = loop {
        if stop.load(Ordering::Relaxed) {
            eprintln!("\nstopping the cluster…");
            break Ok(());
        }
        if let Some((id, status, log)) = cluster.exited_node() {
            break Err(anyhow::anyhow!(
                "{id} exited ({status}); the end of its log:\n{}",
                tail(&log, 30)
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    cluster.stop();
    eprintln!("stopped; removed {}", cluster.work.display());
    outcome
}

fn print_instructions(cluster: &Cluster) {
    let mut out = format!(
        "\ncluster of {} nodes up (files in {}):\n",
        cluster.nodes.len(),
        cluster.work.display()
    );
    for node in &cluster.nodes {
        out += &format!(
            "  {:<8} {:<16} {:<24} log {}\n",
            node.id,
            node.addr,
            node.http_addr
                .as_ref()
                .map_or_else(|| "(no HTTP)".to_owned(), |h| format!("http://{h}/")),
            node.log.display()
        );
    }
    out += &format!("  redis    redis://{}\n", cluster.redis_addr());
    out += &format!("  postgres {}\n", cluster.database_url());
    out += "\nconnect clients to any nodes, e.g. in two other terminals:\n";
    let users = ["alice", "bob", "carol", "dave"];
    for (node, user) in cluster.nodes.iter().zip(users).take(2) {
        out += &format!(
            "  cargo run --release -p simpletextim-tui -- --server {} --user {user}\n",
            node.addr
        );
    }
    if let Some(h) = cluster.nodes.first().and_then(|n| n.http_addr.as_ref()) {
        out += &format!("or open http://{h}/ in a browser.\n");
    }
    out += "\nCtrl-C stops every node, Redis and PostgreSQL, and removes the files.\n";
    print!("{out}");
    let _ = std::io::stdout().flush();
}

/// The last `n` lines of the file at `path`.
fn tail(path: &Path, n: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Fails, saying why, unless the server binary has `--cluster-redis` (cluster mode).
pub fn require_cluster_support(server: &Path) -> anyhow::Result<()> {
    let out = Command::new(server)
        .arg("--help")
        .output()
        .with_context(|| format!("cannot run {} --help", server.display()))?;
    if !String::from_utf8_lossy(&out.stdout).contains("--cluster-redis") {
        bail!(
            "{} has no --cluster-redis option: this server cannot run as a cluster node \
             (cluster mode, issue 13, comes with the `cluster` branch; build a server that \
             has it)",
            server.display()
        );
    }
    Ok(())
}

/// Sends `SIG<sig>` to `pid` with `kill`; failures (it has exited) are ignored.
pub fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Where one node listens.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    /// `--listen` (`127.0.0.1:0` for a free port).
    pub listen: String,
    /// `--listen-http`, or `None` for `off`.
    pub http: Option<String>,
}

/// What [`Cluster::start`] starts.
#[derive(Debug)]
pub struct ClusterConfig<'a> {
    /// The server binary (with `--cluster-redis`).
    pub server: &'a Path,
    /// The `redis-server` binary.
    pub redis: &'a RedisBin,
    /// One per node.
    pub nodes: Vec<NodeSpec>,
    /// More options for every node (the benchmark's limits).
    pub extra_args: Vec<String>,
    /// `RUST_LOG` of the nodes.
    pub log_filter: &'a str,
}

/// One running node.
#[derive(Debug)]
pub struct NodeProc {
    child: Child,
    /// Its `--node-id`: `node-1`, `node-2`, …
    pub id: String,
    /// Its framed TCP address, from its log.
    pub addr: String,
    /// Its HTTP address, from its log, when it serves HTTP.
    pub http_addr: Option<String>,
    /// Its log file.
    pub log: PathBuf,
}

impl NodeProc {
    /// Waits (at most [`BUS_WAIT`]) for the node to log that it has subscribed to the bus:
    /// until then, it answers messages with `fail 503`. A node whose log never says so (a
    /// quieter `RUST_LOG`) is used all the same, with a note.
    fn wait_for_bus(&self) {
        let until = Instant::now() + BUS_WAIT;
        while Instant::now() < until {
            let text = fs::read_to_string(&self.log).unwrap_or_default();
            if text.contains("bus subscribed") {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!(
            "{}: no `cluster bus subscribed` in its log within {BUS_WAIT:?}; going on",
            self.id
        );
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// PostgreSQL, Redis and the nodes, in a work directory of their own; stopped (and the
/// directory removed) by [`Cluster::stop`] or on drop.
#[derive(Debug)]
pub struct Cluster {
    /// The work directory.
    pub work: PathBuf,
    /// The nodes, in order.
    pub nodes: Vec<NodeProc>,
    redis: Option<RedisServer>,
    pg: Option<Postgres>,
    watchdog: Option<Child>,
    stopped: bool,
}

impl Cluster {
    /// Starts PostgreSQL, Redis, `migrate`, then the nodes (each waited for).
    pub fn start(config: &ClusterConfig) -> anyhow::Result<Cluster> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        // As root, under /tmp whatever TMPDIR says: the postgres user must reach it.
        let base = if crate::setup::is_root() {
            PathBuf::from("/tmp")
        } else {
            std::env::temp_dir()
        };
        let work = base.join(format!(
            "simpletextim-cluster-{}-{nanos:x}",
            std::process::id()
        ));
        fs::create_dir_all(&work).with_context(|| format!("cannot create {}", work.display()))?;
        let mut cluster = Cluster {
            watchdog: None,
            work,
            nodes: Vec::new(),
            redis: None,
            pg: None,
            stopped: false,
        };
        // On error, `cluster` is dropped: what started is stopped.
        cluster.watchdog = Some(spawn_watchdog(&cluster.work)?);
        let pg = Postgres::start(&cluster.work.join("postgres"))?;
        if let Some(pid) = pg.pid() {
            cluster.register(pid, "INT")?;
        }
        cluster.pg = Some(pg);
        let redis = RedisServer::start(config.redis, &cluster.work, "bus")?;
        cluster.register(redis.pid(), "TERM")?;
        cluster.redis = Some(redis);
        cluster.migrate(config.server)?;
        for (i, spec) in config.nodes.iter().enumerate() {
            let node = cluster.start_node(config, i, spec)?;
            cluster.nodes.push(node);
        }
        Ok(cluster)
    }

    /// `postgres://postgres:PASSWORD@127.0.0.1:PORT/postgres`.
    pub fn database_url(&self) -> String {
        self.pg.as_ref().map(Postgres::url).unwrap_or_default()
    }

    /// Redis's `127.0.0.1:PORT`.
    pub fn redis_addr(&self) -> String {
        self.redis
            .as_ref()
            .map(|r| r.addr.clone())
            .unwrap_or_default()
    }

    /// User + system CPU seconds so far of each node (in order), of `redis-server` and of
    /// PostgreSQL (the postmaster, its backends, and the backends that have exited); `None`
    /// where `/proc` cannot tell.
    pub fn cpu_seconds(&self) -> ClusterCpu {
        ClusterCpu {
            nodes: self.nodes.iter().map(|n| cpu_seconds(n.pid())).collect(),
            redis: self.redis.as_ref().and_then(RedisServer::cpu_seconds),
            postgres: self
                .pg
                .as_ref()
                .and_then(Postgres::pid)
                .and_then(process_tree_cpu_seconds),
        }
    }

    /// Appends `SIG PID` to the watchdog's list.
    fn register(&self, pid: u32, sig: &str) -> anyhow::Result<()> {
        let path = self.work.join("pids");
        let mut f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        writeln!(f, "{sig} {pid}").with_context(|| format!("cannot write {}", path.display()))
    }

    /// `simpletextim-server migrate` on the database.
    fn migrate(&self, server: &Path) -> anyhow::Result<()> {
        let out_path = self.work.join("migrate.log");
        let out = fs::File::create(&out_path)
            .with_context(|| format!("cannot create {}", out_path.display()))?;
        let err = out.try_clone().context("cannot open the log twice")?;
        let mut child = Command::new(server)
            .arg("migrate")
            .env("SIMPLETEXTIM_DATABASE", self.database_url())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("cannot run {} migrate", server.display()))?;
        let until = Instant::now() + MIGRATE_TIMEOUT;
        let Some(status) = crate::wait_or_kill(&mut child, until)? else {
            bail!("migrate did not finish within {MIGRATE_TIMEOUT:?}");
        };
        if !status.success() {
            bail!(
                "migrate failed ({status}):\n{}",
                fs::read_to_string(&out_path).unwrap_or_default()
            );
        }
        Ok(())
    }

    /// Starts node `i` and waits for its `listening on` line.
    fn start_node(
        &self,
        config: &ClusterConfig,
        i: usize,
        spec: &NodeSpec,
    ) -> anyhow::Result<NodeProc> {
        let id = format!("node-{}", i + 1);
        let log = self.work.join(format!("{id}.log"));
        let out =
            fs::File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
        let err = out.try_clone().context("cannot open the log twice")?;
        let redis_url = format!("redis://{}", self.redis_addr());
        let child = Command::new(config.server)
            .args(["--listen", &spec.listen])
            .args(["--listen-http", spec.http.as_deref().unwrap_or("off")])
            .args(["--cluster-redis", &redis_url])
            .args(["--node-id", &id])
            .args(&config.extra_args)
            .env("SIMPLETEXTIM_DATABASE", self.database_url())
            .env("RUST_LOG", config.log_filter)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            // A Ctrl-C in the terminal reaches only xtask, which stops the nodes in order.
            .process_group(0)
            .spawn()
            .with_context(|| format!("cannot start {}", config.server.display()))?;
        let mut node = NodeProc {
            child,
            id,
            addr: String::new(),
            http_addr: None,
            log,
        };
        self.register(node.pid(), "TERM")?;
        let until = Instant::now() + START_TIMEOUT;
        loop {
            let text = fs::read_to_string(&node.log).unwrap_or_default();
            if let Some(addr) = addr_after(&text, "listening on ") {
                node.addr = addr;
                node.http_addr = addr_after(&text, "HTTP on ");
                node.wait_for_bus();
                return Ok(node);
            }
            if let Some(status) = node.child.try_wait()? {
                bail!("{} exited at start ({status}):\n{text}", node.id);
            }
            if Instant::now() > until {
                stop_child(&mut node.child);
                bail!(
                    "{} did not log `listening on` within {START_TIMEOUT:?}:\n{text}",
                    node.id
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The first node that has exited: its id, exit status and log.
    pub fn exited_node(&mut self) -> Option<(String, std::process::ExitStatus, PathBuf)> {
        self.nodes
            .iter_mut()
            .find_map(|n| match n.child.try_wait() {
                Ok(Some(status)) => Some((n.id.clone(), status, n.log.clone())),
                _ => None,
            })
    }

    /// Stops the nodes (SIGTERM, all at once, then each waited for), Redis, PostgreSQL;
    /// ends the watchdog; removes the work directory. Done once, also by `drop`.
    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        for node in &self.nodes {
            signal(node.pid(), "TERM");
        }
        for node in &mut self.nodes {
            stop_child(&mut node.child);
        }
        if let Some(mut r) = self.redis.take() {
            r.stop();
        }
        if let Some(mut pg) = self.pg.take() {
            pg.stop();
        }
        if let Some(mut w) = self.watchdog.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
        if let Err(e) = fs::remove_dir_all(&self.work) {
            eprintln!("cannot remove {}: {e}", self.work.display());
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// SIGTERM, up to [`STOP_TIMEOUT`] to exit, then SIGKILL.
fn stop_child(child: &mut Child) {
    if let Ok(None) = child.try_wait() {
        signal(child.id(), "TERM");
        let until = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < until {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Ok(None) = child.try_wait() {
            eprintln!(
                "process {} did not exit within {STOP_TIMEOUT:?} of SIGTERM; killing it",
                child.id()
            );
            let _ = child.kill();
        }
    }
    let _ = child.wait();
}

/// CPU seconds of the parts of a cluster, [`Cluster::cpu_seconds`].
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterCpu {
    /// Each node's, in order.
    pub nodes: Vec<Option<f64>>,
    /// `redis-server`'s.
    pub redis: Option<f64>,
    /// PostgreSQL's, its backends included.
    pub postgres: Option<f64>,
}

impl ClusterCpu {
    /// What was spent between `before` and `self`, part by part: (each node, Redis,
    /// PostgreSQL); the nodes' `None` unless every node's is known.
    pub fn since(&self, before: &ClusterCpu) -> (Option<Vec<f64>>, Option<f64>, Option<f64>) {
        let nodes = self
            .nodes
            .iter()
            .zip(&before.nodes)
            .map(|(a, b)| Some((*a)? - (*b)?))
            .collect();
        let diff = |a: Option<f64>, b: Option<f64>| Some(a? - b?);
        (
            nodes,
            diff(self.redis, before.redis),
            diff(self.postgres, before.postgres),
        )
    }
}

/// CPU seconds of process `pid` (with its waited-for children) and of its children still
/// running: PostgreSQL's postmaster and backends.
fn process_tree_cpu_seconds(pid: u32) -> Option<f64> {
    let own = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut total = simpletextim_loadgen::stats::parse_cpu_seconds(&own, true)?;
    for entry in fs::read_dir("/proc").ok()?.flatten() {
        let Some(child) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue; // gone meanwhile
        };
        if parent_pid(&stat) == Some(pid) {
            total += simpletextim_loadgen::stats::parse_cpu_seconds(&stat, false).unwrap_or(0.0);
        }
    }
    Some(total)
}

/// The parent's pid in a `/proc/PID/stat` text (field 4).
fn parent_pid(stat: &str) -> Option<u32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// User + system CPU seconds of process `pid` so far; `None` where `/proc` cannot tell.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    simpletextim_loadgen::stats::parse_cpu_seconds(&stat, false)
}

/// The address after `marker` in a log: `… listening on 127.0.0.1:7001`, `… HTTP on
/// 127.0.0.1:8001: the web client at …`.
fn addr_after(log: &str, marker: &str) -> Option<String> {
    let at = log.find(marker)? + marker.len();
    let addr: String = log[at..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '[' | ']'))
        .collect();
    let addr = addr.trim_end_matches(':');
    (!addr.is_empty()).then(|| addr.to_owned())
}

/// Once this process is gone, signals every process listed in `WORK/pids` (`SIG PID` per
/// line), SIGKILLs those still there 10 s later, and removes `WORK`.
fn spawn_watchdog(work: &Path) -> anyhow::Result<Child> {
    const SCRIPT: &str = r#"
        while kill -0 "$1" 2>/dev/null; do sleep 0.5; done
        if [ -f "$2/pids" ]; then
            while read -r sig pid; do kill -"$sig" "$pid" 2>/dev/null; done < "$2/pids"
            i=0
            while [ "$i" -lt 100 ]; do
                alive=0
                while read -r sig pid; do kill -0 "$pid" 2>/dev/null && alive=1; done < "$2/pids"
                [ "$alive" = 0 ] && break
                sleep 0.1; i=$((i+1))
            done
            while read -r sig pid; do kill -KILL "$pid" 2>/dev/null; done < "$2/pids"
        fi
        rm -rf "$2"
    "#;
    Command::new("sh")
        .arg("-c")
        .arg(SCRIPT)
        .arg("cluster-watchdog")
        .arg(std::process::id().to_string())
        .arg(work)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .context("cannot start the watchdog")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_parent_pid() {
        let stat = "4242 (postgres: wal writer) S 4200 4200 4200 0 -1 4194368 100 0 0 0 7 3 0 0";
        assert_eq!(parent_pid(stat), Some(4200));
        assert_eq!(parent_pid("4242 (x"), None);
    }

    #[test]
    fn reads_addresses_from_the_log() {
        let log = "2026-12-01T16:00:00Z  INFO simpletextim_server: HTTP on 127.0.0.1:8001: the web client at http://127.0.0.1:8001/, WebSocket at /ws\n\
                   2026-12-01T16:00:00Z  INFO simpletextim_server: listening on 127.0.0.1:7001\n";
        assert_eq!(
            addr_after(log, "listening on ").as_deref(),
            Some("127.0.0.1:7001")
        );
        assert_eq!(
            addr_after(log, "HTTP on ").as_deref(),
            Some("127.0.0.1:8001")
        );
        assert_eq!(addr_after("starting", "listening on "), None);
    }

    /// A binary without `--cluster-redis` is refused, naming the option.
    #[test]
    fn refuses_a_server_without_cluster_mode() {
        let err = require_cluster_support(Path::new("/bin/echo"))
            .expect_err("echo has no --cluster-redis")
            .to_string();
        assert!(err.contains("has no --cluster-redis"), "{err}");
        assert!(require_cluster_support(Path::new("/nonexistent/server")).is_err());
    }

    /// PostgreSQL and Redis start (no nodes: that needs a server with cluster mode), the
    /// database answers, and stop removes everything.
    #[test]
    fn starts_and_stops_postgres_and_redis() {
        let redis = RedisBin::probe(
            crate::setup::find_redis_server().expect(
                "redis-server is not installed: run the tests with `cargo xtask test`, which installs it",
            ),
        )
        .expect("redis-server --version runs");
        assert!(
            crate::setup::find_postgres_bindir().is_some(),
            "PostgreSQL is not installed: run the tests with `cargo xtask test`, which installs it"
        );
        let config = ClusterConfig {
            server: Path::new("/bin/true"),
            redis: &redis,
            nodes: Vec::new(),
            extra_args: Vec::new(),
            log_filter: "info",
        };
        // `/bin/true migrate` succeeds: the migration itself is the server's to test.
        let mut cluster = Cluster::start(&config).expect("the cluster starts");
        let url = cluster.database_url();
        assert!(url.starts_with("postgres://postgres:"), "{url}");
        let cpu = cluster.cpu_seconds();
        assert!(cpu.nodes.is_empty());
        assert!(cpu.redis.is_some());
        assert!(cpu.postgres.is_some_and(|s| s > 0.0), "{cpu:?}");
        let (nodes, redis, pg) = cpu.since(&cpu);
        assert_eq!((nodes, redis, pg), (Some(vec![]), Some(0.0), Some(0.0)));
        let pg_pid = cluster
            .pg
            .as_ref()
            .and_then(Postgres::pid)
            .expect("running");
        let redis_pid = cluster
            .redis
            .as_ref()
            .map(RedisServer::pid)
            .expect("running");
        let pids = fs::read_to_string(cluster.work.join("pids")).expect("the pid list");
        assert_eq!(pids, format!("INT {pg_pid}\nTERM {redis_pid}\n"));
        let work = cluster.work.clone();
        cluster.stop();
        assert!(!work.exists());
        assert!(cpu_seconds(pg_pid).is_none(), "postgres is gone");
        assert!(cpu_seconds(redis_pid).is_none(), "redis-server is gone");
    }
}
