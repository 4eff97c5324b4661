//! What every WebSocket connection has: a bounded outbox (queue and close
//! request) drained by its writer, keep-alive, an idle timeout, and a rate
//! limit on what it sends us. Agents run it all in one task
//! ([`serve_single`]), and whoever sends to an agent with nothing queued
//! writes to its socket itself ([`ConnHandle::send_all`]); gateways read
//! and write in two tasks ([`read_loop`], [`write_loop`]).
//!
//! Back-pressure: the queue holds `server.outbound_queue` messages. A client
//! that stops reading fills it; the next message that does not fit closes
//! the connection (1008, "too slow") instead of growing memory, and closing
//! revokes its offers like any disconnect.
//!
//! Durability: a message for a gateway carries `after`, the journal position
//! of the input that produced it; the writer waits until the journal is
//! durable that far before writing it. Acks and commands therefore never
//! reach a gateway ahead of the state they describe.

use super::wire::{Encoding, WireError};
use crate::clock::Clock;
use crate::core::ids::{AccountId, ConnId, GatewayName, UserId};
use crate::protocol::agent::AgentMessage;
use crate::protocol::gateway::GatewayCommand;
use crate::store::JournalHandle;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::stream::SplitSink;
use futures_util::{Sink, SinkExt, StreamExt};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::sync::{Notify, watch};

#[derive(Debug)]
pub enum Outbound {
    Agent {
        msg: Arc<AgentMessage>,
        born: Option<tokio::time::Instant>,
    },
    /// `born`: when the event this answers was received (acks only).
    Gateway {
        cmd: Box<GatewayCommand>,
        after: u64,
        born: Option<tokio::time::Instant>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConnKind {
    Agent { account: AccountId, user: UserId },
    Gateway { name: GatewayName },
}

/// What became of messages handed to a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sent {
    /// All of them were written or queued (none are once the connection
    /// is closing or gone).
    pub all: bool,
    /// The connection's task was woken: to write them, or to close.
    pub woke: bool,
}

/// A close requested from outside the connection's own tasks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloseRequest {
    pub code: u16,
    pub reason: String,
}

/// WebSocket close codes we use.
pub mod close {
    pub const GOING_AWAY: u16 = 1001;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    pub const DEACTIVATED: u16 = 4003;
}

#[derive(Clone, Debug)]
pub struct ConnHandle {
    pub id: ConnId,
    pub kind: ConnKind,
    pub encoding: Encoding,
    outbox: Arc<Outbox>,
}

/// A connection's outbound queue and its close request, shared by the
/// handles and the one writer. An idle connection pays for one small
/// allocation: the queue grows only while messages wait (a tokio `mpsc`
/// plus a `watch` cost ~2 KiB per connection up front, a fifth of an idle
/// connection's budget). The lock is held for a push or a pop only.
#[derive(Debug)]
struct Outbox {
    state: Mutex<OutboxState>,
    wake: Notify,
    cap: usize,
    /// A softphone's `hello` was queued: from then on it gets what is sent
    /// to its user. Before that, such messages describe a state its
    /// `hello` will already show.
    greeted: std::sync::atomic::AtomicBool,
    /// Error replies the engine sent to this connection that its reader
    /// has not yet counted towards the abuse limit.
    engine_errors: std::sync::atomic::AtomicU32,
    /// A softphone's socket (none for gateways, or once closing). Its task
    /// reads and writes it through [`SocketRef`]; a sender writes to it
    /// itself when nothing is queued or being written (see
    /// [`ConnHandle::send_all`]). Lock order: `state`, then this one, and
    /// only with `try_lock` there, so the two never wait on each other.
    socket: Mutex<Option<Socket>>,
}

struct Socket {
    ws: WebSocket,
    offer_latency: metrics::Histogram,
}

impl std::fmt::Debug for Socket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Socket").field("ws", &self.ws).finish_non_exhaustive()
    }
}

#[derive(Debug, Default)]
struct OutboxState {
    queue: VecDeque<Outbound>,
    close: Option<CloseRequest>,
    writer_gone: bool,
    /// The connection's task has taken messages to write (or is writing a
    /// ping or its close) and has not finished: a sender must queue behind
    /// them, not write past them.
    writing: bool,
    /// A sender's write did not complete (the peer is not reading, or the
    /// socket failed): the connection's task finishes it, with its own
    /// waker, before anything else is written directly.
    unflushed: bool,
}

/// Capacity a drained queue keeps; a burst's larger buffer is given back.
const KEEP_CAPACITY: usize = 8;

impl Outbox {
    fn lock(&self) -> MutexGuard<'_, OutboxState> {
        // A panic elsewhere while holding the lock leaves a queue that is
        // still consistent (every change is one push, pop or assignment).
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl ConnHandle {
    pub fn new(id: ConnId, kind: ConnKind, encoding: Encoding, queue: usize) -> (ConnHandle, ConnRx) {
        let greeted = std::sync::atomic::AtomicBool::new(matches!(kind, ConnKind::Gateway { .. }));
        let outbox = Arc::new(Outbox {
            state: Mutex::default(),
            wake: Notify::new(),
            cap: queue.max(1),
            greeted,
            engine_errors: std::sync::atomic::AtomicU32::new(0),
            socket: Mutex::new(None),
        });
        (ConnHandle { id, kind, encoding, outbox: outbox.clone() }, ConnRx { outbox })
    }

    /// Hands a softphone's socket to the connection, for [`serve_single`]
    /// and for direct writes; offers written directly are timed into
    /// `offer_latency`.
    pub fn attach(&self, ws: WebSocket, offer_latency: metrics::Histogram) {
        *lock_socket(&self.outbox.socket) = Some(Socket { ws, offer_latency });
    }

    /// The engine's first message to a softphone connection is its
    /// `hello`; messages to the connection's user reach it after that.
    pub fn greet(&self) {
        self.outbox.greeted.store(true, std::sync::atomic::Ordering::Release);
    }

    pub fn greeted(&self) -> bool {
        self.outbox.greeted.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The engine refused one of this connection's commands; the reader
    /// counts it towards the abuse limit with the next frame it reads.
    pub fn note_engine_error(&self) {
        self.outbox.engine_errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    fn take_engine_errors(&self) -> u32 {
        self.outbox.engine_errors.swap(0, std::sync::atomic::Ordering::Relaxed)
    }

    /// Queues a message; a full queue closes the connection. Returns
    /// whether the message was queued (not once the connection is closing
    /// or gone).
    pub fn send(&self, out: Outbound) -> bool {
        self.send_all([out])
    }

    /// Queues messages in order under one lock and wakes the writer once
    /// (or writes them at once, see [`ConnHandle::push`]); a full queue
    /// closes the connection. Returns whether all of them were queued or
    /// written.
    pub fn send_all(&self, outs: impl IntoIterator<Item = Outbound>) -> bool {
        self.push(outs).all
    }

    /// [`ConnHandle::send_all`], saying also whether the connection's task
    /// was woken.
    ///
    /// A softphone with nothing queued or being written gets the messages
    /// written at once, from the caller's thread, when its task is not
    /// using the socket just then: an offer goes out without waking the
    /// connection's task first (at light load that wake-up and poll are
    /// tens of cold cache lines on every offer's path). The write never
    /// waits: what the socket does not take at once stays in the
    /// connection's write buffer for its task to finish, and until then
    /// messages queue as before, so the queue's bound still applies.
    pub fn push(&self, outs: impl IntoIterator<Item = Outbound>) -> Sent {
        let mut st = self.outbox.lock();
        let mut outs = outs.into_iter();
        let mut unfinished = false;
        // `try_lock` fails while the connection's task is reading or
        // writing the socket: then the messages are queued for it.
        if st.queue.is_empty()
            && !st.writing
            && !st.unflushed
            && !st.writer_gone
            && st.close.is_none()
            && let Ok(mut guard) = self.outbox.socket.try_lock()
            && let Some(socket) = guard.as_mut()
        {
            if write_now(socket, self.encoding, &mut outs) {
                return Sent { all: true, woke: false };
            }
            // The rest (if any) queues behind what is in the write buffer.
            st.unflushed = true;
            unfinished = true;
        }
        let mut queued = unfinished;
        let mut all = true;
        for out in outs {
            if st.writer_gone || st.close.is_some() {
                all = false;
                break;
            }
            if st.queue.len() >= self.outbox.cap {
                drop(st);
                metrics::counter!("ringline_slow_clients_total").increment(1);
                self.close(close::POLICY, "too slow: outbound queue full");
                return Sent { all: false, woke: true };
            }
            st.queue.push_back(out);
            queued = true;
        }
        drop(st);
        if queued {
            self.outbox.wake.notify_one();
        }
        Sent { all, woke: queued }
    }

    /// Asks the writer to close the connection; the first request wins.
    pub fn close(&self, code: u16, reason: &str) {
        let mut st = self.outbox.lock();
        if st.close.is_none() {
            st.close = Some(CloseRequest { code, reason: reason.to_owned() });
            drop(st);
            self.outbox.wake.notify_one();
        }
    }

    pub fn is_closing(&self) -> bool {
        self.outbox.lock().close.is_some()
    }
}

/// The writer's side of a connection's outbox.
#[derive(Debug)]
pub struct ConnRx {
    outbox: Arc<Outbox>,
}

/// What the writer does next.
#[derive(Debug)]
pub enum Next {
    Send(Outbound),
    Close(CloseRequest),
    /// Finish a sender's direct write.
    Flush,
}

impl ConnRx {
    /// The next message to write, or the close request, which goes first
    /// (what is still queued for a closing connection is not sent), or a
    /// sender's unfinished direct write to flush. Cancel-safe: nothing is
    /// taken until it is returned. A message or flush returned marks the
    /// connection as writing until [`ConnRx::done_writing`].
    pub async fn next(&self) -> Next {
        loop {
            {
                let mut st = self.outbox.lock();
                if let Some(req) = &st.close {
                    return Next::Close(req.clone());
                }
                if let Some(out) = st.queue.pop_front() {
                    if st.queue.is_empty() && st.queue.capacity() > KEEP_CAPACITY {
                        st.queue.shrink_to(KEEP_CAPACITY);
                    }
                    // Flushing the batch also flushes an unfinished direct
                    // write: it is ahead of these in the write buffer.
                    st.writing = true;
                    st.unflushed = false;
                    return Next::Send(out);
                }
                if st.unflushed {
                    st.writing = true;
                    st.unflushed = false;
                    return Next::Flush;
                }
            }
            // `notify_one` leaves a permit when nobody waits, so a push
            // between the check above and this wait is not missed.
            self.outbox.wake.notified().await;
        }
    }

    /// Marks the connection as writing (a ping, its close): senders queue
    /// meanwhile. What a sender left unflushed goes out with it.
    pub fn begin_writing(&self) {
        let mut st = self.outbox.lock();
        st.writing = true;
        st.unflushed = false;
    }

    /// The write that [`ConnRx::next`] or [`ConnRx::begin_writing`] started
    /// is complete: senders may write directly again.
    pub fn done_writing(&self) {
        self.outbox.lock().writing = false;
    }

    /// The socket, as the connection's task uses it.
    fn socket(&self) -> SocketRef<'_> {
        SocketRef(&self.outbox.socket)
    }

    /// Resolves once the connection is asked to close.
    pub async fn closed(&self) -> CloseRequest {
        loop {
            if let Some(req) = &self.outbox.lock().close {
                return req.clone();
            }
            self.outbox.wake.notified().await;
        }
    }

    /// The next queued message; `None` once the connection is closing and
    /// nothing is queued (tests observe deliveries this way).
    pub async fn recv(&mut self) -> Option<Outbound> {
        loop {
            {
                let mut st = self.outbox.lock();
                if let Some(out) = st.queue.pop_front() {
                    return Some(out);
                }
                if st.close.is_some() {
                    return None;
                }
            }
            self.outbox.wake.notified().await;
        }
    }

    /// The next queued message if there is one (none once closing).
    pub fn try_next(&self) -> Option<Outbound> {
        let mut st = self.outbox.lock();
        if st.close.is_some() {
            return None;
        }
        st.queue.pop_front()
    }
}

impl Drop for ConnRx {
    /// Nobody writes any more: refuse new messages, free queued ones and
    /// close the socket.
    fn drop(&mut self) {
        let mut st = self.outbox.lock();
        st.writer_gone = true;
        st.queue = VecDeque::new();
        drop(st);
        let socket = lock_socket(&self.outbox.socket).take();
        drop(socket);
    }
}

fn lock_socket(socket: &Mutex<Option<Socket>>) -> MutexGuard<'_, Option<Socket>> {
    // Whoever panicked holding it left the socket as tungstenite leaves it
    // after any failed call; the next use reports the error.
    socket.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Writes softphone messages without waiting, with a no-op waker: nothing
/// here may take the connection task's place as the one woken when the
/// socket can take more. Returns whether all of `outs` was written and
/// flushed; if not, what the socket did not take is still in `outs` (or,
/// for a socket that failed, lost with the connection, as it would be
/// from the queue), and the task must flush the rest.
fn write_now(socket: &mut Socket, encoding: Encoding, outs: &mut impl Iterator<Item = Outbound>) -> bool {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let mut ws = Pin::new(&mut socket.ws);
    let mut offers = Vec::new();
    loop {
        // Ready unless an earlier message of this call hit a full socket.
        if !matches!(ws.as_mut().poll_ready(&mut cx), std::task::Poll::Ready(Ok(()))) {
            return false;
        }
        // Gateway messages are not for softphones (as in `gather`).
        let Some(out) = outs.next() else { break };
        let Outbound::Agent { msg, born } = out else { continue };
        let Some(frame) = encode(encoding, &*msg) else { continue };
        if ws.as_mut().start_send(frame).is_err() {
            return false;
        }
        if let (AgentMessage::Offer { .. }, Some(born)) = (&*msg, born) {
            offers.push(born);
        }
    }
    if !matches!(ws.as_mut().poll_flush(&mut cx), std::task::Poll::Ready(Ok(()))) {
        return false;
    }
    for born in offers {
        socket.offer_latency.record(born.elapsed().as_secs_f64());
    }
    true
}

/// A softphone's socket as its task reads and writes it: locked for each
/// poll only, so a sender can write between them.
struct SocketRef<'a>(&'a Mutex<Option<Socket>>);

fn gone() -> axum::Error {
    axum::Error::new(std::io::Error::from(std::io::ErrorKind::NotConnected))
}

impl SocketRef<'_> {
    /// `f` on the socket under its lock, or `closed()` once it is gone.
    fn locked<R>(&self, closed: impl FnOnce() -> R, f: impl FnOnce(Pin<&mut WebSocket>) -> R) -> R {
        match lock_socket(self.0).as_mut() {
            Some(s) => f(Pin::new(&mut s.ws)),
            None => closed(),
        }
    }
}

impl futures_util::Stream for SocketRef<'_> {
    type Item = Result<Message, axum::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Option<Self::Item>> {
        self.locked(|| std::task::Poll::Ready(None), |ws| ws.poll_next(cx))
    }
}

impl futures_util::Sink<Message> for SocketRef<'_> {
    type Error = axum::Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), axum::Error>> {
        self.locked(|| std::task::Poll::Ready(Err(gone())), |ws| ws.poll_ready(cx))
    }

    fn start_send(self: Pin<&mut Self>, item: Message) -> Result<(), axum::Error> {
        self.locked(|| Err(gone()), |ws| ws.start_send(item))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), axum::Error>> {
        self.locked(|| std::task::Poll::Ready(Err(gone())), |ws| ws.poll_flush(cx))
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), axum::Error>> {
        self.locked(|| std::task::Poll::Ready(Ok(())), |ws| ws.poll_close(cx))
    }
}

/// Most queued messages a connection's writer sends in one write.
const WRITE_BATCH: usize = 32;

/// How long a closing connection may take to flush its close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Writes queued messages until the connection is closed; sends a ping
/// every `ping_every`. Returns why it stopped.
pub async fn write_loop(
    mut sink: SplitSink<WebSocket, Message>,
    rx: ConnRx,
    encoding: Encoding,
    journal: JournalHandle,
    ping_every: Duration,
    clock: Clock,
    ack_latency: metrics::Histogram,
) -> Option<CloseRequest> {
    let mut ping = tokio::time::interval_at(Clock::tokio_now() + ping_every, ping_every);
    let _ = clock;
    // A message taken from the queue while batching that must wait for the
    // journal: it starts the next write.
    let mut stash: Option<Outbound> = None;
    let reason = loop {
        let first = match stash.take() {
            Some(out) => out,
            None => tokio::select! {
                biased;
                next = rx.next() => match next {
                    Next::Close(req) => break Some(req),
                    Next::Send(out) => out,
                    // Gateways' messages are never written directly.
                    Next::Flush => {
                        rx.done_writing();
                        continue;
                    }
                },
                _ = ping.tick() => {
                    if let Err(stop) = send_unless_closed(&mut sink, [Message::Ping(Default::default())], &rx, NO_STOP).await {
                        break stop;
                    }
                    release_write_waker(&mut sink);
                    continue;
                }
            },
        };
        if let Outbound::Gateway { after, .. } = &first
            && journal.durable() < *after
            && journal.wait_durable(*after).await.is_err()
        {
            break Some(CloseRequest { code: 1011, reason: "journal unavailable".into() });
        }
        // Everything queued behind it that is already durable goes out in
        // the same write: under load many acks share one syscall.
        let Batch { frames, stamps: acks, held } = gather(first, &rx, encoding, Some(journal.durable()));
        stash = held;
        if frames.is_empty() {
            continue;
        }
        // A peer that stops reading blocks this send once the kernel's
        // buffers are full; a close requested meanwhile (its queue
        // overflowed) must still end the connection.
        if let Err(stop) = send_unless_closed(&mut sink, frames, &rx, NO_STOP).await {
            break stop;
        }
        release_write_waker(&mut sink);
        for born in acks {
            ack_latency.record(born.elapsed().as_secs_f64());
        }
    };
    say_goodbye(&mut sink, reason.as_ref()).await;
    reason
}

/// Leaves a no-op waker where the writer's last flush left its own.
///
/// A gateway's reader and writer are two tasks on one socket, and
/// tokio-tungstenite wakes the waker of *both* whenever the socket is ready
/// for either (its waker proxy has a read slot and a write slot and wakes
/// the two). The write slot keeps the waker of the writer's last flush, so
/// every event a gateway sent also woke its idle writer: two tasks ready at
/// once, and Tokio then wakes its other worker thread to share them. On 2
/// vCPUs that thread competes with the offer's path and the peer (at 10
/// calls/s, 162 of 168 inbound frames woke the second worker; `perf sched`).
/// The writer never waits on the socket between writes (only on its queue,
/// the journal and its ping timer), and its next write registers its own
/// waker again, so a no-op one in the slot loses nothing. The flush has
/// nothing to write (the last one completed); if the reader holds the
/// socket just then, the slot keeps the old waker, as before.
fn release_write_waker<S, T>(sink: &mut S)
where
    S: futures_util::Sink<T> + Unpin,
{
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let _ = std::pin::Pin::new(sink).poll_flush(&mut cx);
}

/// Frames for one write, taken from the front of a connection's queue.
#[derive(Debug)]
struct Batch {
    frames: Vec<Message>,
    /// When the events behind the timed messages in it (offers, acks) were
    /// received, for the latency metrics.
    stamps: Vec<tokio::time::Instant>,
    /// A gateway message taken from the queue that must wait for the
    /// journal: it starts the next batch.
    held: Option<Outbound>,
}

/// Encodes `first` and whatever is queued behind it, up to
/// [`WRITE_BATCH`] frames, stopping at the first gateway message whose
/// input is not yet durable (`durable`: the journal's durable position),
/// which is returned in `held` so that no ack overtakes the journal.
/// A softphone's writer passes `durable: None`: gateway messages are not
/// for it and are dropped.
fn gather(first: Outbound, rx: &ConnRx, encoding: Encoding, durable: Option<u64>) -> Batch {
    let mut batch = Batch { frames: Vec::new(), stamps: Vec::new(), held: None };
    let mut out = Some(first);
    while let Some(o) = out.take() {
        match o {
            Outbound::Agent { msg, born } => {
                if let Some(frame) = encode(encoding, &*msg) {
                    batch.frames.push(frame);
                    if let (AgentMessage::Offer { .. }, Some(born)) = (&*msg, born) {
                        batch.stamps.push(born);
                    }
                }
            }
            Outbound::Gateway { cmd, born, .. } => {
                if durable.is_some()
                    && let Some(frame) = encode(encoding, &*cmd)
                {
                    batch.frames.push(frame);
                    if let (GatewayCommand::Ack { .. }, Some(born)) = (&*cmd, born) {
                        batch.stamps.push(born);
                    }
                }
            }
        }
        if batch.frames.len() < WRITE_BATCH {
            match rx.try_next() {
                Some(o @ Outbound::Gateway { after, .. }) if durable.is_some_and(|d| after > d) => {
                    batch.held = Some(o);
                }
                next => out = next,
            }
        }
    }
    batch
}

/// Sends the close frame (if the server is the one closing) and closes.
/// The frame queues behind whatever the peer has not read yet; a peer that
/// reads nothing gets its socket dropped after [`CLOSE_GRACE`].
async fn say_goodbye<S>(sink: &mut S, reason: Option<&CloseRequest>)
where
    S: futures_util::Sink<Message> + Unpin,
{
    let goodbye = async {
        if let Some(req) = reason {
            let frame = CloseFrame { code: req.code, reason: Utf8Bytes::from(req.reason.clone()) };
            let _ = sink.send(Message::Close(Some(frame))).await;
        }
        let _ = sink.close().await;
    };
    let _ = tokio::time::timeout(CLOSE_GRACE, goodbye).await;
}

fn encode<T: serde::Serialize>(enc: Encoding, msg: &T) -> Option<Message> {
    match enc.encode(msg) {
        Ok(bytes) => Some(match enc {
            Encoding::Json => match String::from_utf8(bytes) {
                Ok(s) => Message::Text(s.into()),
                Err(_) => return None,
            },
            Encoding::MsgPack => Message::Binary(bytes.into()),
        }),
        Err(e) => {
            tracing::error!("cannot encode an outgoing message: {e}");
            None
        }
    }
}

/// What a connection's reader enforces.
#[derive(Debug)]
pub struct ReadPolicy {
    pub max_frame_bytes: usize,
    pub idle_timeout: Duration,
    pub rate: RateLimit,
    pub abuse: AbuseMeter,
    /// Close reason when abuse closes the connection.
    pub abuse_reason: &'static str,
}

impl ReadPolicy {
    /// Applies the size and rate limits to one frame and hands it to
    /// `on_frame`; every refusal goes to `on_error` and, unless it is
    /// `unavailable` (the server is busy), counts towards the abuse limit.
    /// Returns false when the connection must be closed.
    fn admit(
        &mut self,
        bytes: &[u8],
        enc: Encoding,
        now: tokio::time::Instant,
        on_frame: &mut impl FnMut(&[u8], Encoding) -> Result<(), WireError>,
        on_error: &impl Fn(WireError),
    ) -> bool {
        use crate::protocol::ErrorCode;
        let outcome = if bytes.len() > self.max_frame_bytes {
            let message = format!("frame of {} bytes exceeds the limit of {}", bytes.len(), self.max_frame_bytes);
            let (ref_, seq) = super::wire::refused_ids(bytes, enc);
            Err(WireError { code: ErrorCode::BadRequest, message, ref_, seq })
        } else if !self.rate.allow(now) {
            let (ref_, seq) = super::wire::refused_ids(bytes, enc);
            Err(WireError { code: ErrorCode::RateLimited, message: "too many messages; slow down".into(), ref_, seq })
        } else {
            on_frame(bytes, enc)
        };
        match outcome {
            Ok(()) => true,
            // The server being busy is not the client's fault.
            Err(e) if e.code == ErrorCode::Unavailable => {
                on_error(e);
                true
            }
            Err(e) => {
                on_error(e);
                !self.abuse.hit(now)
            }
        }
    }
}

/// Reads frames until the peer leaves, falls silent for `idle_timeout`, the
/// server shuts down, or the writer stops (the connection was closed from
/// elsewhere). Each frame within the size and rate limits goes to
/// `on_frame` (text as JSON, binary as MessagePack); every refusal, from
/// here or from `on_frame`, is answered through `on_error` and counted
/// towards the abuse limit.
pub async fn read_loop(
    stream: &mut futures_util::stream::SplitStream<WebSocket>,
    handle: &ConnHandle,
    writer: &mut tokio::task::JoinHandle<Option<CloseRequest>>,
    mut shutdown: watch::Receiver<bool>,
    mut policy: ReadPolicy,
    mut on_frame: impl FnMut(&[u8], Encoding) -> Result<(), WireError>,
    on_error: impl Fn(WireError),
) {
    use futures_util::StreamExt;
    let mut heard = Clock::tokio_now();
    // One timer for the idle timeout, moved only when it fires: a frame
    // just moves `heard` (no timer registered and cancelled per frame).
    let idle = tokio::time::sleep_until(heard + policy.idle_timeout);
    tokio::pin!(idle);
    // Made once, not per `select!`: a fresh `wait_for` joins and leaves the
    // shutdown signal's waiter list (shared with every connection) on each
    // frame, touching other connections' memory on the event's path.
    let stop = async move {
        let _ = shutdown.wait_for(|s| *s).await;
    };
    tokio::pin!(stop);
    loop {
        tokio::select! {
            frame = stream.next() => {
                let msg = match frame {
                    None => return,
                    Some(Err(e)) => {
                        if let Some((code, reason)) = read_failure(e) {
                            handle.close(code, reason);
                        }
                        return;
                    }
                    Some(Ok(m)) => m,
                };
                let now = Clock::tokio_now();
                heard = now;
                let (bytes, enc) = match &msg {
                    Message::Text(t) => (t.as_bytes(), Encoding::Json),
                    Message::Binary(b) => (&b[..], Encoding::MsgPack),
                    Message::Close(_) => return,
                    _ => continue,
                };
                if !policy.admit(bytes, enc, now, &mut on_frame, &on_error) {
                    handle.close(close::POLICY, policy.abuse_reason);
                    return;
                }
            }
            () = &mut idle => {
                let now = Clock::tokio_now();
                if now >= heard + policy.idle_timeout {
                    handle.close(close::GOING_AWAY, "idle timeout: no traffic from the peer");
                    return;
                }
                idle.as_mut().reset(heard + policy.idle_timeout);
            }
            () = &mut stop => {
                handle.close(close::GOING_AWAY, "server shutting down");
                return;
            }
            _ = &mut *writer => return,
        }
    }
}

/// One softphone connection in one task: reads frames, writes queued
/// messages, pings, and enforces the read policy. Agents are the bulk of
/// all connections, so they get no second (writer) task, no split socket
/// and one timer for both keep-alive and the idle timeout; that is what
/// keeps an idle connection near the cost of a bare WebSocket. (Gateways
/// keep [`read_loop`] and [`write_loop`]: their writer waits for the
/// journal, which must not stop their reading.)
///
/// While a write to a peer that stopped reading is blocked, nothing is
/// read from it; a close requested meanwhile still ends the connection.
///
/// The socket is the one [`ConnHandle::attach`] gave the connection;
/// senders may write to it between this task's uses (see
/// [`ConnHandle::send_all`]).
#[allow(clippy::too_many_arguments)]
pub async fn serve_single(
    handle: &ConnHandle,
    rx: ConnRx,
    encoding: Encoding,
    ping_every: Duration,
    offer_latency: metrics::Histogram,
    mut shutdown: watch::Receiver<bool>,
    mut policy: ReadPolicy,
    mut on_frame: impl FnMut(&[u8], Encoding) -> Result<(), WireError>,
    on_error: impl Fn(WireError),
) -> Option<CloseRequest> {
    let start = Clock::tokio_now();
    let mut heard = start;
    let mut next_ping = start + first_ping_after(handle.id, ping_every);
    // Fires at the next ping or the idle deadline, whichever is first; a
    // frame only moves `heard`, so reading never re-arms a timer.
    let timer = tokio::time::sleep_until(next_ping.min(heard + policy.idle_timeout));
    tokio::pin!(timer);
    // Made once, not per `select!` (see `read_loop`); it is never polled
    // again once it has fired, since the loop ends then.
    let stop = async move {
        let _ = shutdown.wait_for(|s| *s).await;
    };
    tokio::pin!(stop);
    let mut socket = rx.socket();
    let reason = loop {
        tokio::select! {
            biased;
            () = &mut stop => {
                break Some(CloseRequest { code: close::GOING_AWAY, reason: "server shutting down".into() });
            }
            next = rx.next() => {
                // Whatever else is queued goes out in the same write (an
                // offer and the `status` it causes, a burst of revokes): one
                // syscall instead of one per message. A flush alone
                // finishes a sender's direct write.
                let Batch { frames, stamps: offers, .. } = match next {
                    Next::Close(req) => break Some(req),
                    Next::Send(first) => gather(first, &rx, encoding, None),
                    Next::Flush => Batch { frames: Vec::new(), stamps: Vec::new(), held: None },
                };
                if let Err(stop) = send_unless_closed(&mut socket, frames, &rx, Some(stop.as_mut())).await {
                    break stop;
                }
                rx.done_writing();
                for born in offers {
                    offer_latency.record(born.elapsed().as_secs_f64());
                }
            }
            frame = socket.next() => {
                let msg = match frame {
                    None => break None,
                    Some(Err(e)) => break read_failure(e).map(|(code, reason)| CloseRequest { code, reason: reason.into() }),
                    Some(Ok(m)) => m,
                };
                let now = Clock::tokio_now();
                heard = now;
                let (bytes, enc) = match &msg {
                    Message::Text(t) => (t.as_bytes(), Encoding::Json),
                    Message::Binary(b) => (&b[..], Encoding::MsgPack),
                    Message::Close(_) => break None,
                    _ => continue,
                };
                // The engine's refusals of earlier commands count as well: a
                // softphone looping on a stale offer is closed like one
                // sending garbage.
                if policy.abuse.hit_times(now, handle.take_engine_errors())
                    || !policy.admit(bytes, enc, now, &mut on_frame, &on_error)
                {
                    break Some(CloseRequest { code: close::POLICY, reason: policy.abuse_reason.into() });
                }
            }
            () = &mut timer => {
                let now = Clock::tokio_now();
                if now >= heard + policy.idle_timeout {
                    break Some(CloseRequest { code: close::GOING_AWAY, reason: "idle timeout: no traffic from the peer".into() });
                }
                if now >= next_ping {
                    next_ping = now + ping_every;
                    rx.begin_writing();
                    if let Err(stop) = send_unless_closed(&mut socket, [Message::Ping(Default::default())], &rx, Some(stop.as_mut())).await {
                        break stop;
                    }
                    rx.done_writing();
                }
                timer.as_mut().reset(next_ping.min(heard + policy.idle_timeout));
            }
        }
    };
    // Whoever closed it, later `send`s must see the connection closing,
    // and nothing may be written past the close frame.
    if let Some(req) = &reason {
        handle.close(req.code, &req.reason);
    }
    rx.begin_writing();
    say_goodbye(&mut socket, reason.as_ref()).await;
    // Dropping `rx` here closes the socket (see `ConnRx`'s `Drop`), however
    // long handles live.
    reason
}

/// When a softphone's first ping is due: somewhere in its first interval,
/// spread by its connection id; later pings follow every interval.
///
/// Softphones connect in crowds (after a restart or a network blip every
/// one reconnects within seconds: the load test's 10,000 within 1-3 s), and
/// pings timed from the connection alone stay in step with the crowd: every
/// interval, one ping and one pong per connection within those seconds
/// (`perf sched` showed the server writing pings back to back for
/// milliseconds at 10 calls/s). Spread over a whole interval they are an
/// even trickle (over only half of one, they would fill every other half
/// interval). A live peer still hears a ping at least once per interval, so
/// `idle_timeout` keeps its meaning.
fn first_ping_after(id: ConnId, every: Duration) -> Duration {
    // Fibonacci hashing: consecutive ids land far apart in [0, 1).
    let spread = (id.0.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11) as f64 / (1u64 << 53) as f64;
    // (0, 1]: never a ping the instant a softphone connects.
    every.mul_f64(1.0 - spread)
}

/// For [`send_unless_closed`] where the server's shutdown does not apply.
const NO_STOP: Option<Pin<&mut std::future::Pending<()>>> = None;

/// Writes frames (flushed once, at the end) unless the connection is
/// closed (or the server stops) while the write waits for a peer that does
/// not read.
async fn send_unless_closed<S, F>(
    sink: &mut S,
    frames: impl IntoIterator<Item = Message>,
    rx: &ConnRx,
    stop: Option<Pin<&mut F>>,
) -> Result<(), Option<CloseRequest>>
where
    S: futures_util::Sink<Message> + Unpin,
    F: Future<Output = ()>,
{
    let stopping = async {
        match stop {
            Some(f) => f.await,
            None => std::future::pending::<()>().await,
        }
    };
    let write = async {
        for f in frames {
            sink.feed(f).await?;
        }
        sink.flush().await
    };
    tokio::select! {
        biased;
        sent = write => sent.map_err(|_| None),
        req = rx.closed() => Err(Some(req)),
        () = stopping => Err(Some(CloseRequest { code: close::GOING_AWAY, reason: "server shutting down".into() })),
    }
}

/// After the reader stops: let the writer send its close frame, briefly.
pub async fn finish_writer(handle: &ConnHandle, mut writer: tokio::task::JoinHandle<Option<CloseRequest>>) {
    if !writer.is_finished() {
        handle.close(close::GOING_AWAY, "closing");
        let _ = tokio::time::timeout(Duration::from_secs(2), &mut writer).await;
        writer.abort();
    }
}

/// Why a read failed, as a close to send: a frame past the hard size
/// limit is 1009; anything else (a broken peer) needs no close frame.
pub fn read_failure(e: axum::Error) -> Option<(u16, &'static str)> {
    use tokio_tungstenite::tungstenite::Error as WsError;
    let inner = e.into_inner();
    match inner.downcast_ref::<WsError>() {
        Some(WsError::Capacity(_)) => Some((close::TOO_BIG, "frame too large")),
        _ => None,
    }
}

/// Token bucket: `rate` per second, bursts of `burst`. Time comes in.
#[derive(Debug)]
pub struct RateLimit {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: tokio::time::Instant,
}

impl RateLimit {
    pub fn new(rate: u32, burst: u32, now: tokio::time::Instant) -> Self {
        RateLimit { rate: f64::from(rate), burst: f64::from(burst.max(1)), tokens: f64::from(burst.max(1)), last: now }
    }

    pub fn allow(&mut self, now: tokio::time::Instant) -> bool {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Counts errors a connection caused in a sliding window; too many closes it.
#[derive(Debug)]
pub struct AbuseMeter {
    limit: u32,
    window: Duration,
    hits: std::collections::VecDeque<tokio::time::Instant>,
}

impl AbuseMeter {
    pub fn new(limit: u32, window: Duration) -> Self {
        AbuseMeter { limit, window, hits: Default::default() }
    }

    /// Records `n` errors; true when the connection should be closed.
    pub fn hit_times(&mut self, now: tokio::time::Instant, n: u32) -> bool {
        (0..n).fold(false, |close, _| self.hit(now) || close)
    }

    /// Records one error; true when the connection should be closed.
    pub fn hit(&mut self, now: tokio::time::Instant) -> bool {
        if self.limit == 0 {
            return false;
        }
        self.hits.push_back(now);
        while self.hits.front().is_some_and(|&t| now.saturating_duration_since(t) > self.window) {
            self.hits.pop_front();
        }
        self.hits.len() as u32 >= self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn rate_limit_allows_bursts_then_the_rate() {
        let t0 = Clock::tokio_now();
        let mut r = RateLimit::new(10, 3, t0);
        assert!(r.allow(t0) && r.allow(t0) && r.allow(t0));
        assert!(!r.allow(t0));
        assert!(r.allow(t0 + Duration::from_millis(100)));
        assert!(!r.allow(t0 + Duration::from_millis(100)));
    }

    #[tokio::test(start_paused = true)]
    async fn abuse_meter_counts_within_its_window() {
        let t0 = Clock::tokio_now();
        let mut m = AbuseMeter::new(3, Duration::from_secs(60));
        assert!(!m.hit(t0));
        assert!(!m.hit(t0 + Duration::from_secs(1)));
        assert!(!m.hit(t0 + Duration::from_secs(70)), "the first two fell out of the window");
        assert!(!m.hit(t0 + Duration::from_secs(71)));
        assert!(m.hit(t0 + Duration::from_secs(72)));
    }

    fn ack(seq: u64, after: u64) -> Outbound {
        Outbound::Gateway { cmd: Box::new(GatewayCommand::Ack { seq }), after, born: Some(tokio::time::Instant::now()) }
    }

    fn text(m: &Message) -> String {
        match m {
            Message::Text(t) => t.to_string(),
            other => panic!("not text: {other:?}"),
        }
    }

    #[test]
    fn a_batch_stops_at_an_ack_whose_input_is_not_durable() {
        let (h, rx) = ConnHandle::new(ConnId(1), ConnKind::Gateway { name: "g".into() }, Encoding::Json, 8);
        for (seq, after) in [(2, 2), (3, 3), (4, 2)] {
            assert!(h.send(ack(seq, after)));
        }
        let b = gather(ack(1, 1), &rx, Encoding::Json, Some(2));
        let sent: Vec<String> = b.frames.iter().map(text).collect();
        assert_eq!(sent.len(), 2, "{sent:?}");
        assert!(sent[0].contains(r#""seq":1"#) && sent[1].contains(r#""seq":2"#), "{sent:?}");
        assert_eq!(b.stamps.len(), 2);
        // Held back, and nothing behind it overtook it.
        assert!(matches!(&b.held, Some(Outbound::Gateway { after: 3, .. })));
        assert!(matches!(rx.try_next(), Some(Outbound::Gateway { after: 2, .. })));
        assert!(rx.try_next().is_none());
    }

    #[test]
    fn a_softphone_gets_everything_queued_in_one_batch_in_order() {
        let kind = ConnKind::Agent { account: "a".into(), user: "u".into() };
        let (h, rx) = ConnHandle::new(ConnId(1), kind, Encoding::Json, 64);
        let offer = AgentMessage::Offer {
            offer_id: crate::core::ids::OfferId(7),
            kind: crate::protocol::agent::OfferKind::Inbound,
            call_id: Some("c1".into()),
            callback_id: None,
            number: "+15550100".into(),
            from: "+15551230001".into(),
            expires_in_ms: 15_000,
        };
        let pong = |r: &str| Outbound::Agent {
            msg: Arc::new(AgentMessage::Pong { ref_: Some(crate::protocol::Ref::from(r)) }),
            born: None,
        };
        h.send_all([pong("a"), ack(9, 0), pong("b")]);
        for i in 0..WRITE_BATCH + 5 {
            h.send(pong(&format!("n{i}")));
        }
        let first = Outbound::Agent { msg: Arc::new(offer), born: Some(tokio::time::Instant::now()) };
        let b = gather(first, &rx, Encoding::Json, None);
        let sent: Vec<String> = b.frames.iter().map(text).collect();
        assert_eq!(sent.len(), WRITE_BATCH);
        assert!(sent[0].contains(r#""type":"offer""#), "{sent:?}");
        assert!(sent[1].contains(r#""ref":"a""#) && sent[2].contains(r#""ref":"b""#), "the ack is not for a softphone");
        assert!(sent[3].contains(r#""ref":"n0""#), "{sent:?}");
        assert_eq!(b.stamps.len(), 1, "the offer is timed");
        assert!(b.held.is_none());
        // The rest waits for the next write, in order.
        let next = rx.try_next();
        let want = format!("n{}", WRITE_BATCH - 3);
        assert!(
            matches!(&next, Some(Outbound::Agent { msg, .. }) if matches!(&**msg, AgentMessage::Pong { ref_: Some(r) } if **r == *want)),
            "{next:?}"
        );
    }

    /// A softphone connection on a real axum WebSocket, and its peer.
    async fn softphone() -> (
        ConnHandle,
        ConnRx,
        tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    ) {
        let (tx, rx) = tokio::sync::oneshot::channel::<WebSocket>();
        let tx = Arc::new(Mutex::new(Some(tx)));
        let app = axum::Router::new().route(
            "/",
            axum::routing::get(move |ws: axum::extract::ws::WebSocketUpgrade| {
                let tx = tx.clone();
                async move {
                    ws.on_upgrade(move |socket| async move {
                        if let Some(tx) = tx.lock().unwrap().take() {
                            let _ = tx.send(socket);
                        }
                    })
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let (peer, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/")).await.unwrap();
        let kind = ConnKind::Agent { account: "a".into(), user: "u".into() };
        let (h, conn_rx) = ConnHandle::new(ConnId(1), kind, Encoding::Json, 64);
        h.attach(rx.await.unwrap(), metrics::Histogram::noop());
        (h, conn_rx, peer)
    }

    fn numbered(i: usize, pad: usize) -> Outbound {
        let msg = AgentMessage::Error {
            ref_: Some(crate::protocol::Ref::from(format!("m{i}").as_str())),
            code: crate::protocol::ErrorCode::BadRequest,
            message: "x".repeat(pad),
        };
        Outbound::Agent { msg: Arc::new(msg), born: None }
    }

    /// The `ref` of the next text frame the peer reads.
    async fn next_ref(
        peer: &mut tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    ) -> String {
        use tokio_tungstenite::tungstenite::Message as WsMessage;
        loop {
            let m = tokio::time::timeout(Duration::from_secs(5), peer.next()).await.expect("a frame").unwrap().unwrap();
            if let WsMessage::Text(t) = m {
                let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                return v["ref"].as_str().unwrap().to_owned();
            }
        }
    }

    #[tokio::test]
    async fn a_send_with_nothing_queued_is_written_without_the_connections_task() {
        // No task serves this connection: only a direct write reaches the peer.
        let (h, rx, mut peer) = softphone().await;
        assert_eq!(h.push([numbered(0, 0), numbered(1, 0)]), Sent { all: true, woke: false });
        assert!(rx.try_next().is_none(), "nothing was queued");
        assert_eq!(next_ref(&mut peer).await, "m0");
        assert_eq!(next_ref(&mut peer).await, "m1");
    }

    #[tokio::test]
    async fn a_send_queues_behind_a_write_in_progress() {
        let (h, rx, mut peer) = softphone().await;
        rx.begin_writing();
        assert_eq!(h.push([numbered(0, 0)]), Sent { all: true, woke: true });
        assert!(tokio::time::timeout(Duration::from_millis(100), peer.next()).await.is_err(), "written past the task");
        assert!(matches!(rx.try_next(), Some(Outbound::Agent { .. })), "queued for the task");
        rx.done_writing();
        assert!(h.send(numbered(1, 0)));
        assert_eq!(next_ref(&mut peer).await, "m1");
        // A closing connection takes nothing more, directly or queued.
        h.close(close::POLICY, "bye");
        assert!(!h.send(numbered(2, 0)));
    }

    /// Sends 16 KiB messages `m0`, `m1`, ... to a peer that reads nothing
    /// until a direct write is left unfinished; returns how many were sent.
    fn fill_until_unflushed(h: &ConnHandle, rx: &ConnRx) -> usize {
        let mut sent = 0;
        while !rx.outbox.lock().unflushed {
            assert!(sent < 10_000, "the socket never filled");
            assert!(h.send(numbered(sent, 16 * 1024)));
            sent += 1;
        }
        sent
    }

    #[tokio::test]
    async fn an_unfinished_direct_write_alone_wakes_the_task_to_flush_it() {
        let (h, rx, mut peer) = softphone().await;
        let sent = fill_until_unflushed(&h, &rx);
        let next = tokio::time::timeout(Duration::from_secs(2), rx.next()).await.expect("the task is woken");
        assert!(matches!(next, Next::Flush), "{next:?}");
        let reader = tokio::spawn(async move {
            let mut last = String::new();
            for _ in 0..sent {
                last = next_ref(&mut peer).await;
            }
            last
        });
        send_unless_closed(&mut rx.socket(), Vec::<Message>::new(), &rx, NO_STOP).await.unwrap();
        rx.done_writing();
        assert_eq!(reader.await.unwrap(), format!("m{}", sent - 1), "the last message reached the peer");
    }

    #[tokio::test]
    async fn a_direct_write_the_socket_cannot_take_is_finished_by_the_task_in_order() {
        let (h, rx, mut peer) = softphone().await;
        let sent = fill_until_unflushed(&h, &rx);
        // What comes next queues behind the unfinished write.
        assert!(h.send(numbered(sent, 0)));
        assert!(matches!(rx.try_next(), Some(Outbound::Agent { .. })));
        assert!(h.send(numbered(sent + 1, 0)));
        // The task's next write flushes the unfinished one first.
        let Next::Send(first) = rx.next().await else { panic!("the queued message") };
        let reader = tokio::spawn(async move {
            let mut refs = Vec::new();
            // Everything but m{sent}, which the test took off the queue.
            for _ in 0..=sent {
                refs.push(next_ref(&mut peer).await);
            }
            refs
        });
        let batch = gather(first, &rx, Encoding::Json, None);
        send_unless_closed(&mut rx.socket(), batch.frames, &rx, NO_STOP).await.unwrap();
        rx.done_writing();
        let want: Vec<String> = (0..=sent + 1).filter(|&i| i != sent).map(|i| format!("m{i}")).collect();
        assert_eq!(reader.await.unwrap(), want);
    }

    #[tokio::test]
    async fn the_writer_wakes_for_messages_and_a_close_goes_first() {
        let (h, rx) = ConnHandle::new(ConnId(1), ConnKind::Gateway { name: "g".into() }, Encoding::Json, 8);
        let msg = || Outbound::Agent { msg: Arc::new(AgentMessage::Pong { ref_: None }), born: None };
        let waiting = tokio::spawn(async move {
            let first = rx.next().await;
            (rx, first)
        });
        tokio::task::yield_now().await;
        assert!(h.send(msg()));
        let (rx, first) = waiting.await.unwrap();
        assert!(matches!(first, Next::Send(_)));
        assert!(h.send(msg()));
        h.close(close::POLICY, "first");
        h.close(close::GOING_AWAY, "second");
        assert!(!h.send(msg()), "a closing connection takes nothing more");
        match rx.next().await {
            Next::Close(req) => assert_eq!((req.code, req.reason.as_str()), (close::POLICY, "first")),
            other => panic!("{other:?}"),
        }
        assert_eq!(rx.closed().await.reason, "first");
        drop(rx);
        assert!(h.is_closing());
    }

    #[test]
    fn first_pings_of_a_crowd_are_spread_over_an_interval() {
        let every = Duration::from_secs(20);
        // 10,000 connections opened one after another: ids are consecutive.
        let mut buckets = [0u32; 10];
        for id in 1..=10_000u64 {
            let d = first_ping_after(ConnId(id), every);
            assert!(d > Duration::ZERO && d <= every, "id {id}: {d:?}");
            let slot = (d.as_secs_f64() / every.as_secs_f64() * 10.0) as usize;
            buckets[slot.min(9)] += 1;
        }
        // An even spread puts 1,000 in each tenth of the interval.
        assert!(buckets.iter().all(|&n| (900..=1100).contains(&n)), "{buckets:?}");
        // Ids close together are not close in time.
        let gap = |a: u64, b: u64| first_ping_after(ConnId(a), every).abs_diff(first_ping_after(ConnId(b), every));
        assert!((1..1000u64).all(|i| gap(i, i + 1) > Duration::from_millis(100)));
    }

    #[test]
    fn a_crowd_that_connected_together_is_pinged_at_a_steady_rate() {
        // 10,000 softphones connect within 1.5 s, as after a restart; from
        // then on every second should carry about 1/20th of their pings,
        // not all of them in one half of each interval.
        let every = Duration::from_secs(20);
        let mut per_second = [0u32; 80];
        for id in 1..=10_000u64 {
            let connected = Duration::from_micros(150 * id);
            let mut at = connected + first_ping_after(ConnId(id), every);
            while at < Duration::from_secs(80) {
                per_second[at.as_secs() as usize] += 1;
                at += every;
            }
        }
        let steady = &per_second[22..80];
        assert!(steady.iter().all(|&n| (400..=600).contains(&n)), "{steady:?}");
    }

    /// Counts how often it is woken.
    #[derive(Default)]
    struct Wakes(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.wake_by_ref();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    impl Wakes {
        fn count(&self) -> usize {
            self.0.load(std::sync::atomic::Ordering::SeqCst)
        }
    }

    /// Over a real WebSocket: a writer flushes, then (if `release`) leaves
    /// a no-op waker behind; the reader waits for a frame; the peer sends
    /// one. Returns whether that frame woke the idle writer too.
    async fn frame_wakes_idle_writer(release: bool) -> bool {
        use futures_util::{Sink, Stream, StreamExt};
        use std::pin::Pin;
        use std::task::{Context, Waker};
        use tokio_tungstenite::tungstenite::Message as WsMessage;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let peer = tokio::spawn(async move { tokio_tungstenite::connect_async(format!("ws://{addr}/")).await });
        let (tcp, _) = listener.accept().await.unwrap();
        let server = tokio_tungstenite::accept_async(tcp).await.unwrap();
        let (mut peer, _) = peer.await.unwrap().unwrap();
        let (mut sink, mut stream) = server.split();

        let writer = Arc::new(Wakes::default());
        let writer_waker = Waker::from(writer.clone());
        let mut cx = Context::from_waker(&writer_waker);
        assert!(Pin::new(&mut sink).poll_ready(&mut cx).is_ready());
        Pin::new(&mut sink).start_send(WsMessage::text("ack")).unwrap();
        assert!(matches!(Pin::new(&mut sink).poll_flush(&mut cx), std::task::Poll::Ready(Ok(()))));
        if release {
            release_write_waker(&mut sink);
        }

        let reader = Arc::new(Wakes::default());
        let reader_waker = Waker::from(reader.clone());
        assert!(Pin::new(&mut stream).poll_next(&mut Context::from_waker(&reader_waker)).is_pending());
        peer.send(WsMessage::text("event")).await.unwrap();
        for _ in 0..500 {
            if reader.count() > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        assert!(reader.count() > 0, "the reader is woken for the frame");
        writer.count() > 0
    }

    #[tokio::test]
    async fn a_gateways_frame_does_not_wake_its_idle_writer() {
        // Without the release the library wakes the writer too: what this
        // guards against is real (if a later tokio-tungstenite stops doing
        // it, this fails and the release can go).
        assert!(frame_wakes_idle_writer(false).await, "tokio-tungstenite no longer wakes both; drop the release");
        assert!(!frame_wakes_idle_writer(true).await, "the idle writer was woken by an inbound frame");
    }

    #[test]
    fn nothing_is_queued_once_the_writer_is_gone() {
        let (h, rx) = ConnHandle::new(ConnId(1), ConnKind::Gateway { name: "g".into() }, Encoding::Json, 8);
        drop(rx);
        assert!(!h.send(Outbound::Agent { msg: Arc::new(AgentMessage::Pong { ref_: None }), born: None }));
    }

    #[test]
    fn a_full_queue_closes_the_connection() {
        let (h, _rx) = ConnHandle::new(ConnId(1), ConnKind::Gateway { name: "g".into() }, Encoding::Json, 2);
        let msg = || Outbound::Agent { msg: Arc::new(AgentMessage::Pong { ref_: None }), born: None };
        assert!(h.send(msg()) && h.send(msg()));
        assert!(!h.is_closing());
        assert!(!h.send(msg()));
        assert!(h.is_closing());
    }
}
