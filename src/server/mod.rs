//! The shell: a tokio server around the routing core. It authenticates
//! connections, turns frames into inputs for the right shard, journals what
//! the engine accepts, and delivers what it decides. It decides nothing.
//!
//! Start-up is recovery: open the store, restore the latest snapshot, replay
//! the journal after it through the same engines, apply the config file's
//! provisioning, end the connections that did not survive, then listen.

pub mod admin_http;
pub mod agent;
pub mod conn;
pub mod directory;
pub mod gateway;
pub mod history_http;
pub mod http;
pub mod shard;
pub mod tokens;
pub mod wire;

use crate::clock::Clock;
use crate::config::Config;
use crate::core::ids::{AccountId, ConnId, GatewayName, UserId};
use crate::core::{Engine, Input, Instant, Output, RouteKey};
use crate::protocol::agent::AgentMessage;
use crate::protocol::gateway::GatewayCommand;
use crate::store::{History, JournalHandle, Store, StoreConfig};
use conn::{ConnHandle, Outbound};
use dashmap::DashMap;
use directory::Directory;
use metrics_exporter_prometheus::PrometheusHandle;
use shard::{ShardHandle, ShardMsg};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use tokio::sync::watch;

/// Gateway commands kept for an account while no gateway serves it.
pub const MAX_PENDING_GATEWAY_COMMANDS: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("storage: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("journal entry {seq} cannot be replayed: {reason}")]
    Replay { seq: u64, reason: String },
    #[error("snapshot of shard {shard} cannot be restored: {reason}")]
    Snapshot { shard: u32, reason: String },
    #[error("config provisioning refused: {0}")]
    Provisioning(String),
    /// The file conflicts with state created at run time.
    #[error("{0}")]
    Config(crate::config::ConfigError),
    #[error("cannot write the start-up snapshot: {0}")]
    StartSnapshot(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
}

/// Everything the tasks share.
pub struct App {
    pub config: Config,
    pub dir: Directory,
    pub shards: OnceLock<Vec<ShardHandle>>,
    pub journal: JournalHandle,
    pub history: History,
    pub metrics: PrometheusHandle,
    /// Metrics touched for every call, looked up once.
    pub hot: HotMetrics,
    pub clock: Clock,
    next_conn: AtomicU64,
    pub ready: AtomicBool,
    pending: DashMap<AccountId, VecDeque<(Box<GatewayCommand>, u64)>>,
    pub shutdown: watch::Receiver<bool>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App").field("listen", &self.config.listen).finish_non_exhaustive()
    }
}

impl App {
    pub fn shard_for(&self, account: &AccountId) -> Option<&ShardHandle> {
        self.shards.get()?.get(self.dir.shard_of(account))
    }

    pub fn next_conn_id(&self) -> ConnId {
        ConnId(self.next_conn.fetch_add(1, Ordering::Relaxed))
    }

    /// Queues a command for the gateway that carries its call, or any
    /// gateway allowed for the account; kept for later if none is connected.
    pub fn send_to_gateway(&self, account: &AccountId, cmd: Box<GatewayCommand>, after: u64) {
        let key = carrier_key(&cmd);
        let carrier = key
            .as_ref()
            .and_then(|k| self.dir.carrier.get(k).map(|g| g.value().clone()))
            .filter(|g| self.dir.gateways_live.contains_key(g) && self.dir.gateway_serves(g, account));
        let target = carrier
            .or_else(|| self.dir.gateways_for(account).into_iter().find(|g| self.dir.gateways_live.contains_key(g)));
        let Some(name) = target else {
            let mut q = self.pending.entry(account.clone()).or_default();
            if q.len() >= MAX_PENDING_GATEWAY_COMMANDS {
                q.pop_front();
                tracing::error!(%account, "no gateway connected: dropping the oldest pending command");
            }
            q.push_back((cmd, after));
            return;
        };
        if let Some(key) = key {
            self.dir.carrier.entry(key).or_insert_with(|| name.clone());
        }
        if let Some(conn) = self.dir.gateways_live.get(&name).map(|c| c.value().clone()) {
            conn.send(Outbound::Gateway { cmd, after, born: None });
        }
    }

    /// Sends a command the gateway has not answered to `name`, which just
    /// connected, unless another gateway that is still connected carries
    /// its call or message (that one did not lose it). A call or message
    /// whose gateway is gone is adopted by this one.
    pub fn resend(&self, name: &GatewayName, conn: &ConnHandle, cmd: GatewayCommand) {
        if let Some(key) = carrier_key(&cmd) {
            let mut carrier = self.dir.carrier.entry(key).or_insert_with(|| name.clone());
            if *carrier != *name {
                if self.dir.gateways_live.contains_key(&*carrier) {
                    return;
                }
                *carrier = name.clone();
            }
        }
        conn.send(Outbound::Gateway { cmd: Box::new(cmd), after: self.journal.last_seq(), born: None });
    }

    /// A gateway connected: hand it what waited for it.
    pub fn flush_pending(&self, accounts: &[AccountId]) {
        for account in accounts {
            let Some((_, q)) = self.pending.remove(account) else { continue };
            for (cmd, after) in q {
                self.send_to_gateway(account, cmd, after);
            }
        }
    }
}

/// What names the call or message a command is about, for finding the
/// gateway that carries it.
fn carrier_key(cmd: &GatewayCommand) -> Option<RouteKey> {
    match cmd {
        GatewayCommand::MessageSend { message_id, .. } => Some(RouteKey::Message(message_id.clone())),
        GatewayCommand::CallDial { call_id, .. } | GatewayCommand::CallbackDial { call_id, .. } => {
            Some(RouteKey::Call(call_id.clone()))
        }
        other => other.call_id().map(|c| RouteKey::Call(c.clone())),
    }
}

/// Routes one engine output to where it goes. Returns whether it woke a
/// softphone connection's task to write it (a message written at once
/// does not).
pub fn deliver(app: &App, o: Output, after: u64, born: Option<tokio::time::Instant>) -> bool {
    let mut woke = false;
    match o {
        Output::User { account, user, msg } => woke = deliver_to_user(app, account, user, vec![msg], born),
        Output::Users { account, users, msg } => {
            let msg = Arc::new(msg);
            for user in users {
                if let Some(conns) = app.dir.user_conns.get(&(account.clone(), user)) {
                    for id in conns.iter() {
                        if let Some(c) = app.dir.conns.get(id)
                            && c.greeted()
                        {
                            woke |= c.push([Outbound::Agent { msg: msg.clone(), born }]).woke;
                        }
                    }
                }
            }
        }
        Output::Conn { conn, msg } => {
            if let Some(c) = app.dir.conns.get(&conn) {
                c.greet();
                woke = c.push([Outbound::Agent { msg: Arc::new(msg), born }]).woke;
            }
        }
        Output::Close { conn, reason } => {
            if let Some(c) = app.dir.conns.get(&conn).map(|c| c.value().clone()) {
                c.close(reason.code(), reason.text());
            }
        }
        Output::Gateway { account, cmd } => app.send_to_gateway(&account, Box::new(cmd), after),
        Output::Directory(change) => app.dir.apply(&change),
        Output::Record { .. } => {}
    }
    woke
}

/// Sends messages to every connection of one user, in order. Returns
/// whether a connection's task was woken to write them.
pub fn deliver_to_user(
    app: &App,
    account: AccountId,
    user: UserId,
    msgs: Vec<AgentMessage>,
    born: Option<tokio::time::Instant>,
) -> bool {
    let mut woke = false;
    // Sending queues, or writes without waiting, or marks the connection
    // for closing, so holding the map entries meanwhile is fine.
    if let Some(conns) = app.dir.user_conns.get(&(account, user)) {
        let msgs: Vec<Arc<AgentMessage>> = msgs.into_iter().map(Arc::new).collect();
        for id in conns.iter() {
            // A device registered before the engine saw it connect: its
            // `hello` (and the offer it rings with) will follow.
            if let Some(c) = app.dir.conns.get(id)
                && c.greeted()
            {
                woke |= c.push(msgs.iter().map(|m| Outbound::Agent { msg: m.clone(), born })).woke;
            }
        }
    }
    woke
}

/// How to start a server.
#[derive(Clone, Debug)]
pub struct Options {
    pub listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
}

/// A started server.
#[derive(Debug)]
pub struct Running {
    pub addr: SocketAddr,
    pub app: Arc<App>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Stops accepting, closes every connection with 1001, stops the shards
    /// and flushes the journal.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }

    /// Runs until SIGTERM or Ctrl-C, then shuts down cleanly.
    pub async fn run_until_signal(self) {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!("cannot listen for SIGTERM: {e}");
                    let _ = ctrl_c.await;
                    return self.shutdown().await;
                }
            };
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("shutting down");
        self.shutdown().await;
    }
}

/// Handles for the metrics recorded on every call. A `metrics::counter!`
/// at the call site hashes the name and searches the registry each time;
/// on the offer's path that is a handful of cache misses per call.
#[derive(Clone, Debug)]
pub struct HotMetrics {
    pub offers: metrics::Counter,
    pub inbound_calls: metrics::Counter,
    pub offer_latency: metrics::Histogram,
    pub ack_latency: metrics::Histogram,
    /// `ringline_call_outcomes_total`, one per [`Outcome::NAMES`](crate::core::history::Outcome::NAMES).
    pub outcomes: [metrics::Counter; crate::core::history::Outcome::NAMES.len()],
    pub answers: metrics::Counter,
    pub abandons: metrics::Counter,
    pub voicemails: metrics::Counter,
    pub callbacks: metrics::Counter,
}

impl HotMetrics {
    /// Call once the recorder is installed ([`metrics_handle`]).
    fn new() -> Self {
        HotMetrics {
            offers: metrics::counter!("ringline_offers_total"),
            inbound_calls: metrics::counter!("ringline_inbound_calls_total"),
            offer_latency: metrics::histogram!("ringline_offer_latency_seconds"),
            ack_latency: metrics::histogram!("ringline_ack_latency_seconds"),
            outcomes: crate::core::history::Outcome::NAMES
                .map(|name| metrics::counter!("ringline_call_outcomes_total", "outcome" => name)),
            answers: metrics::counter!("ringline_answers_total"),
            abandons: metrics::counter!("ringline_abandons_total"),
            voicemails: metrics::counter!("ringline_voicemails_total"),
            callbacks: metrics::counter!("ringline_callbacks_total"),
        }
    }
}

/// The metrics recorder is process-global; every server in the process
/// (tests start several) shares it.
fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = metrics_exporter_prometheus::PrometheusBuilder::new()
                .set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Suffix("seconds".into()),
                    &[
                        0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002, 0.002_5, 0.005, 0.01, 0.025,
                        0.05, 0.1, 0.25, 1.0,
                    ],
                )
                .map(|b| b.build_recorder());
            match recorder {
                Ok(r) => {
                    let handle = r.handle();
                    if metrics::set_global_recorder(r).is_err() {
                        tracing::warn!("a metrics recorder was already installed");
                    }
                    handle
                }
                Err(e) => {
                    tracing::error!("metrics disabled: {e}");
                    metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder().handle()
                }
            }
        })
        .clone()
}

/// An app with its shards running but no listener, for tests that drive
/// shards directly (e.g. under tokio's paused clock).
pub async fn app_without_listener(config: Config, data_dir: PathBuf) -> Result<(Arc<App>, Store), StartError> {
    let shards = config.server.shards.max(1);
    let store = Store::open(StoreConfig::new(&data_dir))?.0;
    let (_stop, stop_rx) = watch::channel(false);
    let app = Arc::new(App {
        journal: store.journal(),
        history: store.history(),
        dir: Directory::new(shards, config.gateways.clone()),
        config,
        shards: OnceLock::new(),
        metrics: metrics_handle(),
        hot: HotMetrics::new(),
        clock: Clock::start(Instant::EPOCH),
        next_conn: AtomicU64::new(1),
        ready: AtomicBool::new(true),
        pending: DashMap::new(),
        shutdown: stop_rx,
    });
    let handles = (0..shards).map(|i| shard::spawn(i, Engine::new(), 0, app.clone()).0).collect();
    let _ = app.shards.set(handles);
    for input in app.config.provisioning() {
        let Some(shard) = input.account().and_then(|a| app.shard_for(a)).cloned() else { continue };
        shard.call(&app, input).await.map_err(|e| StartError::Provisioning(e.to_string()))?;
    }
    Ok((app, store))
}

/// What the file would take from another account or user that got it at
/// run time: the config loader only sees the file, and provisioning would
/// silently move the number (its calls would ring the wrong team) or give
/// two users one token (either could sign in as the other).
fn clashes_with_state(config: &Config, dir: &Directory) -> Result<(), crate::config::ConfigError> {
    let err =
        |line: Option<usize>, message: String| crate::config::ConfigError { path: config.path.clone(), line, message };
    // Users whose token the file sets: a token they held before is theirs
    // no more, so another user of the file may take it over.
    let retokened: std::collections::BTreeSet<(AccountId, UserId)> = config
        .accounts
        .iter()
        .flat_map(|a| a.users.iter().filter(|u| u.token_hash.is_some()).map(|u| (a.id.clone(), u.id.clone())))
        .collect();
    for a in &config.accounts {
        for n in &a.numbers {
            if let Some(other) = dir.account_of_number(&n.number)
                && other != a.id
            {
                return Err(err(
                    Some(n.line),
                    format!(
                        "number {:?} of account {:?} belongs to account {:?} (created through the HTTP API); \
                         remove it from one of the two",
                        n.number.as_str(),
                        a.id.as_str(),
                        other.as_str()
                    ),
                ));
            }
        }
        for u in &a.users {
            let Some(hash) = &u.token_hash else { continue };
            if let Some(holder) = dir.token_holder(hash)
                && holder != (a.id.clone(), u.id.clone())
                && !retokened.contains(&holder)
            {
                return Err(err(
                    u.token_line,
                    format!(
                        "user {:?} of account {:?}: token is already used by user {:?} of account {:?} \
                         (given by an earlier config file); give one of them another token",
                        u.id.as_str(),
                        a.id.as_str(),
                        holder.1.as_str(),
                        holder.0.as_str()
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Applies the config file's accounts, users and numbers. They are queued
/// all at once and waited for at the end: each shard still handles its
/// accounts' inputs in file order, and thousands of them share a few
/// commits. (Waiting for each one's sync before sending the next made a
/// 10,000-user file take seconds to start.) On a refused input the start
/// fails as before; the inputs after it may have been applied too, as the
/// ones before it always were. That leaves nothing the file does not
/// declare: provisioning only creates and updates what the file lists.
async fn provision(app: &App) -> Result<(), StartError> {
    let stopped = || StartError::Provisioning("shutting down".into());
    let mut pending = Vec::new();
    for input in app.config.provisioning() {
        let Some(account) = input.account().cloned() else { continue };
        let Some(shard) = app.shard_for(&account) else { continue };
        pending.push((account, shard.submit(input).ok_or_else(stopped)?));
    }
    let mut durable_at = 0;
    for (account, rx) in pending {
        let (result, after) = rx.await.map_err(|_| stopped())?;
        result.map_err(|e| StartError::Provisioning(format!("account {account}: {e}")))?;
        durable_at = durable_at.max(after);
    }
    app.journal
        .wait_durable(durable_at)
        .await
        .map_err(|e| StartError::Provisioning(format!("journal unavailable: {e}")))
}

/// Recovers state and starts listening. Returns once the server accepts
/// connections.
pub async fn start(mut config: Config, opts: Options) -> Result<Running, StartError> {
    if let Some(l) = opts.listen {
        config.listen = l;
    }
    if let Some(d) = opts.data_dir {
        config.data_dir = d;
    }
    let shards = config.server.shards.max(1);

    // Recovery runs on a blocking thread: it is pure CPU and disk.
    let mut store_config = StoreConfig::new(&config.data_dir);
    store_config.sync_lanes = config.server.journal_sync_lanes;
    let Recovery { store, engines, last_seq, snapshot_generation, .. } =
        tokio::task::spawn_blocking(move || recover_with(store_config, shards))
            .await
            .map_err(|e| StartError::Provisioning(format!("recovery task failed: {e}")))??;
    let dir = Directory::new(shards, config.gateways.clone());
    for e in &engines {
        for change in e.directory() {
            dir.apply(&change);
        }
    }
    let stale: Vec<(AccountId, ConnId)> = engines.iter().flat_map(Engine::open_connections).collect();
    let not_before = engines.iter().map(Engine::now).max().unwrap_or_default();
    let clock = Clock::start(not_before);
    let max_conn = stale.iter().map(|(_, c)| c.0).max().unwrap_or(0);

    let (stop_tx, stop_rx) = watch::channel(false);
    let app = Arc::new(App {
        journal: store.journal(),
        history: store.history(),
        config,
        dir,
        shards: OnceLock::new(),
        metrics: metrics_handle(),
        hot: HotMetrics::new(),
        clock,
        // Connection ids stay unique across restarts of the same state.
        next_conn: AtomicU64::new(max_conn + 1),
        ready: AtomicBool::new(false),
        pending: DashMap::new(),
        shutdown: stop_rx,
    });
    let mut handles = Vec::new();
    let mut tasks = Vec::new();
    for (i, engine) in engines.into_iter().enumerate() {
        let (h, t) = shard::spawn(i, engine, last_seq, app.clone());
        handles.push(h);
        tasks.push(t);
    }
    let _ = app.shards.set(handles);

    // A snapshot of every shard, durable before anything new is journaled
    // (only the shards' `Restarted` inputs come before it). It records
    // this run's shard layout, in which the journal after it is written
    // and will be replayed (see `recover`). And after a dropped damaged
    // tail it closes the hole that tail can leave in the seqs: a shard's
    // snapshot may cover seqs past the damage, new entries are numbered
    // after it, and the next start would take the hole for damage and drop
    // everything after it.
    let mut generation = snapshot_generation;
    take_snapshot(&app, &mut generation).await.map_err(StartError::StartSnapshot)?;
    let journal = app.journal.clone();
    tokio::task::spawn_blocking(move || journal.flush())
        .await
        .map_err(|e| StartError::StartSnapshot(e.to_string()))?
        .map_err(|e| StartError::StartSnapshot(e.to_string()))?;

    // The config file's accounts, users and numbers, journaled like any change.
    clashes_with_state(&app.config, &app.dir).map_err(StartError::Config)?;
    provision(&app).await?;
    // Bridges, dials and hand-offs the gateway may never have received
    // are sent again when a gateway connects (gateway.rs); no gateway is
    // connected yet.

    let listener = tokio::net::TcpListener::bind(app.config.listen)
        .await
        .map_err(|source| StartError::Listen { addr: app.config.listen, source })?;
    let addr = listener.local_addr().map_err(|source| StartError::Listen { addr: app.config.listen, source })?;
    app.ready.store(true, Ordering::Release);
    tracing::info!("listening on {addr}");

    let router = http::router(app.clone());
    let snapshots = tokio::spawn(snapshot_loop(app.clone()));
    let retention = tokio::spawn(retention_loop(app.clone()));
    let serve_app = app.clone();
    let mut stop_rx = stop_tx.subscribe();
    let task = tokio::spawn(async move {
        let graceful = async move {
            let _ = stop_rx.wait_for(|s| *s).await;
        };
        // Without TCP_NODELAY a second small frame written before the peer
        // acknowledges the first (an ack right after a command, say) waits
        // for its delayed ACK: tens of milliseconds on every busy socket.
        use axum::serve::ListenerExt;
        let listener = listener.tap_io(|tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::warn!("cannot set TCP_NODELAY: {e}");
            }
        });
        let server = axum::serve(listener, router.into_make_service_with_connect_info::<SocketAddr>())
            .with_graceful_shutdown(graceful);
        if let Err(e) = server.await {
            tracing::error!("server error: {e}");
        }
        serve_app.ready.store(false, Ordering::Release);
        snapshots.abort();
        retention.abort();
        // Connections were told to close by the shutdown signal; give their
        // writers a moment to send the close frames.
        let deadline = Clock::tokio_now() + std::time::Duration::from_secs(2);
        while (!serve_app.dir.conns.is_empty() || !serve_app.dir.gateways_live.is_empty())
            && Clock::tokio_now() < deadline
        {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        // A last snapshot: the next start restores it instead of replaying
        // the journal since the previous one, so a planned restart is quick
        // and a new release does not re-decide what this one journaled.
        if serve_app.config.server.snapshot_on_stop {
            let mut generation = 0;
            match take_snapshot(&serve_app, &mut generation).await {
                Ok(()) => tracing::info!(seq = generation, "final snapshot written"),
                Err(e) => tracing::warn!("final snapshot failed (the next start replays the journal): {e}"),
            }
        }
        if let Some(shards) = serve_app.shards.get() {
            for s in shards {
                let (tx, rx) = tokio::sync::oneshot::channel();
                if s.send(ShardMsg::Stop(tx)) {
                    let _ = rx.await;
                }
            }
        }
        for t in tasks {
            let _ = t.await;
        }
        let closing = tokio::task::spawn_blocking(move || store.close()).await;
        match closing {
            Ok(Ok(())) => tracing::info!("journal flushed; stopped"),
            Ok(Err(e)) => tracing::error!("journal close failed: {e}"),
            Err(e) => tracing::error!("journal close task failed: {e}"),
        }
    });
    Ok(Running { addr, app, stop: stop_tx, task })
}

/// What recovery rebuilt.
#[derive(Debug)]
pub struct Recovery {
    pub store: Store,
    /// One engine per shard.
    pub engines: Vec<Engine>,
    /// The last journal seq in use.
    pub last_seq: u64,
    /// Journal entries fed through the engines (after the snapshot).
    pub replayed: u64,
    /// The generation of the snapshots it was recovered from (0 if none);
    /// the start's own snapshot must not be older.
    pub snapshot_generation: u64,
}

/// How inputs are encoded in the journal: MessagePack with field names,
/// so a later version can still read (and migrate) old entries.
pub fn encode_input(input: &Input) -> Result<Vec<u8>, rmp_serde::encode::Error> {
    rmp_serde::to_vec_named(input)
}

pub fn decode_input(bytes: &[u8]) -> Result<Input, rmp_serde::decode::Error> {
    rmp_serde::from_slice(bytes)
}

/// Opens the store under `data_dir`, restores the latest snapshot and
/// replays the journal after it through fresh engines, one per shard.
/// Accounts may move between shards if the shard count changed.
pub fn recover(data_dir: &std::path::Path, shards: usize) -> Result<Recovery, StartError> {
    recover_with(StoreConfig::new(data_dir), shards)
}

/// [`recover`] with the store's settings given.
#[allow(clippy::disallowed_methods)] // start-up timing for the log only
pub fn recover_with(store_config: StoreConfig, shards: usize) -> Result<Recovery, StartError> {
    let started = std::time::Instant::now();
    let shards = shards.max(1);
    let (store, recovered) = Store::open(store_config)?;
    if let Some(d) = &recovered.dropped {
        tracing::warn!(
            first_seq = d.first_seq,
            count = d.count,
            reason = %d.reason,
            "journal tail damaged: recovered everything before it, dropped {} entries",
            d.count
        );
    }
    // The journal is replayed in the layout it was written in (the
    // snapshots' shard count; a data dir without snapshots is taken to
    // have the configured one): each shard's entries through its own
    // engine, at the times that shard handled them. Shards append
    // concurrently, so across shards seq order is not time order, and one
    // engine fed two shards' entries would see time jump ahead for one
    // account and fire its timers before an input they followed. Accounts
    // move to a changed shard count afterwards.
    let layout = recovered.snapshots.iter().map(|r| r.shard as usize + 1).max().unwrap_or(shards);
    let mut engines: Vec<Engine> = (0..layout).map(|_| Engine::new()).collect();
    let mut covered: rustc_hash::FxHashMap<AccountId, u64> = Default::default();
    for row in &recovered.snapshots {
        let e = Engine::restore(&row.data)
            .map_err(|err| StartError::Snapshot { shard: row.shard, reason: err.to_string() })?;
        for id in e.account_ids() {
            covered.insert(id, row.covered_seq);
        }
        engines[row.shard as usize] = e;
    }
    // Entries at or below every shard's snapshot are gone (truncated) and
    // reflected in the snapshots. An account no snapshot holds was created
    // after its shard's snapshot, so its entries all come later.
    let replay_from = recovered.snapshots.iter().map(|r| r.covered_seq).min().unwrap_or(0);
    let mut replayed = 0u64;
    store.replay(replay_from, |entry| {
        if covered.get(&entry.account).is_some_and(|&c| entry.seq <= c) {
            return Ok(());
        }
        let input =
            decode_input(&entry.input).map_err(|e| StartError::Replay { seq: entry.seq, reason: e.to_string() })?;
        let engine = &mut engines[directory::shard_index(&entry.account, layout)];
        let _ = engine.handle(entry.at, input);
        engine.drain_outputs().for_each(drop);
        replayed += 1;
        Ok::<(), StartError>(())
    })?;
    if layout != shards {
        let mut moved: Vec<Engine> = (0..shards).map(|_| Engine::new()).collect();
        for mut e in engines {
            for state in e.take_accounts() {
                moved[directory::shard_index(state.id(), shards)].insert_account(state);
            }
        }
        engines = moved;
        tracing::info!(from = layout, to = shards, "accounts moved to the configured shard count");
    }
    tracing::info!(
        snapshot_shards = recovered.snapshots.len(),
        replayed,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "state recovered"
    );
    Ok(Recovery {
        store,
        engines,
        last_seq: recovered.last_seq,
        replayed,
        snapshot_generation: recovered.snapshot_generation.unwrap_or(0),
    })
}

/// Every `server.snapshot_every` journal entries, snapshot every shard so
/// the journal can be truncated and start-up stays quick.
async fn snapshot_loop(app: Arc<App>) {
    let every = app.config.server.snapshot_every.max(1);
    let mut last = app.journal.last_seq();
    let mut generation = 0u64;
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tick.tick().await;
        let seq = app.journal.last_seq();
        if seq.saturating_sub(last) < every {
            continue;
        }
        if let Err(e) = take_snapshot(&app, &mut generation).await {
            tracing::error!("snapshot failed: {e}");
            continue;
        }
        last = seq;
    }
}

/// Once an hour (and at start), history older than `history_retention` is
/// deleted. The journal is bounded by snapshots, not by this.
async fn retention_loop(app: Arc<App>) {
    let keep = app.config.server.history_retention;
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(3600));
    loop {
        tick.tick().await;
        let now = app.clock.now();
        let cutoff =
            Instant::from_micros(now.as_micros().saturating_sub(u64::try_from(keep.as_micros()).unwrap_or(u64::MAX)));
        let history = app.history.clone();
        match tokio::task::spawn_blocking(move || history.purge_history_before(cutoff)).await {
            Ok(Ok(n)) if n > 0 => tracing::info!(deleted = n, "history older than the retention period deleted"),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!("history purge failed: {e}"),
            Err(e) => tracing::error!("history purge task failed: {e}"),
        }
    }
}

pub async fn take_snapshot(app: &App, generation: &mut u64) -> Result<(), String> {
    let Some(shards) = app.shards.get() else { return Err("no shards".into()) };
    let mut rows = Vec::new();
    for s in shards {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if !s.send(ShardMsg::Snapshot(tx)) {
            return Err("shard stopped".into());
        }
        rows.push(rx.await.map_err(|_| "shard stopped".to_string())??);
    }
    *generation = (*generation).max(app.journal.last_seq());
    app.journal.snapshot(*generation, rows);
    metrics::counter!("ringline_snapshots_total").increment(1);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::settings::{QueueSettings, RoutingSettings, Strategy};
    use crate::core::team::Plan;
    use crate::core::testkit::{Bed, T0};
    use crate::protocol::gateway::GatewayCommand;
    use crate::store::SnapshotRow;
    use std::time::Duration;

    /// Two shards append concurrently, so one can journal an input it
    /// handled at 2.9 s after another shard's input of 3.5 s. Replayed
    /// through one engine (the shard count lowered), the accept would come
    /// after its ring timeout and be refused: the call the gateway was told
    /// to bridge would be back in the queue.
    #[test]
    fn the_journal_replays_in_the_shard_layout_that_wrote_it() {
        let names: Vec<String> = (0..64).map(|i| format!("acct{i}")).collect();
        let x = names[0].as_str();
        let y = names
            .iter()
            .find(|n| directory::shard_index(&n.as_str().into(), 2) != directory::shard_index(&x.into(), 2))
            .expect("an account on the other shard");

        let mut bx = Bed::journaled(x, Plan::Pro);
        bx.agents(&["a1"]);
        let routing = RoutingSettings {
            strategy: Strategy::RingInOrder,
            ring_timeout: Duration::from_secs(2),
            ..Default::default()
        };
        assert!(bx.number("+15550100", &["a1"], routing, QueueSettings::default()).result.is_ok());
        bx.connect("a1");
        bx.now = T0 + Duration::from_secs(1);
        assert!(bx.inbound("c1", "+15550100").result.is_ok());
        let offer = bx.offer_to("a1");
        bx.now = T0 + Duration::from_millis(2900);
        assert!(bx.accept("a1", offer).result.is_ok());
        let mut xs = bx.journal.take().expect("journaled");
        let accept = xs.pop().expect("the accept");

        let mut by = Bed::journaled(y, Plan::Pro);
        by.now = T0 + Duration::from_millis(3500);
        by.agents(&["b1"]);
        // Seq order: x's entries, y's (the last at 3.5 s), then x's accept (2.9 s).
        let entries = xs.into_iter().chain(by.journal.take().expect("journaled")).chain([accept]);

        let dir = tempfile::tempdir().expect("dir");
        let (store, _) = Store::open(StoreConfig::new(dir.path())).expect("store");
        let journal = store.journal();
        let empty = Engine::new().snapshot().expect("encodes");
        journal.snapshot(1, (0..2).map(|shard| SnapshotRow { shard, covered_seq: 0, data: empty.clone() }).collect());
        for (at, account, input) in entries {
            journal.append(at, &account, encode_input(&input).expect("encodes"), Vec::new());
        }
        journal.flush().expect("durable");
        store.close().expect("closes");

        for shards in [2, 1, 3] {
            let r = recover(dir.path(), shards).expect("recovers");
            assert_eq!(r.engines.len(), shards);
            let engine = r.engines.iter().find(|e| e.has_account(&x.into())).expect("x recovered");
            assert!(r.engines.iter().any(|e| e.has_account(&y.as_str().into())), "y recovered");
            let bridged = engine.unanswered_commands().into_iter().any(|o| {
                matches!(o, crate::core::Output::Gateway { cmd: GatewayCommand::CallBridge { ref call_id, .. }, .. } if call_id.as_str() == "c1")
            });
            assert!(bridged, "{shards} shards: the accepted call is bridged");
            r.store.close().expect("closes");
        }
    }
}
