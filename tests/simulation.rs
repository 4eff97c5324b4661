//! Seeded simulation of the routing core on a virtual clock.
//!
//! A random world of callers, a gateway and agents (several devices each)
//! drives the engine with arrivals, accepts, declines, hang-ups, bridge
//! failures, disconnects, presence changes, callback requests and results,
//! outbound calls, duplicate and bogus events, and admin changes (a
//! number's strategy, targets, ring timeout, wrap-up, auto-away, queue
//! limits, announcements, callbacks and overflow, all random). Each seed
//! also draws how often each of these happens (`Mix`). After every
//! step it checks the engine's internal invariants (including work
//! conservation and queue order at decision time) and what an outside
//! observer can see:
//!
//! - no call or callback with two winners (two bridges / dials);
//! - no user with two pending offers, nor on two calls;
//! - no call or callback with two outcomes, and, once the world drains,
//!   every one with exactly one;
//! - `longest_idle` offers go to the longest idle eligible target;
//! - a connected user's softphones show the status the engine holds;
//! - no offer or gateway command names another account's call;
//! - each call or callback record lists as rung exactly who was offered it;
//! - an inbound call's record says it was answered, and by whom, exactly
//!   when the gateway had reported it answered;
//! - replaying the journal (and restoring a mid-run snapshot then replaying
//!   the rest) reproduces the state exactly.
//!
//! Half the worlds also restart now and then as the server does (`restart`):
//! restored from a snapshot, every connection gone, the gateway's unanswered
//! commands sent again; nobody may be rung meanwhile.
//!
//! `round_robin_counts_stay_within_one` checks the round-robin fairness
//! promise separately.
//!
//! A failure prints its seed. Replay one seed with:
//!
//! ```sh
//! RINGLINE_SIM_SEED=<seed> RINGLINE_SIM_STEPS=<steps> cargo test --test simulation -- --nocapture
//! ```

use rand::seq::{IndexedRandom, SliceRandom};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use ringline::core::admin::{Actor, AdminCommand, NumberSpec};
use ringline::core::history::{CallKind, Outcome, Record};
use ringline::core::ids::{AccountId, ConnId, NumberId, OfferId, UserId};
use ringline::core::recent::RECENT_WINDOW;
use ringline::core::settings::{Overflow, QueueSettings, RoutingSettings, Strategy};
use ringline::core::team::{Lifecycle, Plan, Role};
use ringline::core::testkit::T0;
use ringline::core::{Engine, Input, Instant, Output, Reply};
use ringline::protocol::agent::{AgentCommand, AgentMessage, Status, Topic, WantedStatus};
use ringline::protocol::gateway::{DeliveryStatus, DialOutcome, EndReason, GatewayCommand, GatewayEvent, HangupReason};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

const ACME: &str = "acme";

/// (account, number, strategy, assigned, routing targets, callbacks on)
type NumberPlan<'a> = (&'a str, &'a str, Strategy, &'a [&'a str], Option<&'a [&'a str]>, bool);
const GLOBEX: &str = "globex";

/// What a step may do, and its weight in the base mix (per 100,000 steps:
/// a world that restarts at all does so about ten times in 250,000).
type Action = fn(&mut World);
const ACTIONS: [(u32, Action); 21] = [
    (10000, World::arrival),
    (12000, World::accept),
    (4000, World::decline),
    (22000, World::tick),
    (11000, World::gateway_answers),
    (1000, World::bridge_fails),
    (7000, World::end_talking),
    (3000, World::caller_hangs_up),
    (2500, World::request_callback),
    (5500, World::callback_result),
    (5000, World::connect),
    (4000, World::disconnect),
    (5000, World::presence),
    (1500, World::wrapup_done),
    (1500, World::outbound),
    (1500, World::gateway_reports),
    (4000, World::noise),
    (300, World::admin_change),
    (300, World::lifecycle_change),
    (400, World::subscribe),
    (4, World::restart),
];
/// `World::restart`'s place in `ACTIONS`.
const RESTART: usize = ACTIONS.len() - 1;

/// This world's weights: the base mix for one seed in four, otherwise
/// each action's weight scaled by a random factor, so seeds also explore
/// worlds of long queues, churning presence, storms of admin changes or
/// time standing almost still.
#[derive(Debug)]
struct Mix {
    cumulative: Vec<u32>,
    total: u32,
}

impl Mix {
    fn draw(rng: &mut ChaCha8Rng) -> Mix {
        let skewed = !rng.random_bool(0.25);
        // Half the worlds never restart, so their whole journal, replayed
        // from nothing, must give the live state (see `check_replay`).
        let restarts = rng.random_bool(0.5);
        let mut total = 0;
        let cumulative = ACTIONS
            .iter()
            .enumerate()
            .map(|(i, &(w, _))| {
                let factor = if skewed { *[0.1, 0.5, 1.0, 2.0, 8.0].choose(rng).unwrap_or(&1.0) } else { 1.0 };
                total += match (i == RESTART, restarts) {
                    (true, false) => 0,
                    // Each restart snapshots the whole state: not skewed.
                    (true, true) => w,
                    (false, _) => (f64::from(w) * factor).round() as u32,
                };
                total
            })
            .collect();
        Mix { cumulative, total }
    }
}

#[derive(Clone, Debug, PartialEq)]
enum CallState {
    /// The caller is holding (waiting or rung).
    Holding,
    Bridging(UserId),
    Talking(UserId),
}

#[derive(Clone, Debug)]
struct SimCall {
    account: AccountId,
    state: CallState,
}

#[derive(Debug)]
struct World {
    seed: u64,
    rng: ChaCha8Rng,
    mix: Mix,
    engine: Engine,
    now: Instant,
    step: u64,
    next_conn: u64,
    next_call: u64,
    /// Gateway view of calls it carries (inbound, outbound, callback dials).
    calls: BTreeMap<String, SimCall>,
    /// Callbacks being dialled: callback id -> (account, agent, dial call id).
    dialling: BTreeMap<String, (AccountId, UserId, String)>,
    /// What agents see: pending offer per (account, user).
    offers: BTreeMap<(AccountId, UserId), (OfferId, String)>,
    /// Offers the last input revoked or won (even if it was refused: timers
    /// due at its instant fire first).
    ended_now: BTreeSet<(AccountId, UserId, OfferId)>,
    /// The call the gateway is ending in this input, and how it stood.
    ending: Option<(String, CallState)>,
    /// Who was offered each call or callback, by id.
    rung: BTreeMap<String, BTreeSet<UserId>>,
    /// The status each user's softphones show: the last `status` (or the
    /// `hello`) they were sent.
    shown: BTreeMap<(AccountId, UserId), Status>,
    /// Which call each agent is on, per the commands the gateway got.
    busy: BTreeMap<(AccountId, UserId), String>,
    conns: BTreeMap<(AccountId, UserId), Vec<ConnId>>,
    users: Vec<(AccountId, UserId)>,
    numbers: Vec<(AccountId, NumberId)>,
    /// Ids that must end with exactly one record.
    started: BTreeSet<String>,
    outcomes: BTreeMap<String, u32>,
    /// The last gateway event and the step it was sent in: a gateway
    /// re-sends what was not acked yet, i.e. what it just sent.
    last_sent: Option<(u64, AccountId, GatewayEvent)>,
    journal: Vec<(Instant, Input)>,
    /// The latest state a server could recover from: the mid-run
    /// snapshot or the one the last restart came back from, with the
    /// journal position it covers.
    snapshot: Option<(usize, Vec<u8>)>,
    /// Whether the world restarted: then only the latest snapshot plus
    /// the journal after it must give the live state, as for the server.
    restarted: bool,
    deactivated: BTreeSet<(AccountId, UserId)>,
    outbound: BTreeSet<String>,
    /// Commands that handed a call (overflow) or an SMS to the gateway for
    /// good, by call or message id, with when they were seen. The engine
    /// sends them again after a restart until the gateway reports on them
    /// or it forgets the id ([`RECENT_WINDOW`]).
    handed_off: BTreeMap<String, (Instant, AccountId, GatewayCommand)>,
    /// `handed_off`'s ids by age, to drop those the engine has forgotten.
    handed_order: VecDeque<(Instant, String)>,
}

/// The longest a `tick` moves the clock: timers it fires act as of their
/// own deadline, up to this much before the world's `now`.
const MAX_TICK: Duration = Duration::from_secs(20);

fn acc(s: &str) -> AccountId {
    AccountId::from(s)
}

impl World {
    fn new(seed: u64) -> World {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mix = Mix::draw(&mut rng);
        let mut w = World {
            seed,
            rng,
            mix,
            engine: Engine::new(),
            now: T0,
            step: 0,
            next_conn: 0,
            next_call: 0,
            calls: BTreeMap::new(),
            dialling: BTreeMap::new(),
            offers: BTreeMap::new(),
            ended_now: BTreeSet::new(),
            shown: BTreeMap::new(),
            rung: BTreeMap::new(),
            ending: None,
            busy: BTreeMap::new(),
            conns: BTreeMap::new(),
            users: Vec::new(),
            numbers: Vec::new(),
            started: BTreeSet::new(),
            outcomes: BTreeMap::new(),
            last_sent: None,
            journal: Vec::new(),
            snapshot: None,
            restarted: false,
            deactivated: BTreeSet::new(),
            outbound: BTreeSet::new(),
            handed_off: BTreeMap::new(),
            handed_order: VecDeque::new(),
        };
        w.provision();
        w
    }

    fn must(&mut self, input: Input) {
        if let Err(e) = self.feed(input) {
            self.fail(format!("provisioning refused: {e}"));
        }
    }

    fn provision(&mut self) {
        let admin = |a: &str, cmd| Input::Admin { account: acc(a), actor: Actor::System, cmd: Box::new(cmd) };
        self.must(admin(ACME, AdminCommand::SetPlan { plan: Plan::Pro }));
        self.must(admin(GLOBEX, AdminCommand::SetPlan { plan: Plan::Team }));
        let acme_users = ["owner", "sup", "a1", "a2", "a3", "a4", "a5", "a6", "t1", "o1"];
        for u in acme_users {
            let role = match u {
                "owner" => Role::Owner,
                "sup" => Role::Supervisor,
                _ => Role::Agent,
            };
            self.must(admin(
                ACME,
                AdminCommand::UpsertUser { user: u.into(), email: format!("{u}@acme.test"), role, token_hash: None },
            ));
            self.users.push((acc(ACME), u.into()));
        }
        for u in ["gowner", "g1", "g2"] {
            let role = if u == "gowner" { Role::Owner } else { Role::Agent };
            self.must(admin(
                GLOBEX,
                AdminCommand::UpsertUser { user: u.into(), email: format!("{u}@globex.test"), role, token_hash: None },
            ));
            self.users.push((acc(GLOBEX), u.into()));
        }
        let numbers: [NumberPlan; 5] = [
            (ACME, "+15550100", Strategy::RingAll, &["a1", "a2", "a3", "sup"], None, true),
            (ACME, "+15550101", Strategy::RingInOrder, &["a2", "a3", "a4"], Some(&["t1", "a2", "a3", "a4"]), false),
            (ACME, "+15550102", Strategy::RoundRobin, &["a4", "a5", "a6", "a1"], None, true),
            (ACME, "+15550103", Strategy::LongestIdle, &["a5", "a6", "a1", "a2"], None, false),
            (GLOBEX, "+15550200", Strategy::RoundRobin, &["g1", "g2"], None, true),
        ];
        for (i, (a, n, strategy, assigned, targets, callback)) in numbers.into_iter().enumerate() {
            let spec = NumberSpec {
                name: format!("line {i}"),
                assigned: assigned.iter().map(|&u| u.into()).collect(),
                caller_id: if a == ACME { vec!["o1".into()] } else { vec![] },
                routing: RoutingSettings {
                    strategy,
                    ring_timeout: Duration::from_secs(4),
                    wrap_up: Duration::from_secs(i as u64 % 3),
                    targets: targets.map(|t| t.iter().map(|&u| u.into()).collect()),
                    auto_away_after_missed: if i == 1 { 3 } else { 0 },
                },
                queue: QueueSettings {
                    max_waiting: 6,
                    max_wait: Duration::from_secs(90),
                    announce_every: Duration::from_secs(20),
                    announce_min_gap: Duration::from_secs(3),
                    callback,
                    callback_attempts: 2,
                    callback_retry_after: Duration::from_secs(10),
                    overflow: if i == 2 { Overflow::Forward("+15550199".into()) } else { Overflow::Voicemail },
                    ..Default::default()
                },
            };
            self.must(admin(a, AdminCommand::UpsertNumber { number: n.into(), spec }));
            self.numbers.push((acc(a), n.into()));
        }
    }

    fn fail(&self, what: impl std::fmt::Display) -> ! {
        panic!(
            "simulation seed {} step {}: {what}\nreplay: RINGLINE_SIM_SEED={} RINGLINE_SIM_STEPS={} cargo test --test simulation -- --nocapture",
            self.seed,
            self.step,
            self.seed,
            self.step + 1
        );
    }

    /// Puts back an offer taken out of `offers` before a command the
    /// engine refused, unless that very input ended it.
    fn restore_offer(&mut self, key: (AccountId, UserId), pending: (OfferId, String)) {
        if !self.ended_now.contains(&(key.0.clone(), key.1.clone(), pending.0)) {
            self.offers.insert(key, pending);
        }
    }

    fn pick<T: Clone>(&mut self, items: &[T]) -> Option<T> {
        if items.is_empty() {
            return None;
        }
        let i = self.rng.random_range(0..items.len());
        Some(items[i].clone())
    }

    /// Feeds one input, journals it if the engine says so, and checks what
    /// came out.
    fn feed(&mut self, input: Input) -> Result<Reply, ringline::core::CoreError> {
        let before = self.longest_idle_view();
        let trace = std::env::var_os("RINGLINE_SIM_TRACE").is_some();
        if trace {
            // Before handling too, so an input the engine panics on is named.
            eprintln!("[{}] {:?} {:?} ...", self.step, self.now, input);
        }
        let h = self.engine.handle(self.now, input.clone());
        if h.journal {
            self.journal.push((self.now, input.clone()));
        }
        if h.result.is_err() && h.journal {
            self.fail("a refused input asked to be journaled");
        }
        let outs: Vec<Output> = self.engine.drain_outputs().collect();
        if trace {
            eprintln!("[{}] -> {:?}", self.step, h.result);
            for o in &outs {
                eprintln!("      {o:?}");
            }
        }
        self.observe(&outs, before);
        if let Err(e) = self.engine.check_invariants() {
            self.fail(format!("invariant: {e}"));
        }
        h.result
    }

    /// Per account: eligible users' idle-since, for the longest_idle check.
    fn longest_idle_view(&self) -> BTreeMap<(AccountId, UserId), Instant> {
        let view = self.engine.inspect();
        let mut out = BTreeMap::new();
        for (a, u) in &self.users {
            if view.is_eligible(a, u)
                && let Some(t) = view.idle_since(a, u)
            {
                out.insert((a.clone(), u.clone()), t);
            }
        }
        out
    }

    fn observe(&mut self, outs: &[Output], idle_before: BTreeMap<(AccountId, UserId), Instant>) {
        let mut offered_now: Vec<(AccountId, UserId, String)> = Vec::new();
        self.ended_now.clear();
        for o in outs {
            match o {
                Output::User { account, user, msg } => match msg {
                    AgentMessage::Offer { offer_id, call_id, callback_id, .. } => {
                        let key = (account.clone(), user.clone());
                        if let Some(prev) = self.offers.get(&key) {
                            self.fail(format!("{user} offered {offer_id} while {:?} is pending", prev));
                        }
                        if self.busy.contains_key(&key) {
                            self.fail(format!("{user} offered a call while on {:?}", self.busy[&key]));
                        }
                        let id =
                            call_id.as_ref().map(|c| c.to_string()).or(callback_id.as_ref().map(|c| c.to_string()));
                        let id = id.unwrap_or_default();
                        if let Some(c) = self.calls.get(&id)
                            && c.account != *account
                        {
                            self.fail(format!("{user} of {account} offered {}'s call {id}", c.account));
                        }
                        offered_now.push((account.clone(), user.clone(), id.clone()));
                        self.rung.entry(id.clone()).or_default().insert(user.clone());
                        self.offers.insert(key, (*offer_id, id));
                    }
                    AgentMessage::Status { status, .. } => {
                        self.shown.insert((account.clone(), user.clone()), *status);
                    }
                    AgentMessage::OfferRevoked { offer_id, .. } | AgentMessage::OfferWon { offer_id, .. } => {
                        self.ended_now.insert((account.clone(), user.clone(), *offer_id));
                        let key = (account.clone(), user.clone());
                        if self.offers.get(&key).is_some_and(|(o, _)| o == offer_id) {
                            self.offers.remove(&key);
                        }
                    }
                    _ => {}
                },
                Output::Conn { msg: AgentMessage::Hello { user, account, status, .. }, .. } => {
                    self.shown.insert((account.clone(), user.clone()), *status);
                }
                Output::Gateway { account, cmd } => self.gateway_command(account, cmd),
                Output::Record { record, .. } => {
                    if let Record::Call(rec) = &**record {
                        let n = self.outcomes.entry(rec.id.clone()).or_default();
                        *n += 1;
                        if *n > 1 {
                            self.fail(format!("{} has two outcomes, the second {:?}", rec.id, rec.outcome));
                        }
                        if let Some((id, state)) = &self.ending
                            && *id == rec.id
                            && rec.kind == CallKind::Inbound
                        {
                            let answered = match state {
                                CallState::Talking(a) => Some(a),
                                _ => None,
                            };
                            if rec.answered_by.as_ref() != answered
                                || (rec.outcome == Outcome::Answered) != answered.is_some()
                            {
                                self.fail(format!(
                                    "{id} ended while {state:?}, recorded {:?} by {:?}",
                                    rec.outcome, rec.answered_by
                                ));
                            }
                        }
                        let recorded: BTreeSet<UserId> = rec.rung.iter().cloned().collect();
                        let seen = self.rung.remove(rec.id.as_str()).unwrap_or_default();
                        if recorded != seen {
                            self.fail(format!("{} records {recorded:?} rung, the users were offered {seen:?}", rec.id));
                        }
                    }
                }
                Output::Close { conn, .. } => {
                    for v in self.conns.values_mut() {
                        v.retain(|c| c != conn);
                    }
                }
                _ => {}
            }
        }
        self.check_longest_idle(&offered_now, &idle_before);
        self.check_shown_status();
    }

    /// A connected user's softphones show the status the engine holds:
    /// every change reaches them.
    fn check_shown_status(&self) {
        for (key, conns) in &self.conns {
            if conns.is_empty() {
                continue;
            }
            let actual = self.engine.user_status(&key.0, &key.1);
            if actual != self.shown.get(key).copied() {
                self.fail(format!("{} shows {:?}, the engine has {actual:?}", key.1, self.shown.get(key)));
            }
        }
    }

    fn gateway_command(&mut self, account: &AccountId, cmd: &GatewayCommand) {
        if let Some(id) = cmd.call_id()
            && let Some(c) = self.calls.get(id.as_str())
            && c.account != *account
        {
            self.fail(format!("{account} told about {}'s call {id}: {cmd:?}", c.account));
        }
        match cmd {
            GatewayCommand::CallBridge { call_id, agent } => {
                let id = call_id.to_string();
                match self.calls.get(&id).map(|c| c.state.clone()) {
                    Some(CallState::Holding) => {}
                    other => self.fail(format!("bridge for {id} in state {other:?}: two winners?")),
                }
                self.take_agent(account, agent, &id);
                if let Some(c) = self.calls.get_mut(&id) {
                    c.state = CallState::Bridging(agent.clone());
                }
            }
            GatewayCommand::CallbackDial { callback_id, call_id, agent, .. } => {
                let cb = callback_id.to_string();
                if self.dialling.contains_key(&cb) {
                    self.fail(format!("callback {cb} dialled twice at once"));
                }
                self.take_agent(account, agent, call_id.as_str());
                self.dialling.insert(cb, (account.clone(), agent.clone(), call_id.to_string()));
            }
            GatewayCommand::CallDial { call_id, agent, .. } => {
                self.take_agent(account, agent, call_id.as_str());
                self.outbound.insert(call_id.to_string());
                self.started.insert(call_id.to_string());
                self.calls.insert(
                    call_id.to_string(),
                    SimCall { account: account.clone(), state: CallState::Bridging(agent.clone()) },
                );
            }
            GatewayCommand::CallVoicemail { call_id, .. }
            | GatewayCommand::CallForward { call_id, .. }
            | GatewayCommand::CallHangup { call_id, .. } => {
                // The caller leaves us (overflow, or an agent hung up).
                if let Some(c) = self.calls.remove(call_id.as_str())
                    && let CallState::Bridging(a) | CallState::Talking(a) = c.state
                {
                    self.busy.remove(&(c.account, a));
                }
                // A timer due before the gateway's own `call.ended` for the
                // call can overflow it in that same input: the end settles
                // the hand-off at once.
                let ended = self.ending.as_ref().is_some_and(|(id, _)| id == call_id.as_str());
                if !ended && !matches!(cmd, GatewayCommand::CallHangup { reason: HangupReason::AgentRequest, .. }) {
                    self.hand_off(call_id.to_string(), account, cmd);
                }
            }
            GatewayCommand::MessageSend { message_id, .. } => self.hand_off(message_id.to_string(), account, cmd),
            GatewayCommand::CallbackAccepted { call_id, callback_id, .. } => {
                self.calls.remove(call_id.as_str());
                self.started.insert(callback_id.to_string());
            }
            _ => {}
        }
    }

    fn hand_off(&mut self, id: String, account: &AccountId, cmd: &GatewayCommand) {
        self.handed_off.insert(id.clone(), (self.now, account.clone(), cmd.clone()));
        self.handed_order.push_back((self.now, id));
        // Older than the engine's memory: it may drop them any time now.
        while let Some((at, id)) = self.handed_order.front()
            && *at + RECENT_WINDOW + MAX_TICK < self.now
        {
            if self.handed_off.get(id).is_some_and(|(t, ..)| t == at) {
                self.handed_off.remove(id);
            }
            self.handed_order.pop_front();
        }
    }

    fn take_agent(&mut self, account: &AccountId, agent: &UserId, call: &str) {
        let key = (account.clone(), agent.clone());
        if let Some(prev) = self.busy.get(&key) {
            self.fail(format!("{agent} given {call} while on {prev}"));
        }
        self.busy.insert(key, call.to_string());
    }

    /// A longest_idle offer goes to the eligible target idle longest, among
    /// those who have not turned this call down in the current cycle.
    fn check_longest_idle(
        &self,
        offered: &[(AccountId, UserId, String)],
        before: &BTreeMap<(AccountId, UserId), Instant>,
    ) {
        let view = self.engine.inspect();
        let offered_users: BTreeSet<_> = offered.iter().map(|(a, u, _)| (a.clone(), u.clone())).collect();
        // Only an entry's last offer in this input: the `tried` list read
        // below is the one after the input, and a time jump can expire
        // several offers of one entry in one tick and start a new cycle
        // (clearing the list) between them.
        let mut seen = BTreeSet::new();
        let last_offers: Vec<_> =
            offered.iter().rev().filter(|(a, _, id)| seen.insert((a.clone(), id.clone()))).collect();
        for (a, u, id) in last_offers {
            let Some(&t_u) = before.get(&(a.clone(), u.clone())) else { continue };
            for n in view.numbers(a) {
                if view.strategy(a, &n) != Some(Strategy::LongestIdle) {
                    continue;
                }
                let q = view.queue(a, &n);
                let Some(item) = q.iter().find(|q| &q.id == id) else { continue };
                let targets = view.targets(a, &n);
                let pos_u = targets.iter().position(|x| x == u);
                for (pos_v, v) in targets.iter().enumerate() {
                    let key = (a.clone(), v.clone());
                    let Some(&t_v) = before.get(&key) else { continue };
                    if v == u || offered_users.contains(&key) || item.tried.contains(v) || !view.is_eligible(a, v) {
                        continue;
                    }
                    if (t_v, Some(pos_v)) < (t_u, pos_u) {
                        self.fail(format!(
                            "longest_idle on {n} offered {id} to {u} (idle since {t_u:?}) over {v} (since {t_v:?})"
                        ));
                    }
                }
            }
        }
    }

    // ---- actions ----------------------------------------------------------

    fn gw(&mut self, account: &AccountId, event: GatewayEvent) -> Result<Reply, ringline::core::CoreError> {
        self.last_sent = Some((self.step, account.clone(), event.clone()));
        self.feed(Input::Gateway { account: account.clone(), event })
    }

    fn agent_cmd(&mut self, a: &AccountId, u: &UserId, cmd: AgentCommand) -> Result<Reply, ringline::core::CoreError> {
        let conn = self.conns.get(&(a.clone(), u.clone())).and_then(|v| v.first().copied()).unwrap_or(ConnId(u64::MAX));
        self.feed(Input::Agent { account: a.clone(), conn, ref_: None, cmd })
    }

    fn step_once(&mut self) {
        let r = self.rng.random_range(0..self.mix.total);
        let at = self.mix.cumulative.partition_point(|&c| c <= r);
        (ACTIONS[at].1)(self);
    }

    fn arrival(&mut self) {
        let Some((a, n)) = self.pick(&self.numbers.clone()) else { return };
        self.next_call += 1;
        let id = format!("c{}", self.next_call);
        let priority = if self.rng.random_bool(0.15) { Some(self.rng.random_range(1..=9u8)) } else { None };
        let ev =
            GatewayEvent::CallInbound { call_id: id.as_str().into(), to: n, from: "+15551230001".into(), priority };
        self.calls.insert(id.clone(), SimCall { account: a.clone(), state: CallState::Holding });
        match self.gw(&a, ev) {
            Ok(Reply::Done) => {
                self.started.insert(id);
            }
            other => self.fail(format!("new call refused: {other:?}")),
        }
    }

    fn accept(&mut self) {
        let pending: Vec<_> = self.offers.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let Some(((a, u), (offer, _))) = self.pick(&pending) else { return };
        // Sometimes from the second device; sometimes an accept races a stale id.
        let conns = self.conns.get(&(a.clone(), u.clone())).cloned().unwrap_or_default();
        let Some(conn) = self.pick(&conns) else { return };
        let offer = if self.rng.random_bool(0.05) { OfferId(offer.0.saturating_sub(1)) } else { offer };
        let _ = self.feed(Input::Agent {
            account: a,
            conn,
            ref_: None,
            cmd: AgentCommand::OfferAccept { offer_id: offer },
        });
    }

    fn decline(&mut self) {
        let pending: Vec<_> = self.offers.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let Some(((a, u), (offer, id))) = self.pick(&pending) else { return };
        // The engine may ring the same user again within this very input.
        self.offers.remove(&(a.clone(), u.clone()));
        if self.agent_cmd(&a, &u, AgentCommand::OfferDecline { offer_id: offer }).is_err() {
            self.restore_offer((a, u), (offer, id));
        }
    }

    fn tick(&mut self) {
        let ms = if self.rng.random_bool(0.1) {
            self.rng.random_range(0..MAX_TICK.as_millis() as u64)
        } else {
            self.rng.random_range(0..1500)
        };
        self.now = self.now + Duration::from_millis(ms);
        let _ = self.feed(Input::Tick);
    }

    fn calls_in(&self, pred: impl Fn(&CallState) -> bool) -> Vec<(String, SimCall)> {
        self.calls.iter().filter(|(_, c)| pred(&c.state)).map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    fn gateway_answers(&mut self) {
        let bridging = self.calls_in(|s| matches!(s, CallState::Bridging(_)));
        let Some((id, c)) = self.pick(&bridging) else { return };
        let CallState::Bridging(agent) = c.state else { return };
        if self.gw(&c.account, GatewayEvent::CallAnswered { call_id: id.as_str().into(), agent: agent.clone() }).is_ok()
            && let Some(c) = self.calls.get_mut(&id)
        {
            c.state = CallState::Talking(agent);
        }
    }

    fn bridge_fails(&mut self) {
        let bridging = self.calls_in(|s| matches!(s, CallState::Bridging(_)));
        let Some((id, c)) = self.pick(&bridging) else { return };
        let CallState::Bridging(agent) = c.state else { return };
        if self.outbound.contains(&id) {
            return; // outbound calls do not fail this way
        }
        let ev = GatewayEvent::CallBridgeFailed {
            call_id: id.as_str().into(),
            agent: agent.clone(),
            reason: "device".into(),
        };
        let freed = self.busy.remove(&(c.account.clone(), agent.clone()));
        if let Some(call) = self.calls.get_mut(&id) {
            call.state = CallState::Holding;
        }
        if self.gw(&c.account, ev).is_err() {
            self.fail(format!("bridge failure of {id} refused"));
        }
        let _ = freed;
    }

    fn end_call(&mut self, id: &str, reason: EndReason) {
        let Some(c) = self.calls.remove(id) else { return };
        if let CallState::Bridging(a) | CallState::Talking(a) = &c.state {
            self.busy.remove(&(c.account.clone(), a.clone()));
        }
        self.ending = Some((id.to_string(), c.state.clone()));
        let _ = self.gw(&c.account, GatewayEvent::CallEnded { call_id: id.into(), reason });
        self.ending = None;
    }

    fn end_talking(&mut self) {
        let talking = self.calls_in(|s| matches!(s, CallState::Talking(_) | CallState::Bridging(_)));
        let Some((id, c)) = self.pick(&talking) else { return };
        if matches!(c.state, CallState::Bridging(_)) && !self.outbound.contains(&id) {
            return;
        }
        let reason = if self.rng.random_bool(0.5) { EndReason::AgentHangup } else { EndReason::CallerHangup };
        self.end_call(&id, reason);
    }

    fn caller_hangs_up(&mut self) {
        let holding = self.calls_in(|s| matches!(s, CallState::Holding | CallState::Bridging(_)));
        let Some((id, _)) = self.pick(&holding) else { return };
        if self.outbound.contains(&id) {
            return;
        }
        self.end_call(&id, EndReason::CallerHangup);
    }

    fn request_callback(&mut self) {
        let holding = self.calls_in(|s| *s == CallState::Holding);
        let Some((id, c)) = self.pick(&holding) else { return };
        let _ = self.gw(&c.account, GatewayEvent::CallbackRequested { call_id: id.as_str().into(), phone: None });
    }

    fn callback_result(&mut self) {
        let dialling: Vec<_> = self.dialling.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let Some((cb, (a, agent, dial))) = self.pick(&dialling) else { return };
        let outcome = match self.rng.random_range(0..10) {
            0..6 => DialOutcome::Connected,
            6..8 => DialOutcome::NoAnswer,
            8 => DialOutcome::Busy,
            _ => DialOutcome::Failed,
        };
        // A failed attempt frees the agent within this very input.
        let freed =
            if outcome == DialOutcome::Connected { None } else { self.busy.remove(&(a.clone(), agent.clone())) };
        if self.gw(&a, GatewayEvent::CallbackResult { callback_id: cb.as_str().into(), outcome }).is_ok() {
            self.dialling.remove(&cb);
            if outcome == DialOutcome::Connected {
                self.calls.insert(dial, SimCall { account: a, state: CallState::Talking(agent) });
            }
        } else if let Some(call) = freed {
            self.busy.insert((a, agent), call);
        }
    }

    fn connect(&mut self) {
        let Some((a, u)) = self.pick(&self.users.clone()) else { return };
        if self.conns.get(&(a.clone(), u.clone())).is_some_and(|v| v.len() >= 2) {
            return;
        }
        self.next_conn += 1;
        let conn = ConnId(self.next_conn);
        if self.feed(Input::Connect { account: a.clone(), user: u.clone(), conn }).is_ok() {
            self.conns.entry((a, u)).or_default().push(conn);
        }
    }

    fn disconnect(&mut self) {
        let open: Vec<_> = self.conns.iter().flat_map(|(k, v)| v.iter().map(move |c| (k.clone(), *c))).collect();
        let Some(((a, u), conn)) = self.pick(&open) else { return };
        let key = (a.clone(), u);
        let mut last = false;
        if let Some(v) = self.conns.get_mut(&key) {
            v.retain(|&c| c != conn);
            last = v.is_empty();
        }
        if last {
            self.offers.remove(&key); // withdrawn with the last device
        }
        let _ = self.feed(Input::Disconnect { account: a, conn });
        if last {
            // Also one made by a timer that fired first in this very input:
            // it is withdrawn silently too (nobody is left to tell).
            self.offers.remove(&key);
        }
    }

    fn presence(&mut self) {
        let Some((a, u)) = self.pick(&self.users.clone()) else { return };
        let away = self.rng.random_bool(0.35);
        let status = if away { WantedStatus::Away } else { WantedStatus::Available };
        // Going away while rung revokes the offer (`observe` sees it end).
        let _ = self.agent_cmd(&a, &u, AgentCommand::StatusSet { status, reason: None });
    }

    fn wrapup_done(&mut self) {
        let Some((a, u)) = self.pick(&self.users.clone()) else { return };
        let _ = self.agent_cmd(&a, &u, AgentCommand::WrapupDone {});
    }

    fn outbound(&mut self) {
        let Some((a, u)) = self.pick(&self.users.clone()) else { return };
        let from = self.numbers.iter().find(|(x, _)| *x == a).map(|(_, n)| n.clone());
        let Some(from) = from else { return };
        if self.rng.random_bool(0.3) {
            let sms = AgentCommand::MessageSend { from, to: "+15557770000".into(), body: "on my way".into() };
            let _ = self.agent_cmd(&a, &u, sms);
            return;
        }
        // Dialling out while rung revokes the offer (`observe` sees it end).
        let _ = self.agent_cmd(&a, &u, AgentCommand::CallDial { from, to: "+15557770000".into() });
    }

    /// Whether the engine surely still remembers what it handed off at
    /// `at` (world time): timers act as of their deadline, so its own
    /// time for it may be up to a tick earlier.
    fn remembered(&self, at: Instant) -> bool {
        at + RECENT_WINDOW > self.now + MAX_TICK
    }

    /// The gateway reports on something handed to it: the call it sent to
    /// voicemail (maybe with a voicemail left), forwarded or hung up is
    /// over; the SMS went out. Each settles its hand-off.
    fn gateway_reports(&mut self) {
        if self.handed_off.is_empty() {
            return;
        }
        let k = self.rng.random_range(0..self.handed_off.len());
        let Some(id) = self.handed_off.keys().nth(k).cloned() else { return };
        let Some((at, account, cmd)) = self.handed_off.remove(&id) else { return };
        let event = match &cmd {
            GatewayCommand::MessageSend { message_id, .. } => {
                GatewayEvent::MessageStatus { message_id: message_id.clone(), status: DeliveryStatus::Delivered }
            }
            GatewayCommand::CallVoicemail { call_id, .. } if self.rng.random_bool(0.5) => {
                GatewayEvent::VoicemailRecorded {
                    call_id: call_id.clone(),
                    url: "https://vm.test/1.wav".into(),
                    duration_ms: 9000,
                }
            }
            GatewayCommand::CallVoicemail { call_id, .. } => {
                GatewayEvent::CallEnded { call_id: call_id.clone(), reason: EndReason::VoicemailDone }
            }
            GatewayCommand::CallForward { call_id, .. } => {
                GatewayEvent::CallEnded { call_id: call_id.clone(), reason: EndReason::Transferred }
            }
            GatewayCommand::CallHangup { call_id, .. } => {
                GatewayEvent::CallEnded { call_id: call_id.clone(), reason: EndReason::CallerHangup }
            }
            other => self.fail(format!("not a hand-off: {other:?}")),
        };
        let r = self.gw(&account, event);
        if self.remembered(at) && r != Ok(Reply::Done) {
            self.fail(format!("the gateway's report on {id} was {r:?}"));
        }
    }

    /// Duplicates, unknown ids, messages and voicemails: nothing here may
    /// create a second outcome or break anything.
    fn noise(&mut self) {
        match self.rng.random_range(0..5) {
            0 | 1 => {
                if let Some((step, a, ev)) = self.last_sent.clone()
                    && step + 1 == self.step
                {
                    let _ = self.feed(Input::Gateway { account: a, event: ev });
                }
            }
            2 => {
                let _ = self.feed(Input::Gateway {
                    account: acc(ACME),
                    event: GatewayEvent::CallEnded { call_id: "nope".into(), reason: EndReason::Failed },
                });
            }
            3 => {
                self.next_call += 1;
                let ev = GatewayEvent::MessageInbound {
                    message_id: format!("m{}", self.next_call).into(),
                    to: "+15550100".into(),
                    from: "+15557770000".into(),
                    body: "hello".into(),
                };
                let _ = self.gw(&acc(ACME), ev);
            }
            _ => {
                // An acme call id sent as globex's: must not reach acme.
                let ids: Vec<String> =
                    self.calls.iter().filter(|(_, c)| c.account.as_str() == ACME).map(|(k, _)| k.clone()).collect();
                if let Some(id) = self.pick(&ids) {
                    let r = self.feed(Input::Gateway {
                        account: acc(GLOBEX),
                        event: GatewayEvent::CallEnded { call_id: id.as_str().into(), reason: EndReason::CallerHangup },
                    });
                    if r.is_ok() {
                        self.fail(format!("globex ended acme's call {id}"));
                    }
                }
            }
        }
    }

    fn admin_change(&mut self) {
        let Some((a, n)) = self.pick(&self.numbers.clone()) else { return };
        let strategy = Strategy::ALL[self.rng.random_range(0..4)];
        let pool: Vec<UserId> = self.users.iter().filter(|(x, _)| *x == a).map(|(_, u)| u.clone()).collect();
        let mut assigned = Vec::new();
        for u in &pool {
            if self.rng.random_bool(0.45) && !self.deactivated.contains(&(a.clone(), u.clone())) {
                assigned.push(u.clone());
            }
        }
        assigned.retain(|u| u.as_str() != "o1");
        // Sometimes an explicit target list: any of the account's users
        // (assigned or not), in a random order.
        let targets = if self.rng.random_bool(0.3) {
            let mut t: Vec<UserId> = pool.iter().filter(|_| self.rng.random_bool(0.5)).cloned().collect();
            t.shuffle(&mut self.rng);
            Some(t)
        } else {
            None
        };
        let overflow = match self.rng.random_range(0..3) {
            0 => Overflow::Voicemail,
            1 => Overflow::Hangup,
            _ => Overflow::Forward("+15550199".into()),
        };
        let spec = NumberSpec {
            name: "changed".into(),
            assigned,
            caller_id: if a.as_str() == ACME { vec!["o1".into()] } else { vec![] },
            routing: RoutingSettings {
                strategy,
                ring_timeout: Duration::from_millis(self.rng.random_range(500..8_000)),
                wrap_up: Duration::from_millis(self.rng.random_range(0..3_000)),
                targets,
                auto_away_after_missed: if self.rng.random_bool(0.2) { self.rng.random_range(1..4) } else { 0 },
            },
            queue: QueueSettings {
                enabled: self.rng.random_bool(0.9),
                max_waiting: self.rng.random_range(1..10),
                max_wait: Duration::from_secs(self.rng.random_range(5..120)),
                announce_position: self.rng.random_bool(0.8),
                announce_every: Duration::from_secs(self.rng.random_range(1..30)),
                announce_min_gap: Duration::from_millis(self.rng.random_range(0..5_000)),
                callback: self.rng.random_bool(0.7),
                callback_attempts: self.rng.random_range(1..4),
                callback_retry_after: Duration::from_secs(self.rng.random_range(1..20)),
                overflow,
            },
        };
        let _ = self.feed(Input::Admin {
            account: a,
            actor: Actor::System,
            cmd: Box::new(AdminCommand::UpsertNumber { number: n, spec }),
        });
    }

    fn lifecycle_change(&mut self) {
        let Some((a, u)) = self.pick(&self.users.clone()) else { return };
        let key = (a.clone(), u.clone());
        let lifecycle = if self.deactivated.contains(&key) { Lifecycle::Active } else { Lifecycle::Deactivated };
        let cmd = AdminCommand::SetLifecycle { user: u.clone(), lifecycle };
        let saved = (self.offers.get(&key).cloned(), self.conns.get(&key).cloned());
        if lifecycle == Lifecycle::Deactivated {
            self.offers.remove(&key);
            self.conns.remove(&key);
        }
        if self.feed(Input::Admin { account: a, actor: Actor::System, cmd: Box::new(cmd) }).is_ok() {
            if lifecycle == Lifecycle::Deactivated {
                // Also one made by a timer that fired first in this very
                // input: its devices are closed, so it goes silently.
                self.offers.remove(&key);
                self.deactivated.insert(key.clone());
            } else {
                self.deactivated.remove(&key);
            }
        } else {
            if let Some(o) = saved.0 {
                self.restore_offer(key.clone(), o);
            }
            if let Some(c) = saved.1 {
                self.conns.insert(key, c);
            }
        }
    }

    /// A restart as the server does one: the state comes back from a
    /// snapshot (through `take_accounts` / `insert_account`, as when
    /// accounts move between shards), no connection survives, and the
    /// commands the gateway may have missed are sent again. The run then
    /// goes on with the restored engine, so state a snapshot fails to keep
    /// shows up as misbehaviour, not only as different bytes.
    fn restart(&mut self) {
        let bytes = self.engine.snapshot().unwrap_or_else(|e| self.fail(format!("snapshot: {e}")));
        let mut restored = Engine::restore(&bytes).unwrap_or_else(|e| self.fail(format!("restore: {e}")));
        if restored.state_bytes() != self.engine.state_bytes() {
            self.fail("a restored snapshot differs from the state it was taken of");
        }
        let mut engine = Engine::new();
        for account in restored.take_accounts() {
            engine.insert_account(account);
        }
        self.engine = engine;
        self.snapshot = Some((self.journal.len(), bytes));
        self.restarted = true;
        // Offers end silently with the last device: nobody is left to tell.
        self.conns.clear();
        self.offers.clear();
        let mut stale: Vec<AccountId> = self.engine.open_connections().into_iter().map(|(a, _)| a).collect();
        stale.dedup();
        for account in stale {
            let _ = self.feed(Input::Restarted { account });
            if let Some(((_, user), (offer, _))) = self.offers.first_key_value() {
                self.fail(format!("{user} offered {offer} during a restart, with no connection left"));
            }
        }
        if !self.engine.open_connections().is_empty() {
            self.fail("connections left open after a restart");
        }
        let mut again = BTreeSet::new();
        for o in self.engine.unanswered_commands() {
            let Output::Gateway { account, cmd } = &o else {
                self.fail(format!("not a gateway command: {o:?}"));
            };
            match cmd {
                GatewayCommand::CallbackDial { callback_id, .. } => again.insert(callback_id.to_string()),
                GatewayCommand::MessageSend { message_id, .. } => again.insert(message_id.to_string()),
                // Not among `call_id()`'s: the id is the engine's own.
                GatewayCommand::CallDial { call_id, .. } => again.insert(call_id.to_string()),
                _ => cmd.call_id().is_some_and(|id| again.insert(id.to_string())),
            };
            // Re-sent as they were: the gateway already acts on them.
            let consistent = match cmd {
                GatewayCommand::CallBridge { call_id, agent } => self
                    .calls
                    .get(call_id.as_str())
                    .is_some_and(|c| c.account == *account && matches!(&c.state, CallState::Bridging(a) if a == agent)),
                GatewayCommand::CallbackDial { callback_id, call_id, agent, .. } => self
                    .dialling
                    .get(callback_id.as_str())
                    .is_some_and(|(a, u, dial)| a == account && u == agent && dial.as_str() == call_id.as_str()),
                // Handed off and not reported on: exactly as it was sent.
                GatewayCommand::CallVoicemail { .. }
                | GatewayCommand::CallForward { .. }
                | GatewayCommand::CallHangup { .. }
                | GatewayCommand::MessageSend { .. } => {
                    let id = match cmd {
                        GatewayCommand::MessageSend { message_id, .. } => message_id.to_string(),
                        _ => cmd.call_id().map(ToString::to_string).unwrap_or_default(),
                    };
                    self.handed_off.get(&id).is_some_and(|(_, a, c)| a == account && c == cmd)
                }
                // An outbound call the gateway has not reported picked up.
                GatewayCommand::CallDial { call_id, agent, .. } => {
                    self.outbound.contains(call_id.as_str())
                        && self.calls.get(call_id.as_str()).is_some_and(|c| {
                            c.account == *account && matches!(&c.state, CallState::Bridging(a) if a == agent)
                        })
                }
                _ => false,
            };
            if !consistent {
                self.fail(format!("re-sent after a restart, unlike what the gateway was told: {cmd:?}"));
            }
        }
        // And nothing the gateway still has to act on is left out: a bridge
        // or outbound dial not yet answered, a callback dial in progress, a
        // hand-off not reported on (while the engine must remember it).
        let waiting = self.calls.iter().filter(|(_, c)| matches!(c.state, CallState::Bridging(_))).map(|(id, _)| id);
        let handed = self.handed_off.iter().filter(|(_, (at, ..))| self.remembered(*at)).map(|(id, _)| id);
        for id in waiting.chain(self.dialling.keys()).chain(handed) {
            if !again.contains(id) {
                self.fail(format!("{id} awaits the gateway, but its command is not sent again after a restart"));
            }
        }
    }

    fn subscribe(&mut self) {
        let _ = self.agent_cmd(&acc(ACME), &"sup".into(), AgentCommand::Subscribe { topic: Topic::Queues });
    }

    /// Ends everything: callers hang up, agents finish, callbacks connect.
    /// Callbacks wait for staff rather than overflow, so every number first
    /// gets its account's agents back.
    fn drain(&mut self) {
        for (a, n) in self.numbers.clone() {
            let assigned =
                self.users.iter().filter(|(x, u)| *x == a && u.as_str() != "o1").map(|(_, u)| u.clone()).collect();
            let spec = NumberSpec {
                name: "drain".into(),
                assigned,
                caller_id: vec![],
                routing: RoutingSettings { strategy: Strategy::RingAll, ..Default::default() },
                queue: QueueSettings { callback: true, ..Default::default() },
            };
            self.must(Input::Admin {
                account: a,
                actor: Actor::System,
                cmd: Box::new(AdminCommand::UpsertNumber { number: n, spec }),
            });
        }
        for (a, u) in self.users.clone() {
            let key = (a.clone(), u.clone());
            if self.deactivated.contains(&key) {
                let cmd = AdminCommand::SetLifecycle { user: u.clone(), lifecycle: Lifecycle::Active };
                let _ = self.feed(Input::Admin { account: a.clone(), actor: Actor::System, cmd: Box::new(cmd) });
                self.deactivated.remove(&key);
            }
            if self.conns.get(&key).is_none_or(|v| v.is_empty()) {
                self.next_conn += 1;
                let conn = ConnId(self.next_conn);
                if self.feed(Input::Connect { account: a.clone(), user: u.clone(), conn }).is_ok() {
                    self.conns.entry(key).or_default().push(conn);
                }
            }
            let _ = self.agent_cmd(&a, &u, AgentCommand::StatusSet { status: WantedStatus::Available, reason: None });
        }
        for _ in 0..10_000 {
            let view = self.engine.inspect();
            if view.entry_count() == 0
                && view.live_call_count() == 0
                && self.calls.is_empty()
                && self.dialling.is_empty()
            {
                return;
            }
            let holding = self.calls_in(|s| *s == CallState::Holding);
            for (id, _) in holding {
                if !self.outbound.contains(&id) {
                    self.end_call(&id, EndReason::CallerHangup);
                }
            }
            let pending: Vec<_> = self.offers.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            for ((a, u), (o, _)) in pending {
                let _ = self.agent_cmd(&a, &u, AgentCommand::OfferAccept { offer_id: o });
            }
            let dialling: Vec<_> = self.dialling.keys().cloned().collect();
            for _ in dialling {
                self.callback_result();
            }
            let rest = self.calls_in(|s| !matches!(s, CallState::Holding));
            for (id, c) in rest {
                if let CallState::Bridging(agent) = &c.state
                    && self
                        .gw(
                            &c.account,
                            GatewayEvent::CallAnswered { call_id: id.as_str().into(), agent: agent.clone() },
                        )
                        .is_ok()
                    && let Some(call) = self.calls.get_mut(&id)
                {
                    call.state = CallState::Talking(agent.clone());
                }
                self.end_call(&id, EndReason::AgentHangup);
            }
            self.now = self.now + Duration::from_secs(5);
            let _ = self.feed(Input::Tick);
        }
        let view = self.engine.inspect();
        let mut left = String::new();
        for (a, n) in &self.numbers {
            for q in view.queue(a, n) {
                left += &format!("\n  queued on {n}: {q:?}");
            }
        }
        for (a, u) in &self.users {
            left += &format!(
                "\n  {u}: {:?} eligible={} conns={:?}",
                self.engine.user_status(a, u),
                view.is_eligible(a, u),
                self.conns.get(&(a.clone(), u.clone()))
            );
        }
        self.fail(format!(
            "the world did not drain: {} entries, {} live calls, sim calls {:?}, dialling {:?}{left}",
            view.entry_count(),
            view.live_call_count(),
            self.calls,
            self.dialling
        ));
    }

    fn check_outcomes(&self) {
        for id in &self.started {
            match self.outcomes.get(id) {
                Some(1) => {}
                Some(n) => self.fail(format!("{id} has {n} outcomes")),
                None => self.fail(format!("{id} ended without an outcome")),
            }
        }
    }

    /// Replays the journal into a fresh engine (and from the mid-run
    /// snapshot) and compares states.
    fn check_replay(&mut self) {
        let _ = self.engine.handle(self.now, Input::Tick);
        self.engine.drain_outputs().for_each(drop);
        let want = self.engine.state_bytes();
        // After a restart the journal alone is not the oracle: the state
        // the server came back from holds timers that fired before it
        // stopped, which no journal entry records. (`Restarted` fires no
        // timers, so a replay from nothing would fire them later.)
        if !self.restarted {
            let mut fresh = Engine::new();
            for (t, input) in &self.journal {
                let _ = fresh.handle(*t, input.clone());
                fresh.drain_outputs().for_each(drop);
            }
            let _ = fresh.handle(self.now, Input::Tick);
            fresh.drain_outputs().for_each(drop);
            if fresh.state_bytes() != want {
                self.fail("replaying the journal did not reproduce the state");
            }
        }
        if let Some((at, bytes)) = &self.snapshot {
            let mut restored = Engine::restore(bytes).unwrap_or_else(|e| self.fail(format!("restore: {e}")));
            for (t, input) in &self.journal[*at..] {
                let _ = restored.handle(*t, input.clone());
                restored.drain_outputs().for_each(drop);
            }
            let _ = restored.handle(self.now, Input::Tick);
            restored.drain_outputs().for_each(drop);
            if restored.state_bytes() != want {
                self.fail("snapshot + journal did not reproduce the state");
            }
        }
    }
}

fn run(seed: u64, steps: u64) {
    let mut w = World::new(seed);
    for step in 0..steps {
        w.step = step;
        w.step_once();
        if step == steps / 2 {
            let bytes = w.engine.snapshot().unwrap_or_else(|e| w.fail(format!("snapshot: {e}")));
            w.snapshot = Some((w.journal.len(), bytes));
        }
    }
    w.step = steps;
    w.drain();
    w.check_outcomes();
    w.check_replay();
    eprintln!(
        "seed {seed}: {steps} steps, {} calls/callbacks with one outcome each, {} journaled inputs",
        w.started.len(),
        w.journal.len()
    );
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// 4,000,000 inputs across the default seeds (a few seconds on 2 cores with
/// the test profile's optimisation). Seeds are cheap and bugs hide in rare
/// worlds: a queue-order bug showed in 4 of about 90 seeds from 1000 and
/// 2000 up, and in none of 1-4.
#[test]
fn random_worlds_keep_every_invariant() {
    let steps = env_u64("RINGLINE_SIM_STEPS").unwrap_or(250_000);
    let seeds: Vec<u64> = match env_u64("RINGLINE_SIM_SEED") {
        Some(s) => vec![s],
        None => (1..=16).collect(),
    };
    let handles: Vec<_> = seeds.into_iter().map(|seed| std::thread::spawn(move || run(seed, steps))).collect();
    for h in handles {
        if let Err(e) = h.join() {
            std::panic::resume_unwind(e);
        }
    }
}

/// Round robin: over a long run, targets that are always eligible when a
/// call is routed get the same number of offers, give or take one, even
/// with declines, timeouts and a flaky colleague in the rotation.
#[test]
fn round_robin_counts_stay_within_one() {
    let seed = env_u64("RINGLINE_SIM_SEED").unwrap_or(7);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut e = Engine::new();
    let mut now = T0;
    let a: AccountId = "acme".into();
    let feed = |e: &mut Engine, now: Instant, input: Input| -> Vec<Output> {
        let h = e.handle(now, input);
        assert!(h.result.is_ok(), "seed {seed}: {h:?}");
        let out: Vec<_> = e.drain_outputs().collect();
        if let Err(err) = e.check_invariants() {
            panic!("seed {seed}: {err}");
        }
        out
    };
    let admin = |cmd| Input::Admin { account: "acme".into(), actor: Actor::System, cmd: Box::new(cmd) };
    feed(&mut e, now, admin(AdminCommand::SetPlan { plan: Plan::Team }));
    let steady = ["s1", "s2", "s3", "s4", "s5"];
    let all = ["s1", "s2", "flaky", "s3", "s4", "s5"];
    for u in all {
        feed(
            &mut e,
            now,
            admin(AdminCommand::UpsertUser {
                user: u.into(),
                email: format!("{u}@a.test"),
                role: Role::Agent,
                token_hash: None,
            }),
        );
    }
    let spec = NumberSpec {
        name: "rr".into(),
        assigned: all.iter().map(|&u| u.into()).collect(),
        caller_id: vec![],
        routing: RoutingSettings {
            strategy: Strategy::RoundRobin,
            ring_timeout: Duration::from_secs(5),
            ..Default::default()
        },
        queue: QueueSettings::default(),
    };
    feed(&mut e, now, admin(AdminCommand::UpsertNumber { number: "+15550100".into(), spec }));
    let mut conn_of = BTreeMap::new();
    for (i, u) in all.iter().enumerate() {
        let conn = ConnId(i as u64);
        conn_of.insert(UserId::from(*u), conn);
        feed(&mut e, now, Input::Connect { account: a.clone(), user: (*u).into(), conn });
    }
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for i in 0..20_000 {
        // The flaky agent comes and goes between calls.
        let status = if rng.random_bool(0.5) { WantedStatus::Away } else { WantedStatus::Available };
        feed(
            &mut e,
            now,
            Input::Agent {
                account: a.clone(),
                conn: conn_of[&UserId::from("flaky")],
                ref_: None,
                cmd: AgentCommand::StatusSet { status, reason: None },
            },
        );
        let id = format!("c{i}");
        let mut out = feed(
            &mut e,
            now,
            Input::Gateway {
                account: a.clone(),
                event: GatewayEvent::CallInbound {
                    call_id: id.as_str().into(),
                    to: "+15550100".into(),
                    from: "+1555".into(),
                    priority: None,
                },
            },
        );
        // Offers go round until someone accepts; some decline, some let it ring out.
        loop {
            let offer = out.iter().find_map(|o| match o {
                Output::User { user, msg: AgentMessage::Offer { offer_id, .. }, .. } => Some((user.clone(), *offer_id)),
                _ => None,
            });
            let Some((user, offer)) = offer else { panic!("seed {seed}: call {id} not offered") };
            *counts.entry(user.to_string()).or_default() += 1;
            let conn = conn_of[&user];
            match rng.random_range(0..10) {
                0..6 => {
                    feed(
                        &mut e,
                        now,
                        Input::Agent {
                            account: a.clone(),
                            conn,
                            ref_: None,
                            cmd: AgentCommand::OfferAccept { offer_id: offer },
                        },
                    );
                    break;
                }
                6..8 => {
                    out = feed(
                        &mut e,
                        now,
                        Input::Agent {
                            account: a.clone(),
                            conn,
                            ref_: None,
                            cmd: AgentCommand::OfferDecline { offer_id: offer },
                        },
                    );
                }
                _ => {
                    now = now + Duration::from_secs(5);
                    out = feed(&mut e, now, Input::Tick);
                }
            }
        }
        let answer = e.inspect().queue(&a, &"+15550100".into()).is_empty();
        assert!(answer, "seed {seed}: the accepted call left the queue");
        let agent = e
            .inspect()
            .users(&a)
            .into_iter()
            .find(|u| e.user_status(&a, u) == Some(ringline::protocol::agent::Status::OnCall));
        let agent = agent.unwrap_or_else(|| panic!("seed {seed}: nobody on the call"));
        feed(
            &mut e,
            now,
            Input::Gateway {
                account: a.clone(),
                event: GatewayEvent::CallAnswered { call_id: id.as_str().into(), agent },
            },
        );
        now = now + Duration::from_secs(1);
        feed(
            &mut e,
            now,
            Input::Gateway {
                account: a.clone(),
                event: GatewayEvent::CallEnded { call_id: id.as_str().into(), reason: EndReason::AgentHangup },
            },
        );
    }
    let steady_counts: Vec<u64> = steady.iter().map(|u| counts.get(*u).copied().unwrap_or(0)).collect();
    let (min, max) =
        (steady_counts.iter().min().copied().unwrap_or(0), steady_counts.iter().max().copied().unwrap_or(0));
    assert!(max - min <= 1, "seed {seed}: round-robin counts {counts:?}");
    assert!(min > 1000, "seed {seed}: too few offers to mean anything: {counts:?}");
}
