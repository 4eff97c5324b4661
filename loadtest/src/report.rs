//! The JSON report and the human summary.

use crate::driver::{Arrival, Counts, Violation};
use crate::procfs::{Machine, Usage};
use crate::stats::{Ratio, Summary, fmt_us};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// p99 offer latency under which a rate counts for "highest sustained rate".
pub const OFFER_P99_LIMIT_US: f64 = 10_000.0;

#[derive(Clone, Debug, Serialize)]
pub struct TopologySummary {
    pub accounts: usize,
    pub agents: usize,
    pub numbers: usize,
    pub shared_agents: usize,
    pub mean_agents_per_number: f64,
    pub strategies: BTreeMap<String, usize>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct ConnectSummary {
    pub agents_connected: usize,
    pub connect_failures: usize,
    pub connect_failure_examples: Vec<String>,
    pub seconds: f64,
    /// Server RSS before and after the agents connected, when sampled.
    pub server_rss_before_mib: Option<f64>,
    pub server_rss_after_mib: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct PhaseReport {
    pub arrival: Arrival,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub calls_sent: u64,
    /// Calls sent per second over the phase's arrival window.
    pub achieved_rate: f64,
    /// Latencies in microseconds. `offer`: `call.inbound` sent -> first
    /// `offer` received, for calls offered at once; `offer_after_queue`:
    /// the same for calls that were queued first; `bridge`: `offer.accept`
    /// sent -> `call.bridge` received; `callback_dial`: accept of a callback
    /// offer -> `callback.dial`; `ack_inbound`: `call.inbound` -> its `ack`
    /// (durability); `ack_all`: any gateway event -> its `ack`;
    /// `caller_wait`: `call.inbound` -> `call.bridge`; `baseline_rtt`: bare
    /// WebSocket echo round trip measured alongside; `schedule_lag`: how
    /// late the harness sent arrivals; `offer_<strategy>`: `offer` for the
    /// numbers of one routing strategy.
    pub latency_us: BTreeMap<String, Summary>,
    /// Each latency's p50 and p99 over the baseline's.
    pub ratio_to_baseline: BTreeMap<String, Ratio>,
    pub outcomes: Counts,
    pub counts: Counts,
    pub errors: Counts,
    pub violations: u64,
    pub unresolved_offers: u64,
    pub unfinished_calls: u64,
    pub unacked_events: u64,
    pub pending_callbacks: u64,
    pub drain_s: f64,
    pub forced_hangup: bool,
    pub server: Option<Usage>,
    /// The server's own `ringline_offer_latency_seconds` over the phase
    /// (shard input -> frame written; every offer), from `/metrics`.
    pub server_offer_latency: Option<crate::metrics::ServerLatency>,
    /// The server's `ringline_ack_latency_seconds` over the phase.
    pub server_ack_latency: Option<crate::metrics::ServerLatency>,
    pub harness: Usage,
    /// CPU use of the whole machine over the arrival window, in percent of
    /// one core (200% = both cores busy).
    pub machine_cpu_pct: f64,
    /// What other processes used meanwhile (machine - server - harness):
    /// other engineers' builds make a measurement noisy.
    pub other_cpu_pct: Option<f64>,
    pub loadavg_start: f64,
    pub loadavg_end: f64,
    /// The harness issued >= 97% of the scheduled calls, nothing was left
    /// unacked or unresolved, no errors beyond expected conflicts, no
    /// violation, no agent dropped.
    pub sustained: bool,
    pub not_sustained_because: Vec<String>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct InvariantReport {
    pub violations: u64,
    pub by_kind: Counts,
    pub examples: Vec<Violation>,
    pub agent_disconnects: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct RunReport {
    pub tool: String,
    pub mode: String,
    pub started_unix_s: u64,
    pub machine: Machine,
    pub target: String,
    pub server_pid: Option<u32>,
    pub settings: serde_json::Value,
    pub topology: Option<TopologySummary>,
    pub connect: ConnectSummary,
    pub phases: Vec<PhaseReport>,
    pub invariants: InvariantReport,
    /// Highest arrival rate among the sustained phases whose p99 offer
    /// latency stayed under 10 ms.
    pub highest_sustained_rate_p99_offer_under_10ms: Option<f64>,
}

impl RunReport {
    pub fn compute_highest(&mut self) {
        self.highest_sustained_rate_p99_offer_under_10ms = self
            .phases
            .iter()
            .filter(|p| {
                p.sustained && p.latency_us.get("offer").is_some_and(|s| s.count > 0 && s.p99_us < OFFER_P99_LIMIT_US)
            })
            .map(|p| p.arrival.rate())
            .fold(None, |m: Option<f64>, r| Some(m.map_or(r, |m| m.max(r))));
    }

    /// The human summary.
    pub fn human(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "== ringline-loadtest {} against {}", self.mode, self.target);
        let _ = writeln!(
            s,
            "machine: {} x{}, {} MiB",
            self.machine.cpu_model, self.machine.cpus, self.machine.mem_total_mib
        );
        if let Some(echo) = self.settings.get("baseline_echo").and_then(|v| v.as_str()) {
            let _ = writeln!(s, "baseline: bare tokio-tungstenite echo server ({echo})");
        }
        if let Some(t) = &self.topology {
            let _ = writeln!(
                s,
                "topology: {} agents ({} shared) over {} numbers in {} accounts, {:.1} agents/number, {:?}",
                t.agents, t.shared_agents, t.numbers, t.accounts, t.mean_agents_per_number, t.strategies
            );
        }
        if self.connect.agents_connected > 0 || self.connect.connect_failures > 0 {
            let _ = writeln!(
                s,
                "connect: {} agents in {:.1}s, {} failures{}",
                self.connect.agents_connected,
                self.connect.seconds,
                self.connect.connect_failures,
                match (self.connect.server_rss_before_mib, self.connect.server_rss_after_mib) {
                    (Some(b), Some(a)) => format!(", server RSS {b:.0} -> {a:.0} MiB"),
                    _ => String::new(),
                }
            );
        }
        for (i, p) in self.phases.iter().enumerate() {
            let _ = writeln!(
                s,
                "\n-- phase {} : {:?}, {:.0}s: {} calls sent ({:.1}/s), load avg {:.2} -> {:.2}{}",
                i + 1,
                p.arrival,
                p.duration_s,
                p.calls_sent,
                p.achieved_rate,
                p.loadavg_start,
                p.loadavg_end,
                if p.sustained {
                    ", sustained".to_string()
                } else {
                    format!(", NOT sustained: {}", p.not_sustained_because.join("; "))
                }
            );
            let _ = writeln!(
                s,
                "   {:<18} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9}  {:>6} {:>6}",
                "latency", "count", "p50", "p90", "p99", "p99.9", "max", "x p50", "x p99"
            );
            for (name, l) in &p.latency_us {
                if l.count == 0 {
                    continue;
                }
                let r = p.ratio_to_baseline.get(name);
                let _ = writeln!(
                    s,
                    "   {:<18} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9}  {:>6} {:>6}",
                    name,
                    l.count,
                    fmt_us(l.p50_us),
                    fmt_us(l.p90_us),
                    fmt_us(l.p99_us),
                    fmt_us(l.p999_us),
                    fmt_us(l.max_us),
                    r.map_or("-".into(), |r| format!("{:.2}", r.p50)),
                    r.map_or("-".into(), |r| format!("{:.2}", r.p99)),
                );
            }
            let _ = writeln!(s, "   outcomes: {}", join(&p.outcomes));
            if !p.errors.is_empty() {
                let _ = writeln!(s, "   errors: {}", join(&p.errors));
            }
            let _ = writeln!(
                s,
                "   unresolved offers {}, unfinished calls {}, unacked events {}, pending callbacks {}, drain {:.1}s{}",
                p.unresolved_offers,
                p.unfinished_calls,
                p.unacked_events,
                p.pending_callbacks,
                p.drain_s,
                if p.forced_hangup { " (forced hang-up)" } else { "" }
            );
            if let Some(u) = &p.server {
                let _ = writeln!(
                    s,
                    "   server: cpu avg {:.0}% peak {:.0}%, rss avg {:.0} MiB peak {:.0} MiB",
                    u.cpu_avg_pct, u.cpu_peak_pct, u.rss_avg_mib, u.rss_peak_mib
                );
            }
            let le = |v: Option<f64>| v.map_or("-".into(), |v| format!("<= {}", fmt_us(v)));
            for (what, unit, l) in
                [("offer", "offers", &p.server_offer_latency), ("ack", "acks", &p.server_ack_latency)]
            {
                if let Some(l) = l {
                    let _ = writeln!(
                        s,
                        "   server-side {what} latency (/metrics, {} {unit}): mean {}, p50 {}, p99 {}",
                        l.count,
                        fmt_us(l.mean_us),
                        le(l.p50_at_most_us),
                        le(l.p99_at_most_us)
                    );
                }
            }
            let _ = writeln!(
                s,
                "   harness: cpu avg {:.0}% peak {:.0}%, rss peak {:.0} MiB; machine cpu {:.0}%{}",
                p.harness.cpu_avg_pct,
                p.harness.cpu_peak_pct,
                p.harness.rss_peak_mib,
                p.machine_cpu_pct,
                p.other_cpu_pct.map_or(String::new(), |o| format!(", other processes {o:.0}%"))
            );
        }
        let _ = writeln!(
            s,
            "\ninvariants: {} violation(s){}",
            self.invariants.violations,
            if self.invariants.by_kind.is_empty() {
                String::new()
            } else {
                format!(": {}", join(&self.invariants.by_kind))
            }
        );
        for v in self.invariants.examples.iter().take(10) {
            let _ = writeln!(s, "   {}: {}", v.kind, v.detail);
        }
        if !self.invariants.agent_disconnects.is_empty() {
            let _ = writeln!(s, "agent disconnects: {}", self.invariants.agent_disconnects.len());
            for d in self.invariants.agent_disconnects.iter().take(5) {
                let _ = writeln!(s, "   {d}");
            }
        }
        if let Some(r) = self.highest_sustained_rate_p99_offer_under_10ms {
            let _ = writeln!(s, "highest sustained rate with p99 offer latency < 10 ms: {r}/s");
        }
        s
    }
}

fn join(c: &Counts) -> String {
    c.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ")
}

/// Memory per idle connection.
#[derive(Clone, Debug, Serialize)]
pub struct IdleReport {
    pub tool: String,
    pub mode: String,
    pub machine: Machine,
    pub server: String,
    pub target: String,
    pub server_pid: u32,
    pub connections: usize,
    pub connect_failures: usize,
    pub connect_seconds: f64,
    pub settle_s: f64,
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    pub rss_delta_kib: u64,
    pub kib_per_connection: f64,
    /// The harness's own RSS growth per connection (client side).
    pub client_kib_per_connection: f64,
    pub loadavg: f64,
}

impl IdleReport {
    pub fn human(&self) -> String {
        format!(
            "== idle connections against {} ({})\n{} connections ({} failed) in {:.1}s, settled {:.0}s, load avg {:.2}\n\
             server RSS {:.1} MiB -> {:.1} MiB: delta {:.1} MiB = {:.2} KiB per connection\n\
             harness: {:.2} KiB per connection\n",
            self.server,
            self.target,
            self.connections,
            self.connect_failures,
            self.connect_seconds,
            self.settle_s,
            self.loadavg,
            self.rss_before_kib as f64 / 1024.0,
            self.rss_after_kib as f64 / 1024.0,
            self.rss_delta_kib as f64 / 1024.0,
            self.kib_per_connection,
            self.client_kib_per_connection,
        )
    }
}
