//! The harness's brain: one state machine that plays the gateway and every
//! agent. Connection tasks feed it timestamped events; it answers by
//! queueing frames (`out`) and arms its own timers (answer delays, talk
//! times, away periods, arrivals, probes). It has no I/O and reads no clock
//! of its own: time comes in with each call, so tests drive it by hand.
//!
//! It measures offer, bridge, durability (ack) latency and the caller's
//! wait, counts outcomes, and checks the protocol's invariants on what it
//! sees:
//! - no call is bridged twice (a second `call.bridge` without a
//!   `call.bridge_failed` from us in between), nor to someone other than
//!   the agent told it won, and no call has two winners;
//! - no agent is offered a call while it still has one pending (not yet
//!   revoked, won, lost or declined), or while it is not `available`;
//! - no agent is bridged to a call while it is still on another one;
//! - no overflow (voicemail, forward, hangup) of a call that is bridged;
//! - every gateway event is acked exactly once; every frame parses;
//! - after the drain, every offer resolved and every call reached an
//!   outcome (reported as counts).

use crate::config::Topology;
use crate::conn::{Event, Out, Peer, Stamp};
use crate::stats::Latency;
use crate::wire::{AgentCmd, Encoding, EventKind, GwEvent, Incoming, Probe, Tagged};
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use rand_distr::{Distribution, Exp};
use serde::Serialize;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::time::{Duration, Instant};

/// How the simulated people behave.
#[derive(Clone, Debug, Serialize)]
pub struct Behaviour {
    /// Mean time an agent takes to answer (accept or decline) an offer.
    #[serde(serialize_with = "crate::config::ser_dur")]
    pub answer_mean: Duration,
    /// Mean talk time (exponential).
    #[serde(serialize_with = "crate::config::ser_dur")]
    pub talk_mean: Duration,
    pub decline_prob: f64,
    /// An agent lets the offer ring out (it expires after `ring_timeout`).
    pub no_answer_prob: f64,
    /// A queued caller asks for a callback (on numbers that allow it).
    pub callback_prob: f64,
    /// Mean time in queue before the caller asks.
    #[serde(serialize_with = "crate::config::ser_dur")]
    pub callback_after_mean: Duration,
    /// A callback dial reaches nobody (`callback.result no_answer`).
    pub callback_fail_prob: f64,
    /// The gateway cannot connect the agent leg (`call.bridge_failed`).
    pub bridge_fail_prob: f64,
    /// After a call an agent goes away...
    pub away_prob: f64,
    /// ...for this long on average.
    #[serde(serialize_with = "crate::config::ser_dur")]
    pub away_mean: Duration,
    /// After a call an agent ends wrap-up early (`wrapup.done`).
    pub wrapup_done_prob: f64,
    #[serde(serialize_with = "crate::config::ser_dur")]
    pub wrapup_done_mean: Duration,
    pub encoding: Encoding,
    pub seed: u64,
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour {
            answer_mean: Duration::from_millis(200),
            talk_mean: Duration::from_secs(3),
            decline_prob: 0.0,
            no_answer_prob: 0.0,
            callback_prob: 0.0,
            callback_after_mean: Duration::from_secs(1),
            callback_fail_prob: 0.0,
            bridge_fail_prob: 0.0,
            away_prob: 0.0,
            away_mean: Duration::from_secs(5),
            wrapup_done_prob: 0.0,
            wrapup_done_mean: Duration::from_millis(500),
            encoding: Encoding::Json,
            seed: 1,
        }
    }
}

/// How calls arrive.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Arrival {
    /// Exponential inter-arrival times at `rate` per second.
    Poisson { rate: f64 },
    /// `size` calls at once, every `size / rate` seconds.
    Burst { rate: f64, size: u32 },
}

impl Arrival {
    pub fn rate(&self) -> f64 {
        match *self {
            Arrival::Poisson { rate } | Arrival::Burst { rate, .. } => rate,
        }
    }
}

/// Callback dial attempts before the engine gives up (the config default).
const CALLBACK_ATTEMPTS: u32 = 3;
/// Violation examples kept (all are counted).
const MAX_EXAMPLES: usize = 200;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Respond { agent: u32, serial: u64, accept: bool },
    EndCall { call: u32 },
    RequestCallback { call: u32 },
    Back { agent: u32 },
    WrapupDone { agent: u32 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    Ringing,
    Queued,
}

#[derive(Debug)]
struct Call {
    id: String,
    phase: u32,
    record: bool,
    account: u32,
    number: u32,
    /// For a callback dial: its callback id.
    dial_of: Option<String>,
    sent_at: Option<Instant>,
    first_route: Option<Route>,
    first_offer_at: Option<Instant>,
    queued: bool,
    callback_asked: bool,
    bridged_to: Option<u32>,
    winner: Option<u32>,
    /// Agents we reported `call.bridge_failed` for: their `offer.won` may
    /// still be on its way and belongs to the failed attempt.
    failed: Vec<u32>,
    answered: bool,
    ended: bool,
}

#[derive(Debug)]
struct Pending {
    offer_id: String,
    serial: u64,
    accepted: bool,
    /// The call or callback it is for.
    target: String,
}

#[derive(Debug)]
struct AgentState {
    user: String,
    account: u32,
    connected: bool,
    hello: bool,
    /// The last `status` the server told it.
    status: String,
    pending: Option<Pending>,
    live_call: Option<u32>,
    away_requested: bool,
    accept_sent_at: Option<Instant>,
    accept_for: Option<String>,
}

#[derive(Debug)]
struct PendingAck {
    kind: EventKind,
    call: Option<u32>,
    record: bool,
    sent_at: Option<Instant>,
}

#[derive(Debug)]
struct CallbackState {
    origin: u32,
    attempts: u32,
}

/// The latency histograms of one phase.
#[derive(Clone, Debug, Default)]
pub struct Latencies {
    /// `call.inbound` sent -> first `offer` received, calls offered at once.
    pub offer: Latency,
    /// The same for calls that waited in queue first (not an engine cost).
    pub offer_after_queue: Latency,
    /// `offer.accept` sent -> `call.bridge` received.
    pub bridge: Latency,
    /// `offer.accept` of a callback offer sent -> `callback.dial` received.
    pub callback_dial: Latency,
    /// `call.inbound` sent -> its `ack`.
    pub ack_inbound: Latency,
    /// Any gateway event sent -> its `ack`.
    pub ack_all: Latency,
    /// `call.inbound` sent -> `call.bridge` received: the caller's wait.
    pub caller_wait: Latency,
    /// `offer` split by the routing strategy of the number called.
    pub offer_by_strategy: BTreeMap<String, Latency>,
    /// Baseline: bare WebSocket echo round trip.
    pub baseline: Latency,
    /// How late arrivals left against their schedule (harness health).
    pub schedule_lag: Latency,
}

/// Counters, by name.
pub type Counts = BTreeMap<String, u64>;

/// A broken invariant.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Violation {
    pub kind: String,
    pub detail: String,
}

/// What the driver collected for the phase that just finished.
#[derive(Debug, Default)]
pub struct PhaseData {
    pub lat: Latencies,
    pub counts: Counts,
    pub outcomes: Counts,
    pub errors: Counts,
    pub calls_sent: u64,
    pub unresolved_offers: u64,
    pub unfinished_calls: u64,
    pub unacked_events: u64,
    pub pending_callbacks: u64,
}

struct PhaseRun {
    index: u32,
    arrival: Arrival,
    record_from: Instant,
    arrivals_end: Instant,
    next_arrival: Option<Instant>,
    first_call: usize,
}

/// The state machine. See the module docs.
pub struct Driver {
    topo: Topology,
    beh: Behaviour,
    rng: SmallRng,
    nonce: String,
    agents: Vec<AgentState>,
    agent_ix: HashMap<(u32, String), u32>,
    calls: Vec<Call>,
    call_ix: HashMap<String, u32>,
    callbacks: HashMap<String, CallbackState>,
    acks: HashMap<u64, PendingAck>,
    seq: u64,
    serial: u64,
    timers: BinaryHeap<Reverse<(Instant, u64, Timer)>>,
    timer_seq: u64,
    probes: HashMap<u64, Option<Instant>>,
    next_probe_no: u64,
    probe_rate: f64,
    next_probe: Option<Instant>,
    probe_record_from: Option<Instant>,
    phase: Option<PhaseRun>,
    phases_started: u32,
    live_calls: u64,
    pending_callbacks: u64,
    /// Frames to write, in order.
    pub out: Vec<(Peer, Out)>,
    data: PhaseData,
    /// Offer latency since the last progress line.
    pub window_offer: Latency,
    pub violations: Vec<Violation>,
    pub violation_counts: Counts,
    pub disconnects: Vec<String>,
    /// Set when the gateway connection is gone: the run cannot go on.
    pub fatal: Option<String>,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver").field("agents", &self.agents.len()).field("calls", &self.calls.len()).finish()
    }
}

fn exp(rng: &mut SmallRng, mean: Duration) -> Duration {
    if mean.is_zero() {
        return Duration::ZERO;
    }
    match Exp::new(1.0 / mean.as_secs_f64()) {
        Ok(d) => Duration::from_secs_f64(d.sample(rng).min(86_400.0)),
        Err(_) => mean,
    }
}

impl Driver {
    /// `nonce` makes call ids unique across runs against the same server.
    pub fn new(topo: Topology, beh: Behaviour, nonce: String) -> Driver {
        let agents: Vec<AgentState> = topo
            .agents
            .iter()
            .map(|a| AgentState {
                user: a.user.clone(),
                account: a.account,
                connected: true,
                hello: false,
                status: "offline".into(),
                pending: None,
                live_call: None,
                away_requested: false,
                accept_sent_at: None,
                accept_for: None,
            })
            .collect();
        let agent_ix = agents.iter().enumerate().map(|(i, a)| ((a.account, a.user.clone()), i as u32)).collect();
        let rng = SmallRng::seed_from_u64(beh.seed);
        Driver {
            topo,
            beh,
            rng,
            nonce,
            agents,
            agent_ix,
            calls: Vec::new(),
            call_ix: HashMap::new(),
            callbacks: HashMap::new(),
            acks: HashMap::new(),
            seq: 0,
            serial: 0,
            timers: BinaryHeap::new(),
            timer_seq: 0,
            probes: HashMap::new(),
            next_probe_no: 0,
            probe_rate: 0.0,
            next_probe: None,
            probe_record_from: None,
            phase: None,
            phases_started: 0,
            live_calls: 0,
            pending_callbacks: 0,
            out: Vec::new(),
            data: PhaseData::default(),
            window_offer: Latency::new(),
            violations: Vec::new(),
            violation_counts: Counts::new(),
            disconnects: Vec::new(),
            fatal: None,
        }
    }

    // ---- bookkeeping -------------------------------------------------

    fn count(&mut self, what: &str) {
        *self.data.counts.entry(what.to_owned()).or_default() += 1;
    }

    fn outcome(&mut self, what: &str) {
        *self.data.outcomes.entry(what.to_owned()).or_default() += 1;
    }

    fn error(&mut self, what: String) {
        *self.data.errors.entry(what).or_default() += 1;
    }

    fn violation(&mut self, kind: &str, detail: String) {
        *self.violation_counts.entry(kind.to_owned()).or_default() += 1;
        if self.violations.len() < MAX_EXAMPLES {
            self.violations.push(Violation { kind: kind.to_owned(), detail });
        }
    }

    pub fn violation_total(&self) -> u64 {
        self.violation_counts.values().sum()
    }

    fn arm(&mut self, at: Instant, t: Timer) {
        self.timer_seq += 1;
        self.timers.push(Reverse((at, self.timer_seq, t)));
    }

    fn push(&mut self, peer: Peer, msg: anyhow::Result<tokio_tungstenite::tungstenite::Message>, stamp: Option<Stamp>) {
        match msg {
            Ok(msg) => self.out.push((peer, Out { msg, stamp })),
            Err(_) => self.count("encode_errors"),
        }
    }

    fn gw(&mut self, call: Option<u32>, make: impl FnOnce(u64, &Driver) -> GwEventOwned) {
        self.seq += 1;
        let seq = self.seq;
        let ev = make(seq, self);
        let kind = ev.borrow().kind();
        let record = call.is_none_or(|c| self.calls[c as usize].record);
        self.acks.insert(seq, PendingAck { kind, call, record, sent_at: None });
        let msg = self.beh.encoding.encode(&ev.borrow());
        self.push(Peer::Gateway, msg, Some(Stamp::GwSeq(seq)));
    }

    fn agent_cmd(&mut self, a: u32, cmd: &AgentCmd<'_>, stamp: Option<Stamp>) {
        let msg = self.beh.encoding.encode(&Tagged { r: cmd.name(), cmd });
        self.push(Peer::Agent(a), msg, stamp);
    }

    fn call_of(&self, id: Option<&str>) -> Option<u32> {
        self.call_ix.get(id?).copied()
    }

    fn agent_of(&self, account: u32, user: &str) -> Option<u32> {
        self.agent_ix.get(&(account, user.to_owned())).copied()
    }

    fn end_call(&mut self, c: u32) {
        let call = &mut self.calls[c as usize];
        if !call.ended {
            call.ended = true;
            self.live_calls = self.live_calls.saturating_sub(1);
        }
        if let Some(a) = call.bridged_to
            && self.agents[a as usize].live_call == Some(c)
        {
            self.agents[a as usize].live_call = None;
        }
    }

    /// An agent whose connection could not be opened.
    pub fn mark_disconnected(&mut self, a: u32) {
        if let Some(agent) = self.agents.get_mut(a as usize) {
            agent.connected = false;
        }
    }

    // ---- status ------------------------------------------------------

    pub fn agents_ready(&self) -> usize {
        self.agents.iter().filter(|a| a.hello).count()
    }

    pub fn agents_connected(&self) -> usize {
        self.agents.iter().filter(|a| a.connected).count()
    }

    pub fn live_calls(&self) -> u64 {
        self.live_calls
    }

    pub fn unacked(&self) -> usize {
        self.acks.len()
    }

    pub fn pending_offers(&self) -> usize {
        self.agents.iter().filter(|a| a.pending.is_some()).count()
    }

    pub fn pending_callbacks(&self) -> u64 {
        self.pending_callbacks
    }

    /// Nothing in flight: no live call, callback, unacked event or offer.
    pub fn quiet(&self) -> bool {
        self.live_calls == 0 && self.pending_callbacks == 0 && self.acks.is_empty() && self.pending_offers() == 0
    }

    pub fn counts(&self) -> &Counts {
        &self.data.counts
    }

    pub fn calls_sent(&self) -> u64 {
        self.data.calls_sent
    }

    // ---- phases ------------------------------------------------------

    /// Starts arrivals at `now`; latencies count from `now + warmup`.
    pub fn start_phase(&mut self, arrival: Arrival, duration: Duration, warmup: Duration, now: Instant) {
        self.data = PhaseData::default();
        self.window_offer.reset();
        let index = self.phases_started;
        self.phases_started += 1;
        let first = match arrival {
            Arrival::Poisson { rate } if rate > 0.0 => {
                Some(now + exp(&mut self.rng, Duration::from_secs_f64(1.0 / rate)))
            }
            Arrival::Burst { rate, .. } if rate > 0.0 => Some(now),
            _ => None,
        };
        self.phase = Some(PhaseRun {
            index,
            arrival,
            record_from: now + warmup,
            arrivals_end: now + duration,
            next_arrival: first,
            first_call: self.calls.len(),
        });
        self.probe_record_from = Some(now + warmup);
    }

    /// Baseline probes at `rate` per second (Poisson) from `now`; 0 stops.
    pub fn set_probe_rate(&mut self, rate: f64, now: Instant) {
        self.probe_rate = rate;
        self.next_probe = (rate > 0.0).then(|| now + exp(&mut self.rng, Duration::from_secs_f64(1.0 / rate)));
        if self.probe_record_from.is_none() {
            self.probe_record_from = Some(now);
        }
    }

    pub fn arrivals_done(&self, now: Instant) -> bool {
        self.phase.as_ref().is_none_or(|p| p.next_arrival.is_none_or(|t| t >= p.arrivals_end) || now >= p.arrivals_end)
    }

    /// Ends whatever is still going: queued and ringing callers hang up,
    /// talking calls are hung up by the agent. Used when the drain times out.
    pub fn hang_up_all(&mut self) {
        for c in 0..self.calls.len() as u32 {
            let call = &self.calls[c as usize];
            if call.ended {
                continue;
            }
            let (reason, outcome) = if call.bridged_to.is_some() {
                ("agent_hangup", if call.dial_of.is_some() { "callback_completed_cut" } else { "answered_cut" })
            } else {
                ("caller_hangup", "abandoned_at_drain")
            };
            if let Some(cb) = call.dial_of.clone() {
                self.callbacks.remove(&cb);
                self.pending_callbacks = self.pending_callbacks.saturating_sub(1);
            }
            self.gw(Some(c), |seq, d| GwEventOwned::Ended { seq, call_id: d.calls[c as usize].id.clone(), reason });
            self.outcome(outcome);
            self.end_call(c);
        }
    }

    /// Closes the phase: classifies offer latencies (at once vs. after
    /// queueing), counts what never resolved, hands the data over.
    pub fn finish_phase(&mut self) -> PhaseData {
        let Some(p) = self.phase.take() else { return std::mem::take(&mut self.data) };
        let mut never_offered = 0u64;
        for call in &self.calls[p.first_call..] {
            if call.dial_of.is_some() || call.phase != p.index {
                continue;
            }
            match (call.first_offer_at, call.sent_at) {
                (Some(o), Some(s)) if call.record => {
                    let d = o.saturating_duration_since(s);
                    if call.first_route == Some(Route::Queued) {
                        self.data.lat.offer_after_queue.record(d);
                    } else {
                        self.data.lat.offer.record(d);
                        let strategy = &self.topo.numbers[call.number as usize].strategy;
                        match self.data.lat.offer_by_strategy.get_mut(strategy) {
                            Some(h) => h.record(d),
                            None => {
                                let mut h = Latency::new();
                                h.record(d);
                                self.data.lat.offer_by_strategy.insert(strategy.clone(), h);
                            }
                        }
                    }
                }
                (None, _) => never_offered += 1,
                _ => {}
            }
        }
        *self.data.counts.entry("calls_never_offered".into()).or_default() += never_offered;
        let mut data = std::mem::take(&mut self.data);
        data.unresolved_offers = self.pending_offers() as u64;
        data.unfinished_calls = self.live_calls;
        data.unacked_events = self.acks.len() as u64;
        data.pending_callbacks = self.pending_callbacks;
        data
    }

    // ---- time --------------------------------------------------------

    /// When `fire` has something to do next.
    pub fn next_deadline(&self) -> Option<Instant> {
        let timer = self.timers.peek().map(|Reverse((t, _, _))| *t);
        let arrival = self.phase.as_ref().and_then(|p| p.next_arrival.filter(|&t| t < p.arrivals_end));
        [timer, arrival, self.next_probe].into_iter().flatten().min()
    }

    /// Runs everything due at `now`.
    pub fn fire(&mut self, now: Instant) {
        self.arrivals(now);
        while let Some(t) = self.next_probe.filter(|&t| t <= now) {
            self.probe(t);
            let gap = exp(&mut self.rng, Duration::from_secs_f64(1.0 / self.probe_rate.max(1e-9)));
            self.next_probe = Some(t + gap);
        }
        while let Some(Reverse((t, _, timer))) = self.timers.peek().copied() {
            if t > now {
                break;
            }
            self.timers.pop();
            self.on_timer(timer, now);
        }
    }

    fn arrivals(&mut self, now: Instant) {
        loop {
            let Some(p) = &self.phase else { return };
            let Some(t) = p.next_arrival else { return };
            if t > now || t >= p.arrivals_end {
                return;
            }
            let arrival = p.arrival;
            let n = match arrival {
                Arrival::Poisson { .. } => 1,
                Arrival::Burst { size, .. } => size.max(1),
            };
            self.data.lat.schedule_lag.record(now.saturating_duration_since(t));
            for _ in 0..n {
                self.new_call(now);
            }
            let gap = match arrival {
                Arrival::Poisson { rate } => exp(&mut self.rng, Duration::from_secs_f64(1.0 / rate)),
                Arrival::Burst { rate, size } => Duration::from_secs_f64(f64::from(size.max(1)) / rate),
            };
            if let Some(p) = &mut self.phase {
                p.next_arrival = Some(t + gap);
            }
        }
    }

    fn new_call(&mut self, now: Instant) {
        let Some(p) = &self.phase else { return };
        let (phase, record_from) = (p.index, p.record_from);
        let number = self.rng.random_range(0..self.topo.numbers.len()) as u32;
        let c = self.calls.len() as u32;
        let id = format!("c{}-{c}", self.nonce);
        let account = self.topo.numbers[number as usize].account;
        self.calls.push(Call {
            id: id.clone(),
            phase,
            record: now >= record_from,
            account,
            number,
            dial_of: None,
            sent_at: None,
            first_route: None,
            first_offer_at: None,
            queued: false,
            callback_asked: false,
            bridged_to: None,
            winner: None,
            failed: Vec::new(),
            answered: false,
            ended: false,
        });
        self.call_ix.insert(id, c);
        self.live_calls += 1;
        self.data.calls_sent += 1;
        let from = format!("+1666{:07}", self.rng.random_range(0..10_000_000u32));
        self.gw(Some(c), |seq, d| GwEventOwned::Inbound {
            seq,
            call_id: d.calls[c as usize].id.clone(),
            to: d.topo.numbers[number as usize].number.clone(),
            from,
        });
    }

    fn probe(&mut self, _at: Instant) {
        let n = self.next_probe_no;
        self.next_probe_no += 1;
        self.probes.insert(n, None);
        let msg = self.beh.encoding.encode(&Probe {
            ty: "probe",
            seq: n,
            call_id: "c0000000000-000000",
            to: "+15550000000",
            from: "+16660000000",
        });
        self.push(Peer::Probe, msg, Some(Stamp::Probe(n)));
    }

    fn on_timer(&mut self, t: Timer, now: Instant) {
        match t {
            Timer::Respond { agent, serial, accept } => {
                let a = agent as usize;
                let Some(p) = &self.agents[a].pending else { return };
                if p.serial != serial || p.accepted || !self.agents[a].connected {
                    return;
                }
                let offer_id = p.offer_id.clone();
                if accept {
                    let target = p.target.clone();
                    if let Some(p) = &mut self.agents[a].pending {
                        p.accepted = true;
                    }
                    self.agents[a].accept_for = Some(target);
                    self.agents[a].accept_sent_at = None;
                    self.count("accepts_sent");
                    self.agent_cmd(agent, &AgentCmd::OfferAccept { offer_id: &offer_id }, Some(Stamp::Accept));
                } else {
                    self.agents[a].pending = None;
                    self.count("declines_sent");
                    self.agent_cmd(agent, &AgentCmd::OfferDecline { offer_id: &offer_id }, None);
                }
            }
            Timer::EndCall { call } => {
                let c = &self.calls[call as usize];
                if c.ended || c.bridged_to.is_none() {
                    return;
                }
                let dial_of = c.dial_of.clone();
                let reason = if self.rng.random_bool(0.5) { "agent_hangup" } else { "caller_hangup" };
                if let Some(cb) = dial_of {
                    self.callbacks.remove(&cb);
                    self.pending_callbacks = self.pending_callbacks.saturating_sub(1);
                    self.outcome("callback_completed");
                } else {
                    self.outcome("answered");
                }
                self.gw(Some(call), |seq, d| GwEventOwned::Ended {
                    seq,
                    call_id: d.calls[call as usize].id.clone(),
                    reason,
                });
                self.end_call(call);
            }
            Timer::RequestCallback { call } => {
                let c = &self.calls[call as usize];
                if c.ended || c.bridged_to.is_some() {
                    return;
                }
                self.count("callback_requests_sent");
                self.gw(Some(call), |seq, d| GwEventOwned::CallbackRequested {
                    seq,
                    call_id: d.calls[call as usize].id.clone(),
                });
            }
            Timer::Back { agent } => {
                let a = &mut self.agents[agent as usize];
                if !a.connected || !a.away_requested {
                    return;
                }
                a.away_requested = false;
                self.agent_cmd(agent, &AgentCmd::StatusSet { status: "available" }, None);
            }
            Timer::WrapupDone { agent } => {
                let a = &self.agents[agent as usize];
                if a.connected && a.status == "wrap_up" {
                    self.count("wrapup_done_sent");
                    self.agent_cmd(agent, &AgentCmd::WrapupDone {}, None);
                }
            }
        }
        let _ = now;
    }

    // ---- events ------------------------------------------------------

    pub fn handle(&mut self, ev: Event) {
        match ev {
            Event::Msg { peer: Peer::Gateway, at, msg } => self.on_gateway(at, *msg),
            Event::Msg { peer: Peer::Agent(a), at, msg } => self.on_agent(a, at, *msg),
            Event::Msg { peer: Peer::Probe, at, msg } => self.on_probe(at, *msg),
            Event::Sent { peer, at, stamp } => self.on_sent(peer, at, stamp),
            Event::Garbled { peer, error } => self.violation("unparseable_frame", format!("{peer:?}: {error}")),
            Event::Closed { peer, why } => match peer {
                Peer::Gateway => self.fatal = Some(format!("the gateway connection ended: {why}")),
                Peer::Probe => self.fatal = Some(format!("the baseline connection ended: {why}")),
                Peer::Agent(a) => {
                    let agent = &mut self.agents[a as usize];
                    agent.connected = false;
                    agent.pending = None;
                    let user = agent.user.clone();
                    self.count("agent_disconnects");
                    if self.disconnects.len() < MAX_EXAMPLES {
                        self.disconnects.push(format!("{user}: {why}"));
                    }
                }
            },
        }
    }

    fn on_sent(&mut self, peer: Peer, at: Instant, stamp: Stamp) {
        match stamp {
            Stamp::GwSeq(seq) => {
                if let Some(p) = self.acks.get_mut(&seq) {
                    p.sent_at = Some(at);
                    if p.kind == EventKind::Inbound
                        && let Some(c) = p.call
                    {
                        self.calls[c as usize].sent_at = Some(at);
                    }
                }
            }
            Stamp::Accept => {
                if let Peer::Agent(a) = peer {
                    self.agents[a as usize].accept_sent_at = Some(at);
                }
            }
            Stamp::Probe(n) => {
                if let Some(t) = self.probes.get_mut(&n) {
                    *t = Some(at);
                }
            }
        }
    }

    fn on_probe(&mut self, at: Instant, m: Incoming) {
        let Some(n) = m.seq else { return };
        if let Some(Some(sent)) = self.probes.remove(&n)
            && self.probe_record_from.is_some_and(|r| sent >= r)
        {
            self.data.lat.baseline.record(at.saturating_duration_since(sent));
        }
    }

    fn on_gateway(&mut self, at: Instant, m: Incoming) {
        match m.ty.as_str() {
            "ack" => {
                let Some(seq) = m.seq else {
                    self.violation("ack_without_seq", "an ack without seq".into());
                    return;
                };
                match self.acks.remove(&seq) {
                    Some(p) => {
                        if let (Some(sent), true) = (p.sent_at, p.record) {
                            let d = at.saturating_duration_since(sent);
                            self.data.lat.ack_all.record(d);
                            if p.kind == EventKind::Inbound {
                                self.data.lat.ack_inbound.record(d);
                            }
                        }
                    }
                    None => {
                        self.violation("ack_unknown_or_repeated", format!("ack for seq {seq}, which is not pending"))
                    }
                }
            }
            "error" => self.on_gateway_error(m),
            "call.ringing" => {
                self.count("call.ringing");
                if let Some(c) = self.call_of(m.call_id.as_deref()) {
                    self.calls[c as usize].first_route.get_or_insert(Route::Ringing);
                }
            }
            "call.queued" => {
                self.count("call.queued");
                let Some(c) = self.call_of(m.call_id.as_deref()) else { return };
                let call = &mut self.calls[c as usize];
                call.first_route.get_or_insert(Route::Queued);
                call.queued = true;
                let number = call.number;
                if !call.callback_asked && !call.ended && self.topo.numbers[number as usize].callback {
                    call.callback_asked = true;
                    if self.beh.callback_prob > 0.0 && self.rng.random_bool(self.beh.callback_prob.min(1.0)) {
                        let delay = exp(&mut self.rng, self.beh.callback_after_mean);
                        self.arm(at + delay, Timer::RequestCallback { call: c });
                    }
                }
            }
            "call.announce" => self.count("call.announce"),
            "call.bridge" => self.on_bridge(at, m),
            "callback.accepted" => self.on_callback_accepted(m),
            "callback.dial" => self.on_callback_dial(at, m),
            "call.voicemail" | "call.forward" | "call.hangup" => self.on_overflow(m),
            other => {
                let what = format!("unexpected_gateway_{other}");
                self.count(&what);
            }
        }
    }

    fn on_gateway_error(&mut self, m: Incoming) {
        let code = m.code.clone().unwrap_or_else(|| "?".into());
        let Some(p) = m.seq.and_then(|s| self.acks.remove(&s)) else {
            self.error(format!("gateway:{code}"));
            return;
        };
        self.error(format!("{}:{code}", p.kind.name()));
        let Some(c) = p.call else { return };
        match p.kind {
            // The call never entered the engine.
            EventKind::Inbound => {
                self.outcome(&format!("refused_{code}"));
                self.end_call(c);
            }
            EventKind::CallbackRequested => self.count("callback_requests_refused"),
            _ => {}
        }
    }

    fn on_bridge(&mut self, at: Instant, m: Incoming) {
        self.count("call.bridge");
        let (Some(c), Some(user)) = (self.call_of(m.call_id.as_deref()), m.agent.as_deref()) else {
            self.count("bridge_for_unknown_call");
            return;
        };
        let ci = c as usize;
        let Some(a) = self.agent_of(self.calls[ci].account, user) else {
            self.violation("bridge_to_unknown_agent", format!("call {} bridged to {user}", self.calls[ci].id));
            return;
        };
        if self.calls[ci].ended {
            // We hung up first; the engine tells the agent.
            self.count("bridge_after_hangup");
            return;
        }
        if let Some(prev) = self.calls[ci].bridged_to {
            let prev = self.agents[prev as usize].user.clone();
            self.violation(
                "call_bridged_twice",
                format!("call {} bridged to {user} while bridged to {prev}", self.calls[ci].id),
            );
        }
        if let Some(w) = self.calls[ci].winner
            && w != a
        {
            let w = self.agents[w as usize].user.clone();
            self.violation("bridge_not_to_winner", format!("call {} bridged to {user}, won by {w}", self.calls[ci].id));
        }
        if let Some(other) = self.agents[a as usize].live_call
            && other != c
        {
            let other = self.calls[other as usize].id.clone();
            self.violation("agent_on_two_calls", format!("{user} bridged to {} while on {other}", self.calls[ci].id));
        }
        self.calls[ci].bridged_to = Some(a);
        self.agents[a as usize].live_call = Some(c);
        let record = self.calls[ci].record;
        if record {
            let agent = &self.agents[a as usize];
            if agent.accept_for.as_deref() == Some(self.calls[ci].id.as_str())
                && let Some(t) = agent.accept_sent_at
            {
                self.data.lat.bridge.record(at.saturating_duration_since(t));
            }
            if let Some(s) = self.calls[ci].sent_at {
                self.data.lat.caller_wait.record(at.saturating_duration_since(s));
            }
        }
        let agent_user = self.agents[a as usize].user.clone();
        if self.beh.bridge_fail_prob > 0.0 && self.rng.random_bool(self.beh.bridge_fail_prob.min(1.0)) {
            self.count("bridge_failed_sent");
            self.calls[ci].bridged_to = None;
            self.calls[ci].winner = None;
            self.calls[ci].failed.push(a);
            self.agents[a as usize].live_call = None;
            self.gw(Some(c), |seq, d| GwEventOwned::BridgeFailed {
                seq,
                call_id: d.calls[ci].id.clone(),
                agent: agent_user,
                reason: "no_answer",
            });
            return;
        }
        self.calls[ci].answered = true;
        self.gw(Some(c), |seq, d| GwEventOwned::Answered { seq, call_id: d.calls[ci].id.clone(), agent: agent_user });
        let talk = exp(&mut self.rng, self.beh.talk_mean);
        self.arm(at + talk, Timer::EndCall { call: c });
    }

    fn on_callback_accepted(&mut self, m: Incoming) {
        self.count("callback.accepted");
        let (Some(c), Some(cb)) = (self.call_of(m.call_id.as_deref()), m.callback_id) else {
            self.count("callback_accepted_unknown");
            return;
        };
        if self.calls[c as usize].bridged_to.is_some() {
            let id = self.calls[c as usize].id.clone();
            self.violation("callback_for_bridged_call", format!("callback {cb} accepted for {id}, which is bridged"));
        }
        if self.callbacks.insert(cb.clone(), CallbackState { origin: c, attempts: 0 }).is_some() {
            self.violation("callback_id_reused", format!("callback {cb} accepted twice"));
        } else {
            self.pending_callbacks += 1;
        }
        if !self.calls[c as usize].ended {
            // The caller leg ends; the place in the queue is kept.
            self.outcome("callback_requested");
            self.gw(Some(c), |seq, d| GwEventOwned::Ended {
                seq,
                call_id: d.calls[c as usize].id.clone(),
                reason: "caller_hangup",
            });
            self.end_call(c);
        }
    }

    fn on_callback_dial(&mut self, at: Instant, m: Incoming) {
        self.count("callback.dial");
        let (Some(cb), Some(dial), Some(user)) = (m.callback_id, m.call_id, m.agent) else {
            self.violation("callback_dial_incomplete", "callback.dial without callback_id, call_id or agent".into());
            return;
        };
        let Some(state) = self.callbacks.get(&cb) else {
            self.count("callback_dial_unknown");
            return;
        };
        let origin = state.origin as usize;
        let (account, number, phase, record) = (
            self.calls[origin].account,
            self.calls[origin].number,
            self.calls[origin].phase,
            self.calls[origin].record,
        );
        let Some(a) = self.agent_of(account, &user) else {
            self.violation("bridge_to_unknown_agent", format!("callback {cb} dialled for {user}"));
            return;
        };
        if let Some(other) = self.agents[a as usize].live_call {
            let other = self.calls[other as usize].id.clone();
            self.violation("agent_on_two_calls", format!("{user} dialled for callback {cb} while on {other}"));
        }
        if self.call_ix.contains_key(&dial) {
            self.violation("call_bridged_twice", format!("callback dial {dial} issued twice"));
            return;
        }
        if record
            && self.agents[a as usize].accept_for.as_deref() == Some(cb.as_str())
            && let Some(t) = self.agents[a as usize].accept_sent_at
        {
            self.data.lat.callback_dial.record(at.saturating_duration_since(t));
        }
        let c = self.calls.len() as u32;
        self.calls.push(Call {
            id: dial.clone(),
            phase,
            record,
            account,
            number,
            dial_of: Some(cb.clone()),
            sent_at: None,
            first_route: None,
            first_offer_at: None,
            queued: false,
            callback_asked: true,
            bridged_to: Some(a),
            winner: Some(a),
            failed: Vec::new(),
            answered: false,
            ended: false,
        });
        self.call_ix.insert(dial, c);
        self.live_calls += 1;
        self.agents[a as usize].live_call = Some(c);
        if self.beh.callback_fail_prob > 0.0 && self.rng.random_bool(self.beh.callback_fail_prob.min(1.0)) {
            self.count("callback_attempts_failed");
            let exhausted = self.callbacks.get_mut(&cb).is_some_and(|s| {
                s.attempts += 1;
                s.attempts >= CALLBACK_ATTEMPTS
            });
            if exhausted {
                self.callbacks.remove(&cb);
                self.pending_callbacks = self.pending_callbacks.saturating_sub(1);
                self.outcome("callback_failed");
            }
            self.gw(Some(c), |seq, _| GwEventOwned::CallbackResult { seq, callback_id: cb, outcome: "no_answer" });
            self.end_call(c);
            return;
        }
        self.calls[c as usize].answered = true;
        self.gw(Some(c), |seq, _| GwEventOwned::CallbackResult { seq, callback_id: cb, outcome: "connected" });
        let talk = exp(&mut self.rng, self.beh.talk_mean);
        self.arm(at + talk, Timer::EndCall { call: c });
    }

    fn on_overflow(&mut self, m: Incoming) {
        let reason = m.reason.clone().unwrap_or_else(|| "?".into());
        let Some(c) = self.call_of(m.call_id.as_deref()) else {
            self.count("overflow_unknown_call");
            return;
        };
        let ci = c as usize;
        if let Some(a) = self.calls[ci].bridged_to {
            let user = self.agents[a as usize].user.clone();
            self.violation(
                "overflow_of_bridged_call",
                format!("{} for call {} bridged to {user}", m.ty, self.calls[ci].id),
            );
        }
        if self.calls[ci].ended {
            self.count("overflow_after_hangup");
            return;
        }
        let (outcome, end) = match m.ty.as_str() {
            "call.voicemail" => (format!("voicemail_{reason}"), Some("voicemail_done")),
            "call.forward" => (format!("forwarded_{reason}"), Some("transferred")),
            _ => (format!("hung_up_{reason}"), None),
        };
        self.outcome(&outcome);
        if let Some(reason) = end {
            self.gw(Some(c), |seq, d| GwEventOwned::Ended { seq, call_id: d.calls[ci].id.clone(), reason });
        }
        self.end_call(c);
    }

    fn on_agent(&mut self, a: u32, at: Instant, m: Incoming) {
        let ai = a as usize;
        match m.ty.as_str() {
            "hello" => {
                self.agents[ai].hello = true;
                self.agents[ai].status = m.status.unwrap_or_default();
                if self.agents[ai].status == "away" {
                    self.agent_cmd(a, &AgentCmd::StatusSet { status: "available" }, None);
                }
            }
            "status" => {
                let s = m.status.unwrap_or_default();
                if (s == "away" || s == "offline") && self.agents[ai].pending.take().is_some() {
                    // The server revokes a pending offer before it reports
                    // `away`; one still pending here was withdrawn without
                    // a word (servers before 2026-12-03 did that), counted
                    // so a report shows it.
                    self.count("offers_withdrawn");
                }
                self.agents[ai].status = s;
            }
            "offer" => self.on_offer(a, at, m),
            "offer.revoked" => {
                let reason = m.reason.as_deref().unwrap_or("?");
                let what = format!("revoked_{reason}");
                self.count(&what);
                if self.agents[ai].pending.as_ref().is_some_and(|p| Some(&p.offer_id) == m.offer_id.as_ref()) {
                    self.agents[ai].pending = None;
                }
            }
            "offer.won" => {
                self.count("offer.won");
                let matches =
                    self.agents[ai].pending.as_ref().is_some_and(|p| Some(&p.offer_id) == m.offer_id.as_ref());
                let accepted = self.agents[ai].pending.as_ref().is_some_and(|p| p.accepted);
                if !matches || !accepted {
                    let user = self.agents[ai].user.clone();
                    self.violation(
                        "won_without_accept",
                        format!("{user} won offer {:?} it did not accept", m.offer_id),
                    );
                }
                if matches {
                    self.agents[ai].pending = None;
                }
                if let Some(c) = self.call_of(m.call_id.as_deref())
                    && !self.calls[c as usize].failed.contains(&a)
                {
                    let ci = c as usize;
                    if let Some(w) = self.calls[ci].winner
                        && w != a
                    {
                        let (u1, u2) = (self.agents[w as usize].user.clone(), self.agents[ai].user.clone());
                        self.violation("two_winners", format!("call {} won by {u1} and {u2}", self.calls[ci].id));
                    }
                    if let Some(b) = self.calls[ci].bridged_to
                        && b != a
                    {
                        let (u1, u2) = (self.agents[b as usize].user.clone(), self.agents[ai].user.clone());
                        self.violation(
                            "bridge_not_to_winner",
                            format!("call {} bridged to {u1}, won by {u2}", self.calls[ci].id),
                        );
                    }
                    self.calls[ci].winner = Some(a);
                }
            }
            "offer.lost" => {
                let reason = m.reason.as_deref().unwrap_or("?");
                let what = format!("lost_{reason}");
                self.count(&what);
                if self.agents[ai].pending.as_ref().is_some_and(|p| Some(&p.offer_id) == m.offer_id.as_ref()) {
                    self.agents[ai].pending = None;
                }
            }
            "call.ended" => {
                self.count("agent_call_ended");
                if !self.agents[ai].connected {
                    return;
                }
                if self.beh.away_prob > 0.0
                    && !self.agents[ai].away_requested
                    && self.rng.random_bool(self.beh.away_prob.min(1.0))
                {
                    self.agents[ai].away_requested = true;
                    self.count("away_sent");
                    self.agent_cmd(a, &AgentCmd::StatusSet { status: "away" }, None);
                    let back = exp(&mut self.rng, self.beh.away_mean);
                    self.arm(at + back, Timer::Back { agent: a });
                } else if self.beh.wrapup_done_prob > 0.0 && self.rng.random_bool(self.beh.wrapup_done_prob.min(1.0)) {
                    let after = exp(&mut self.rng, self.beh.wrapup_done_mean);
                    self.arm(at + after, Timer::WrapupDone { agent: a });
                }
            }
            "error" => {
                let code = m.code.as_deref().unwrap_or("?");
                let cmd = m.reference.as_deref().unwrap_or("?");
                self.error(format!("agent:{cmd}:{code}"));
            }
            "missed_call" | "voicemail" | "inbox.message" | "queue.stats" => self.count("agent_notifications"),
            "pong" | "ok" => {}
            other => {
                let what = format!("unexpected_agent_{other}");
                self.count(&what);
            }
        }
    }

    fn on_offer(&mut self, a: u32, at: Instant, m: Incoming) {
        let ai = a as usize;
        self.count("offers");
        let Some(offer_id) = m.offer_id.clone() else {
            self.violation("offer_without_id", format!("{} got an offer without offer_id", self.agents[ai].user));
            return;
        };
        if let Some(p) = &self.agents[ai].pending {
            let detail = format!("{} offered {offer_id} while {} is pending", self.agents[ai].user, p.offer_id);
            self.violation("offer_while_pending", detail);
        } else if self.agents[ai].status != "available" {
            let detail = format!("{} offered {offer_id} while {}", self.agents[ai].user, self.agents[ai].status);
            self.violation("offer_while_not_available", detail);
        }
        let target = match (m.call_id.as_deref(), m.callback_id.as_deref()) {
            (Some(c), _) => c.to_owned(),
            (None, Some(cb)) => cb.to_owned(),
            (None, None) => {
                self.violation("offer_without_target", format!("offer {offer_id} names no call or callback"));
                String::new()
            }
        };
        if let Some(c) = self.call_of(m.call_id.as_deref()) {
            let call = &mut self.calls[c as usize];
            // Connection tasks hand their frames over in whatever order
            // they run: the first offer is the earliest receipt, not the
            // first one this loop hears of.
            if let Some(first) = call.first_offer_at.as_mut() {
                *first = (*first).min(at);
            } else {
                call.first_offer_at = Some(at);
                if call.record
                    && call.first_route != Some(Route::Queued)
                    && let Some(s) = call.sent_at
                {
                    self.window_offer.record(at.saturating_duration_since(s));
                }
            }
        }
        self.serial += 1;
        let serial = self.serial;
        self.agents[ai].pending = Some(Pending { offer_id, serial, accepted: false, target });
        if self.agents[ai].away_requested {
            // Sent before the server saw our `away`: it will be revoked.
            return;
        }
        let roll: f64 = self.rng.random();
        if roll < self.beh.no_answer_prob {
            self.count("offers_left_ringing");
            return;
        }
        let accept = roll >= self.beh.no_answer_prob + self.beh.decline_prob;
        let delay = exp(&mut self.rng, self.beh.answer_mean);
        self.arm(at + delay, Timer::Respond { agent: a, serial, accept });
    }
}

/// Owned gateway events, so a builder closure can read the driver.
enum GwEventOwned {
    Inbound { seq: u64, call_id: String, to: String, from: String },
    Answered { seq: u64, call_id: String, agent: String },
    BridgeFailed { seq: u64, call_id: String, agent: String, reason: &'static str },
    Ended { seq: u64, call_id: String, reason: &'static str },
    CallbackRequested { seq: u64, call_id: String },
    CallbackResult { seq: u64, callback_id: String, outcome: &'static str },
}

impl GwEventOwned {
    fn borrow(&self) -> GwEvent<'_> {
        match self {
            GwEventOwned::Inbound { seq, call_id, to, from } => GwEvent::CallInbound { seq: *seq, call_id, to, from },
            GwEventOwned::Answered { seq, call_id, agent } => GwEvent::CallAnswered { seq: *seq, call_id, agent },
            GwEventOwned::BridgeFailed { seq, call_id, agent, reason } => {
                GwEvent::CallBridgeFailed { seq: *seq, call_id, agent, reason }
            }
            GwEventOwned::Ended { seq, call_id, reason } => GwEvent::CallEnded { seq: *seq, call_id, reason },
            GwEventOwned::CallbackRequested { seq, call_id } => GwEvent::CallbackRequested { seq: *seq, call_id },
            GwEventOwned::CallbackResult { seq, callback_id, outcome } => {
                GwEvent::CallbackResult { seq: *seq, callback_id, outcome }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AgentSpec, NumberSpec};
    use serde_json::{Value, json};
    use tokio_tungstenite::tungstenite::Message;

    const MS: Duration = Duration::from_millis(1);

    fn topo() -> Topology {
        let agent = |u: &str| AgentSpec { user: u.into(), account: 0, token: format!("{u}-token") };
        Topology {
            accounts: vec!["acme".into()],
            agents: vec![agent("a0"), agent("a1")],
            numbers: vec![NumberSpec {
                number: "+15550100".into(),
                account: 0,
                strategy: "ring_all".into(),
                targets: vec![0, 1],
                callback: true,
            }],
            gateway_token: "gw".into(),
        }
    }

    /// A driver whose people answer and hang up at once, with one call
    /// placed at `t0`; both agents said hello.
    fn one_call(beh: Behaviour) -> (Driver, Instant, String) {
        let mut d = Driver::new(topo(), beh, "t".into());
        let t0 = Instant::now();
        for a in 0..2 {
            d.handle(msg(Peer::Agent(a), t0, json!({"type": "hello", "status": "available"})));
        }
        d.start_phase(Arrival::Burst { rate: 1.0, size: 1 }, Duration::from_millis(500), Duration::ZERO, t0);
        d.fire(t0);
        let sent = take(&mut d);
        assert_eq!(sent.len(), 1);
        let (peer, stamp, v) = &sent[0];
        assert_eq!((*peer, *stamp, v["type"].as_str()), (Peer::Gateway, Some(Stamp::GwSeq(1)), Some("call.inbound")));
        assert_eq!(v["to"], "+15550100");
        d.handle(Event::Sent { peer: Peer::Gateway, at: t0, stamp: Stamp::GwSeq(1) });
        let call = v["call_id"].as_str().expect("call id").to_owned();
        (d, t0, call)
    }

    fn quick() -> Behaviour {
        Behaviour { answer_mean: Duration::ZERO, talk_mean: Duration::ZERO, ..Behaviour::default() }
    }

    fn msg(peer: Peer, at: Instant, v: Value) -> Event {
        Event::Msg { peer, at, msg: Box::new(serde_json::from_value(v).expect("incoming shape")) }
    }

    fn take(d: &mut Driver) -> Vec<(Peer, Option<Stamp>, Value)> {
        d.out
            .drain(..)
            .map(|(p, o)| {
                let Message::Text(t) = o.msg else { panic!("json frames") };
                (p, o.stamp, serde_json::from_str(t.as_str()).expect("json"))
            })
            .collect()
    }

    fn kinds(d: &Driver) -> Vec<String> {
        d.violation_counts.keys().cloned().collect()
    }

    #[test]
    fn a_full_call_is_measured_and_counted() {
        let (mut d, t0, call) = one_call(quick());
        d.handle(msg(Peer::Gateway, t0 + MS, json!({"type": "ack", "seq": 1})));
        d.handle(msg(
            Peer::Agent(0),
            t0 + 2 * MS,
            json!({"type": "offer", "offer_id": "o1", "kind": "inbound", "call_id": call}),
        ));
        d.handle(msg(Peer::Agent(0), t0 + 2 * MS, json!({"type": "status", "status": "ringing"})));
        d.handle(msg(Peer::Gateway, t0 + 3 * MS, json!({"type": "call.ringing", "call_id": call, "agents": ["a0"]})));
        d.fire(t0 + 3 * MS);
        let sent = take(&mut d);
        assert_eq!(sent.len(), 1);
        assert_eq!(
            (sent[0].0, sent[0].1, &sent[0].2["type"]),
            (Peer::Agent(0), Some(Stamp::Accept), &json!("offer.accept"))
        );
        assert_eq!(sent[0].2["offer_id"], "o1");
        d.handle(Event::Sent { peer: Peer::Agent(0), at: t0 + 4 * MS, stamp: Stamp::Accept });
        d.handle(msg(Peer::Agent(0), t0 + 5 * MS, json!({"type": "status", "status": "on_call"})));
        d.handle(msg(Peer::Agent(0), t0 + 5 * MS, json!({"type": "offer.won", "offer_id": "o1", "call_id": call})));
        d.handle(msg(Peer::Gateway, t0 + 10 * MS, json!({"type": "call.bridge", "call_id": call, "agent": "a0"})));
        let sent = take(&mut d);
        assert_eq!(sent[0].2, json!({"type": "call.answered", "seq": 2, "call_id": call, "agent": "a0"}));
        d.handle(Event::Sent { peer: Peer::Gateway, at: t0 + 10 * MS, stamp: Stamp::GwSeq(2) });
        d.fire(t0 + 10 * MS);
        let sent = take(&mut d);
        assert_eq!((&sent[0].2["type"], &sent[0].2["seq"]), (&json!("call.ended"), &json!(3)));
        d.handle(Event::Sent { peer: Peer::Gateway, at: t0 + 10 * MS, stamp: Stamp::GwSeq(3) });
        assert!(!d.quiet(), "two events are not acked yet");
        d.handle(msg(Peer::Gateway, t0 + 11 * MS, json!({"type": "ack", "seq": 2})));
        d.handle(msg(Peer::Gateway, t0 + 12 * MS, json!({"type": "ack", "seq": 3})));
        assert!(d.quiet());
        let data = d.finish_phase();
        assert_eq!(d.violation_total(), 0, "{:?}", d.violations);
        assert_eq!(data.calls_sent, 1);
        assert_eq!(data.outcomes.get("answered"), Some(&1));
        let l = &data.lat;
        assert_eq!((l.offer.count(), l.bridge.count(), l.ack_inbound.count(), l.ack_all.count()), (1, 1, 1, 3));
        assert!((l.offer.quantile_us(0.5) - 2000.0).abs() < 10.0);
        assert!((l.bridge.quantile_us(0.5) - 6000.0).abs() < 10.0);
        assert!((l.ack_inbound.quantile_us(0.5) - 1000.0).abs() < 10.0);
        assert!((l.caller_wait.quantile_us(0.5) - 10_000.0).abs() < 20.0);
        assert_eq!(data.unresolved_offers + data.unfinished_calls + data.unacked_events, 0);
    }

    #[test]
    fn a_call_offered_after_queueing_is_not_an_offer_latency() {
        let (mut d, t0, call) = one_call(Behaviour { no_answer_prob: 1.0, ..quick() });
        d.handle(msg(
            Peer::Gateway,
            t0 + MS,
            json!({"type": "call.queued", "call_id": call, "position": 1, "ewt_ms": 0}),
        ));
        d.handle(msg(
            Peer::Agent(1),
            t0 + 900 * MS,
            json!({"type": "offer", "offer_id": "o1", "kind": "inbound", "call_id": call}),
        ));
        let data = d.finish_phase();
        assert_eq!((data.lat.offer.count(), data.lat.offer_after_queue.count()), (0, 1));
        assert_eq!(data.unresolved_offers, 1, "nobody answered it");
    }

    #[test]
    fn a_call_bridged_twice_is_a_violation() {
        let (mut d, t0, call) = one_call(Behaviour { talk_mean: Duration::from_secs(60), ..quick() });
        d.handle(msg(Peer::Gateway, t0 + MS, json!({"type": "call.bridge", "call_id": call, "agent": "a0"})));
        assert_eq!(d.violation_total(), 0);
        d.handle(msg(Peer::Gateway, t0 + 2 * MS, json!({"type": "call.bridge", "call_id": call, "agent": "a1"})));
        assert_eq!(kinds(&d), ["call_bridged_twice"]);
    }

    #[test]
    fn a_bridge_after_a_reported_failure_is_fine_and_a_late_win_of_the_failed_attempt_too() {
        let beh = Behaviour { bridge_fail_prob: 1.0, ..quick() };
        let (mut d, t0, call) = one_call(beh);
        d.handle(msg(Peer::Gateway, t0 + MS, json!({"type": "call.bridge", "call_id": call, "agent": "a0"})));
        let sent = take(&mut d);
        assert_eq!(sent[0].2["type"], "call.bridge_failed");
        d.beh.bridge_fail_prob = 0.0;
        // a0's offer.won of the failed attempt arrives late, then a1 wins.
        d.handle(msg(Peer::Agent(0), t0 + 2 * MS, json!({"type": "offer.won", "offer_id": "o1", "call_id": call})));
        d.handle(msg(Peer::Agent(1), t0 + 3 * MS, json!({"type": "offer.won", "offer_id": "o2", "call_id": call})));
        d.handle(msg(Peer::Gateway, t0 + 4 * MS, json!({"type": "call.bridge", "call_id": call, "agent": "a1"})));
        assert_eq!(kinds(&d), ["won_without_accept"], "only the unsolicited wins of this synthetic script");
    }

    #[test]
    fn two_winners_and_a_bridge_to_the_loser_are_violations() {
        let (mut d, t0, call) = one_call(quick());
        for (a, o) in [(0u32, "o1"), (1, "o2")] {
            d.handle(msg(
                Peer::Agent(a),
                t0 + MS,
                json!({"type": "offer", "offer_id": o, "kind": "inbound", "call_id": call}),
            ));
        }
        d.fire(t0 + MS);
        take(&mut d);
        d.handle(msg(Peer::Agent(0), t0 + 2 * MS, json!({"type": "offer.won", "offer_id": "o1", "call_id": call})));
        d.handle(msg(Peer::Agent(1), t0 + 2 * MS, json!({"type": "offer.won", "offer_id": "o2", "call_id": call})));
        d.handle(msg(Peer::Gateway, t0 + 3 * MS, json!({"type": "call.bridge", "call_id": call, "agent": "a0"})));
        assert_eq!(kinds(&d), ["bridge_not_to_winner", "two_winners"]);
    }

    #[test]
    fn an_offer_while_one_is_pending_or_while_busy_is_a_violation() {
        let (mut d, t0, call) = one_call(Behaviour { no_answer_prob: 1.0, ..quick() });
        d.handle(msg(
            Peer::Agent(0),
            t0 + MS,
            json!({"type": "offer", "offer_id": "o1", "kind": "inbound", "call_id": call}),
        ));
        assert_eq!(d.violation_total(), 0);
        d.handle(msg(
            Peer::Agent(0),
            t0 + MS,
            json!({"type": "offer", "offer_id": "o2", "kind": "inbound", "call_id": call}),
        ));
        assert_eq!(kinds(&d), ["offer_while_pending"]);
        d.handle(msg(Peer::Agent(1), t0 + MS, json!({"type": "status", "status": "on_call"})));
        d.handle(msg(
            Peer::Agent(1),
            t0 + MS,
            json!({"type": "offer", "offer_id": "o3", "kind": "inbound", "call_id": call}),
        ));
        assert_eq!(kinds(&d), ["offer_while_not_available", "offer_while_pending"]);
    }

    #[test]
    fn resolved_offers_clear_and_away_withdraws_silently() {
        let (mut d, t0, call) = one_call(Behaviour { no_answer_prob: 1.0, ..quick() });
        let offer = |id: &str| json!({"type": "offer", "offer_id": id, "kind": "inbound", "call_id": call});
        d.handle(msg(Peer::Agent(0), t0, offer("o1")));
        d.handle(msg(Peer::Agent(0), t0, json!({"type": "offer.revoked", "offer_id": "o1", "reason": "expired"})));
        d.handle(msg(Peer::Agent(0), t0, offer("o2")));
        d.handle(msg(Peer::Agent(0), t0, json!({"type": "status", "status": "away"})));
        assert_eq!(d.pending_offers(), 0);
        d.handle(msg(Peer::Agent(0), t0, json!({"type": "status", "status": "available"})));
        d.handle(msg(Peer::Agent(0), t0, offer("o3")));
        d.handle(msg(Peer::Agent(0), t0, json!({"type": "offer.lost", "offer_id": "o3", "reason": "too_late"})));
        assert_eq!(d.pending_offers(), 0);
        assert_eq!(d.violation_total(), 0, "{:?}", d.violations);
        d.handle(msg(Peer::Agent(0), t0, json!({"type": "status", "status": "away"})));
        d.handle(msg(Peer::Agent(0), t0, offer("o4")));
        assert_eq!(kinds(&d), ["offer_while_not_available"]);
    }

    #[test]
    fn an_agent_on_two_calls_and_repeated_acks_are_violations() {
        let (mut d, t0, first) = one_call(Behaviour { talk_mean: Duration::from_secs(60), ..quick() });
        d.handle(msg(Peer::Gateway, t0 + MS, json!({"type": "call.bridge", "call_id": first, "agent": "a0"})));
        d.start_phase(Arrival::Burst { rate: 1.0, size: 1 }, Duration::from_millis(500), Duration::ZERO, t0);
        d.fire(t0 + 2 * MS);
        let second = take(&mut d).into_iter().find(|(_, _, v)| v["type"] == "call.inbound").expect("a second call");
        let second = second.2["call_id"].as_str().expect("id").to_owned();
        d.handle(msg(Peer::Gateway, t0 + 3 * MS, json!({"type": "call.bridge", "call_id": second, "agent": "a0"})));
        assert_eq!(kinds(&d), ["agent_on_two_calls"]);
        d.handle(msg(Peer::Gateway, t0 + 4 * MS, json!({"type": "ack", "seq": 1})));
        d.handle(msg(Peer::Gateway, t0 + 4 * MS, json!({"type": "ack", "seq": 1})));
        assert_eq!(kinds(&d), ["ack_unknown_or_repeated", "agent_on_two_calls"]);
    }

    #[test]
    fn queued_callers_ask_for_callbacks_and_callbacks_complete() {
        let beh = Behaviour { callback_prob: 1.0, callback_after_mean: Duration::ZERO, ..quick() };
        let (mut d, t0, call) = one_call(beh);
        d.handle(msg(
            Peer::Gateway,
            t0 + MS,
            json!({"type": "call.queued", "call_id": call, "position": 1, "ewt_ms": 0}),
        ));
        d.fire(t0 + MS);
        let sent = take(&mut d);
        assert_eq!(sent[0].2, json!({"type": "callback.requested", "seq": 2, "call_id": call}));
        d.handle(msg(
            Peer::Gateway,
            t0 + 2 * MS,
            json!({"type": "callback.accepted", "call_id": call, "callback_id": "acme.cb1", "position": 1}),
        ));
        let sent = take(&mut d);
        assert_eq!(sent[0].2, json!({"type": "call.ended", "seq": 3, "call_id": call, "reason": "caller_hangup"}));
        assert_eq!(d.pending_callbacks(), 1);
        d.handle(msg(
            Peer::Agent(1),
            t0 + 3 * MS,
            json!({"type": "offer", "offer_id": "o1", "kind": "callback", "callback_id": "acme.cb1"}),
        ));
        d.fire(t0 + 3 * MS);
        assert_eq!(take(&mut d)[0].2["ref"], "offer.accept");
        d.handle(Event::Sent { peer: Peer::Agent(1), at: t0 + 3 * MS, stamp: Stamp::Accept });
        d.handle(msg(Peer::Gateway, t0 + 5 * MS, json!({"type": "callback.dial", "callback_id": "acme.cb1", "call_id": "acme.c7", "agent": "a1", "to": "+1", "caller_id": "+15550100"})));
        let sent = take(&mut d);
        assert_eq!(
            sent[0].2,
            json!({"type": "callback.result", "seq": 4, "callback_id": "acme.cb1", "outcome": "connected"})
        );
        d.fire(t0 + 5 * MS);
        assert_eq!(take(&mut d)[0].2["call_id"], "acme.c7");
        let data = d.finish_phase();
        assert_eq!(data.outcomes.get("callback_requested"), Some(&1));
        assert_eq!(data.outcomes.get("callback_completed"), Some(&1));
        assert_eq!(data.lat.callback_dial.count(), 1);
        assert_eq!(d.pending_callbacks(), 0);
        assert_eq!(d.violation_total(), 0, "{:?}", d.violations);
    }

    #[test]
    fn overflow_ends_the_call_and_overflowing_a_bridged_call_is_a_violation() {
        let (mut d, t0, call) = one_call(quick());
        d.handle(msg(
            Peer::Gateway,
            t0 + MS,
            json!({"type": "call.voicemail", "call_id": call, "reason": "queue_full"}),
        ));
        let sent = take(&mut d);
        assert_eq!(sent[0].2["reason"], "voicemail_done");
        assert_eq!(d.live_calls(), 0);
        assert_eq!(d.violation_total(), 0);
        let (mut d, t0, call) = one_call(Behaviour { talk_mean: Duration::from_secs(60), ..quick() });
        d.handle(msg(Peer::Gateway, t0 + MS, json!({"type": "call.bridge", "call_id": call, "agent": "a0"})));
        d.handle(msg(Peer::Gateway, t0 + MS, json!({"type": "call.hangup", "call_id": call, "reason": "max_wait"})));
        assert_eq!(kinds(&d), ["overflow_of_bridged_call"]);
    }

    #[test]
    fn poisson_arrivals_keep_their_rate() {
        let mut d = Driver::new(topo(), quick(), "p".into());
        let t0 = Instant::now();
        d.start_phase(Arrival::Poisson { rate: 1000.0 }, Duration::from_secs(10), Duration::ZERO, t0);
        let mut t = t0;
        while let Some(next) = d.next_deadline() {
            t = next.max(t);
            d.fire(t);
            d.out.clear();
            if d.arrivals_done(t) {
                break;
            }
        }
        let n = d.calls_sent() as f64;
        assert!((n - 10_000.0).abs() < 400.0, "{n} arrivals in 10 s at 1000/s");
    }
}
