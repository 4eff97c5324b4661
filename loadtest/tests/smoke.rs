//! CI smoke test: a short mixed load against the real server (started in
//! this process), every feature of the harness switched on, invariant
//! checks enforced, no timing asserts.

#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use ringline::server::{self, Options};
use ringline_loadtest::config::{Dur, GenParams, Topology, generate};
use ringline_loadtest::driver::{Arrival, Behaviour};
use ringline_loadtest::report::{PhaseReport, RunReport};
use ringline_loadtest::run::{self, RunSettings};
use ringline_loadtest::wire::Encoding;
use std::path::Path;
use std::time::Duration;

fn params(agents: u32, numbers: u32) -> GenParams {
    GenParams {
        agents,
        numbers,
        accounts: 0,
        per_agent: 2,
        shared: 0.7,
        strategies: "ring_all:1,ring_in_order:1,round_robin:1,longest_idle:1".parse().expect("mix"),
        ring_timeout: Dur(Duration::from_millis(400)),
        wrap_up: Dur(Duration::from_millis(100)),
        max_waiting: 5,
        max_wait: Dur(Duration::from_secs(4)),
        callbacks: true,
        callback_retry_after: Dur(Duration::from_millis(500)),
        shards: 2,
        // Snapshots under load, too.
        snapshot_every: Some(300),
        topology_seed: 7,
    }
}

fn behaviour(encoding: Encoding) -> Behaviour {
    Behaviour {
        answer_mean: Duration::from_millis(50),
        talk_mean: Duration::from_millis(800),
        decline_prob: 0.1,
        no_answer_prob: 0.05,
        callback_prob: 0.5,
        // Queued callers here wait ~40 ms (p50) before an agent frees up:
        // they must ask sooner for the callback flow to show in every run.
        callback_after_mean: Duration::from_millis(20),
        callback_fail_prob: 0.2,
        bridge_fail_prob: 0.05,
        away_prob: 0.1,
        away_mean: Duration::from_millis(500),
        wrapup_done_prob: 0.3,
        wrapup_done_mean: Duration::from_millis(50),
        encoding,
        seed: 11,
    }
}

/// Starts the server on a generated config, runs the load, stops it.
async fn run_against_server(topo_params: &GenParams, settings: RunSettings) -> RunReport {
    let text = generate(topo_params).expect("config generates");
    let cfg = ringline::config::parse(&text, Path::new("smoke.toml")).expect("the generated config is valid");
    let topo = Topology::from_config(&text).expect("topology");
    let data = tempfile::tempdir().expect("temp dir");
    let opts = Options { listen: Some("127.0.0.1:0".parse().expect("addr")), data_dir: Some(data.path().to_owned()) };
    let running = server::start(cfg, opts).await.expect("server starts");
    let settings = RunSettings { target: Some(running.addr), ..settings };
    let report = run::run(settings, topo).await.expect("the run completes");
    running.shutdown().await;
    report
}

const INBOUND_OUTCOMES: [&str; 8] = [
    "answered",
    "answered_cut",
    "voicemail_",
    "forwarded_",
    "hung_up_",
    "callback_requested",
    "abandoned_at_drain",
    "refused_",
];

fn check(report: &RunReport) -> &PhaseReport {
    println!("{}", report.human());
    assert_eq!(report.invariants.violations, 0, "invariant violations: {:#?}", report.invariants.examples);
    assert!(report.invariants.agent_disconnects.is_empty(), "{:?}", report.invariants.agent_disconnects);
    assert_eq!(report.connect.connect_failures, 0);
    let p = &report.phases[0];
    assert!(p.calls_sent > 0);
    assert!(p.outcomes.get("answered").copied().unwrap_or(0) > 0, "no call completed: {:?}", p.outcomes);
    assert_eq!((p.unacked_events, p.unresolved_offers, p.unfinished_calls), (0, 0, 0), "left over after the drain");
    // Every inbound call reached exactly one outcome.
    let inbound: u64 =
        p.outcomes.iter().filter(|(k, _)| INBOUND_OUTCOMES.iter().any(|o| k.starts_with(o))).map(|(_, v)| v).sum();
    assert_eq!(inbound, p.calls_sent, "outcomes {:?}", p.outcomes);
    // Every call.inbound was acked and measured; offers and the baseline too.
    assert_eq!(p.latency_us["ack_inbound"].count, p.calls_sent);
    assert!(p.latency_us["offer"].count > 0);
    assert!(p.latency_us["bridge"].count > 0);
    assert!(p.latency_us["baseline_rtt"].count > 0);
    assert!(p.ratio_to_baseline.contains_key("offer"));
    // The server's own offer timing came from its /metrics.
    assert!(p.server_offer_latency.is_some_and(|l| l.count > 0), "{:?}", p.server_offer_latency);
    // Every acked gateway event is in the server's own ack histogram.
    let acked = p.latency_us["ack_all"].count;
    assert!(p.server_ack_latency.is_some_and(|l| l.count >= acked), "{:?} for {acked} acks", p.server_ack_latency);
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_mixed_load_keeps_every_invariant() {
    let topo = params(120, 24);
    let settings = RunSettings {
        phases: vec![Arrival::Poisson { rate: 80.0 }],
        duration: Duration::from_secs(4),
        warmup: Duration::ZERO,
        drain: Duration::from_secs(20),
        // Agents busy ~90% of the time, so every run queues callers (and
        // some of them ask for callbacks).
        behaviour: Behaviour { talk_mean: Duration::from_millis(1200), ..behaviour(Encoding::Json) },
        baseline_rate: Some(20.0),
        ..RunSettings::default()
    };
    let report = run_against_server(&topo, settings).await;
    let p = check(&report);
    // The mix really exercised the flows it is meant to.
    for what in ["call.queued", "declines_sent", "offers_left_ringing", "bridge_failed_sent", "away_sent"] {
        assert!(p.counts.get(what).copied().unwrap_or(0) > 0, "no {what}: {:?}", p.counts);
    }
    assert!(p.outcomes.get("callback_requested").copied().unwrap_or(0) > 0, "{:?}", p.outcomes);
    let json = serde_json::to_value(&report).expect("the report serializes");
    assert!(json["phases"][0]["latency_us"]["offer"]["p99_us"].as_f64().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bursts_over_msgpack_keep_every_invariant() {
    let mut topo = params(60, 12);
    topo.callbacks = false;
    let settings = RunSettings {
        phases: vec![Arrival::Burst { rate: 40.0, size: 20 }],
        duration: Duration::from_secs(3),
        warmup: Duration::ZERO,
        drain: Duration::from_secs(20),
        behaviour: Behaviour { callback_prob: 0.0, ..behaviour(Encoding::Msgpack) },
        baseline_rate: Some(20.0),
        ..RunSettings::default()
    };
    let report = run_against_server(&topo, settings).await;
    let p = check(&report);
    assert_eq!(p.calls_sent, 120, "six bursts of 20");
}

#[test]
fn idle_mode_measures_memory_per_connection_of_the_bare_server() {
    let dir = tempfile::tempdir().expect("temp dir");
    let report = dir.path().join("idle.json");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ringline-loadtest"))
        .args(["idle", "--bare", "--connections", "300", "--settle", "500ms", "--report"])
        .arg(&report)
        .output()
        .expect("runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report).expect("report")).expect("json");
    assert_eq!(v["connections"], 300);
    assert_eq!(v["connect_failures"], 0);
    assert!(v["rss_after_kib"].as_u64() > v["rss_before_kib"].as_u64(), "{v}");
    assert!(v["kib_per_connection"].as_f64().is_some_and(|k| k > 0.0), "{v}");
}

#[test]
fn gen_config_writes_a_config_the_server_accepts() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ringline-loadtest"))
        .args(["gen-config", "--agents", "50", "--numbers", "10", "--strategies", "round_robin:1,longest_idle:1"])
        .output()
        .expect("runs");
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let cfg = ringline::config::parse(&text, Path::new("gen.toml")).expect("valid config");
    assert_eq!(cfg.accounts.len(), 1);
    let topo = Topology::from_config(&text).expect("topology");
    assert_eq!((topo.agents.len(), topo.numbers.len()), (50, 10));
    assert_eq!(topo.strategy_counts(), vec![("round_robin".to_string(), 5), ("longest_idle".to_string(), 5)]);
}
