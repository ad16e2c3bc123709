use std::path::Path;

use simpletextim_loadgen::report::Report;
use simpletextim_loadgen::stats::Summary;

use super::markdown::{BEGIN, END, markdown, ms, si, splice};
use super::results::{Machine, Reference, Results, Run, ScenarioResult, median_index, merge};
use super::suite::{Metric, suite};
use super::svg::{latency_chart, throughput_chart};

/// The committed `docs/` files.
fn committed(path: &str) -> String {
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs");
    std::fs::read_to_string(docs.join(path)).unwrap()
}

/// The committed report (`docs/BENCHMARKS.md` between the markers, `docs/bench/*.svg`)
/// is what the generator makes of the committed `docs/bench/results.json`, byte for byte:
/// any change to the generator that changes the report shows here. The text outside the
/// markers is hand-written and not compared.
#[test]
fn committed_report_is_regenerated_exactly() {
    let doc = Results::parse(&committed("bench/results.json")).unwrap();
    let md = committed("BENCHMARKS.md");
    let b = md.find(BEGIN).unwrap() + BEGIN.len() + 1;
    let e = md.find(END).unwrap();
    assert_eq!(markdown(&doc), md[b..e]);
    assert_eq!(latency_chart(&doc), committed("bench/latency.svg"));
    assert_eq!(throughput_chart(&doc), committed("bench/throughput.svg"));
}

/// The typed results hold every figure of the committed file: written back, it is the
/// same file, byte for byte (so `--only` merges lose nothing).
#[test]
fn committed_results_read_and_write_back_unchanged() {
    let text = committed("bench/results.json");
    let back = Results::parse(&text).unwrap().to_json();
    // Line by line: the first difference is the readable failure.
    for (n, (a, b)) in back.lines().zip(text.lines()).enumerate() {
        assert_eq!(a, b, "line {}", n + 1);
    }
    assert_eq!(back, text);
}

fn run(dps: f64, p99: u64) -> Report {
    Report {
        workload: "fanout".into(),
        clients: 1000,
        deliveries_per_s: dps,
        messages_per_s: dps / 1000.0,
        delivered: 2_000_000,
        latency_us: Summary {
            count: 10,
            p50: 1000,
            p90: 2000,
            p99,
            p999: 9000,
            max: 12000,
            mean: 1500,
        },
        ..Report::default()
    }
}

fn done(dps: f64, p99: u64) -> Run {
    Run::Done(Box::new(run(dps, p99)))
}

fn scenario(id: &str, title: &str, runs: Vec<Run>, median: Option<Report>) -> ScenarioResult {
    ScenarioResult {
        id: id.into(),
        title: title.into(),
        command: format!("simpletextim-loadgen {id}"),
        quiet_command: None,
        server_command: None,
        measured: None,
        runs,
        median,
        reference: None,
    }
}

fn results(scenarios: Vec<ScenarioResult>) -> Results {
    Results {
        machine: Machine {
            cores: Some(2),
            cpu: "Test CPU".into(),
            kernel: "6.1".into(),
            memory_gib: Some(24.0),
            commit: "abc".into(),
            dirty: false,
            rustc: "rustc 1.90".into(),
            date: "2026-11-26 17:00 UTC".into(),
        },
        quick: false,
        server_command: "simpletextim-server --listen 127.0.0.1:0 --insecure-fast-hash".into(),
        suite_seconds: 42,
        scenarios,
    }
}

#[test]
fn median_picks_the_middle_run() {
    let runs = vec![done(3e6, 5), done(1e6, 9), done(2e6, 7)];
    assert_eq!(median_index(&runs, Metric::DeliveriesPerS), Some(2));
    assert_eq!(median_index(&runs, Metric::P99), Some(2));
    // A failed run (no figures) is left out, and so is one without the metric.
    let failed = Run::Failed { error: "x".into() };
    let runs = vec![done(3e6, 5), failed, done(2e6, 7)];
    assert_eq!(median_index(&runs, Metric::DeliveriesPerS), Some(2));
    assert_eq!(median_index(&runs, Metric::BytesPerConn), None);
    assert_eq!(median_index(&[], Metric::P99), None);
}

#[test]
fn partial_runs_merge_into_earlier_results() {
    let one = |id: &str, dps: f64| scenario(id, id, vec![done(dps, 1)], Some(run(dps, 1)));
    let old = results(vec![one("a", 1.0), one("b", 1.0)]);
    let merged = merge(Some(old), vec![one("b", 2.0), one("c", 2.0)]);
    assert_eq!(merged, vec![one("a", 1.0), one("b", 2.0), one("c", 2.0)]);
    assert_eq!(merge(None, vec![one("x", 1.0)]), vec![one("x", 1.0)]);
}

#[test]
fn failed_runs_and_missing_figures_read_back() {
    let failed = Run::Failed {
        error: "lg: the load generator failed".into(),
    };
    let mut doc = results(vec![scenario("conns", "conns", vec![failed], None)]);
    doc.machine.cores = None;
    let text = doc.to_json();
    assert!(
        text.contains(r#""error": "lg: the load generator failed""#),
        "{text}"
    );
    assert!(text.contains(r#""median": null"#), "{text}");
    assert_eq!(Results::parse(&text).unwrap(), doc);
    assert!(Results::parse("not json").is_err());
    // A report with an error of the sender is still a report.
    let mut r = run(1.0, 1);
    r.send_error = Some("x".into());
    let back: Run = serde_json::from_str(&r.to_json_line()).unwrap();
    assert_eq!(back, Run::Done(Box::new(r)));
}

#[test]
fn splice_keeps_hand_written_text() {
    let first = splice("", "A\n");
    assert_eq!(first, format!("# Benchmarks\n\n{BEGIN}\nA\n{END}\n"));
    let edited =
        format!("# Benchmarks\n\nIntro.\n\n{BEGIN}\nA\n{END}\n\n## Optimisation log\n\nB.\n");
    assert_eq!(
        splice(&edited, "C\n"),
        format!("# Benchmarks\n\nIntro.\n\n{BEGIN}\nC\n{END}\n\n## Optimisation log\n\nB.\n")
    );
    assert_eq!(
        splice("# Old\n", "D\n"),
        format!("# Old\n\n{BEGIN}\nD\n{END}\n")
    );
}

#[test]
fn numbers_read_well() {
    assert_eq!(si(3_512_345.0), "3.51 M");
    assert_eq!(si(45_678.0), "45.7 k");
    assert_eq!(si(512.4), "512");
    assert_eq!(si(0.5), "0.50");
    assert_eq!(ms(10_500), "10.50");
    assert_eq!(ms(None), "–");
}

#[test]
fn report_has_targets_tables_and_commands() {
    let doc = results(vec![
        scenario(
            "fanout-flood",
            "fanout flood",
            vec![done(3.6e6, 5000)],
            Some(run(3.6e6, 5000)),
        ),
        scenario(
            "fanout-rate-200",
            "open",
            vec![done(2e5, 12_000)],
            Some(run(2e5, 12_000)),
        ),
    ]);
    let md = markdown(&doc);
    let has = |line: &str| assert!(md.contains(line), "{line} not in:\n{md}");
    has("on 2 cores (Test CPU), 24.0 GiB, Linux 6.1, commit `abc`");
    has("| fanout flood | ≥ 3.5 M deliveries/s, none lost | 3.60 M deliveries/s, 0 lost | yes |");
    has("| open | p99 ≤ 10 ms | p99 12.00 ms | **no** |");
    // Not run: no figure, no verdict.
    has("| presence | chat p99 ≤ 50 ms, every view correct | – | – |");
    has(
        "| 200 | 200.0 k | 2000000 | 0 | 1.00 | 2.00 | 12.00 | 9.00 | 12.00 | 12.00 | – / – | – / – |",
    );
    has("| fanout-flood | `simpletextim-loadgen fanout-flood` | 1 |");
    assert!(latency_chart(&doc).contains("<polyline"));
    // No reference ran: no section or line for it.
    assert!(!md.contains("### Against"), "{md}");
    assert!(!latency_chart(&doc).contains("Redis"));
}

/// Every open-loop fan-out scenario and `presence-chat`, and only those, run
/// `redis-fanout` with the same arguments beside them.
#[test]
fn open_loop_scenarios_have_the_redis_reference() {
    for quick in [false, true] {
        for s in suite(quick, None) {
            let open_loop = s.id.starts_with("fanout-rate-") || s.id == "presence-chat";
            assert_eq!(s.reference.is_some(), open_loop, "{}", s.id);
            if let Some(args) = &s.reference {
                assert_eq!(args[0], "redis-fanout");
                assert_eq!(args[1..], s.args[1..]);
                assert!(s.reference_command().unwrap().ends_with(&args.join(" ")));
            }
        }
    }
}

#[test]
fn reference_shows_beside_ours_and_joins_the_target() {
    let redis = |p99: u64| {
        let mut r = run(1.9e5, p99);
        r.workload = "redis-fanout".into();
        r.server_cpu_s = Some(1.5);
        r
    };
    let with_reference = |ours: u64, theirs: u64| {
        let mut sc = scenario(
            "fanout-rate-200",
            "open",
            vec![done(2e5, ours)],
            Some(run(2e5, ours)),
        );
        sc.reference = Some(Reference {
            name: "Redis 7.0.15 pub/sub".into(),
            server_command: "redis-server --port PORT".into(),
            command: "simpletextim-loadgen redis-fanout".into(),
            runs: vec![
                Run::Done(Box::new(redis(theirs))),
                Run::Failed { error: "x".into() },
            ],
            median: Some(redis(theirs)),
        });
        results(vec![sc])
    };
    let doc = with_reference(9000, 8000);
    let md = markdown(&doc);
    let has = |line: &str| assert!(md.contains(line), "{line} not in:\n{md}");
    has(
        "| open | p99 ≤ 10 ms, and not above Redis 7.0.15 pub/sub's p99 in the same run | p99 9.00 ms; Redis 7.0.15 pub/sub p99 8.00 ms | **no** |",
    );
    has("### Against Redis 7.0.15 pub/sub (open loop, the same suite)");
    has("(`redis-server --port PORT`)");
    has(
        "| open | 1.00 / 9.00 / 12.00 | 1.00 / 8.00 / 12.00 | **no** | 200.0 k / 190.0 k | 0 / 0 | 9.00; 8.00 | – / 1.5 |",
    );
    has(
        "| fanout-rate-200 | `simpletextim-loadgen fanout-rate-200`, beside `simpletextim-loadgen redis-fanout` against `redis-server --port PORT` (Redis 7.0.15 pub/sub, 2 runs) | 1 |",
    );
    // Ours at or below Redis's p99 (and ≤ 10 ms): met.
    let md = markdown(&with_reference(7000, 8000));
    assert!(
        md.contains("p99 7.00 ms; Redis 7.0.15 pub/sub p99 8.00 ms | yes |"),
        "{md}"
    );
    assert!(
        md.contains("| open | 1.00 / 7.00 / 12.00 | 1.00 / 8.00 / 12.00 | yes |"),
        "{md}"
    );
    // The latency chart has Redis's p99 as a fourth line, at 200 × 1000 offered.
    let svg = latency_chart(&doc);
    assert!(svg.contains("p99, Redis pub/sub"), "{svg}");
    assert_eq!(svg.matches("<polyline").count(), 4, "{svg}");
    // The results file keeps the reference, failed runs included.
    let text = doc.to_json();
    assert!(text.contains(r#""reference": {"#), "{text}");
    assert_eq!(Results::parse(&text).unwrap(), doc);
}

/// Every WebSocket scenario is a TCP scenario of the same suite with `--ws` in front: the
/// same arguments, runs, metric and time limit, against a server with its HTTP listener on.
#[test]
fn websocket_scenarios_mirror_a_tcp_one() {
    use super::server::Limits;
    for quick in [false, true] {
        let all = suite(quick, None);
        let ws: Vec<_> = all.iter().filter(|s| s.websocket()).collect();
        assert_eq!(
            ws.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
            ["fanout-ws"]
        );
        for s in ws {
            assert_eq!(s.limits, Limits::WebSocket);
            assert_eq!(s.args[0], "--ws");
            let twin = all.iter().find(|t| t.args[..] == s.args[1..]).unwrap();
            assert_eq!(twin.id, "fanout-flood");
            assert_eq!(twin.limits, Limits::Bench);
            assert_eq!(
                (twin.runs, twin.metric, twin.timeout),
                (s.runs, s.metric, s.timeout)
            );
            assert_eq!(
                s.command(),
                twin.command().replacen(" fanout ", " --ws fanout ", 1)
            );
        }
        // No other scenario changes transport.
        assert!(
            all.iter()
                .filter(|s| !s.websocket())
                .all(|s| s.limits != Limits::WebSocket)
        );
    }
}

#[test]
fn websocket_shows_beside_its_tcp_twin() {
    let tcp_run = run(3.6e6, 5000);
    let mut ws_run = run(2.4e6, 8000);
    ws_run.transport = Some("websocket".into());
    ws_run.server_cpu_s = Some(4.0);
    ws_run.loadgen_cpu_s = Some(3.5);
    let mut tcp = scenario(
        "fanout-flood",
        "fanout flood",
        vec![done(3.6e6, 5000)],
        Some(tcp_run),
    );
    tcp.command = "simpletextim-loadgen --server ADDR --timeout 120 fanout -c 1000".into();
    let mut ws = scenario(
        "fanout-ws",
        "fanout flood over WebSocket",
        vec![Run::Done(Box::new(ws_run.clone())), done(2.2e6, 9000)],
        Some(ws_run),
    );
    ws.command = "simpletextim-loadgen --server ADDR --timeout 120 --ws fanout -c 1000".into();
    ws.server_command = Some("simpletextim-server --listen-http 127.0.0.1:0".into());
    let doc = results(vec![tcp.clone(), ws.clone()]);
    let md = markdown(&doc);
    let has = |md: &str, line: &str| assert!(md.contains(line), "{line} not in:\n{md}");
    has(&md, "### Fan-out over WebSocket beside TCP\n");
    has(
        &md,
        "| fanout flood | TCP | 3.60 M | 3600 | 0 | 1.00 | 5.00 | 9.00 | 12.00 | – / – | 3.60 M |\n| fanout flood over WebSocket | WebSocket | 2.40 M | 2400 | 0 | 1.00 | 8.00 | 9.00 | 12.00 | 4.0 / 3.5 | 2.40 M / 2.20 M |\n\n",
    );
    // Measured together: no note on when.
    assert!(!md.contains(": measured"), "{md}");
    // Not in the TCP flood table or the throughput chart: its own section only.
    assert_eq!(
        md.matches("| fanout flood over WebSocket |").count(),
        1,
        "{md}"
    );
    assert_eq!(
        throughput_chart(&doc),
        throughput_chart(&results(vec![tcp.clone()]))
    );
    // Its server command is in the commands table.
    has(
        &md,
        "| fanout-ws | `simpletextim-loadgen --server ADDR --timeout 120 --ws fanout -c 1000`, server `simpletextim-server --listen-http 127.0.0.1:0` | 2 |",
    );

    // Measured apart (a later `--only`): each says when.
    ws.measured = Some("2026-12-02 10:00 UTC, commit `def`".into());
    let md = markdown(&results(vec![tcp.clone(), ws.clone()]));
    has(
        &md,
        "- fanout-flood: measured with the rest of the suite (2026-11-26 17:00 UTC, commit `abc`).\n- fanout-ws: measured 2026-12-02 10:00 UTC, commit `def`.\n\n",
    );

    // Without its twin, the WebSocket row alone; without a WebSocket run, no section.
    let md = markdown(&results(vec![ws]));
    has(&md, "| fanout flood over WebSocket | WebSocket | 2.40 M |");
    assert!(!md.contains("| TCP |"), "{md}");
    let md = markdown(&results(vec![tcp]));
    assert!(!md.contains("WebSocket"), "{md}");
}

/// The cluster section: the bus's cost per message from the CPU the harness measured, or,
/// when the scenario could not run, why; nothing when it is not in the results.
#[test]
fn cluster_section_shows_the_cost_per_message_or_why_it_did_not_run() {
    assert!(!markdown(&results(vec![])).contains("### Cluster"));

    let mut r = run(2e6, 8000);
    r.sent = 5000;
    r.delivered = 1_500_000;
    r.server_cpu_s = Some(3.0);
    r.node_cpu_s = Some(vec![1.0, 1.5, 0.5]);
    r.bus_cpu_s = Some(0.25);
    r.db_cpu_s = Some(0.5);
    let mut q = run(1e6, 1000);
    q.sent = 1000;
    q.delivered = 300_000;
    q.server_cpu_s = Some(1.2);
    q.bus_cpu_s = Some(0.05);
    q.db_cpu_s = Some(0.1);
    r.quiet = Some(Box::new(q));
    let title = "cluster fanout flood, 3 nodes";
    let doc = results(vec![scenario(
        "cluster",
        title,
        vec![Run::Done(Box::new(r.clone()))],
        Some(r),
    )]);
    let md = markdown(&doc);
    // (3 − 1.2) s over 1.2 M more deliveries; over 4000 more messages: 1.8 s, 0.2 s, 0.4 s.
    assert!(
        md.contains("| **one more delivery**: node CPU µs (all nodes) | 1.50 |"),
        "{md}"
    );
    assert!(
        md.contains("| **one more message**: node CPU µs (all nodes, its deliveries included); redis-server; PostgreSQL | 450.00; 50.00; 100.00 |"),
        "{md}"
    );
    assert!(md.contains("### Cluster: fan-out through the bus"), "{md}");
    assert!(
        md.contains("3 nodes on one PostgreSQL and one Redis"),
        "{md}"
    );
    assert!(
        md.contains("| all 499500 in the median run; runs where some never came: 0 of 2 (short runs included) |"),
        "{md}"
    );
    assert!(md.contains("| CPU s of each node; of redis-server; of PostgreSQL | 1.00 / 1.50 / 0.50; 0.25; 0.50 |"), "{md}");
    // 3 s over 1.5 M deliveries, over 5000 messages; 0.25 s and 0.5 s over 5000 messages.
    assert!(
        md.contains("| node CPU µs per delivery (all nodes) | 2.00 |"),
        "{md}"
    );
    assert!(
        md.contains("| node CPU µs per message sent (all nodes) | 600.00 |"),
        "{md}"
    );
    assert!(
        md.contains("| redis-server CPU µs per message sent | 50.00 |"),
        "{md}"
    );
    assert!(
        md.contains("| PostgreSQL CPU µs per message sent | 100.00 |"),
        "{md}"
    );

    let skipped = Run::Failed {
        error: "skipped: simpletextim-server has no --cluster-redis option".into(),
    };
    let md = markdown(&results(vec![scenario(
        "cluster",
        title,
        vec![skipped],
        None,
    )]));
    assert!(
        md.contains("Not measured: skipped: simpletextim-server has no --cluster-redis option."),
        "{md}"
    );
}

#[test]
fn the_cluster_scenario_spreads_its_clients_over_three_nodes() {
    for quick in [false, true] {
        let all = suite(quick, None);
        let c = all
            .iter()
            .find(|s| s.id == "cluster")
            .expect("a cluster scenario");
        assert_eq!(c.cluster, Some(3));
        assert_eq!(c.args.first().map(String::as_str), Some("fanout"));
        assert!(
            c.command()
                .starts_with("simpletextim-loadgen --server NODE1,NODE2,NODE3 ")
        );
        // Only it runs on a cluster.
        assert_eq!(all.iter().filter(|s| s.cluster.is_some()).count(), 1);
    }
}
