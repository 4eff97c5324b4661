//! `GET /v1/gateway`: a telephony gateway. Events in (acked once durable),
//! commands out.

use super::conn::{
    AbuseMeter, ConnHandle, ConnKind, Outbound, RateLimit, ReadPolicy, close, finish_writer, read_loop, write_loop,
};
use super::directory::{AuthError, Identity};
use super::shard::Origin;
use super::wire::{Encoding, WireError, decode_gateway};
use super::{App, http::Credentials};
use crate::clock::Clock;
use crate::core::ids::{AccountId, GatewayName};
use crate::core::{Input, RouteKey};
use crate::protocol::ErrorCode;
use crate::protocol::gateway::{GatewayCommand, GatewayEvent};
use axum::extract::ws::{WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use std::sync::Arc;

pub async fn upgrade(
    State(app): State<Arc<App>>,
    Query(creds): Query<Credentials>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let encoding = match creds.encoding() {
        Ok(e) => e,
        Err(m) => return (StatusCode::BAD_REQUEST, m).into_response(),
    };
    let (name, accounts) = match app.dir.authenticate(creds.token(&headers).unwrap_or_default()) {
        Ok(Identity::Gateway { name, accounts }) => (name, accounts),
        Ok(Identity::User { .. }) => {
            return (StatusCode::FORBIDDEN, "user tokens connect to /v1/agent").into_response();
        }
        Err(AuthError::Unknown) => return (StatusCode::UNAUTHORIZED, "missing or unknown token").into_response(),
        Err(AuthError::NotActive(_)) => return (StatusCode::FORBIDDEN, "not active").into_response(),
    };
    if !app.ready.load(std::sync::atomic::Ordering::Acquire) || *app.shutdown.borrow() {
        return (StatusCode::SERVICE_UNAVAILABLE, "not ready").into_response();
    }
    super::http::sized(ws, &app.config.server).on_upgrade(move |socket| run(app, socket, name, accounts, encoding))
}

/// How many softphones' worth of traffic a gateway may send, and of
/// replies it may have queued.
const GATEWAY_SCALE: u32 = 100;

fn not_found(what: &str, seq: u64, ref_: Option<crate::protocol::Ref>) -> WireError {
    WireError { code: ErrorCode::NotFound, message: format!("unknown {what}"), ref_, seq: Some(seq) }
}

async fn run(
    app: Arc<App>,
    socket: WebSocket,
    name: GatewayName,
    accounts: Option<Vec<AccountId>>,
    encoding: Encoding,
) {
    let id = app.next_conn_id();
    // The connection's span is the parent of its events but is never
    // entered: entering it on every poll of the reader (the task that
    // carries each `call.inbound` to its shard) walks the subscriber's
    // span registry, which at light load is cold memory on the offer's
    // path.
    let span = tracing::info_span!("gateway", gateway = %name, conn = id.0);
    let cfg = &app.config.server;
    let (handle, rx) = ConnHandle::new(id, ConnKind::Gateway { name: name.clone() }, encoding, cfg.outbound_queue * 64);
    app.dir.conns.insert(id, handle.clone());
    if let Some(old) = app.dir.gateways_live.insert(name.clone(), handle.clone()) {
        old.close(close::POLICY, "replaced by a newer connection of the same gateway");
    }
    metrics::gauge!("ringline_connections", "kind" => "gateway").increment(1.0);
    tracing::info!(parent: &span, "gateway connected");
    let (sink, mut stream) = socket.split();
    let mut writer = tokio::spawn(write_loop(
        sink,
        rx,
        encoding,
        app.journal.clone(),
        cfg.ping_interval,
        app.clock,
        app.hot.ack_latency.clone(),
    ));

    // Hand over what waited for a gateway, and re-send what the gateway
    // has not answered (bridges, dials, hand-offs) in case the previous
    // connection lost it.
    let served: Vec<AccountId> = match &accounts {
        Some(a) => a.clone(),
        None => app.config.accounts.iter().map(|a| a.id.clone()).collect(),
    };
    app.flush_pending(&served);
    if let Some(shards) = app.shards.get() {
        for s in shards {
            if let Some(cmds) = s.query(|e| e.unanswered_commands()).await {
                for o in cmds {
                    if let crate::core::Output::Gateway { account, cmd } = o
                        && accounts.as_ref().is_none_or(|a| a.contains(&account))
                    {
                        app.resend(&name, &handle, cmd);
                    }
                }
            }
        }
    }

    let allowed = |a: &AccountId| accounts.as_ref().is_none_or(|list| list.contains(a));
    // A gateway carries every call of its accounts: far more traffic than
    // one softphone, so its limits are scaled up.
    let policy = ReadPolicy {
        max_frame_bytes: cfg.max_frame_bytes,
        idle_timeout: cfg.idle_timeout,
        rate: RateLimit::new(
            cfg.rate_limit_per_sec.saturating_mul(GATEWAY_SCALE),
            cfg.rate_limit_burst.saturating_mul(GATEWAY_SCALE),
            Clock::tokio_now(),
        ),
        // One gateway carries every account's calls, so closing it costs far
        // more than closing a softphone: ten times the limit, and only the
        // shell's refusals count (docs/protocol.md, "Abuse").
        abuse: AbuseMeter::new(
            cfg.abuse_errors_before_close.saturating_mul(10),
            crate::config::ServerSettings::ABUSE_WINDOW,
        ),
        abuse_reason: "too many bad events",
    };
    let on_frame = |bytes: &[u8], enc| {
        let frame = decode_gateway(bytes, enc)?;
        let account = account_of(&app, &frame.event)
            .filter(|a| allowed(a))
            .ok_or_else(|| not_found(what(&frame.event), frame.seq, frame.ref_.clone()))?;
        // Events about a new call may follow it on this connection before
        // its shard has bound the id: bind it here so they route (the
        // shard's bind is the same; a refused call's binding is dropped by
        // the shard). An id another account holds is refused before it can
        // redirect that account's events and commands.
        let shard = app.shard_for(&account).ok_or_else(|| not_found("account", frame.seq, frame.ref_.clone()))?;
        let mut bound = None;
        if let GatewayEvent::CallInbound { call_id, .. } = &frame.event {
            let key = RouteKey::Call(call_id.clone());
            match app.dir.bind_new(key.clone(), &account) {
                Ok(true) => bound = Some(key),
                Ok(false) => {}
                Err(_) => {
                    return Err(WireError {
                        code: ErrorCode::Conflict,
                        message: format!("call_id {call_id} is in use by another call"),
                        ref_: frame.ref_.clone(),
                        seq: Some(frame.seq),
                    });
                }
            }
        }
        if let Some(call) = call_of(&frame.event) {
            app.dir.carrier.insert(RouteKey::Call(call.clone()), name.clone());
        }
        let (seq, ref_) = (frame.seq, frame.ref_);
        let origin = Origin::Gateway { conn: id, seq, ref_: ref_.clone() };
        let unbind = bound.map(|key| (key, account.clone()));
        if let Err(busy) = shard.try_input(Input::Gateway { account, event: frame.event }, origin) {
            // Not acked: the gateway sends it again, and binds it again then.
            if let Some((key, account)) = unbind {
                app.dir.unbind(&key, &account);
            }
            return Err(WireError { code: ErrorCode::Unavailable, message: busy.to_string(), ref_, seq: Some(seq) });
        }
        Ok(())
    };
    let on_error = |e: WireError| {
        let cmd = GatewayCommand::Error { ref_: e.ref_, seq: e.seq, code: e.code, message: e.message };
        handle.send(Outbound::Gateway { cmd: Box::new(cmd), after: 0, born: None });
    };
    read_loop(&mut stream, &handle, &mut writer, app.shutdown.clone(), policy, on_frame, on_error).await;
    finish_writer(&handle, writer).await;
    app.dir.conns.remove(&id);
    app.dir.gateways_live.remove_if(&name, |_, h| h.id == id);
    metrics::gauge!("ringline_connections", "kind" => "gateway").decrement(1.0);
    tracing::info!(parent: &span, "gateway disconnected");
}

/// The account an event belongs to, from the number it names or the id of
/// a call, callback or message the engine bound.
fn account_of(app: &App, event: &GatewayEvent) -> Option<AccountId> {
    match event {
        GatewayEvent::CallInbound { to, .. } | GatewayEvent::MessageInbound { to, .. } => app.dir.account_of_number(to),
        GatewayEvent::CallbackResult { callback_id, .. } => {
            app.dir.account_of(&RouteKey::Callback(callback_id.clone()))
        }
        GatewayEvent::MessageStatus { message_id, .. } => app.dir.account_of(&RouteKey::Message(message_id.clone())),
        other => call_of(other).and_then(|c| app.dir.account_of(&RouteKey::Call(c.clone()))),
    }
}

fn call_of(event: &GatewayEvent) -> Option<&crate::core::ids::CallId> {
    match event {
        GatewayEvent::CallInbound { call_id, .. }
        | GatewayEvent::CallAnswered { call_id, .. }
        | GatewayEvent::CallBridgeFailed { call_id, .. }
        | GatewayEvent::CallEnded { call_id, .. }
        | GatewayEvent::CallbackRequested { call_id, .. }
        | GatewayEvent::VoicemailRecorded { call_id, .. } => Some(call_id),
        _ => None,
    }
}

fn what(event: &GatewayEvent) -> &'static str {
    match event {
        GatewayEvent::CallInbound { .. } | GatewayEvent::MessageInbound { .. } => "number",
        GatewayEvent::CallbackResult { .. } => "callback",
        GatewayEvent::MessageStatus { .. } => "message",
        _ => "call",
    }
}
