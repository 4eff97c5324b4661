//! Orchestration: connect the gateway, the agents and the baseline probe,
//! run the phases (arrivals, then drain), sample `/proc`, build the report.
//! Also the baseline-only and idle-memory scenarios.

use crate::config::Topology;
use crate::conn::{self, Event, Out, Peer};
use crate::driver::{Arrival, Behaviour, Driver, PhaseData};
use crate::echo::EchoServer;
use crate::metrics::{ACK_METRIC, OFFER_METRIC, PromHistogram};
use crate::procfs::{self, Machine, Sampler, Usage};
use crate::report::{ConnectSummary, IdleReport, InvariantReport, PhaseReport, RunReport, TopologySummary};
use crate::stats::{Latency, fmt_us};
use anyhow::Context;
use futures_util::StreamExt;
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Where the baseline's bare echo server runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum BaselineEcho {
    /// A child process (`ringline-loadtest echo-server`): woken across
    /// processes like the server under test. The CLI's default.
    Process,
    /// A runtime of its own inside the harness: no second program needed
    /// (tests), but its threads share the harness's address space, so its
    /// wake-ups are cheaper than a separate server's.
    InProcess,
}

/// Everything a load run needs besides the topology.
#[derive(Clone, Debug, Serialize)]
pub struct RunSettings {
    #[serde(skip)]
    pub target: Option<SocketAddr>,
    /// One phase per arrival process, run back to back on the same agents.
    pub phases: Vec<Arrival>,
    #[serde(serialize_with = "crate::config::ser_dur")]
    pub duration: Duration,
    /// The start of each phase whose latencies are not recorded.
    #[serde(serialize_with = "crate::config::ser_dur")]
    pub warmup: Duration,
    /// How long to wait after arrivals stop for calls to finish before
    /// hanging up what is left.
    #[serde(serialize_with = "crate::config::ser_dur")]
    pub drain: Duration,
    pub behaviour: Behaviour,
    /// Baseline probes per second; `None` = min(arrival rate, 100).
    pub baseline_rate: Option<f64>,
    /// Where the baseline's echo server runs.
    pub baseline_echo: BaselineEcho,
    pub connect_concurrency: usize,
    pub server_pid: Option<u32>,
    #[serde(serialize_with = "crate::config::ser_dur")]
    pub sample_every: Duration,
    #[serde(skip)]
    pub progress_every: Option<Duration>,
    /// Pause after everyone is connected, before the first phase.
    #[serde(serialize_with = "crate::config::ser_dur")]
    pub settle: Duration,
}

impl Default for RunSettings {
    fn default() -> Self {
        RunSettings {
            target: None,
            phases: vec![Arrival::Poisson { rate: 10.0 }],
            duration: Duration::from_secs(10),
            warmup: Duration::ZERO,
            drain: Duration::from_secs(30),
            behaviour: Behaviour::default(),
            baseline_rate: None,
            baseline_echo: BaselineEcho::InProcess,
            connect_concurrency: 500,
            server_pid: None,
            sample_every: Duration::from_secs(1),
            progress_every: None,
            settle: Duration::ZERO,
        }
    }
}

fn nonce() -> String {
    let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
    format!("{:x}", ms)
}

fn unix_s() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The driver with its connections.
struct Harness {
    driver: Driver,
    rx: mpsc::UnboundedReceiver<Event>,
    gateway: Option<mpsc::UnboundedSender<Out>>,
    probe: Option<mpsc::UnboundedSender<Out>>,
    agents: Vec<Option<mpsc::UnboundedSender<Out>>>,
    progress_every: Option<Duration>,
    next_progress: Option<Instant>,
    started: Instant,
    label: String,
    server: Option<Sampler>,
    me: Sampler,
}

impl Harness {
    fn flush(&mut self) {
        for (peer, out) in self.driver.out.drain(..) {
            let tx = match peer {
                Peer::Gateway => self.gateway.as_ref(),
                Peer::Probe => self.probe.as_ref(),
                Peer::Agent(a) => self.agents.get(a as usize).and_then(Option::as_ref),
            };
            if let Some(tx) = tx {
                let _ = tx.send(out);
            }
        }
    }

    /// Feeds events and timers to the driver until `done` or `deadline`.
    async fn pump(&mut self, deadline: Option<Instant>, done: impl Fn(&Driver, Instant) -> bool) -> anyhow::Result<()> {
        loop {
            let now = Instant::now();
            self.driver.fire(now);
            self.flush();
            if let Some(f) = &self.driver.fatal {
                anyhow::bail!("{f}");
            }
            if done(&self.driver, now) || deadline.is_some_and(|d| now >= d) {
                return Ok(());
            }
            if self.next_progress.is_some_and(|p| now >= p) {
                self.progress(now);
            }
            let wake =
                [self.driver.next_deadline(), deadline, self.next_progress, Some(now + Duration::from_millis(100))]
                    .into_iter()
                    .flatten()
                    .min()
                    .unwrap_or(now);
            tokio::select! {
                biased;
                ev = self.rx.recv() => {
                    let Some(ev) = ev else { anyhow::bail!("all connections ended") };
                    self.driver.handle(ev);
                    for _ in 0..4096 {
                        match self.rx.try_recv() {
                            Ok(ev) => self.driver.handle(ev),
                            Err(_) => break,
                        }
                    }
                }
                _ = tokio::time::sleep_until(tokio::time::Instant::from_std(wake)) => {}
            }
        }
    }

    fn progress(&mut self, now: Instant) {
        let Some(every) = self.progress_every else { return };
        self.next_progress = Some(now + every);
        let c = self.driver.counts();
        let get = |k: &str| c.get(k).copied().unwrap_or(0);
        let w = &self.driver.window_offer;
        let (p50, p99, n) = (w.quantile_us(0.5), w.quantile_us(0.99), w.count());
        let srv = self
            .server
            .as_ref()
            .and_then(Sampler::latest)
            .map(|s| format!(" | server cpu {:.0}% rss {:.0}MiB", s.cpu_pct, s.rss_kib as f64 / 1024.0))
            .unwrap_or_default();
        let me = self.me.latest().map(|s| format!(" | harness cpu {:.0}%", s.cpu_pct)).unwrap_or_default();
        eprintln!(
            "[{:>6.1}s {}] sent {} live {} offers {} bridged {} queued {} | offer({n}) p50 {} p99 {}{srv}{me} | violations {}",
            now.duration_since(self.started).as_secs_f64(),
            self.label,
            self.driver.calls_sent(),
            self.driver.live_calls(),
            get("offers"),
            get("call.bridge"),
            get("call.queued"),
            fmt_us(p50),
            fmt_us(p99),
            self.driver.violation_total(),
        );
        self.driver.window_offer.reset();
    }

    fn close(&mut self) {
        self.gateway = None;
        self.probe = None;
        self.agents.clear();
    }
}

async fn connect_agents(
    target: SocketAddr,
    topo: &Topology,
    encoding: crate::wire::Encoding,
    concurrency: usize,
    events: &mpsc::UnboundedSender<Event>,
    progress: bool,
) -> (Vec<Option<mpsc::UnboundedSender<Out>>>, Vec<String>) {
    let n = topo.agents.len();
    let mut txs: Vec<Option<mpsc::UnboundedSender<Out>>> = (0..n).map(|_| None).collect();
    let mut failures = Vec::new();
    let mut results = futures_util::stream::iter(0..n)
        .map(|i| {
            let path = format!("/v1/agent?token={}&encoding={}", topo.agents[i].token, encoding.query());
            async move { (i, conn::connect(target, &path).await) }
        })
        .buffer_unordered(concurrency.max(1));
    let started = Instant::now();
    let mut last = started;
    let mut done = 0usize;
    while let Some((i, r)) = results.next().await {
        done += 1;
        match r {
            Ok(ws) => {
                let (tx, rx) = mpsc::unbounded_channel();
                tokio::spawn(conn::run(Peer::Agent(i as u32), ws, rx, events.clone()));
                txs[i] = Some(tx);
            }
            Err(e) => failures.push(format!("{}: {e}", topo.agents[i].user)),
        }
        if progress && last.elapsed() >= Duration::from_secs(1) {
            last = Instant::now();
            eprintln!(
                "[connect] {done}/{n} agents ({} failed) in {:.1}s",
                failures.len(),
                started.elapsed().as_secs_f64()
            );
        }
    }
    (txs, failures)
}

fn lat_map(data: &PhaseData) -> BTreeMap<String, crate::stats::Summary> {
    let l = &data.lat;
    let all: [(&str, &Latency); 9] = [
        ("offer", &l.offer),
        ("offer_after_queue", &l.offer_after_queue),
        ("bridge", &l.bridge),
        ("callback_dial", &l.callback_dial),
        ("ack_inbound", &l.ack_inbound),
        ("ack_all", &l.ack_all),
        ("caller_wait", &l.caller_wait),
        ("baseline_rtt", &l.baseline),
        ("schedule_lag", &l.schedule_lag),
    ];
    let mut m: BTreeMap<String, crate::stats::Summary> =
        all.into_iter().map(|(k, h)| (k.to_owned(), h.summary())).collect();
    for (strategy, h) in &l.offer_by_strategy {
        m.insert(format!("offer_{strategy}"), h.summary());
    }
    m
}

/// Runs a load test against `settings.target`.
pub async fn run(settings: RunSettings, topo: Topology) -> anyhow::Result<RunReport> {
    let target = settings.target.ok_or_else(|| anyhow::anyhow!("no target address"))?;
    let beh = settings.behaviour.clone();
    let enc = beh.encoding;
    let machine = Machine::read();
    let started_unix_s = unix_s();
    let progress = settings.progress_every.is_some();
    let max_rate = settings.phases.iter().map(Arrival::rate).fold(0.0, f64::max);
    let baseline_rate = settings.baseline_rate.unwrap_or(max_rate.min(100.0));
    let server = settings.server_pid.map(|pid| Sampler::start(pid, settings.sample_every));
    let me = Sampler::start(std::process::id(), settings.sample_every);

    let (ev_tx, ev_rx) = mpsc::unbounded_channel();
    // The baseline: a bare echo server reached through the same connection
    // code, as a process of its own (like the server under test) or on a
    // runtime of its own in this process.
    let (echo, echo_proc) = match (baseline_rate > 0.0, settings.baseline_echo) {
        (false, _) => (None, None),
        (true, BaselineEcho::InProcess) => (Some(EchoServer::start()?), None),
        (true, BaselineEcho::Process) => {
            let exe = std::env::current_exe().context("cannot find this program to start the echo server")?;
            (None, Some(crate::spawn::Spawned::echo(&exe)?))
        }
    };
    let echo_addr = echo.as_ref().map(|e| e.addr).or(echo_proc.as_ref().map(|e| e.addr));
    let probe = match echo_addr {
        Some(addr) => {
            let ws = conn::connect(addr, &format!("/?encoding={}", enc.query())).await?;
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(conn::run(Peer::Probe, ws, rx, ev_tx.clone()));
            Some(tx)
        }
        None => None,
    };
    let (gw_tx, gw_rx) = mpsc::unbounded_channel();
    let gw_path = format!("/v1/gateway?token={}&encoding={}", topo.gateway_token, enc.query());
    conn::run_on_own_thread("gateway", Peer::Gateway, target, gw_path, gw_rx, ev_tx.clone()).await?;

    let rss_before = settings.server_pid.and_then(procfs::rss_kib);
    let t_connect = Instant::now();
    let (agent_txs, failures) =
        connect_agents(target, &topo, enc, settings.connect_concurrency, &ev_tx, progress).await;
    drop(ev_tx);
    let connected = agent_txs.iter().filter(|t| t.is_some()).count();

    let topology = TopologySummary {
        accounts: topo.accounts.len(),
        agents: topo.agents.len(),
        numbers: topo.numbers.len(),
        shared_agents: topo.shared_agents(),
        mean_agents_per_number: (topo.mean_targets() * 10.0).round() / 10.0,
        strategies: topo.strategy_counts().into_iter().collect(),
    };
    let mut driver = Driver::new(topo, beh, nonce());
    for (i, t) in agent_txs.iter().enumerate() {
        if t.is_none() {
            driver.mark_disconnected(i as u32);
        }
    }
    let mut h = Harness {
        driver,
        rx: ev_rx,
        gateway: Some(gw_tx),
        probe,
        agents: agent_txs,
        progress_every: settings.progress_every,
        next_progress: None,
        started: Instant::now(),
        label: "connect".into(),
        server,
        me,
    };
    // Everyone says hello before the load starts.
    let hello_deadline = Instant::now() + Duration::from_secs(120);
    h.pump(Some(hello_deadline), |d, _| d.agents_ready() >= connected).await?;
    if h.driver.agents_ready() < connected {
        anyhow::bail!("only {} of {connected} agents got a hello within 120s", h.driver.agents_ready());
    }
    let connect_seconds = t_connect.elapsed().as_secs_f64();
    if !settings.settle.is_zero() {
        h.pump(Some(Instant::now() + settings.settle), |_, _| false).await?;
    }
    let rss_after = settings.server_pid.and_then(procfs::rss_kib);
    let connect = ConnectSummary {
        agents_connected: connected,
        connect_failures: failures.len(),
        connect_failure_examples: failures.iter().take(10).cloned().collect(),
        seconds: (connect_seconds * 10.0).round() / 10.0,
        server_rss_before_mib: rss_before.map(|k| (k as f64 / 1024.0 * 10.0).round() / 10.0),
        server_rss_after_mib: rss_after.map(|k| (k as f64 / 1024.0 * 10.0).round() / 10.0),
    };
    if progress {
        eprintln!("[connect] {connected} agents ready in {connect_seconds:.1}s ({} failed)", failures.len());
    }

    let mut phases = Vec::new();
    let total = settings.phases.len();
    for (i, &arrival) in settings.phases.iter().enumerate() {
        h.label = format!("phase {}/{total} {:.0}/s", i + 1, arrival.rate());
        let load_start = procfs::loadavg();
        let metrics_before = crate::metrics::scrape(target).await;
        let jiffies_before = procfs::machine_jiffies();
        let violations_before = h.driver.violation_total();
        let t0 = Instant::now();
        h.next_progress = settings.progress_every.map(|e| t0 + e);
        h.driver.start_phase(arrival, settings.duration, settings.warmup, t0);
        h.driver.set_probe_rate(baseline_rate, t0);
        h.pump(None, |d, now| d.arrivals_done(now)).await?;
        let t_arrivals = Instant::now();
        let load_end = procfs::loadavg();
        let machine_cpu = match (jiffies_before, procfs::machine_jiffies()) {
            (Some(b), Some(a)) => procfs::machine_busy_pct(b, a, machine.cpus.max(1)),
            _ => 0.0,
        };
        h.pump(Some(t_arrivals + settings.drain), |d, _| d.quiet()).await?;
        let forced = !h.driver.quiet();
        if forced {
            h.driver.hang_up_all();
            h.pump(Some(Instant::now() + Duration::from_secs(10)), |d, _| d.quiet()).await?;
        }
        h.driver.set_probe_rate(0.0, Instant::now());
        let drain_s = t_arrivals.elapsed().as_secs_f64();
        let data = h.driver.finish_phase();
        let violations = h.driver.violation_total() - violations_before;
        let window = t_arrivals.duration_since(t0).as_secs_f64().max(1e-9);
        let server_usage = h.server.as_ref().map(|s| s.usage(t0, t_arrivals));
        let harness_usage = h.me.usage(t0, t_arrivals);
        // The server records a message's latency just after its write
        // returns, which can be after we read it: let the last ones land.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let metrics_after = crate::metrics::scrape(target).await;
        let server_latency = |name: &str| match (&metrics_before, &metrics_after) {
            (Some(b), Some(a)) => {
                let (b, a) = (PromHistogram::parse(b, name), PromHistogram::parse(a, name));
                a.map(|a| a.since(&b.unwrap_or_default()).summary())
            }
            _ => None,
        };
        let server_offer = server_latency(OFFER_METRIC);
        let server_ack = server_latency(ACK_METRIC);
        phases.push(phase_report(
            arrival,
            settings.duration,
            settings.warmup,
            data,
            window,
            violations,
            drain_s,
            forced,
            server_usage,
            harness_usage,
            (load_start, load_end),
            server_offer,
            server_ack,
            machine_cpu,
        ));
    }
    h.close();
    drop(echo);
    let settings_json = serde_json::to_value(&settings)?;
    let mut report = RunReport {
        tool: format!("ringline-loadtest {}", env!("CARGO_PKG_VERSION")),
        mode: "run".into(),
        started_unix_s,
        machine,
        target: target.to_string(),
        server_pid: settings.server_pid,
        settings: settings_json,
        topology: Some(topology),
        connect,
        phases,
        invariants: InvariantReport {
            violations: h.driver.violation_total(),
            by_kind: h.driver.violation_counts.clone(),
            examples: h.driver.violations.clone(),
            agent_disconnects: h.driver.disconnects.clone(),
        },
        highest_sustained_rate_p99_offer_under_10ms: None,
    };
    report.compute_highest();
    Ok(report)
}

#[allow(clippy::too_many_arguments)]
fn phase_report(
    arrival: Arrival,
    duration: Duration,
    warmup: Duration,
    data: PhaseData,
    window_s: f64,
    violations: u64,
    drain_s: f64,
    forced: bool,
    server: Option<Usage>,
    harness: Usage,
    load: (f64, f64),
    server_offer_latency: Option<crate::metrics::ServerLatency>,
    server_ack_latency: Option<crate::metrics::ServerLatency>,
    machine_cpu_pct: f64,
) -> PhaseReport {
    let other_cpu_pct =
        server.map(|s| ((machine_cpu_pct - s.cpu_avg_pct - harness.cpu_avg_pct).max(0.0) * 10.0).round() / 10.0);
    let disconnects = data.counts.get("agent_disconnects").copied().unwrap_or(0);
    let latency_us = lat_map(&data);
    let base = latency_us.get("baseline_rtt").copied().unwrap_or_default();
    let ratio_to_baseline = latency_us
        .iter()
        .filter(|(k, _)| *k != "baseline_rtt" && *k != "schedule_lag")
        .filter_map(|(k, s)| Some((k.clone(), s.ratio_to(&base)?)))
        .collect();
    let achieved_rate = (data.calls_sent as f64 / duration.as_secs_f64().max(window_s) * 10.0).round() / 10.0;
    let mut why = Vec::new();
    let scheduled = arrival.rate() * duration.as_secs_f64();
    // 97% of the schedule, or 4 standard deviations of a Poisson count
    // below it for short phases.
    let floor = (0.97 * scheduled).min(scheduled - 4.0 * scheduled.sqrt());
    if (data.calls_sent as f64) < floor {
        why.push(format!("sent {} of {scheduled:.0} scheduled calls", data.calls_sent));
    }
    if violations > 0 {
        why.push(format!("{violations} invariant violations"));
    }
    if data.unacked_events > 0 {
        why.push(format!("{} events never acked", data.unacked_events));
    }
    if data.unresolved_offers > 0 {
        why.push(format!("{} offers never resolved", data.unresolved_offers));
    }
    let hard_errors: u64 = data
        .errors
        .iter()
        .filter(|(k, _)| k.ends_with(":rate_limited") || k.ends_with(":unavailable") || k.ends_with(":bad_request"))
        .map(|(_, v)| v)
        .sum();
    if hard_errors > 0 {
        why.push(format!("{hard_errors} rate_limited/unavailable/bad_request errors"));
    }
    if disconnects > 0 {
        why.push(format!("{disconnects} agents disconnected"));
    }
    let lag_p99 = data.lat.schedule_lag.quantile_us(0.99);
    if lag_p99 > 50_000.0 {
        why.push(format!("harness fell behind its schedule (p99 lag {})", fmt_us(lag_p99)));
    }
    PhaseReport {
        arrival,
        duration_s: duration.as_secs_f64(),
        warmup_s: warmup.as_secs_f64(),
        calls_sent: data.calls_sent,
        achieved_rate,
        latency_us,
        ratio_to_baseline,
        outcomes: data.outcomes,
        counts: data.counts,
        errors: data.errors,
        violations,
        unresolved_offers: data.unresolved_offers,
        unfinished_calls: data.unfinished_calls,
        unacked_events: data.unacked_events,
        pending_callbacks: data.pending_callbacks,
        drain_s: (drain_s * 10.0).round() / 10.0,
        forced_hangup: forced,
        server,
        server_offer_latency,
        server_ack_latency,
        harness,
        machine_cpu_pct,
        other_cpu_pct,
        loadavg_start: load.0,
        loadavg_end: load.1,
        sustained: why.is_empty(),
        not_sustained_because: why,
    }
}

/// The bare WebSocket round trip alone: probes at `rate` per second for
/// `duration` against the in-process echo server.
pub async fn baseline(
    rate: f64,
    duration: Duration,
    encoding: crate::wire::Encoding,
    progress_every: Option<Duration>,
) -> anyhow::Result<RunReport> {
    let machine = Machine::read();
    let echo = EchoServer::start()?;
    let (ev_tx, ev_rx) = mpsc::unbounded_channel();
    let ws = conn::connect(echo.addr, &format!("/?encoding={}", encoding.query())).await?;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(conn::run(Peer::Probe, ws, rx, ev_tx));
    let beh = Behaviour { encoding, ..Behaviour::default() };
    let mut h = Harness {
        driver: Driver::new(Topology::default(), beh, nonce()),
        rx: ev_rx,
        gateway: None,
        probe: Some(tx),
        agents: Vec::new(),
        progress_every: None,
        next_progress: None,
        started: Instant::now(),
        label: "baseline".into(),
        server: None,
        me: Sampler::start(std::process::id(), Duration::from_secs(1)),
    };
    let load_start = procfs::loadavg();
    let t0 = Instant::now();
    h.driver.start_phase(Arrival::Poisson { rate: 0.0 }, duration, Duration::ZERO, t0);
    h.driver.set_probe_rate(rate, t0);
    h.pump(Some(t0 + duration), |_, _| false).await?;
    h.driver.set_probe_rate(0.0, Instant::now());
    h.pump(Some(Instant::now() + Duration::from_millis(500)), |_, _| false).await?;
    let data = h.driver.finish_phase();
    let summary = data.lat.baseline.summary();
    if progress_every.is_some() {
        eprintln!("[baseline] {} round trips: {}", summary.count, summary.short());
    }
    let mut latency_us = BTreeMap::new();
    latency_us.insert("baseline_rtt".to_owned(), summary);
    let phase = PhaseReport {
        arrival: Arrival::Poisson { rate },
        duration_s: duration.as_secs_f64(),
        warmup_s: 0.0,
        calls_sent: 0,
        achieved_rate: 0.0,
        latency_us,
        ratio_to_baseline: BTreeMap::new(),
        outcomes: Default::default(),
        counts: Default::default(),
        errors: Default::default(),
        violations: 0,
        unresolved_offers: 0,
        unfinished_calls: 0,
        unacked_events: 0,
        pending_callbacks: 0,
        drain_s: 0.0,
        forced_hangup: false,
        server: None,
        server_offer_latency: None,
        server_ack_latency: None,
        harness: h.me.usage(t0, Instant::now()),
        machine_cpu_pct: 0.0,
        other_cpu_pct: None,
        loadavg_start: load_start,
        loadavg_end: procfs::loadavg(),
        sustained: true,
        not_sustained_because: Vec::new(),
    };
    h.close();
    Ok(RunReport {
        tool: format!("ringline-loadtest {}", env!("CARGO_PKG_VERSION")),
        mode: "baseline".into(),
        started_unix_s: unix_s(),
        machine,
        target: echo.addr.to_string(),
        server_pid: None,
        settings: serde_json::json!({ "rate": rate, "duration_s": duration.as_secs_f64(), "encoding": encoding }),
        topology: None,
        connect: ConnectSummary::default(),
        phases: vec![phase],
        invariants: InvariantReport::default(),
        highest_sustained_rate_p99_offer_under_10ms: None,
    })
}

/// What the idle scenario connects to.
#[derive(Clone, Debug)]
pub struct IdleTarget {
    pub addr: SocketAddr,
    pub pid: u32,
    /// "ringline" (agents with tokens, wait for `hello`) or "bare-echo".
    pub server: String,
    /// `path?query` of each connection; for ringline one per agent.
    pub paths: Vec<String>,
    pub expect_hello: bool,
}

/// Connects `paths.len()` idle WebSockets and reports the server's RSS
/// growth per connection.
pub async fn idle(t: IdleTarget, settle: Duration, concurrency: usize, progress: bool) -> anyhow::Result<IdleReport> {
    let machine = Machine::read();
    // Let the freshly started server finish its start-up allocations.
    tokio::time::sleep(settle).await;
    let before = procfs::rss_kib(t.pid).ok_or_else(|| anyhow::anyhow!("cannot read /proc/{}/status", t.pid))?;
    let me_before = procfs::rss_kib(std::process::id()).unwrap_or(0);
    let (ev_tx, mut ev_rx) = mpsc::unbounded_channel();
    let started = Instant::now();
    let mut results = futures_util::stream::iter(t.paths.clone())
        .map(|p| async move { conn::connect(t.addr, &p).await })
        .buffer_unordered(concurrency.max(1));
    let mut txs = Vec::new();
    let mut failures = 0usize;
    let mut last = Instant::now();
    while let Some(r) = results.next().await {
        match r {
            Ok(ws) => {
                let (tx, rx) = mpsc::unbounded_channel();
                tokio::spawn(conn::run(Peer::Agent(txs.len() as u32), ws, rx, ev_tx.clone()));
                txs.push(tx);
            }
            Err(_) => failures += 1,
        }
        if progress && last.elapsed() >= Duration::from_secs(1) {
            last = Instant::now();
            eprintln!("[idle] {} connected, {failures} failed", txs.len());
        }
    }
    drop(ev_tx);
    if t.expect_hello {
        let mut hellos = 0usize;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        while hellos < txs.len() {
            match tokio::time::timeout_at(deadline, ev_rx.recv()).await {
                Ok(Some(Event::Msg { msg, .. })) if msg.ty == "hello" => hellos += 1,
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        if hellos < txs.len() {
            anyhow::bail!("only {hellos} of {} connections got a hello", txs.len());
        }
    }
    let connect_seconds = started.elapsed().as_secs_f64();
    // Idle: nothing but the server's pings, which the connection tasks answer.
    let drain = tokio::spawn(async move { while ev_rx.recv().await.is_some() {} });
    tokio::time::sleep(settle).await;
    let after = procfs::rss_kib(t.pid).ok_or_else(|| anyhow::anyhow!("the server is gone"))?;
    let me_after = procfs::rss_kib(std::process::id()).unwrap_or(0);
    let n = txs.len();
    drop(txs);
    drain.abort();
    let delta = after.saturating_sub(before);
    Ok(IdleReport {
        tool: format!("ringline-loadtest {}", env!("CARGO_PKG_VERSION")),
        mode: "idle".into(),
        machine,
        server: t.server,
        target: t.addr.to_string(),
        server_pid: t.pid,
        connections: n,
        connect_failures: failures,
        connect_seconds: (connect_seconds * 10.0).round() / 10.0,
        settle_s: settle.as_secs_f64(),
        rss_before_kib: before,
        rss_after_kib: after,
        rss_delta_kib: delta,
        kib_per_connection: ((delta as f64 / n.max(1) as f64) * 100.0).round() / 100.0,
        client_kib_per_connection: ((me_after.saturating_sub(me_before) as f64 / n.max(1) as f64) * 100.0).round()
            / 100.0,
        loadavg: procfs::loadavg(),
    })
}
