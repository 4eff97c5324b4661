//! What every WebSocket connection has: a bounded outbound queue drained by
//! a writer task, a way to close it from elsewhere, keep-alive, and a rate
//! limit on what it sends us.
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
use futures_util::SinkExt;
use futures_util::stream::SplitSink;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

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
    tx: mpsc::Sender<Outbound>,
    kill: Arc<watch::Sender<Option<CloseRequest>>>,
}

impl ConnHandle {
    pub fn new(id: ConnId, kind: ConnKind, encoding: Encoding, queue: usize) -> (ConnHandle, ConnRx) {
        let (tx, rx) = mpsc::channel(queue.max(1));
        let (kill, kill_rx) = watch::channel(None);
        (ConnHandle { id, kind, encoding, tx, kill: Arc::new(kill) }, ConnRx { rx, kill: kill_rx })
    }

    /// Queues a message; a full queue closes the connection. Returns
    /// whether the message was queued.
    pub fn send(&self, out: Outbound) -> bool {
        match self.tx.try_send(out) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                metrics::counter!("ringline_slow_clients_total").increment(1);
                self.close(close::POLICY, "too slow: outbound queue full");
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    pub fn close(&self, code: u16, reason: &str) {
        self.kill.send_if_modified(|k| {
            if k.is_none() {
                *k = Some(CloseRequest { code, reason: reason.to_owned() });
                true
            } else {
                false
            }
        });
    }

    pub fn is_closing(&self) -> bool {
        self.kill.borrow().is_some()
    }
}

#[derive(Debug)]
pub struct ConnRx {
    rx: mpsc::Receiver<Outbound>,
    kill: watch::Receiver<Option<CloseRequest>>,
}

impl ConnRx {
    /// The next queued message (tests observe deliveries this way).
    pub async fn recv(&mut self) -> Option<Outbound> {
        self.rx.recv().await
    }

    pub fn try_recv(&mut self) -> Option<Outbound> {
        self.rx.try_recv().ok()
    }
}

/// How long a closing connection may take to flush its close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Writes queued messages until the connection is closed; sends a ping
/// every `ping_every`. Returns why it stopped.
pub async fn write_loop(
    mut sink: SplitSink<WebSocket, Message>,
    mut rx: ConnRx,
    encoding: Encoding,
    journal: JournalHandle,
    ping_every: Duration,
    clock: Clock,
) -> Option<CloseRequest> {
    let mut ping = tokio::time::interval_at(Clock::tokio_now() + ping_every, ping_every);
    let _ = clock;
    let reason = loop {
        tokio::select! {
            biased;
            changed = rx.kill.changed() => {
                let req = if changed.is_ok() { rx.kill.borrow().clone() } else { None };
                break req;
            }
            out = rx.rx.recv() => {
                let Some(out) = out else { break None };
                let (frame, born, metric) = match out {
                    Outbound::Agent { msg, born } => {
                        let metric = matches!(*msg, AgentMessage::Offer { .. }).then_some("ringline_offer_latency_seconds");
                        (encode(encoding, &*msg), born, metric)
                    }
                    Outbound::Gateway { cmd, after, born } => {
                        if journal.durable() < after && journal.wait_durable(after).await.is_err() {
                            break Some(CloseRequest { code: 1011, reason: "journal unavailable".into() });
                        }
                        let metric = matches!(*cmd, GatewayCommand::Ack { .. }).then_some("ringline_ack_latency_seconds");
                        (encode(encoding, &*cmd), born, metric)
                    }
                };
                let Some(frame) = frame else { continue };
                // A peer that stops reading blocks this send once the
                // kernel's buffers are full; a close requested meanwhile
                // (its queue overflowed) must still end the connection.
                tokio::select! {
                    biased;
                    sent = sink.send(frame) => if sent.is_err() { break None },
                    changed = rx.kill.changed() => {
                        break if changed.is_ok() { rx.kill.borrow().clone() } else { None };
                    }
                }
                // Event received to offer (or ack) written to the socket.
                if let (Some(name), Some(born)) = (metric, born) {
                    metrics::histogram!(name).record(born.elapsed().as_secs_f64());
                }
            }
            _ = ping.tick() => {
                tokio::select! {
                    biased;
                    sent = sink.send(Message::Ping(Default::default())) => if sent.is_err() { break None },
                    changed = rx.kill.changed() => {
                        break if changed.is_ok() { rx.kill.borrow().clone() } else { None };
                    }
                }
            }
        }
    };
    // The close frame queues behind whatever the peer has not read yet; a
    // peer that reads nothing gets its socket dropped after the grace.
    let goodbye = async {
        if let Some(req) = &reason {
            let frame = CloseFrame { code: req.code, reason: Utf8Bytes::from(req.reason.clone()) };
            let _ = sink.send(Message::Close(Some(frame))).await;
        }
        let _ = sink.close().await;
    };
    let _ = tokio::time::timeout(CLOSE_GRACE, goodbye).await;
    reason
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
    use crate::protocol::ErrorCode;
    use futures_util::StreamExt;
    loop {
        tokio::select! {
            frame = tokio::time::timeout(policy.idle_timeout, stream.next()) => {
                let msg = match frame {
                    Err(_) => {
                        handle.close(close::GOING_AWAY, "idle timeout: no traffic from the peer");
                        return;
                    }
                    Ok(None) => return,
                    Ok(Some(Err(e))) => {
                        if let Some((code, reason)) = read_failure(e) {
                            handle.close(code, reason);
                        }
                        return;
                    }
                    Ok(Some(Ok(m))) => m,
                };
                let (bytes, enc) = match &msg {
                    Message::Text(t) => (t.as_bytes(), Encoding::Json),
                    Message::Binary(b) => (&b[..], Encoding::MsgPack),
                    Message::Close(_) => return,
                    _ => continue,
                };
                let now = Clock::tokio_now();
                let outcome = if bytes.len() > policy.max_frame_bytes {
                    let message = format!("frame of {} bytes exceeds the limit of {}", bytes.len(), policy.max_frame_bytes);
                    Err(WireError { code: ErrorCode::BadRequest, message, ref_: None, seq: None })
                } else if !policy.rate.allow(now) {
                    Err(WireError { code: ErrorCode::RateLimited, message: "too many messages; slow down".into(), ref_: None, seq: None })
                } else {
                    on_frame(bytes, enc)
                };
                if let Err(e) = outcome {
                    on_error(e);
                    if policy.abuse.hit(now) {
                        handle.close(close::POLICY, policy.abuse_reason);
                        return;
                    }
                }
            }
            _ = shutdown.wait_for(|s| *s) => {
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
#[allow(clippy::too_many_arguments)]
pub async fn serve_single(
    mut socket: WebSocket,
    handle: &ConnHandle,
    mut rx: ConnRx,
    encoding: Encoding,
    ping_every: Duration,
    mut shutdown: watch::Receiver<bool>,
    mut policy: ReadPolicy,
    mut on_frame: impl FnMut(&[u8], Encoding) -> Result<(), WireError>,
    on_error: impl Fn(WireError),
) -> Option<CloseRequest> {
    use crate::protocol::ErrorCode;
    let start = Clock::tokio_now();
    let mut heard = start;
    let mut next_ping = start + ping_every;
    // Fires at the next ping or the idle deadline, whichever is first; a
    // frame only moves `heard`, so reading never re-arms a timer.
    let timer = tokio::time::sleep_until(next_ping.min(heard + policy.idle_timeout));
    tokio::pin!(timer);
    let reason = loop {
        tokio::select! {
            biased;
            changed = rx.kill.changed() => {
                break if changed.is_ok() { rx.kill.borrow().clone() } else { None };
            }
            // (Mapped to `()` so the borrow of `shutdown` ends with it.)
            () = async { let _ = shutdown.wait_for(|s| *s).await; } => {
                break Some(CloseRequest { code: close::GOING_AWAY, reason: "server shutting down".into() });
            }
            out = rx.rx.recv() => {
                let Some(Outbound::Agent { msg, born }) = out else {
                    if out.is_none() { break None }
                    continue;
                };
                let Some(frame) = encode(encoding, &*msg) else { continue };
                if let Err(stop) = send_unless_closed(&mut socket, frame, &mut rx.kill, &mut shutdown).await {
                    break stop;
                }
                if let (true, Some(born)) = (matches!(*msg, AgentMessage::Offer { .. }), born) {
                    metrics::histogram!("ringline_offer_latency_seconds").record(born.elapsed().as_secs_f64());
                }
            }
            frame = socket.recv() => {
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
                let outcome = if bytes.len() > policy.max_frame_bytes {
                    let message = format!("frame of {} bytes exceeds the limit of {}", bytes.len(), policy.max_frame_bytes);
                    Err(WireError { code: ErrorCode::BadRequest, message, ref_: None, seq: None })
                } else if !policy.rate.allow(now) {
                    Err(WireError { code: ErrorCode::RateLimited, message: "too many messages; slow down".into(), ref_: None, seq: None })
                } else {
                    on_frame(bytes, enc)
                };
                if let Err(e) = outcome {
                    on_error(e);
                    if policy.abuse.hit(now) {
                        break Some(CloseRequest { code: close::POLICY, reason: policy.abuse_reason.into() });
                    }
                }
            }
            () = &mut timer => {
                let now = Clock::tokio_now();
                if now >= heard + policy.idle_timeout {
                    break Some(CloseRequest { code: close::GOING_AWAY, reason: "idle timeout: no traffic from the peer".into() });
                }
                if now >= next_ping {
                    next_ping = now + ping_every;
                    if let Err(stop) = send_unless_closed(&mut socket, Message::Ping(Default::default()), &mut rx.kill, &mut shutdown).await {
                        break stop;
                    }
                }
                timer.as_mut().reset(next_ping.min(heard + policy.idle_timeout));
            }
        }
    };
    // Whoever closed it, later `send`s must see the connection closing.
    if let Some(req) = &reason {
        handle.close(req.code, &req.reason);
    }
    let goodbye = async {
        if let Some(req) = &reason {
            let frame = CloseFrame { code: req.code, reason: Utf8Bytes::from(req.reason.clone()) };
            let _ = socket.send(Message::Close(Some(frame))).await;
        }
        let _ = socket.close().await;
    };
    let _ = tokio::time::timeout(CLOSE_GRACE, goodbye).await;
    reason
}

/// Writes one frame unless the connection is closed (or the server stops)
/// while the write waits for a peer that does not read.
async fn send_unless_closed(
    socket: &mut WebSocket,
    frame: Message,
    kill: &mut watch::Receiver<Option<CloseRequest>>,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), Option<CloseRequest>> {
    tokio::select! {
        biased;
        sent = socket.send(frame) => sent.map_err(|_| None),
        changed = kill.changed() => Err(if changed.is_ok() { kill.borrow().clone() } else { None }),
        _ = shutdown.wait_for(|s| *s) => {
            Err(Some(CloseRequest { code: close::GOING_AWAY, reason: "server shutting down".into() }))
        }
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
