//! `GET /v1/agent`: one softphone connection of one user.

use super::conn::{AbuseMeter, ConnHandle, ConnKind, Outbound, RateLimit, ReadPolicy, close, serve_single};
use super::directory::{AuthError, Identity};
use super::shard::Origin;
use super::wire::{Encoding, WireError, decode_agent};
use super::{App, http::Credentials};
use crate::clock::Clock;
use crate::core::Input;
use crate::core::ids::{AccountId, ConnId, UserId};
use crate::protocol::agent::AgentMessage;
use axum::extract::ws::{WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
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
    let (account, user) = match app.dir.authenticate(creds.token(&headers).unwrap_or_default()) {
        Ok(Identity::User { account, user, .. }) => (account, user),
        Ok(Identity::Gateway { .. }) => {
            return (StatusCode::FORBIDDEN, "gateway tokens connect to /v1/gateway").into_response();
        }
        Err(AuthError::Unknown) => return (StatusCode::UNAUTHORIZED, "missing or unknown token").into_response(),
        Err(AuthError::NotActive(l)) => {
            return (StatusCode::FORBIDDEN, format!("user is {}", l.as_str())).into_response();
        }
    };
    if !app.ready.load(std::sync::atomic::Ordering::Acquire) || *app.shutdown.borrow() {
        return (StatusCode::SERVICE_UNAVAILABLE, "not ready").into_response();
    }
    let max = app.config.server.max_connections_per_user;
    if open_connections(&app, &account, &user) >= max {
        let m = format!("user {user} already has {max} connections open (server.max_connections_per_user)");
        return (StatusCode::TOO_MANY_REQUESTS, m).into_response();
    }
    // No tracing span per connection: it would be held (and paid for in
    // memory) for the connection's whole life; the few events name the
    // connection instead.
    super::http::sized(ws, &app.config.server).on_upgrade(move |socket| run(app, socket, account, user, encoding))
}

fn open_connections(app: &App, account: &AccountId, user: &UserId) -> usize {
    app.dir.user_conns.get(&(account.clone(), user.clone())).map_or(0, |v| v.len())
}

async fn run(app: Arc<App>, mut socket: WebSocket, account: AccountId, user: UserId, encoding: Encoding) {
    let Some(shard) = app.shard_for(&account).cloned() else { return };
    let id = app.next_conn_id();
    let cfg = &app.config.server;
    // The check before the upgrade lets simultaneous opens through; this
    // one, made as the connection is counted, does not.
    let counted = {
        let mut conns = app.dir.user_conns.entry((account.clone(), user.clone())).or_default();
        conns.push(id);
        conns.len()
    };
    if counted > cfg.max_connections_per_user {
        forget(&app, &account, &user, id);
        let frame =
            axum::extract::ws::CloseFrame { code: close::POLICY, reason: "too many connections for this user".into() };
        let _ = socket.send(axum::extract::ws::Message::Close(Some(frame))).await;
        return;
    }
    let (handle, rx) = ConnHandle::new(
        id,
        ConnKind::Agent { account: account.clone(), user: user.clone() },
        encoding,
        cfg.outbound_queue,
    );
    handle.attach(socket, app.hot.offer_latency.clone());
    app.dir.conns.insert(id, handle.clone());
    metrics::gauge!("ringline_connections", "kind" => "agent").increment(1.0);
    tracing::debug!(conn = id.0, %account, %user, "agent connected");
    let connected = shard.call(&app, Input::Connect { account: account.clone(), user: user.clone(), conn: id }).await;
    if let Err(e) = connected {
        handle.send(Outbound::Agent {
            msg: Arc::new(AgentMessage::Error { ref_: None, code: e.code, message: e.message }),
            born: None,
        });
        handle.close(close::DEACTIVATED, "not allowed to connect");
    }

    let policy = ReadPolicy {
        max_frame_bytes: cfg.max_frame_bytes,
        idle_timeout: cfg.idle_timeout,
        rate: RateLimit::new(cfg.rate_limit_per_sec, cfg.rate_limit_burst, Clock::tokio_now()),
        abuse: AbuseMeter::new(cfg.abuse_errors_before_close, crate::config::ServerSettings::ABUSE_WINDOW),
        abuse_reason: "too many bad or excess messages",
    };
    let on_frame = |bytes: &[u8], enc| {
        let (ref_, cmd) = decode_agent(bytes, enc)?;
        let input = Input::Agent { account: account.clone(), conn: id, ref_: ref_.clone(), cmd };
        shard.try_input(input, Origin::Agent { conn: id, ref_: ref_.clone() }).map_err(|busy| WireError {
            code: crate::protocol::ErrorCode::Unavailable,
            message: busy.to_string(),
            ref_,
            seq: None,
        })
    };
    let on_error = |e: WireError| {
        let msg = AgentMessage::Error { ref_: e.ref_, code: e.code, message: e.message };
        handle.send(Outbound::Agent { msg: Arc::new(msg), born: None });
    };
    let ping = cfg.ping_interval;
    serve_single(
        &handle,
        rx,
        encoding,
        ping,
        app.hot.offer_latency.clone(),
        app.shutdown.clone(),
        policy,
        on_frame,
        on_error,
    )
    .await;
    forget(&app, &account, &user, id);
    shard.input(Input::Disconnect { account, conn: id }, Origin::None);
    metrics::gauge!("ringline_connections", "kind" => "agent").decrement(1.0);
    tracing::debug!(conn = id.0, "agent disconnected");
}

fn forget(app: &App, account: &AccountId, user: &UserId, id: ConnId) {
    app.dir.conns.remove(&id);
    let key = (account.clone(), user.clone());
    let empty = app.dir.user_conns.get_mut(&key).map(|mut v| {
        v.retain(|&c| c != id);
        v.is_empty()
    });
    if empty == Some(true) {
        app.dir.user_conns.remove_if(&key, |_, v| v.is_empty());
    }
}
