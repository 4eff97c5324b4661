//! A shard: one task that owns one [`Engine`] (a set of accounts). All
//! inputs for those accounts pass through its queue, so the hot path takes
//! no locks. The task moves time and bytes in and out; the engine decides.
//!
//! For each input: read the clock, hand the input to the engine, journal it
//! (with the history records it produced) if the engine says so, deliver
//! the outputs, reply to whoever sent it. Between inputs it sleeps until the
//! engine's next deadline and then ticks it.

use super::App;
use super::conn::Outbound;
use crate::core::ids::{AccountId, ConnId};
use crate::core::{CoreError, Engine, Input, Output, Reply, RouteKey};
use crate::protocol::Ref;
use crate::protocol::agent::AgentMessage;
use crate::protocol::gateway::{GatewayCommand, GatewayEvent};
use crate::store::SnapshotRow;
use rustc_hash::FxHashMap;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::{mpsc, oneshot};

/// Who sent an input, and so who gets the reply.
#[derive(Debug)]
pub enum Origin {
    /// A gateway event: acked (or refused) on that gateway connection.
    Gateway { conn: ConnId, seq: u64, ref_: Option<Ref> },
    /// A softphone command: errors go back to that connection.
    Agent { conn: ConnId, ref_: Option<Ref> },
    /// An HTTP request or start-up step waiting for the result and the
    /// journal position it must see durable before answering.
    Wait(oneshot::Sender<(Result<Reply, CoreError>, u64)>),
    /// Nobody is waiting (disconnects, shell housekeeping).
    None,
}

/// The answer to a [`ShardHandle::submit`]: the input's result and the
/// journal position that makes it durable.
pub type Waiting = oneshot::Receiver<(Result<Reply, CoreError>, u64)>;

/// Read-only work on the engine (admin queries), run between inputs.
pub type Query = Box<dyn FnOnce(&Engine) + Send>;

impl std::fmt::Debug for ShardMsg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ShardMsg::Input { input, origin, .. } => {
                f.debug_struct("Input").field("input", input).field("origin", origin).finish()
            }
            ShardMsg::Query(_) => f.write_str("Query"),
            ShardMsg::Snapshot(_) => f.write_str("Snapshot"),
            ShardMsg::Stop(_) => f.write_str("Stop"),
        }
    }
}

// Inputs are the hot path: boxing them would cost an allocation each.
#[allow(clippy::large_enum_variant)]
pub enum ShardMsg {
    Input {
        input: Input,
        origin: Origin,
        born: tokio::time::Instant,
        /// Counted against the shard's queue limit (a client's frame).
        counted: bool,
    },
    Query(Query),
    /// Serialize the engine; replies with (last journal seq it reflects, bytes).
    Snapshot(oneshot::Sender<Result<SnapshotRow, String>>),
    Stop(oneshot::Sender<()>),
}

#[derive(Clone, Debug)]
pub struct ShardHandle {
    pub index: usize,
    tx: mpsc::UnboundedSender<ShardMsg>,
    /// Clients' frames waiting in `tx`, and how many may.
    queued: Arc<AtomicUsize>,
    limit: usize,
}

/// The shard has `server.shard_queue` clients' inputs waiting already.
#[derive(Debug, thiserror::Error)]
#[error("server busy: too many events waiting for this account's shard; send it again")]
pub struct Busy;

impl ShardHandle {
    pub fn send(&self, msg: ShardMsg) -> bool {
        self.tx.send(msg).is_ok()
    }

    /// Queues an input the server itself must deliver (a connect, a
    /// disconnect, an admin change): never refused for load.
    pub fn input(&self, input: Input, origin: Origin) -> bool {
        self.send(ShardMsg::Input { input, origin, born: crate::clock::Clock::tokio_now(), counted: false })
    }

    /// Queues a client's frame unless `limit` of them already wait: each
    /// connection's rate limit bounds one client, this bounds them all
    /// together, so a shard that falls behind refuses work (the client
    /// sends it again) instead of queueing it without end.
    pub fn try_input(&self, input: Input, origin: Origin) -> Result<(), Busy> {
        if self.queued.fetch_add(1, Ordering::AcqRel) >= self.limit {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            metrics::counter!("ringline_refused_busy_total").increment(1);
            return Err(Busy);
        }
        let born = crate::clock::Clock::tokio_now();
        if !self.send(ShardMsg::Input { input, origin, born, counted: true }) {
            self.queued.fetch_sub(1, Ordering::AcqRel);
        }
        Ok(())
    }

    /// Submits an input; the receiver gets its result and the journal
    /// position that makes it durable. `None` once the shard has stopped.
    pub fn submit(&self, input: Input) -> Option<Waiting> {
        let (tx, rx) = oneshot::channel();
        self.input(input, Origin::Wait(tx)).then_some(rx)
    }

    /// Submits an input and waits for its result, once durable.
    pub async fn call(&self, app: &App, input: Input) -> Result<Reply, CoreError> {
        let stopped = || CoreError::new(crate::protocol::ErrorCode::Unavailable, "shutting down");
        let rx = self.submit(input).ok_or_else(stopped)?;
        let (result, after) = rx.await.map_err(|_| stopped())?;
        app.journal.wait_durable(after).await.map_err(|e| {
            CoreError::new(crate::protocol::ErrorCode::Unavailable, format!("journal unavailable: {e}"))
        })?;
        result
    }

    /// Runs `f` on the engine and returns what it computed.
    pub async fn query<T: Send + 'static>(&self, f: impl FnOnce(&Engine) -> T + Send + 'static) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        let q: Query = Box::new(move |e| {
            let _ = tx.send(f(e));
        });
        if !self.send(ShardMsg::Query(q)) {
            return None;
        }
        rx.await.ok()
    }
}

/// Starts a shard on its engine. On a recovered engine, before anything
/// else (even a timer that fell due while the server was down), its task
/// tells every account that still lists connections that none survived
/// ([`Input::Restarted`]), so no call is offered to a user whose connection
/// is gone.
pub fn spawn(index: usize, engine: Engine, last_seq: u64, app: Arc<App>) -> (ShardHandle, tokio::task::JoinHandle<()>) {
    let mut restarted: Vec<AccountId> = engine.open_connections().into_iter().map(|(account, _)| account).collect();
    restarted.dedup();
    let (tx, rx) = mpsc::unbounded_channel();
    let queued = Arc::new(AtomicUsize::new(0));
    let limit = app.config.server.shard_queue;
    let shard = Shard {
        queued: queued.clone(),
        index,
        engine,
        last_seq,
        app,
        rx,
        records: Vec::new(),
        gauges: FxHashMap::default(),
        handoffs: FxHashMap::default(),
    };
    let task = tokio::spawn(shard.run(restarted));
    (ShardHandle { index, tx, queued, limit }, task)
}

/// An input the engine has handled and whose softphone messages are out;
/// its journal append and gateway messages are still to do.
struct Routed {
    result: Result<Reply, CoreError>,
    /// When it was handled, its account and the input, if it is journaled.
    journal: Option<(crate::core::Instant, AccountId, Input)>,
    /// Gateway messages, held for the journal position.
    later: Vec<Output>,
    /// Whether a softphone connection's task was woken to write something
    /// (not when everything was written at once).
    woke: bool,
    /// The rest of a fan-out, delivered after the first offer is written.
    rest: VecDeque<Output>,
}

struct Shard {
    index: usize,
    engine: Engine,
    /// Journal position of the last input this shard appended.
    last_seq: u64,
    app: Arc<App>,
    rx: mpsc::UnboundedReceiver<ShardMsg>,
    /// The handles' count of clients' frames waiting in `rx`.
    queued: Arc<AtomicUsize>,
    records: Vec<(AccountId, crate::core::history::Record)>,
    gauges: FxHashMap<AccountId, FxHashMap<crate::core::ids::NumberId, QueueGauges>>,
    /// Per account: the hand-offs gauge and the value it was last set to.
    handoffs: FxHashMap<AccountId, (metrics::Gauge, Option<usize>)>,
}

impl Shard {
    async fn run(mut self, restarted: Vec<AccountId>) {
        for account in restarted {
            self.process(Input::Restarted { account }, Origin::None, crate::clock::Clock::tokio_now()).await;
        }
        let mut gauges = tokio::time::interval(std::time::Duration::from_secs(1));
        // One timer for the engine's deadlines, moved only when the
        // deadline moves. A fresh `sleep_until` per message registered with
        // the runtime's timer wheel and, dropped when the message won the
        // `select!`, took the timer driver's lock to leave it again, before
        // the input was handled: cold shared memory on every offer's path.
        // (Its first deadline is set before it is first polled.)
        let sleep = tokio::time::sleep_until(crate::clock::Clock::tokio_now());
        tokio::pin!(sleep);
        // The deadline the timer is set to while it has not fired.
        let mut armed = None;
        loop {
            let deadline = self.engine.next_deadline().map(|t| self.app.clock.deadline(t));
            if let Some(d) = deadline
                && armed != Some(d)
            {
                sleep.as_mut().reset(d);
                armed = Some(d);
            }
            tokio::select! {
                msg = self.rx.recv() => {
                    let Some(msg) = msg else { return };
                    if !self.handle_msg(msg).await {
                        return;
                    }
                    // Take what else is queued before sleeping again.
                    for _ in 0..256 {
                        match self.rx.try_recv() {
                            Ok(msg) => {
                                if !self.handle_msg(msg).await {
                                    return;
                                }
                            }
                            Err(_) => break,
                        }
                    }
                }
                () = &mut sleep, if deadline.is_some() => {
                    armed = None;
                    self.process(Input::Tick, Origin::None, crate::clock::Clock::tokio_now()).await;
                }
                _ = gauges.tick() => self.publish_gauges(),
            }
        }
    }

    async fn handle_msg(&mut self, msg: ShardMsg) -> bool {
        match msg {
            ShardMsg::Input { input, origin, born, counted } => {
                if counted {
                    self.queued.fetch_sub(1, Ordering::AcqRel);
                }
                self.process(input, origin, born).await
            }
            ShardMsg::Query(f) => f(&self.engine),
            ShardMsg::Snapshot(reply) => {
                // This shard appends its accounts' entries itself, before it
                // reads its next message: every entry of its accounts up to
                // the journal's current end is in this state. (Its own last
                // append would pin truncation on an idle shard.)
                let covered_seq = self.app.journal.last_seq().max(self.last_seq);
                let row = self
                    .engine
                    .snapshot()
                    .map(|data| SnapshotRow { shard: self.index as u32, covered_seq, data })
                    .map_err(|e| e.to_string());
                let _ = reply.send(row);
            }
            ShardMsg::Stop(done) => {
                let _ = done.send(());
                return false;
            }
        }
        true
    }

    /// Handles one input: the engine decides, softphones hear about it at
    /// once, the input is journaled, and the gateway (and whoever sent it)
    /// is answered once it is durable.
    ///
    /// Softphone messages go out before the journal append because nothing
    /// a softphone is told needs the input durable: an offer for an input
    /// lost in a crash is revoked by the agent's reconnect (the call is
    /// gone from the recovered state), and everything that acts on a call
    /// (`call.bridge`, acks) goes to the gateway only once durable.
    ///
    /// Most softphone messages are written at once, from here (see
    /// [`super::conn::ConnHandle::push`]). When one had to wake its
    /// connection's task instead and nothing else is queued, the shard
    /// yields between the two halves so that task (woken on this thread,
    /// next in line) writes it before the journal work: at light load that
    /// takes the append and the writer thread's wake-up (tens of
    /// microseconds on a VM, measured) off the offer's path. Under load the
    /// shard does not yield; it keeps batching.
    async fn process(&mut self, input: Input, origin: Origin, born: tokio::time::Instant) {
        let mut routed = self.route(input, born);
        if !routed.rest.is_empty() {
            // A fan-out (`ring_all`): the first phone's offer is written
            // before the others are queued, so the first ring does not wait
            // for all of them.
            if routed.woke && self.rx.is_empty() {
                tokio::task::yield_now().await;
            }
            let mut rest = std::mem::take(&mut routed.rest);
            routed.woke |= self.dispatch(&mut rest, born, &mut routed.later, false);
        }
        if routed.woke && self.rx.is_empty() {
            tokio::task::yield_now().await;
        }
        let after = self.append(&mut routed);
        for o in routed.later {
            super::deliver(&self.app, o, after, Some(born));
        }
        reply(&self.app, origin, routed.result, after, born);
    }

    /// The engine's half: handle the input and deliver what is for
    /// softphones. The rest waits in the returned [`Routed`].
    fn route(&mut self, input: Input, born: tokio::time::Instant) -> Routed {
        let now = self.app.clock.now();
        let account = input.account().cloned();
        let inbound = match &input {
            Input::Gateway { event: GatewayEvent::CallInbound { call_id, .. }, .. } => Some(call_id.clone()),
            _ => None,
        };
        // Handling consumes the input, so a copy waits for the journal; it
        // is encoded after the softphones' messages are out (a copy is a
        // few small allocations, the encoding several microseconds on a
        // cold cache). Refused inputs (rare) waste the copy.
        let copy = match (&input, &account) {
            (Input::Tick, _) | (_, None) => None,
            _ => Some(input.clone()),
        };
        let h = self.engine.handle(now, input);
        let mut later = Vec::new();
        let mut rest: VecDeque<Output> = self.engine.drain_outputs().collect();
        let woke = self.dispatch(&mut rest, born, &mut later, true);
        if let (Some(call), Some(account)) = (inbound, &account) {
            match h.result {
                Ok(Reply::Done) => self.app.hot.inbound_calls.increment(1),
                // The gateway's reader bound the id before the engine saw
                // it; a refused call must not keep it (nor let a stream of
                // refused ids grow the directory).
                Err(_) if !self.engine.knows_call(account, &call) => {
                    self.app.dir.unbind(&RouteKey::Call(call), account);
                }
                _ => {}
            }
        }
        let journal = match (h.journal, copy, account) {
            (true, Some(copy), Some(account)) => Some((now, account, copy)),
            _ => None,
        };
        Routed { result: h.result, journal, later, woke, rest }
    }

    /// Handles `outputs` in order: records are kept
    /// for the journal, gateway messages go to `later` (they need the
    /// journal position), the rest is delivered. With `split`, it stops
    /// after the first user's offer when what is left is only more users'
    /// messages, history and gateway messages (a fan-out), leaving them
    /// in `outputs`. Returns whether a softphone connection's task was
    /// woken to write something.
    fn dispatch(
        &mut self,
        outputs: &mut VecDeque<Output>,
        born: tokio::time::Instant,
        later: &mut Vec<Output>,
        mut split: bool,
    ) -> bool {
        let mut woke = false;
        while let Some(o) = outputs.pop_front() {
            match o {
                Output::Record { account, record } => {
                    metrics_for_record(&self.app.hot, &record);
                    self.records.push((account, *record));
                }
                // Needs the journal position, known after the append.
                o @ Output::Gateway { .. } => later.push(o),
                // A user's consecutive messages (an offer and the `status`
                // it causes) are looked up and queued together.
                Output::User { account, user, msg } => {
                    let mut msgs = vec![msg];
                    while let Some(Output::User { account: a, user: u, .. }) = outputs.front()
                        && *a == account
                        && *u == user
                    {
                        if let Some(Output::User { msg, .. }) = outputs.pop_front() {
                            msgs.push(msg);
                        }
                    }
                    let offers = msgs.iter().filter(|m| matches!(m, AgentMessage::Offer { .. })).count();
                    self.app.hot.offers.increment(offers as u64);
                    woke |= super::deliver_to_user(&self.app, account, user, msgs, Some(born));
                    // Only the first phone's offer is worth a split.
                    if split && offers > 0 {
                        if is_fan_out(outputs) {
                            return true;
                        }
                        split = false;
                    }
                }
                o => {
                    // `after` only matters to gateway messages.
                    woke |= super::deliver(&self.app, o, 0, Some(born));
                }
            }
        }
        woke
    }

    /// Journals the input with the history it produced; returns the journal
    /// position the gateway's messages and the reply must wait for.
    fn append(&mut self, routed: &mut Routed) -> u64 {
        let records = std::mem::take(&mut self.records);
        let encoded = routed.journal.take().and_then(|(now, account, input)| match super::encode_input(&input) {
            Ok(bytes) => Some((now, account, bytes)),
            Err(e) => {
                tracing::error!("cannot encode an input for the journal: {e}");
                None
            }
        });
        match encoded {
            Some((now, account, bytes)) => {
                self.last_seq = self.app.journal.append(now, &account, bytes, records);
                self.last_seq
            }
            None => {
                if !records.is_empty() {
                    self.app.journal.records(records);
                }
                self.app.journal.last_seq()
            }
        }
    }

    /// Publishes each number's queue gauges. Runs on the shard task every
    /// second, so it must stay cheap with thousands of numbers: the gauge
    /// handles (label strings and registry lookups) are made once per
    /// number, and a gauge is set only when its value changed.
    fn publish_gauges(&mut self) {
        let cache = &mut self.gauges;
        self.engine.queue_gauges(|account, number, waiting, longest| {
            let per_account = match cache.get_mut(account) {
                Some(m) => m,
                None => cache.entry(account.clone()).or_default(),
            };
            let g = match per_account.get_mut(number) {
                Some(g) => g,
                None => per_account.entry(number.clone()).or_insert_with(|| QueueGauges::new(account, number)),
            };
            if g.last != Some((waiting, longest)) {
                g.last = Some((waiting, longest));
                g.waiting.set(f64::from(waiting));
                g.longest.set(longest as f64 / 1000.0);
            }
        });
        // Rising when a gateway does not report on what it was handed.
        let cache = &mut self.handoffs;
        self.engine.handoff_counts(|account, n| {
            let (gauge, last) = match cache.get_mut(account) {
                Some(g) => g,
                None => cache.entry(account.clone()).or_insert_with(|| {
                    (metrics::gauge!("ringline_gateway_handoffs", "account" => account.to_string()), None)
                }),
            };
            if *last != Some(n) {
                *last = Some(n);
                gauge.set(n as f64);
            }
        });
    }
}

/// One number's queue gauges, and the values they were last set to.
struct QueueGauges {
    waiting: metrics::Gauge,
    longest: metrics::Gauge,
    last: Option<(u32, u64)>,
}

impl QueueGauges {
    fn new(account: &AccountId, number: &crate::core::ids::NumberId) -> Self {
        let labels = [("account", account.to_string()), ("number", number.to_string())];
        QueueGauges {
            waiting: metrics::gauge!("ringline_queue_waiting", &labels),
            longest: metrics::gauge!("ringline_queue_longest_wait_seconds", &labels),
            last: None,
        }
    }
}

/// Whether the outputs left are another user's offer plus only what may
/// wait for it: more users' messages, history, gateway messages. (Directory
/// changes and closes are never held back behind a yield.)
fn is_fan_out(outputs: &VecDeque<Output>) -> bool {
    outputs.iter().any(|o| matches!(o, Output::User { msg: AgentMessage::Offer { .. }, .. }))
        && outputs.iter().all(|o| matches!(o, Output::User { .. } | Output::Record { .. } | Output::Gateway { .. }))
}

fn reply(app: &App, origin: Origin, result: Result<Reply, CoreError>, after: u64, born: tokio::time::Instant) {
    match origin {
        Origin::Gateway { conn, seq, ref_ } => {
            let Some(c) = app.dir.conns.get(&conn).map(|c| c.value().clone()) else { return };
            let cmd = match result {
                Ok(_) => GatewayCommand::Ack { seq },
                Err(e) => GatewayCommand::Error { ref_, seq: Some(seq), code: e.code, message: e.message },
            };
            c.send(Outbound::Gateway { cmd: Box::new(cmd), after, born: Some(born) });
        }
        Origin::Agent { conn, ref_ } => {
            if let Err(e) = result
                && let Some(c) = app.dir.conns.get(&conn).map(|c| c.value().clone())
            {
                // Busy is the server's fault, not the client's.
                if e.code != crate::protocol::ErrorCode::Unavailable {
                    c.note_engine_error();
                }
                let msg = AgentMessage::Error { ref_, code: e.code, message: e.message };
                c.send(Outbound::Agent { msg: Arc::new(msg), born: None });
            }
        }
        Origin::Wait(tx) => {
            let _ = tx.send((result, after));
        }
        Origin::None => {}
    }
}

fn metrics_for_record(hot: &super::HotMetrics, record: &crate::core::history::Record) {
    use crate::core::history::{Outcome, Record};
    if let Record::Call(c) = record {
        let name = c.outcome.name();
        if let Some(i) = Outcome::NAMES.iter().position(|n| *n == name) {
            hot.outcomes[i].increment(1);
        }
        match c.outcome {
            Outcome::Answered => hot.answers.increment(1),
            Outcome::Abandoned | Outcome::Missed => hot.abandons.increment(1),
            Outcome::Voicemail { .. } => hot.voicemails.increment(1),
            Outcome::CallbackRequested { .. } => hot.callbacks.increment(1),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Clock;
    use crate::core::ids::{ConnId, UserId};
    use crate::protocol::agent::RevokeReason;
    use crate::server::conn::{ConnHandle, ConnKind, ConnRx};
    use crate::server::wire::Encoding;
    use std::time::Duration;

    const CONFIG: &str = r#"
[[gateways]]
name = "gw"
token = "gw"

[[accounts]]
id = "acme"
plan = "team"

[[accounts.users]]
id = "alice"
email = "alice@acme.test"
role = "owner"

[[accounts.users]]
id = "bob"
email = "bob@acme.test"
role = "agent"

[[accounts.numbers]]
number = "+15550100"
name = "Support"
assigned = ["bob"]

[accounts.numbers.routing]
ring_timeout = "2s"

[accounts.numbers.queue]
announce_every = "30s"
"#;

    /// A softphone of `user` whose deliveries the test reads.
    fn device(app: &App, user: &str, conn: u64) -> ConnRx {
        let id = ConnId(conn);
        let kind = ConnKind::Agent { account: "acme".into(), user: user.into() };
        let (h, rx) = ConnHandle::new(id, kind, Encoding::Json, 64);
        app.dir.conns.insert(id, h);
        app.dir.user_conns.entry(("acme".into(), UserId::from(user))).or_default().push(id);
        rx
    }

    fn agent_msgs(rx: &mut ConnRx) -> Vec<AgentMessage> {
        let mut out = Vec::new();
        while let Some(o) = rx.try_next() {
            if let Outbound::Agent { msg, .. } = o {
                out.push((*msg).clone());
            }
        }
        out
    }

    /// Lets the shard task run without moving the clock.
    async fn settle() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }

    #[test]
    fn only_a_plain_fan_out_is_split() {
        let offer = |user: &str, id: u64| Output::User {
            account: "acme".into(),
            user: user.into(),
            msg: AgentMessage::Offer {
                offer_id: crate::core::ids::OfferId(id),
                kind: crate::protocol::agent::OfferKind::Inbound,
                call_id: Some("c1".into()),
                callback_id: None,
                number: "+15550100".into(),
                from: "+1555".into(),
                expires_in_ms: 1000,
            },
        };
        let status = |user: &str| Output::User {
            account: "acme".into(),
            user: user.into(),
            msg: AgentMessage::Status { status: crate::protocol::agent::Status::Ringing, reason: None, until: None },
        };
        let ringing = Output::Gateway {
            account: "acme".into(),
            cmd: GatewayCommand::CallRinging { call_id: "c1".into(), agents: vec!["bob".into()] },
        };
        assert!(is_fan_out(&[offer("carol", 2), status("carol"), ringing.clone()].into()));
        assert!(!is_fan_out(&[status("carol"), ringing.clone()].into()), "nothing left worth a yield");
        let close = Output::Close { conn: ConnId(3), reason: crate::core::CloseReason::Removed };
        assert!(!is_fan_out(&[offer("carol", 2), close].into()), "a close is never held back");
    }

    #[tokio::test(start_paused = true)]
    async fn ring_timeouts_fire_exactly_on_time() {
        let dir = tempfile::tempdir().expect("dir");
        let cfg = crate::config::parse(CONFIG, std::path::Path::new("t.toml")).expect("config");
        let (app, _store) = crate::server::app_without_listener(cfg, dir.path().to_owned()).await.expect("app");
        let shard = app.shard_for(&"acme".into()).expect("shard").clone();
        let mut bob = device(&app, "bob", 7);
        shard.input(Input::Connect { account: "acme".into(), user: "bob".into(), conn: ConnId(7) }, Origin::None);
        let event = GatewayEvent::CallInbound {
            call_id: "c1".into(),
            to: "+15550100".into(),
            from: "+1555".into(),
            priority: None,
        };
        shard.input(Input::Gateway { account: "acme".into(), event }, Origin::None);
        settle().await;
        assert!(agent_msgs(&mut bob).iter().any(|m| matches!(m, AgentMessage::Offer { .. })));
        let t0 = Clock::tokio_now();
        tokio::time::advance(Duration::from_millis(1999)).await;
        settle().await;
        assert!(agent_msgs(&mut bob).iter().all(|m| !matches!(m, AgentMessage::OfferRevoked { .. })), "not before 2s");
        tokio::time::advance(Duration::from_millis(1)).await;
        settle().await;
        let msgs = agent_msgs(&mut bob);
        assert!(
            msgs.iter().any(|m| matches!(m, AgentMessage::OfferRevoked { reason: RevokeReason::Expired, .. })),
            "revoked at {:?}: {msgs:?}",
            Clock::tokio_now() - t0
        );
        // Alone on the number, bob is rung again right away (a new cycle).
        assert!(msgs.iter().any(|m| matches!(m, AgentMessage::Offer { .. })));
    }

    /// 15 minutes after a call ended the engine forgets its id; the
    /// gateway may then use it for a new call, whose record must not
    /// replace the first call's.
    #[tokio::test(start_paused = true)]
    async fn a_call_id_used_again_after_the_window_keeps_both_calls_in_history() {
        use crate::protocol::gateway::EndReason;
        use crate::store::{CallQuery, Viewer};
        let dir = tempfile::tempdir().expect("dir");
        let cfg = crate::config::parse(CONFIG, std::path::Path::new("t.toml")).expect("config");
        let (app, store) = crate::server::app_without_listener(cfg, dir.path().to_owned()).await.expect("app");
        let shard = app.shard_for(&"acme".into()).expect("shard").clone();
        let call = |from: &str| Input::Gateway {
            account: "acme".into(),
            event: GatewayEvent::CallInbound {
                call_id: "c1".into(),
                to: "+15550100".into(),
                from: from.into(),
                priority: None,
            },
        };
        let ended = || Input::Gateway {
            account: "acme".into(),
            event: GatewayEvent::CallEnded { call_id: "c1".into(), reason: EndReason::CallerHangup },
        };
        shard.input(call("+15551110000"), Origin::None);
        shard.input(ended(), Origin::None);
        settle().await;
        tokio::time::advance(Duration::from_secs(16 * 60)).await;
        settle().await;
        shard.input(call("+15552220000"), Origin::None);
        shard.input(ended(), Origin::None);
        settle().await;
        store.journal().flush().expect("flush");
        let owner = Viewer { account: "acme".into(), user: "alice".into(), manager: true, assigned: vec![] };
        let page = app.history.calls(&owner, &CallQuery::default()).expect("query");
        let froms: Vec<String> = page.items.iter().map(|c| c.from.to_string()).collect();
        assert_eq!(froms, ["+15552220000", "+15551110000"], "each call keeps its own record, newest first");
    }

    #[tokio::test(start_paused = true)]
    async fn announcements_fire_on_their_period() {
        let dir = tempfile::tempdir().expect("dir");
        let cfg = crate::config::parse(CONFIG, std::path::Path::new("t.toml")).expect("config");
        let (app, _store) = crate::server::app_without_listener(cfg, dir.path().to_owned()).await.expect("app");
        let shard = app.shard_for(&"acme".into()).expect("shard").clone();
        let id = ConnId(9);
        let (gw, mut rx) = ConnHandle::new(id, ConnKind::Gateway { name: "gw".into() }, Encoding::Json, 64);
        app.dir.conns.insert(id, gw.clone());
        app.dir.gateways_live.insert("gw".into(), gw);
        let event = GatewayEvent::CallInbound {
            call_id: "c1".into(),
            to: "+15550100".into(),
            from: "+1555".into(),
            priority: None,
        };
        shard.input(Input::Gateway { account: "acme".into(), event }, Origin::None);
        settle().await;
        let count = |rx: &mut ConnRx| {
            let mut n = 0;
            while let Some(o) = rx.try_next() {
                if let Outbound::Gateway { cmd, .. } = o
                    && matches!(*cmd, GatewayCommand::CallAnnounce { .. })
                {
                    n += 1;
                }
            }
            n
        };
        count(&mut rx);
        tokio::time::advance(Duration::from_millis(29_999)).await;
        settle().await;
        assert_eq!(count(&mut rx), 0, "not before 30s");
        tokio::time::advance(Duration::from_millis(1)).await;
        settle().await;
        assert_eq!(count(&mut rx), 1);
        tokio::time::advance(Duration::from_secs(30)).await;
        settle().await;
        assert_eq!(count(&mut rx), 1, "every 30s");
    }
}
