//! The routing core: a deterministic, I/O-free state machine.
//!
//! Everything ringline decides happens here; the server around it only moves
//! bytes and time in and out. There are no sockets, no tasks, no clocks and
//! no randomness in this module tree (clippy's `disallowed_methods` enforces
//! the clock ban), so the same inputs at the same times always produce the
//! same outputs and the same state. That is what makes the journal work:
//! replaying the recorded inputs rebuilds the state exactly.
//!
//! See [`Engine`] for the contract.

pub mod account;
pub mod admin;
pub mod announce;
pub mod billing;
pub mod call;
pub mod callback;
pub mod dispatch;
pub mod error;
pub mod ewt;
pub mod history;
pub mod ids;
pub mod inbox;
pub mod input;
pub mod invariants;
pub mod invite;
pub mod number;
pub mod offer;
pub mod output;
pub mod presence;
pub mod queue;
pub mod recent;
pub mod settings;
pub mod stats;
pub mod strategy;
pub mod team;
pub mod testkit;
pub mod time;
pub mod timers;
pub mod user;
pub mod views;

use account::Account;
pub use admin::{Actor, AdminCommand, NumberSpec};
pub use error::CoreError;
use ids::{AccountId, CallId, ConnId, UserId};
pub use input::Input;
pub use output::{CloseReason, DirectoryChange, Output, RouteKey};
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, VecDeque};
pub use time::Instant;

use crate::protocol::Ref;
use crate::protocol::agent::{AgentCommand, AgentMessage};
use crate::protocol::gateway::GatewayEvent;

/// Index of a user inside its account.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub struct UserIx(pub u32);

/// Index of a number inside its account.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub struct NumberIx(pub u32);

/// Arrival order of queue entries, unique within an account.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub struct Seq(pub u64);

/// What an accepted input amounted to.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Reply {
    /// State changed.
    Done,
    /// Accepted, but nothing changed (a reply, a command relayed as is).
    ReadOnly,
    /// A repeat of an event already applied (gateway re-send): a no-op.
    Duplicate,
}

/// One account's whole state, moved between engines as a unit.
#[derive(Debug)]
pub struct AccountState(Account);

impl AccountState {
    pub fn id(&self) -> &AccountId {
        &self.0.id
    }
}

/// The result of [`Engine::handle`].
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Handled {
    /// Whether the input (with its time) must be journaled: it changed
    /// state. A refused input never changes state. Timers that fired on
    /// the way need no journaling: replay fires them again at the same
    /// deadlines.
    pub journal: bool,
    pub result: Result<Reply, CoreError>,
}

/// Marks a snapshot that starts with a state version.
pub const SNAPSHOT_MAGIC: &[u8] = b"RLS";
/// The version of the engine state's shape that [`Engine::snapshot`] writes.
pub const STATE_VERSION: u8 = 1;

/// Why a snapshot's state could not be read.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(
        "the snapshot holds engine state version {found}, newer than this release reads (up to {supported}): start the release that wrote it"
    )]
    Newer { found: u8, supported: u8 },
    #[error("the snapshot ends after its header")]
    Truncated,
    #[error("the snapshot's state does not decode: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
}

/// The routing engine for a set of accounts (a shard).
///
/// # Contract
///
/// - Call [`handle`](Engine::handle) with each input and the current time.
///   Time never goes backwards (an earlier time is treated as the last one).
///   Before the input itself, every timer due at or before `now` fires, in
///   deadline order, each at its own deadline.
/// - After each call, drain [`poll_output`](Engine::poll_output) until it
///   returns `None`: messages to users, connections and gateways, history
///   records and directory changes, in the order they were decided.
/// - Arrange for an [`Input::Tick`] no later than
///   [`next_deadline`](Engine::next_deadline); ticking late only delays,
///   ticking early is harmless.
/// - If `journal` is true, persist `(now, input)` before acknowledging the
///   input to whoever sent it. Feeding the journaled inputs with their times
///   to a fresh engine reproduces the state. Ticks are never journaled: a
///   timer fires at its own deadline before any later input of its account,
///   so firing is a function of state and time alone and replay re-derives
///   it.
/// - After a restart no connection survives: feed (and journal)
///   [`Input::Restarted`] for each account with
///   [`open_connections`](Engine::open_connections), then re-send
///   [`unanswered_commands`](Engine::unanswered_commands) (and again
///   whenever a gateway connects).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Engine {
    accounts: Vec<Account>,
    account_ix: FxHashMap<AccountId, usize>,
    /// Next timer deadline of each account that has one.
    deadlines: BTreeSet<(Instant, usize)>,
    account_deadline: Vec<Option<Instant>>,
    now: Instant,
    #[serde(skip)]
    outputs: VecDeque<Output>,
}

impl Engine {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn now(&self) -> Instant {
        self.now
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.first().map(|&(t, _)| t)
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    pub fn drain_outputs(&mut self) -> std::collections::vec_deque::Drain<'_, Output> {
        self.outputs.drain(..)
    }

    pub fn has_account(&self, id: &AccountId) -> bool {
        self.account_ix.contains_key(id)
    }

    pub fn handle(&mut self, now: Instant, input: Input) -> Handled {
        let now = now.max(self.now);
        self.now = now;
        let fired = !matches!(input, Input::Restarted { .. }) && self.fire_timers(now);
        // A plan for an account the engine does not have yet opens it.
        let opening = match &input {
            Input::Admin { account, cmd, .. } if !self.has_account(account) => match **cmd {
                AdminCommand::SetPlan { plan } => Some(plan),
                _ => None,
            },
            _ => None,
        };
        let result = match (input, opening) {
            (Input::Tick, _) => Ok(Reply::ReadOnly),
            (Input::Admin { account, actor, .. }, Some(plan)) => {
                if actor != Actor::System {
                    Err(CoreError::not_found(format!("no account {account}")))
                } else if account.as_str().is_empty() || account.as_str().len() > admin::MAX_NAME_CHARS {
                    Err(CoreError::bad_request("account id must be 1 to 100 characters"))
                } else {
                    let ix = self.accounts.len();
                    self.accounts.push(Account::new(account.clone(), plan, now));
                    self.account_deadline.push(None);
                    self.account_ix.insert(account, ix);
                    Ok(Reply::Done)
                }
            }
            (input, _) => {
                let Some(account) = input.account() else {
                    return Handled { journal: fired, result: Ok(Reply::ReadOnly) };
                };
                match self.account_ix.get(account).copied() {
                    None => Err(CoreError::not_found(format!("no account {account}"))),
                    Some(a) => self.with_account(a, |acc| acc.apply(input)),
                }
            }
        };
        let _ = fired;
        let journal = matches!(result, Ok(Reply::Done));
        Handled { journal, result }
    }

    /// Runs `f` on account `a` at the engine's time, settles it, and
    /// collects its outputs and next deadline.
    fn with_account(
        &mut self,
        a: usize,
        f: impl FnOnce(&mut Account) -> Result<Reply, CoreError>,
    ) -> Result<Reply, CoreError> {
        let acc = &mut self.accounts[a];
        let before = acc.now;
        acc.now = acc.now.max(self.now);
        let r = f(acc);
        // An input that changed nothing leaves no trace, not even the time:
        // it is not journaled, so replay would not see it either.
        if !matches!(r, Ok(Reply::Done)) {
            acc.now = before;
        }
        acc.settle();
        self.outputs.extend(acc.out.drain(..));
        self.refresh_deadline(a);
        r
    }

    fn refresh_deadline(&mut self, a: usize) {
        let next = self.accounts[a].timers.next_deadline();
        if self.account_deadline[a] != next {
            if let Some(old) = self.account_deadline[a] {
                self.deadlines.remove(&(old, a));
            }
            if let Some(t) = next {
                self.deadlines.insert((t, a));
            }
            self.account_deadline[a] = next;
        }
    }

    fn fire_timers(&mut self, now: Instant) -> bool {
        let mut fired = false;
        while let Some(&(at, a)) = self.deadlines.first() {
            if at > now {
                break;
            }
            let acc = &mut self.accounts[a];
            while let Some((key, t)) = acc.timers.pop_due(now) {
                acc.now = acc.now.max(key.at());
                acc.fire(t);
                acc.settle();
                fired = true;
            }
            self.outputs.extend(acc.out.drain(..));
            self.refresh_deadline(a);
        }
        fired
    }

    // ---- read-only views for the shell, tests and benchmarks -------------

    /// Everything the shell's lookup tables need after a replay: accounts'
    /// users (with token hashes), numbers and live routable ids.
    pub fn directory(&self) -> Vec<DirectoryChange> {
        let mut out = Vec::new();
        for acc in &self.accounts {
            for user in &acc.users {
                out.push(DirectoryChange::User {
                    account: acc.id.clone(),
                    user: user.id.clone(),
                    role: user.role,
                    lifecycle: user.lifecycle,
                    token_hash: user.token_hash.clone(),
                });
            }
            for number in &acc.numbers {
                out.push(DirectoryChange::Number { account: acc.id.clone(), number: number.id.clone(), present: true });
            }
            for key in acc.routable_ids() {
                out.push(DirectoryChange::Bind { account: acc.id.clone(), key });
            }
        }
        out
    }

    /// Connections the state believes open (after a restart: none are).
    pub fn open_connections(&self) -> Vec<(AccountId, ConnId)> {
        let mut out = Vec::new();
        for acc in &self.accounts {
            let mut conns: Vec<ConnId> = acc.conn_user.keys().copied().collect();
            conns.sort();
            out.extend(conns.into_iter().map(|c| (acc.id.clone(), c)));
        }
        out
    }

    /// Whether `account` has, or recently had, the call `call` (the shell
    /// drops its early binding of a refused new call's id).
    pub fn knows_call(&self, account: &AccountId, call: &CallId) -> bool {
        self.account_ix.get(account).is_some_and(|&a| self.accounts[a].knows_call(call))
    }

    /// Gateway commands still awaiting an answer (bridges, callback and
    /// outbound dials, hand-offs), to re-send after a restart or a gateway
    /// reconnect.
    pub fn unanswered_commands(&self) -> Vec<Output> {
        let mut out = Vec::new();
        for acc in &self.accounts {
            for cmd in acc.unanswered_commands() {
                out.push(Output::Gateway { account: acc.id.clone(), cmd });
            }
        }
        out
    }

    /// Moves every account out of this engine (to re-shard after a restore).
    pub fn take_accounts(&mut self) -> Vec<AccountState> {
        self.account_ix.clear();
        self.deadlines.clear();
        self.account_deadline.clear();
        self.accounts.drain(..).map(AccountState).collect()
    }

    /// Adopts an account taken from another engine.
    pub fn insert_account(&mut self, state: AccountState) {
        let a = self.accounts.len();
        self.now = self.now.max(state.0.now);
        self.account_ix.insert(state.0.id.clone(), a);
        self.accounts.push(state.0);
        self.account_deadline.push(None);
        self.refresh_deadline(a);
    }

    /// Ids of the accounts in this engine.
    pub fn account_ids(&self) -> Vec<AccountId> {
        self.accounts.iter().map(|a| a.id.clone()).collect()
    }

    /// The user's visible status, for tests and tools.
    pub fn user_status(&self, account: &AccountId, user: &UserId) -> Option<crate::protocol::agent::Status> {
        let acc = &self.accounts[*self.account_ix.get(account)?];
        Some(acc.user(acc.user_named(user)?).status().0)
    }

    /// Calls `f(account, number, waiting callers, longest wait ms)` for
    /// every number.
    pub fn queue_gauges(&self, mut f: impl FnMut(&AccountId, &ids::NumberId, u32, u64)) {
        for acc in &self.accounts {
            for number in &acc.numbers {
                let longest = number
                    .callers
                    .first()
                    .and_then(|s| acc.entries.get(s))
                    .map_or(0, |e| self.now.millis_since(e.arrived_at));
                f(&acc.id, &number.id, number.callers.len() as u32, longest);
            }
        }
    }

    /// Calls `f(account, hand-offs)` for every account: overflow commands
    /// and SMS sends the gateway has not reported on yet (see `recent`).
    pub fn handoff_counts(&self, mut f: impl FnMut(&AccountId, usize)) {
        for acc in &self.accounts {
            f(&acc.id, acc.recent.handoff_count());
        }
    }

    /// Checks every internal invariant; `Err` names the first broken one.
    pub fn check_invariants(&self) -> Result<(), String> {
        for acc in &self.accounts {
            acc.check_invariants().map_err(|e| format!("account {}: {e}", acc.id))?;
        }
        Ok(())
    }

    /// A canonical encoding of the whole state, for comparing a replayed
    /// engine with the original.
    pub fn state_bytes(&self) -> Vec<u8> {
        // Hash maps serialize in table order, which depends on history;
        // sort every map so equal states give equal bytes.
        let bytes = rmp_serde::to_vec_named(self).unwrap_or_default();
        let Ok(value) = rmpv::decode::read_value(&mut &bytes[..]) else {
            return bytes;
        };
        let mut out = Vec::new();
        if rmpv::encode::write_value(&mut out, &invariants::canonical(value)).is_err() {
            return bytes;
        }
        out
    }

    /// The engine's state for a snapshot: [`SNAPSHOT_MAGIC`], the state
    /// version, then the state as MessagePack with field names.
    pub fn snapshot(&self) -> Result<Vec<u8>, rmp_serde::encode::Error> {
        let mut out = Vec::with_capacity(4096);
        out.extend_from_slice(SNAPSHOT_MAGIC);
        out.push(STATE_VERSION);
        rmp_serde::encode::write_named(&mut out, self)?;
        Ok(out)
    }

    /// Reads a snapshot written by this release or an older one. A release
    /// that changes the state's shape bumps [`STATE_VERSION`] and converts
    /// the older versions here; a newer version is refused, not guessed at.
    pub fn restore(bytes: &[u8]) -> Result<Engine, RestoreError> {
        let (version, state) = match bytes.strip_prefix(SNAPSHOT_MAGIC) {
            Some([version, state @ ..]) => (*version, state),
            Some([]) => return Err(RestoreError::Truncated),
            // Snapshots from before the header hold version 1's state as
            // is. (MessagePack encodes the state as a map, whose first byte
            // is never the magic's `R`.)
            None => (1, bytes),
        };
        match version {
            1 => Ok(rmp_serde::from_slice(state)?),
            found => Err(RestoreError::Newer { found, supported: STATE_VERSION }),
        }
    }

    /// Read access for tests and the simulation.
    pub fn inspect(&self) -> invariants::View<'_> {
        invariants::View { engine: self }
    }
}

impl Account {
    fn apply(&mut self, input: Input) -> Result<Reply, CoreError> {
        match input {
            Input::Gateway { event, .. } => self.gateway(event),
            Input::Connect { user, conn, .. } => self.connect(&user, conn),
            Input::Disconnect { conn, .. } => self.disconnect(conn),
            Input::Restarted { .. } => self.restarted(),
            Input::Agent { conn, ref_, cmd, .. } => self.agent(conn, ref_, cmd),
            Input::Admin { actor, cmd, .. } => self.admin(actor, *cmd),
            Input::Tick => Ok(Reply::ReadOnly),
        }
    }

    fn fire(&mut self, t: timers::Timer) {
        use timers::Timer;
        match t {
            Timer::OfferExpiry(id) => self.on_offer_expiry(id),
            Timer::WrapUpEnd(u) => self.end_wrap_up(u),
            Timer::MaxWait(seq) => self.on_max_wait(seq),
            Timer::CallbackRetry(seq) => self.on_callback_retry(seq),
            Timer::Announce(n) => self.sweep(n),
            Timer::StatsFlush => self.flush_stats(),
            Timer::ForgetRecent => self.forget_recent(),
            Timer::BillingRenewal => self.renew_billing(),
        }
    }

    fn gateway(&mut self, event: GatewayEvent) -> Result<Reply, CoreError> {
        match event {
            GatewayEvent::CallInbound { call_id, to, from, priority } => {
                check_id(call_id.as_str(), "call_id")?;
                let priority = priority.unwrap_or(0);
                if priority > 9 {
                    return Err(CoreError::bad_request("priority must be 0 to 9"));
                }
                if from.as_str().is_empty() || from.as_str().len() > 64 {
                    return Err(CoreError::bad_request("from must be 1 to 64 characters"));
                }
                if self.knows_call(&call_id) {
                    return Ok(Reply::Duplicate);
                }
                let n = self.number_named(&to).ok_or_else(|| CoreError::not_found(format!("no number {to}")))?;
                self.new_inbound(call_id, n, from, priority);
                Ok(Reply::Done)
            }
            GatewayEvent::CallAnswered { call_id, agent } => self.on_call_answered(call_id, agent),
            GatewayEvent::CallBridgeFailed { call_id, agent, .. } => self.on_bridge_failed(call_id, agent),
            GatewayEvent::CallEnded { call_id, reason } => self.on_call_ended(call_id, reason),
            GatewayEvent::CallbackRequested { call_id, phone } => self.on_callback_requested(call_id, phone),
            GatewayEvent::CallbackResult { callback_id, outcome } => self.on_callback_result(callback_id, outcome),
            GatewayEvent::MessageInbound { message_id, to, from, body } => {
                check_id(message_id.as_str(), "message_id")?;
                self.on_message_inbound(message_id, to, from, body)
            }
            GatewayEvent::MessageStatus { message_id, status } => self.on_message_status(message_id, status),
            GatewayEvent::VoicemailRecorded { call_id, url, duration_ms } => {
                self.on_voicemail(call_id, url, duration_ms)
            }
        }
    }

    fn knows_call(&self, call_id: &CallId) -> bool {
        self.entry_by_call.contains_key(call_id)
            || self.calls.contains_key(call_id)
            || self.recent.contains(&recent::RecentKey::Call(call_id.clone()))
    }

    fn agent(&mut self, conn: ConnId, ref_: Option<Ref>, cmd: AgentCommand) -> Result<Reply, CoreError> {
        let u = *self
            .conn_user
            .get(&conn)
            .ok_or_else(|| CoreError::new(crate::protocol::ErrorCode::Unauthorized, "connection is not logged in"))?;
        let ack = ref_.clone();
        let r = match cmd {
            AgentCommand::Ping {} => {
                self.send_conn(conn, AgentMessage::Pong { ref_ });
                return Ok(Reply::ReadOnly);
            }
            AgentCommand::StatusSet { status, reason } => self.status_set(u, status, reason)?,
            AgentCommand::OfferAccept { offer_id } => {
                let won = self.offers.get(&offer_id).is_some_and(|o| o.user == u);
                self.accept(u, offer_id, ref_);
                return Ok(if won { Reply::Done } else { Reply::ReadOnly });
            }
            AgentCommand::OfferDecline { offer_id } => {
                if self.offers.get(&offer_id).is_none_or(|o| o.user != u) {
                    return Err(CoreError::not_found(format!("no pending offer {offer_id}")));
                }
                self.end_offer(offer_id, offer::OfferEnd::Declined);
                Reply::Done
            }
            AgentCommand::WrapupDone {} => self.wrapup_done(u)?,
            AgentCommand::CallDial { from, to } => return self.dial(u, from, to, ref_),
            AgentCommand::CallHangup { call_id } => self.hangup(u, call_id)?,
            AgentCommand::MessageSend { from, to, body } => {
                return self.send_message(u, from, to, body, ref_);
            }
            AgentCommand::Monitor { call_id, mode } => self.monitor(u, call_id, mode)?,
            AgentCommand::Subscribe { topic: _ } => {
                self.subscribe_queues(u, conn)?;
                Reply::Done
            }
        };
        if let Some(ref_) = ack {
            self.send_conn(conn, AgentMessage::Ok { ref_ });
        }
        Ok(r)
    }

    /// Ids the gateway may still send events about.
    fn routable_ids(&self) -> Vec<RouteKey> {
        let mut keys: Vec<RouteKey> = Vec::new();
        keys.extend(self.entry_by_call.keys().cloned().map(RouteKey::Call));
        keys.extend(self.entry_by_callback.keys().cloned().map(RouteKey::Callback));
        keys.extend(self.calls.keys().cloned().map(RouteKey::Call));
        for e in self.entries.values() {
            if let queue::Phase::Connecting { dial: Some(d), .. } = &e.phase {
                keys.push(RouteKey::Call(d.clone()));
            }
        }
        keys.extend(self.recent.routable());
        keys.sort();
        keys.dedup();
        keys
    }
}

/// Longest id accepted from a client.
pub const MAX_ID_BYTES: usize = 128;

/// Checks an id a gateway chose for a new call or message.
fn check_id(id: &str, what: &str) -> Result<(), CoreError> {
    if id.is_empty() || id.len() > MAX_ID_BYTES {
        return Err(CoreError::bad_request(format!("{what} must be 1 to {MAX_ID_BYTES} bytes")));
    }
    if id.starts_with(account::ENGINE_ID_PREFIX) {
        return Err(CoreError::bad_request(format!(
            "{what} may not start with '{}': reserved for engine-issued ids",
            account::ENGINE_ID_PREFIX
        )));
    }
    Ok(())
}

#[cfg(test)]
mod snapshot_tests {
    use super::{Engine, RestoreError, SNAPSHOT_MAGIC, STATE_VERSION};
    use crate::core::settings::Strategy;
    use crate::core::testkit::Bed;

    fn busy_engine() -> Engine {
        let mut b = Bed::new();
        b.agents(&["a", "b"]);
        b.simple_number("+15550100", &["a", "b"], Strategy::RoundRobin);
        b.connect("a");
        b.inbound("c1", "+15550100");
        b.inbound("c2", "+15550100");
        b.engine
    }

    #[test]
    fn a_snapshot_carries_its_state_version_and_restores_exactly() {
        let e = busy_engine();
        let bytes = e.snapshot().expect("encodes");
        assert!(bytes.starts_with(SNAPSHOT_MAGIC));
        assert_eq!(bytes[SNAPSHOT_MAGIC.len()], STATE_VERSION);
        let back = Engine::restore(&bytes).expect("restores");
        assert!(back.state_bytes() == e.state_bytes());
    }

    #[test]
    fn a_snapshot_from_before_the_header_still_restores() {
        let e = busy_engine();
        let legacy = rmp_serde::to_vec_named(&e).expect("encodes");
        let back = Engine::restore(&legacy).expect("restores as version 1");
        assert!(back.state_bytes() == e.state_bytes());
    }

    #[test]
    fn a_newer_or_cut_snapshot_is_refused_with_the_reason() {
        let mut bytes = busy_engine().snapshot().expect("encodes");
        bytes[SNAPSHOT_MAGIC.len()] = STATE_VERSION + 1;
        let err = Engine::restore(&bytes).expect_err("refused");
        assert!(matches!(err, RestoreError::Newer { found, .. } if found == STATE_VERSION + 1), "{err}");
        assert!(err.to_string().contains("start the release that wrote it"), "{err}");
        assert!(matches!(Engine::restore(SNAPSHOT_MAGIC), Err(RestoreError::Truncated)));
        let cut = &busy_engine().snapshot().expect("encodes")[..SNAPSHOT_MAGIC.len() + 3];
        assert!(matches!(Engine::restore(cut), Err(RestoreError::Decode(_))));
    }
}
