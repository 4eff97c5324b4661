//! End to end: authentication, encodings, and every kind of bad input. Each
//! bad frame gets an `error` with the right code and the connection keeps
//! working; abuse, slow readers and dead peers get disconnected.

mod common;

use common::*;
use ringline::core::Input;
use ringline::core::admin::{Actor, AdminCommand};
use ringline::core::team::Lifecycle;
use serde_json::{Value, json};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const N: &str = "+15550100";
/// How long a message must not come, to say it was not sent.
const QUIET: Duration = Duration::from_millis(300);

fn cfg() -> String {
    config(&number(N, "ring_all", "", ""))
}

#[tokio::test]
async fn tokens_are_checked_before_the_upgrade() {
    let srv = TestServer::start(&cfg()).await;
    assert_eq!(Client::connect(srv.addr, "/v1/agent", "", "json").await.unwrap_err(), 401);
    assert_eq!(Client::connect(srv.addr, "/v1/agent", "wrong", "json").await.unwrap_err(), 401);
    assert_eq!(Client::connect(srv.addr, "/v1/gateway", "a1-token", "json").await.unwrap_err(), 403);
    assert_eq!(Client::connect(srv.addr, "/v1/agent", "gw-secret", "json").await.unwrap_err(), 403);
    assert_eq!(Client::connect(srv.addr, "/v1/agent", "a1-token", "xml").await.unwrap_err(), 400);
    // The Authorization header works too (for clients that can set it).
    let mut req = format!("ws://{}/v1/agent", srv.addr).into_client_request().unwrap();
    req.headers_mut().insert("Authorization", "Bearer a1-token".parse().unwrap());
    let mut c = Client::connect_request(req, false).await.expect("bearer header accepted");
    assert_eq!(c.expect("hello").await["user"], "a1");
    srv.stop().await;
}

/// RFC 7235: the auth scheme is case-insensitive, on upgrades and on the
/// HTTP API alike.
#[tokio::test]
async fn the_bearer_scheme_is_accepted_in_any_case() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let srv = TestServer::start(&cfg()).await;
    for scheme in ["bearer", "BEARER", "bEaReR"] {
        let mut req = format!("ws://{}/v1/agent", srv.addr).into_client_request().unwrap();
        req.headers_mut().insert("Authorization", format!("{scheme} a1-token").parse().unwrap());
        let mut c = Client::connect_request(req, false).await.unwrap_or_else(|s| panic!("{scheme}: upgrade got {s}"));
        assert_eq!(c.expect("hello").await["user"], "a1", "{scheme}");
        let mut req = format!("ws://{}/v1/gateway", srv.addr).into_client_request().unwrap();
        req.headers_mut().insert("Authorization", format!("{scheme} gw-secret").parse().unwrap());
        Client::connect_request(req, false).await.unwrap_or_else(|s| panic!("{scheme}: gateway upgrade got {s}"));
        for path in ["/v1/account", "/v1/calls"] {
            let mut s = tokio::net::TcpStream::connect(srv.addr).await.unwrap();
            let req = format!(
                "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: {scheme} alice-token\r\n\r\n"
            );
            s.write_all(req.as_bytes()).await.unwrap();
            let mut answer = String::new();
            s.read_to_string(&mut answer).await.unwrap();
            assert!(answer.starts_with("HTTP/1.1 200"), "{scheme} {path}: {answer}");
        }
    }
    srv.stop().await;
}

#[tokio::test]
async fn a_deactivated_user_gets_403_and_is_closed() {
    let srv = TestServer::start(&cfg()).await;
    let mut a1 = srv.agent("a1").await;
    let app = srv.running.as_ref().unwrap().app.clone();
    let shard = app.shard_for(&"acme".into()).unwrap().clone();
    let cmd = AdminCommand::SetLifecycle { user: "a1".into(), lifecycle: Lifecycle::Deactivated };
    shard.call(&app, Input::Admin { account: "acme".into(), actor: Actor::System, cmd: Box::new(cmd) }).await.unwrap();
    let (code, reason) = a1.expect_close().await.expect("close frame");
    assert_eq!((code, reason.as_str()), (4003, "user deactivated"));
    assert_eq!(Client::connect(srv.addr, "/v1/agent", "a1-token", "json").await.unwrap_err(), 403);
    srv.stop().await;
}

#[tokio::test]
async fn bad_agent_frames_get_errors_and_the_connection_keeps_working() {
    let srv = TestServer::start(&cfg()).await;
    let mut a = srv.agent("a1").await;
    let cases: Vec<(Message, &str, Option<&str>)> = vec![
        (Message::Text("{oops".into()), "bad_request", None),
        (Message::Text("[1,2]".into()), "bad_request", None),
        (Message::Text(r#"{"ref":"r1"}"#.into()), "bad_request", Some("r1")),
        (Message::Text(r#"{"type":"fly","ref":"r2"}"#.into()), "unknown_type", Some("r2")),
        (Message::Text(r#"{"type":"offer.accept","ref":"r3"}"#.into()), "bad_request", Some("r3")),
        (Message::Text(r#"{"type":"status.set","status":42,"ref":"r4"}"#.into()), "bad_request", Some("r4")),
        (Message::Text(r#"{"type":"offer.accept","offer_id":"o999","ref":"r5"}"#.into()), "", None),
        (Message::Binary(vec![0xc1, 0x00].into()), "bad_request", None),
        (
            Message::Text(format!(r#"{{"type":"ping","ref":"r6","pad":"{}"}}"#, "x".repeat(5000)).into()),
            "bad_request",
            Some("r6"),
        ),
    ];
    for (frame, code, ref_) in cases {
        a.send_raw(frame).await;
        if code.is_empty() {
            // A stale offer id is not an error: it lost.
            assert_eq!(a.expect("offer.lost").await["reason"], "gone");
            continue;
        }
        let e = a.expect("error").await;
        assert_eq!(e["code"], code, "{e}");
        if let Some(r) = ref_ {
            assert_eq!(e["ref"], r);
        }
    }
    a.send(json!({"type": "ping", "ref": "alive"})).await;
    assert_eq!(a.expect("pong").await["ref"], "alive");
    srv.stop().await;
}

#[tokio::test]
async fn bad_gateway_events_get_errors_with_their_seq() {
    let srv = TestServer::start(&cfg()).await;
    let mut gw = srv.gateway().await;
    let mut check = async |v: Value, code: &str| {
        let seq = gw.event(v).await;
        let e = gw.c.expect_where("error", |m| m["type"] == "error").await;
        assert_eq!((e["code"].as_str(), e["seq"].as_u64()), (Some(code), Some(seq)), "{e}");
    };
    check(json!({"type": "call.inbound", "call_id": "c1", "to": "+15559999999", "from": "+1"}), "not_found").await;
    check(json!({"type": "call.inbound", "call_id": "c1", "to": N, "from": "+1", "priority": 12}), "bad_request").await;
    check(json!({"type": "call.inbound", "call_id": "~acme.call1", "to": N, "from": "+1"}), "bad_request").await;
    check(json!({"type": "call.ended", "call_id": "never", "reason": "caller_hangup"}), "not_found").await;
    check(json!({"type": "call.ended", "call_id": "c1", "reason": "boredom"}), "bad_request").await;
    check(json!({"type": "callback.result", "callback_id": "nope", "outcome": "connected"}), "not_found").await;
    check(json!({"type": "teleport.call"}), "unknown_type").await;
    // Over the size limit: refused unread, but its seq is echoed.
    check(
        json!({"type": "call.ended", "call_id": "c1", "reason": "caller_hangup", "pad": "x".repeat(5000)}),
        "bad_request",
    )
    .await;
    // Missing seq: the error carries none.
    gw.c.send(json!({"type": "call.inbound", "call_id": "c9", "to": N, "from": "+1"})).await;
    let e = gw.expect("error").await;
    assert!(e["message"].as_str().unwrap().contains("seq"));
    // Still working.
    gw.inbound("c2", N).await;
    gw.expect_for("call.queued", "c2").await;
    // A repeated event is a no-op that is acked again.
    gw.acked(json!({"type": "call.inbound", "call_id": "c2", "to": N, "from": "+15551230001"})).await;
    gw.c.expect_none("call.queued", Duration::from_millis(300)).await;
    srv.stop().await;
}

#[tokio::test]
async fn accounts_cannot_reach_each_other() {
    let srv = TestServer::start(&cfg()).await;
    let mut other_gw =
        Gateway { c: Client::connect(srv.addr, "/v1/gateway", "gw-other", "json").await.unwrap(), seq: 0 };
    // A gateway limited to "other" cannot touch acme's number or calls.
    let seq = other_gw.event(json!({"type": "call.inbound", "call_id": "x1", "to": N, "from": "+1"})).await;
    let e = other_gw.expect("error").await;
    assert_eq!((e["code"].clone(), e["seq"].clone()), (json!("not_found"), json!(seq)));
    let mut gw = srv.gateway().await;
    gw.inbound("c1", N).await;
    other_gw.event(json!({"type": "call.ended", "call_id": "c1", "reason": "caller_hangup"})).await;
    assert_eq!(other_gw.expect("error").await["code"], "not_found");
    // An agent of "other" cannot use acme's number or offers.
    let mut a1 = srv.agent("a1").await;
    let offer = a1.expect("offer").await;
    let mut owen = srv.agent("owen").await;
    owen.send(json!({"type": "offer.accept", "offer_id": offer["offer_id"]})).await;
    assert_eq!(owen.expect("offer.lost").await["reason"], "gone");
    owen.send(json!({"type": "call.dial", "from": N, "to": "+15557770000"})).await;
    assert_eq!(owen.expect("error").await["code"], "not_found");
    a1.send(json!({"type": "offer.accept", "offer_id": offer["offer_id"]})).await;
    a1.expect("offer.won").await;
    srv.stop().await;
}

/// Later events carry only the call id, so an id is routed to the account
/// that holds it: another account's gateway may not take it over (its
/// events and the engine's commands would then follow the id), and an id
/// whose call was refused is held by nobody.
#[tokio::test]
async fn a_call_id_held_by_another_account_is_refused_and_a_refused_one_is_free() {
    const OTHER_N: &str = "+15559990000";
    let srv = TestServer::start(&cfg()).await;
    let mut gw = srv.gateway().await;
    let mut other_gw =
        Gateway { c: Client::connect(srv.addr, "/v1/gateway", "gw-other", "json").await.unwrap(), seq: 0 };
    let mut a1 = srv.agent("a1").await;
    gw.inbound("c1", N).await;
    let offer = a1.expect("offer").await;
    let seq = other_gw.event(json!({"type": "call.inbound", "call_id": "c1", "to": OTHER_N, "from": "+1"})).await;
    let e = other_gw.c.expect_where("error", |m| m["type"] == "error").await;
    assert_eq!((e["code"].as_str(), e["seq"].as_u64()), (Some("conflict"), Some(seq)), "{e}");
    assert!(!e["message"].as_str().unwrap_or("").contains("acme"), "names the other account: {e}");
    // acme's call is still acme's, carried by acme's gateway.
    other_gw.event(json!({"type": "call.ended", "call_id": "c1", "reason": "caller_hangup"})).await;
    assert_eq!(other_gw.expect("error").await["code"], "not_found");
    a1.send(json!({"type": "offer.accept", "offer_id": offer["offer_id"]})).await;
    a1.expect("offer.won").await;
    gw.expect_for("call.bridge", "c1").await;
    other_gw.c.expect_none("call.bridge", QUIET).await;

    // A refused call.inbound leaves its id to whoever uses it next.
    let seq = gw.event(json!({"type": "call.inbound", "call_id": "z1", "to": N, "from": "+1", "priority": 12})).await;
    let e = gw.c.expect_where("error", |m| m["type"] == "error").await;
    assert_eq!((e["code"].as_str(), e["seq"].as_u64()), (Some("bad_request"), Some(seq)), "{e}");
    other_gw.acked(json!({"type": "call.inbound", "call_id": "z1", "to": OTHER_N, "from": "+1"})).await;
    // Routed to "other" (a gateway limited to it gets not_found for anything else).
    other_gw.acked(json!({"type": "call.ended", "call_id": "z1", "reason": "caller_hangup"})).await;
    srv.stop().await;
}

#[tokio::test]
async fn a_user_may_hold_only_so_many_connections() {
    let srv = TestServer::start(&cfg().replace("[server]\n", "[server]\nmax_connections_per_user = 2\n")).await;
    let first = srv.agent("a1").await;
    let _second = srv.agent("a1").await;
    let third = Client::connect(srv.addr, "/v1/agent", "a1-token", "json").await;
    assert_eq!(third.err(), Some(429), "a third connection is refused before the upgrade");
    let _other_user = srv.agent("a2").await;
    // A closed connection frees its place.
    drop(first);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match Client::connect(srv.addr, "/v1/agent", "a1-token", "json").await {
            Ok(mut c) => {
                c.expect("hello").await;
                break;
            }
            Err(429) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(code) => panic!("the freed place was not given back: {code}"),
        }
    }
    // Opened all at once, most pass the check before the upgrade; the
    // count made as each connection is counted still lets only two stay.
    let opens = (0..8).map(|_| async {
        let Ok(mut c) = Client::connect(srv.addr, "/v1/agent", "a3-token", "json").await else { return None };
        let first = c.next(Duration::from_secs(2)).await;
        first.filter(|m| m["type"] == "hello").map(|_| c)
    });
    let kept: Vec<Client> = futures_util::future::join_all(opens).await.into_iter().flatten().collect();
    assert!((1..=2).contains(&kept.len()), "{} of 8 simultaneous connections kept", kept.len());
    srv.stop().await;
}

/// Each connection's rate limit bounds one client; `shard_queue` bounds
/// them all: a shard that falls behind refuses what does not fit with
/// `unavailable` (not acked, so a gateway sends it again), and those
/// refusals do not count as the client's abuse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_that_falls_behind_refuses_work_instead_of_queueing_it() {
    let srv = TestServer::start(&cfg().replace("[server]\n", "[server]\nshard_queue = 4\n")).await;
    let mut gw = srv.gateway().await;
    let mut a1 = srv.agent("a1").await;
    // a1's `hello` is written by the shard itself; a round trip makes sure
    // a1's own task is serving it before the shard's thread is blocked (a
    // task Tokio woke on that thread would wait for it).
    a1.send(json!({"type": "ping", "ref": "up"})).await;
    a1.expect("pong").await;
    let inbound = |i: u32| json!({"type": "call.inbound", "call_id": format!("c{i}"), "to": N, "from": "+1"});
    // Hold acme's shard until told (as a long snapshot or a burst would).
    let go = hold_shard(&srv, "acme");

    let mut seqs = Vec::new();
    for i in 1..=8 {
        seqs.push(gw.event(inbound(i)).await);
    }
    for &seq in &seqs[4..] {
        let e = gw.c.expect_where("error", |m| m["type"] == "error" && m["seq"] == seq).await;
        assert_eq!(e["code"], "unavailable", "{e}");
    }
    // More refusals than the abuse limit (20): the softphone stays connected.
    for i in 0..30 {
        a1.send(json!({"type": "status.set", "status": "available", "ref": format!("r{i}")})).await;
        let e = a1.expect_where("error", |m| m["type"] == "error").await;
        assert_eq!((e["code"].as_str(), e["ref"].as_str()), (Some("unavailable"), Some(format!("r{i}").as_str())));
    }
    go.send(()).expect("release");
    for &seq in &seqs[..4] {
        gw.c.expect_where("ack", |m| m["type"] == "ack" && m["seq"] == seq).await;
    }
    for i in 5..=8 {
        gw.acked(inbound(i)).await;
    }
    a1.send(json!({"type": "status.set", "status": "available", "ref": "after"})).await;
    a1.expect("ok").await;
    srv.stop().await;
}

#[tokio::test]
async fn floods_are_rate_limited_and_the_connection_survives() {
    let srv = TestServer::start(&cfg()).await;
    let mut a = srv.agent("a1").await;
    // Burst is 100: ten more than that are refused, not processed.
    for i in 0..110 {
        a.send(json!({"type": "ping", "ref": format!("p{i}")})).await;
    }
    let (mut pongs, mut limited) = (0, 0);
    // Each ping is answered once, with a pong or an error that names it
    // (so a client knows which to send again).
    let mut answered = std::collections::BTreeSet::new();
    while let Some(m) = a.next(Duration::from_millis(500)).await {
        match m["type"].as_str() {
            Some("pong") => pongs += 1,
            Some("error") if m["code"] == "rate_limited" => limited += 1,
            Some("status") => continue,
            other => panic!("unexpected {other:?}"),
        }
        assert!(answered.insert(m["ref"].as_str().map(str::to_owned)), "answered twice or without ref: {m}");
    }
    assert!(pongs >= 100 && (5..=10).contains(&limited), "pongs {pongs}, rate_limited {limited}");
    assert_eq!(answered.len(), 110);
    tokio::time::sleep(Duration::from_millis(200)).await;
    a.send(json!({"type": "ping", "ref": "after"})).await;
    assert_eq!(a.expect("pong").await["ref"], "after");
    srv.stop().await;
}

/// A gateway carries every account: it may have ten times the bad frames
/// of a softphone (200 within a minute), and the engine's refusals of
/// well-formed events (here `conflict`) do not count.
#[tokio::test]
async fn a_gateway_is_closed_only_after_ten_times_the_abuse_limit() {
    let srv = TestServer::start(&cfg()).await;
    let mut gw = srv.gateway().await;
    // c1 waits (nobody is logged in); the engine refuses callbacks on N.
    gw.acked(json!({"type": "call.inbound", "call_id": "c1", "to": N, "from": "+15557770000"})).await;
    for _ in 0..30 {
        let seq = gw.event(json!({"type": "callback.requested", "call_id": "c1"})).await;
        let e = gw.c.expect_where("error", |m| m["type"] == "error" && m["seq"] == seq).await;
        assert_eq!(e["code"], "conflict", "{e}");
    }
    for _ in 0..199 {
        gw.c.send_raw(Message::Text("garbage".into())).await;
    }
    gw.acked(json!({"type": "call.inbound", "call_id": "c2", "to": N, "from": "+1"})).await;
    gw.c.send_raw(Message::Text("garbage".into())).await;
    let closed = gw.c.expect_close().await;
    assert_eq!(closed.map(|c| c.0), Some(1008), "the 200th bad frame closes it");
    srv.stop().await;
}

/// Well-formed commands the engine refuses are error replies too: a
/// softphone looping on a stale offer is closed like one sending garbage.
#[tokio::test]
async fn the_engines_refusals_count_towards_the_abuse_limit() {
    let srv = TestServer::start(&cfg()).await;
    let mut a = srv.agent("a1").await;
    let decline = async |a: &mut Client, i: u32| {
        a.send(json!({"type": "offer.decline", "offer_id": format!("o{}", 1000 + i), "ref": format!("r{i}")})).await;
        let e = a.expect_where("error", |m| m["type"] == "error").await;
        assert_eq!((e["code"].as_str(), e["ref"].as_str()), (Some("not_found"), Some(format!("r{i}").as_str())));
    };
    for i in 0..19 {
        decline(&mut a, i).await;
    }
    a.send(json!({"type": "ping", "ref": "still"})).await;
    assert_eq!(a.expect("pong").await["ref"], "still", "19 errors: still open");
    decline(&mut a, 19).await;
    // The twentieth is counted when the next frame is read.
    a.send(json!({"type": "ping", "ref": "closed"})).await;
    let closed = a.expect_close().await;
    assert_eq!(closed.map(|c| c.0), Some(1008), "20 error replies within a minute close the connection");
    srv.stop().await;
}

#[tokio::test]
async fn sustained_bad_input_closes_the_connection() {
    let srv = TestServer::start(&cfg()).await;
    let mut a = srv.agent("a1").await;
    for _ in 0..25 {
        a.send_raw(Message::Text("garbage".into())).await;
    }
    let closed = a.expect_close().await;
    assert_eq!(closed.map(|c| c.0), Some(1008), "20 errors within a minute close the connection");
    // Others are unaffected.
    let mut b = srv.agent("a2").await;
    b.send(json!({"type": "ping"})).await;
    b.expect("pong").await;
    srv.stop().await;
}

#[tokio::test]
async fn frames_past_the_hard_limit_close_the_connection() {
    let srv = TestServer::start(&cfg()).await;
    let mut a = srv.agent("a1").await;
    a.send_raw(Message::Text("x".repeat(4096 * 16 + 1).into())).await;
    assert_eq!(a.expect_close().await.map(|c| c.0), Some(1009));
    srv.stop().await;
}

#[tokio::test]
async fn msgpack_and_json_carry_the_same_conversation() {
    async fn conversation(srv: &TestServer, enc: &str, call: &str) -> Vec<Value> {
        let mut a = Client::connect(srv.addr, "/v1/agent", "a1-token", enc).await.unwrap();
        let mut gw = Gateway { c: Client::connect(srv.addr, "/v1/gateway", "gw-secret", enc).await.unwrap(), seq: 0 };
        let hello = a.expect("hello").await;
        gw.inbound(call, N).await;
        let offer = a.expect("offer").await;
        a.send(json!({"type": "offer.accept", "offer_id": offer["offer_id"], "ref": "r"})).await;
        let won = a.expect("offer.won").await;
        let bridge = gw.expect_for("call.bridge", call).await;
        gw.acked(json!({"type": "call.answered", "call_id": call, "agent": "a1"})).await;
        gw.acked(json!({"type": "call.ended", "call_id": call, "reason": "agent_hangup"})).await;
        let ended = a.expect("call.ended").await;
        let mut out = vec![hello, offer, won, bridge, ended];
        for v in &mut out {
            v.as_object_mut().unwrap().remove("server_time");
            v.as_object_mut().unwrap().remove("offer_id");
            v.as_object_mut().unwrap().remove("call_id");
        }
        out
    }
    let srv = TestServer::start(&cfg()).await;
    let json_run = conversation(&srv, "json", "j1").await;
    let mp_run = conversation(&srv, "msgpack", "m1").await;
    assert_eq!(json_run, mp_run);
    srv.stop().await;
}

#[tokio::test]
async fn a_client_that_stops_reading_is_disconnected() {
    // Long enough that a1, which answers no pings, is found slow rather
    // than silent.
    let srv = TestServer::start(&cfg().replace(r#"idle_timeout = "3s""#, r#"idle_timeout = "120s""#)).await;
    let mut slow = srv.agent("a1").await;
    let mut gw = srv.gateway().await;
    let app = srv.running.as_ref().unwrap().app.clone();
    // Whether the server still holds a connection of a1 that it is not
    // closing (a closing one may take its close grace to go).
    let a1_connected = || {
        app.dir
            .user_conns
            .get(&("acme".into(), "a1".into()))
            .is_some_and(|ids| ids.iter().any(|id| app.dir.conns.get(id).is_some_and(|c| !c.is_closing())))
    };
    let body = "y".repeat(1500);
    // Shared-inbox traffic fans out to a1, who never reads it. How much
    // the kernel buffers before the server's queue backs up depends on the
    // machine, so feed it until the server lets a1 go (bounded: 20k
    // messages is ~30 MB, far past any socket buffer).
    let mut i = 0;
    while a1_connected() {
        assert!(i < 20_000, "a1 was never found too slow");
        for _ in 0..250 {
            i += 1;
            gw.event(json!({"type": "message.inbound", "message_id": format!("m{i}"), "to": N, "from": "+15557770000", "body": body})).await;
        }
        // Keep the gateway itself read, so only a1 is slow.
        let last = gw.seq;
        gw.c.expect_where("ack of the batch", |m| m["seq"] == last).await;
        gw.c.forget_backlog();
    }
    let (_, metrics) = srv.http_get("/metrics").await;
    let slow_total: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("ringline_slow_clients_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    assert!(slow_total >= 1.0, "a1 left for another reason:\n{metrics}");
    // a1 gets what was already on the wire, then the end: a close frame
    // (1008, too slow) when it fitted, or just the end of the stream.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut ended = false;
    while let Ok(next) = tokio::time::timeout_at(deadline, futures_util::StreamExt::next(&mut slow.ws)).await {
        match next {
            Some(Ok(Message::Close(f))) => {
                if let Some(f) = f {
                    assert_eq!(u16::from(f.code), 1008);
                    assert!(f.reason.contains("too slow"), "{}", f.reason);
                }
                ended = true;
                break;
            }
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => {
                ended = true;
                break;
            }
        }
    }
    assert!(ended, "a1's connection was still open");
    // The gateway was never slow and still works.
    gw.acked(json!({"type": "message.inbound", "message_id": "after", "to": N, "from": "+15557770000", "body": "hi"}))
        .await;
    srv.stop().await;
}

/// Connects to `url` and neither sends nor reads (so pings go unanswered);
/// the server must close it soon after the 3 s idle timeout.
async fn assert_silent_peer_is_closed(url: &str) {
    let (ws, _) = tokio_tungstenite::connect_async(url).await.expect("connects");
    let t0 = tokio::time::Instant::now();
    let (_sink, mut stream) = futures_util::StreamExt::split(ws);
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let mut closed = false;
    while let Ok(Some(m)) =
        tokio::time::timeout(Duration::from_secs(2), futures_util::StreamExt::next(&mut stream)).await
    {
        if matches!(m, Ok(Message::Close(_)) | Err(_)) {
            closed = true;
            break;
        }
    }
    assert!(closed, "{url}: no close after {:?}", t0.elapsed());
}

#[tokio::test]
async fn a_silent_peer_is_dropped_after_the_idle_timeout() {
    let srv = TestServer::start(&cfg()).await;
    assert_silent_peer_is_closed(&format!("ws://{}/v1/agent?token=a1-token", srv.addr)).await;
    let (status, body) = srv.http_get("/metrics").await;
    assert_eq!(status, 200);
    assert!(body.contains("ringline_connections"));
    srv.stop().await;
}

#[tokio::test]
async fn a_silent_gateway_is_dropped_after_the_idle_timeout_and_a_busy_one_is_not() {
    let srv = TestServer::start(&cfg()).await;
    // A gateway that keeps talking (events, and pongs while it reads its
    // acks) outlives the 3 s idle timeout: what it sends moves the deadline.
    let mut busy = srv.gateway().await;
    let until = tokio::time::Instant::now() + Duration::from_secs(7);
    let mut n = 0;
    while tokio::time::Instant::now() < until {
        n += 1;
        busy.acked(json!({"type": "message.inbound", "message_id": format!("m{n}"), "to": N, "from": "+15557770000", "body": "hi"}))
            .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // One that neither sends nor reads (so never answers a ping) is closed.
    // (Another gateway's token: a second connection of the same gateway
    // would replace the first.)
    assert_silent_peer_is_closed(&format!("ws://{}/v1/gateway?token=gw-other", srv.addr)).await;
    drop(busy);
    srv.stop().await;
}

#[tokio::test]
async fn a_quiet_client_that_answers_pings_stays_connected() {
    let srv = TestServer::start(&cfg()).await;
    let mut a = srv.agent("a1").await;
    // Twice the idle timeout without sending a frame of our own: the
    // server's pings (every second) and our automatic pongs keep it open.
    let quiet_until = tokio::time::Instant::now() + Duration::from_secs(7);
    while tokio::time::Instant::now() < quiet_until {
        let left = quiet_until.saturating_duration_since(tokio::time::Instant::now());
        if let Some(v) = a.next(left).await {
            assert_ne!(v["type"], "error", "{v}");
        }
    }
    a.send(json!({"type": "ping", "ref": "still-here"})).await;
    assert_eq!(a.expect("pong").await["ref"], "still-here");
    srv.stop().await;
}

#[tokio::test]
async fn health_and_readiness() {
    let srv = TestServer::start(&cfg()).await;
    assert_eq!(srv.http_get("/healthz").await, (200, "ok".into()));
    assert_eq!(srv.http_get("/readyz").await.0, 200);
    let addr = srv.addr;
    srv.stop().await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "stopped accepting");
}

/// A second device's first message is its `hello`, even when something is
/// sent to its user between the device's upgrade and the engine seeing
/// it connect (the `hello` already shows that state).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_device_hears_nothing_before_its_hello() {
    let srv = TestServer::start(&cfg()).await;
    let mut a = srv.agent("a1").await;
    a.send(json!({"type": "status.set", "status": "available", "ref": "r0"})).await;
    a.expect("ok").await;
    let go = hold_shard(&srv, "acme");
    // Queued before the new device's connect: its `status` goes to a1.
    a.send(json!({"type": "status.set", "status": "away", "ref": "r1"})).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut b = Client::connect(srv.addr, "/v1/agent", "a1-token", "json").await.expect("second device");
    tokio::time::sleep(Duration::from_millis(100)).await;
    go.send(()).expect("release");
    let first = b.next(WAIT).await.expect("a message");
    assert_eq!((&first["type"], &first["status"]), (&json!("hello"), &json!("away")), "{first}");
    b.expect_none("status", Duration::from_millis(300)).await;
    assert_eq!(a.expect("status").await["status"], "away");
    srv.stop().await;
}

/// Stops `account`'s shard until the returned sender is used (or 10 s
/// pass), so inputs queue behind it.
fn hold_shard(srv: &TestServer, account: &str) -> std::sync::mpsc::Sender<()> {
    let (go, wait) = std::sync::mpsc::channel::<()>();
    let app = srv.running.as_ref().expect("running").app.clone();
    let shard = app.shard_for(&account.into()).expect("shard").clone();
    let hold = Box::new(move |_: &ringline::core::Engine| {
        let _ = wait.recv_timeout(Duration::from_secs(10));
    });
    assert!(shard.send(ringline::server::shard::ShardMsg::Query(hold)));
    go
}
