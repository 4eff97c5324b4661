//! End to end through real sockets: routing strategies, queueing,
//! callbacks, timeouts, declines, disconnects, devices, permissions.

mod common;

use common::*;
use serde_json::json;

const N: &str = "+15550100";
/// How long to listen for a message that must not come.
const QUIET: std::time::Duration = std::time::Duration::from_millis(300);

#[tokio::test]
async fn a_call_is_routed_to_an_agent_and_bridged() {
    let srv = TestServer::start(&config(&number(N, "ring_all", "", ""))).await;
    let mut a1 = srv.agent("a1").await;
    let mut gw = srv.gateway().await;
    gw.inbound("c1", N).await;
    let ringing = gw.expect_for("call.ringing", "c1").await;
    assert_eq!(ringing["agents"], json!(["a1"]));
    let offer = a1.accept_next().await;
    assert_eq!(offer["call_id"], "c1");
    assert_eq!(offer["number"], N);
    let bridge = gw.expect_for("call.bridge", "c1").await;
    assert_eq!(bridge["agent"], "a1");
    gw.acked(json!({"type": "call.answered", "call_id": "c1", "agent": "a1"})).await;
    a1.expect_where("on_call", |m| m["type"] == "status" && m["status"] == "on_call").await;
    gw.acked(json!({"type": "call.ended", "call_id": "c1", "reason": "agent_hangup"})).await;
    a1.expect("call.ended").await;
    srv.stop().await;
}

async fn agents(srv: &TestServer, names: &[&str]) -> Vec<Client> {
    let mut out = Vec::new();
    for n in names {
        out.push(srv.agent(n).await);
    }
    out
}

/// Answers and ends a call the agent accepted.
async fn finish(gw: &mut Gateway, call: &str, agent: &str) {
    gw.expect_for("call.bridge", call).await;
    finish_bridged(gw, call, agent).await;
}

/// Answers and ends a call whose `call.bridge` the gateway already read.
async fn finish_bridged(gw: &mut Gateway, call: &str, agent: &str) {
    gw.acked(json!({"type": "call.answered", "call_id": call, "agent": agent})).await;
    gw.acked(json!({"type": "call.ended", "call_id": call, "reason": "agent_hangup"})).await;
}

#[tokio::test]
async fn ring_all_rings_everyone_and_the_first_accept_wins() {
    let srv = TestServer::start(&config(&number(N, "ring_all", "", ""))).await;
    let mut a = agents(&srv, &["a1", "a2", "a3"]).await;
    let mut gw = srv.gateway().await;
    gw.inbound("c1", N).await;
    let ringing = gw.expect_for("call.ringing", "c1").await;
    assert_eq!(ringing["agents"], json!(["a1", "a2", "a3"]));
    let o2 = a[1].expect("offer").await;
    let o3 = a[2].expect("offer").await;
    a[1].send(json!({"type": "offer.accept", "offer_id": o2["offer_id"], "ref": "win"})).await;
    let won = a[1].expect("offer.won").await;
    assert_eq!(won["ref"], "win");
    let revoked = a[2].expect("offer.revoked").await;
    assert_eq!(
        (revoked["offer_id"].clone(), revoked["reason"].clone()),
        (o3["offer_id"].clone(), json!("answered_elsewhere"))
    );
    a[0].expect("offer.revoked").await;
    a[2].send(json!({"type": "offer.accept", "offer_id": o3["offer_id"]})).await;
    assert_eq!(a[2].expect("offer.lost").await["reason"], "answered_elsewhere");
    let bridge = gw.expect_for("call.bridge", "c1").await;
    assert_eq!(bridge["agent"], "a2");
    srv.stop().await;
}

#[tokio::test]
async fn ring_in_order_tries_targets_top_down() {
    let srv = TestServer::start(&config(&number(N, "ring_in_order", "", ""))).await;
    let mut a = agents(&srv, &["a1", "a2", "a3"]).await;
    let mut gw = srv.gateway().await;
    gw.inbound("c1", N).await;
    assert_eq!(gw.expect_for("call.ringing", "c1").await["agents"], json!(["a1"]));
    let offer = a[0].expect("offer").await;
    // A decline moves on at once.
    a[0].send(json!({"type": "offer.decline", "offer_id": offer["offer_id"]})).await;
    assert_eq!(gw.expect_for("call.ringing", "c1").await["agents"], json!(["a2"]));
    a[1].accept_next().await;
    finish(&mut gw, "c1", "a2").await;
    // The next call starts at the top again.
    gw.inbound("c2", N).await;
    assert_eq!(gw.expect_for("call.ringing", "c2").await["agents"], json!(["a1"]));
    srv.stop().await;
}

#[tokio::test]
async fn round_robin_rotates() {
    let srv = TestServer::start(&config(&number(N, "round_robin", "", ""))).await;
    let mut a = agents(&srv, &["a1", "a2", "a3"]).await;
    let mut gw = srv.gateway().await;
    let mut order = Vec::new();
    for i in 0..4 {
        let call = format!("c{i}");
        gw.inbound(&call, N).await;
        let who = gw.expect_for("call.ringing", &call).await["agents"][0].as_str().unwrap().to_string();
        let idx = ["a1", "a2", "a3"].iter().position(|x| *x == who).unwrap();
        a[idx].accept_next().await;
        finish(&mut gw, &call, &who).await;
        a[idx].expect("call.ended").await;
        order.push(who);
    }
    assert_eq!(order, ["a1", "a2", "a3", "a1"]);
    srv.stop().await;
}

#[tokio::test]
async fn longest_idle_prefers_who_waited_longest() {
    let srv = TestServer::start(&config(&number(N, "longest_idle", "", ""))).await;
    let mut a = agents(&srv, &["a1", "a2"]).await;
    let mut gw = srv.gateway().await;
    gw.inbound("c1", N).await;
    assert_eq!(gw.expect_for("call.ringing", "c1").await["agents"], json!(["a1"]));
    a[0].accept_next().await;
    finish(&mut gw, "c1", "a1").await;
    a[0].expect("call.ended").await;
    // a1 just finished; a2 has been idle since it connected.
    gw.inbound("c2", N).await;
    assert_eq!(gw.expect_for("call.ringing", "c2").await["agents"], json!(["a2"]));
    a[1].accept_next().await;
    finish(&mut gw, "c2", "a2").await;
    gw.inbound("c3", N).await;
    assert_eq!(gw.expect_for("call.ringing", "c3").await["agents"], json!(["a1"]));
    srv.stop().await;
}

#[tokio::test]
async fn ring_timeout_moves_to_the_next_agent() {
    let srv = TestServer::start(&config(&number(N, "ring_in_order", "", ""))).await;
    let mut a = agents(&srv, &["a1", "a2"]).await;
    let mut gw = srv.gateway().await;
    let t0 = tokio::time::Instant::now();
    gw.inbound("c1", N).await;
    a[0].expect("offer").await;
    let revoked = a[0].expect("offer.revoked").await;
    assert_eq!(revoked["reason"], "expired");
    let waited = t0.elapsed();
    assert!(waited >= std::time::Duration::from_millis(1900), "revoked after {waited:?}, ring_timeout is 2s");
    assert_eq!(a[1].expect("offer").await["call_id"], "c1");
    assert_eq!(gw.expect_for("call.ringing", "c1").await["agents"], json!(["a1"]));
    assert_eq!(gw.expect_for("call.ringing", "c1").await["agents"], json!(["a2"]));
    srv.stop().await;
}

#[tokio::test]
async fn an_agent_disconnecting_while_rung_passes_the_call_on_at_once() {
    let srv = TestServer::start(&config(&number(N, "ring_in_order", "", ""))).await;
    let mut a = agents(&srv, &["a1", "a2"]).await;
    let mut gw = srv.gateway().await;
    gw.inbound("c1", N).await;
    a[0].expect("offer").await;
    let a1 = a.remove(0);
    let t0 = tokio::time::Instant::now();
    drop(a1);
    assert_eq!(a[0].expect("offer").await["call_id"], "c1");
    assert!(t0.elapsed() < std::time::Duration::from_secs(1), "moved on well before the ring timeout");
    srv.stop().await;
}

#[tokio::test]
async fn two_devices_of_one_user_both_ring_and_one_wins() {
    let srv = TestServer::start(&config(&number(N, "ring_all", "", ""))).await;
    let mut phone = srv.agent("a1").await;
    let mut desk = srv.agent("a1").await;
    let mut gw = srv.gateway().await;
    gw.inbound("c1", N).await;
    let o1 = phone.expect("offer").await;
    let o2 = desk.expect("offer").await;
    assert_eq!(o1["offer_id"], o2["offer_id"]);
    desk.send(json!({"type": "offer.accept", "offer_id": o2["offer_id"]})).await;
    desk.expect("offer.won").await;
    phone.expect("offer.won").await;
    phone.send(json!({"type": "offer.accept", "offer_id": o1["offer_id"]})).await;
    phone.expect("offer.lost").await;
    gw.expect_for("call.bridge", "c1").await;
    gw.c.expect_none("call.bridge", QUIET).await;
    finish_bridged(&mut gw, "c1", "a1").await;
    // Going away on one device while rung stops the other one ringing.
    gw.inbound("c2", N).await;
    let o1 = phone.expect("offer").await;
    desk.expect("offer").await;
    desk.send(json!({"type": "status.set", "status": "away"})).await;
    let revoked = phone.expect("offer.revoked").await;
    assert_eq!((&revoked["offer_id"], &revoked["reason"]), (&o1["offer_id"], &json!("reassigned")));
    assert_eq!(desk.expect("offer.revoked").await["offer_id"], o1["offer_id"]);
    phone.expect_where("away", |m| m["type"] == "status" && m["status"] == "away").await;
    // One device leaving keeps the user online.
    drop(phone);
    desk.send(json!({"type": "ping", "ref": "still-here"})).await;
    assert_eq!(desk.expect("pong").await["ref"], "still-here");
    srv.stop().await;
}

#[tokio::test]
async fn a_queued_caller_hears_its_position_move_up() {
    let srv = TestServer::start(&config(&number(N, "ring_all", "", "announce_every = \"30s\""))).await;
    let mut gw = srv.gateway().await;
    for c in ["c1", "c2", "c3"] {
        gw.inbound(c, N).await;
    }
    assert_eq!(gw.expect_for("call.queued", "c3").await["position"], 3);
    gw.acked(json!({"type": "call.ended", "call_id": "c1", "reason": "caller_hangup"})).await;
    assert_eq!(gw.expect_for("call.announce", "c3").await["position"], 2);
    assert_eq!(gw.expect_for("call.announce", "c2").await["position"], 1);
    gw.acked(json!({"type": "call.ended", "call_id": "c2", "reason": "caller_hangup"})).await;
    assert_eq!(gw.expect_for("call.announce", "c3").await["position"], 1);
    srv.stop().await;
}

#[tokio::test]
async fn a_callback_is_requested_offered_dialled_and_completed() {
    let srv = TestServer::start(&config(&number(N, "ring_all", "", "callback = true"))).await;
    let mut gw = srv.gateway().await;
    gw.inbound("c1", N).await;
    gw.expect_for("call.queued", "c1").await;
    gw.acked(json!({"type": "callback.requested", "call_id": "c1", "phone": "+15557770000"})).await;
    let accepted = gw.expect_for("callback.accepted", "c1").await;
    let cb = accepted["callback_id"].as_str().unwrap().to_string();
    assert_eq!(accepted["position"], 1);
    gw.acked(json!({"type": "call.ended", "call_id": "c1", "reason": "caller_hangup"})).await;
    let mut a1 = srv.agent("a1").await;
    let offer = a1.expect("offer").await;
    assert_eq!((offer["kind"].clone(), offer["callback_id"].clone()), (json!("callback"), json!(cb)));
    a1.send(json!({"type": "offer.accept", "offer_id": offer["offer_id"]})).await;
    a1.expect("offer.won").await;
    let dial = gw.c.expect_where("callback.dial", |m| m["type"] == "callback.dial").await;
    assert_eq!(
        (dial["to"].clone(), dial["caller_id"].clone(), dial["agent"].clone()),
        (json!("+15557770000"), json!(N), json!("a1"))
    );
    let call = dial["call_id"].as_str().unwrap().to_string();
    gw.acked(json!({"type": "callback.result", "callback_id": cb, "outcome": "connected"})).await;
    gw.acked(json!({"type": "call.ended", "call_id": call, "reason": "agent_hangup"})).await;
    a1.expect("call.ended").await;
    srv.stop().await;
}

#[tokio::test]
async fn outbound_calls_need_access_to_the_number() {
    let srv = TestServer::start(&config(&number(N, "ring_all", "", ""))).await;
    let mut gw = srv.gateway().await;
    let mut a4 = srv.agent("a4").await;
    a4.send(json!({"type": "call.dial", "from": N, "to": "+15557770000", "ref": "d1"})).await;
    let err = a4.expect("error").await;
    assert_eq!((err["code"].clone(), err["ref"].clone()), (json!("forbidden"), json!("d1")));
    let mut olga = srv.agent("olga").await;
    olga.send(json!({"type": "call.dial", "from": N, "to": "+15557770000", "ref": "d2"})).await;
    let dialing = olga.expect("call.dialing").await;
    assert_eq!(dialing["ref"], "d2");
    let dial = gw.c.expect_where("call.dial", |m| m["type"] == "call.dial").await;
    assert_eq!((dial["agent"].clone(), dial["caller_id"].clone()), (json!("olga"), json!(N)));
    assert_eq!(dial["call_id"], dialing["call_id"]);
    srv.stop().await;
}

/// A gateway connection can drop with commands in flight. Whatever the
/// gateway still has to act on (a bridge, an outbound dial nobody picked
/// up) is sent again to the connection that replaces it, until answered.
#[tokio::test]
async fn a_reconnecting_gateway_is_sent_the_bridges_and_dials_still_open() {
    let srv = TestServer::start(&config(&number(N, "ring_all", "", ""))).await;
    let mut a1 = srv.agent("a1").await;
    let mut olga = srv.agent("olga").await;
    let mut gw = srv.gateway().await;
    gw.inbound("c1", N).await;
    a1.accept_next().await;
    gw.expect_for("call.bridge", "c1").await;
    olga.send(json!({"type": "call.dial", "from": N, "to": "+15557770000"})).await;
    let dial = gw.expect("call.dial").await;
    let dialled = dial["call_id"].as_str().unwrap().to_string();
    drop(gw);

    let mut gw = srv.gateway().await;
    let again = gw.expect_for("call.dial", &dialled).await;
    assert_eq!(again, dial, "the dial is sent again as it was");
    let bridge = gw.expect_for("call.bridge", "c1").await;
    assert_eq!(bridge["agent"], "a1");
    gw.acked(json!({"type": "call.answered", "call_id": dialled, "agent": "olga"})).await;
    drop(gw);

    // Answered: the dial is settled, the bridge still is not.
    let mut gw = srv.gateway().await;
    gw.expect_for("call.bridge", "c1").await;
    gw.c.expect_none("call.dial", QUIET).await;
    gw.acked(json!({"type": "call.ended", "call_id": dialled, "reason": "agent_hangup"})).await;
    olga.expect("call.ended").await;
    finish_bridged(&mut gw, "c1", "a1").await;
    srv.stop().await;
}

/// A caller sent to voicemail and an agent's SMS are handed to the gateway
/// for good. A gateway connection that drops with them in flight must not
/// lose them: the next connection gets them again until the gateway
/// reports the call over and the message's status.
#[tokio::test]
async fn a_reconnecting_gateway_is_sent_the_hand_offs_it_has_not_reported_on() {
    let srv = TestServer::start(&config(&number(N, "ring_all", "", "enabled = false"))).await;
    let mut olga = srv.agent("olga").await;
    let mut gw = srv.gateway().await;
    gw.inbound("v1", N).await;
    let vm = gw.expect_for("call.voicemail", "v1").await;
    assert_eq!(vm["reason"], "no_agents");
    olga.send(json!({"type": "message.send", "from": N, "to": "+15557770000", "body": "on my way"})).await;
    let sms = gw.expect("message.send").await;
    drop(gw);

    let mut gw = srv.gateway().await;
    assert_eq!(gw.expect_for("call.voicemail", "v1").await, vm, "sent again as it was");
    assert_eq!(gw.expect("message.send").await, sms);
    gw.acked(json!({"type": "call.ended", "call_id": "v1", "reason": "voicemail_done"})).await;
    drop(gw);

    let mut gw = srv.gateway().await;
    assert_eq!(gw.expect("message.send").await, sms, "no status yet");
    gw.c.expect_none("call.voicemail", QUIET).await;
    gw.acked(json!({"type": "message.status", "message_id": sms["message_id"], "status": "sent"})).await;
    drop(gw);

    let mut gw = srv.gateway().await;
    gw.c.expect_none("message.send", QUIET).await;
    // The call's one outcome is still the voicemail.
    let (status, calls) = get_json(srv.addr, "/v1/calls", "alice-token").await;
    assert_eq!(status, 200, "{calls}");
    let v1: Vec<_> = calls["items"].as_array().unwrap().iter().filter(|c| c["id"] == "v1").collect();
    assert_eq!(v1.len(), 1, "{calls}");
    assert_eq!(v1[0]["outcome"], "voicemail", "{calls}");
    drop(gw);
    srv.stop().await;
}

/// With two gateways on one account, a gateway that connects is not sent
/// what the other, still connected, carries (it would act on a call it
/// does not have); what a gateway that is gone carried goes to the next
/// gateway that connects, and stays with it.
#[tokio::test]
async fn a_gateway_is_sent_again_only_what_no_connected_gateway_carries() {
    let numbers = number(N, "ring_all", "", "enabled = false");
    let cfg = format!("{}\n[[gateways]]\nname = \"edge-2\"\ntoken = \"gw-two\"\n", config(&numbers));
    let srv = TestServer::start(&cfg).await;
    let two = || Client::connect(srv.addr, "/v1/gateway", "gw-two", "json");
    let mut gw = srv.gateway().await;
    gw.inbound("v1", N).await;
    let vm = gw.expect_for("call.voicemail", "v1").await;
    let mut edge2 = two().await.expect("edge-2 connects");
    edge2.expect_none("call.voicemail", QUIET).await;

    drop(gw);
    drop(edge2);
    // Let the server see edge-1 go.
    tokio::time::sleep(QUIET).await;
    let mut edge2 = two().await.expect("edge-2 connects");
    assert_eq!(edge2.expect("call.voicemail").await, vm, "adopted from edge-1, which is gone");
    let mut gw = srv.gateway().await;
    gw.c.expect_none("call.voicemail", QUIET).await;
    drop(gw);
    srv.stop().await;
}

#[tokio::test]
async fn metrics_cover_calls_offers_queues_and_the_journal() {
    let srv = TestServer::start(&config(&number(N, "ring_all", "", ""))).await;
    let mut a1 = srv.agent("a1").await;
    let mut gw = srv.gateway().await;
    gw.inbound("m1", N).await;
    a1.accept_next().await;
    finish(&mut gw, "m1", "a1").await;
    gw.inbound("m2", N).await;
    gw.acked(json!({"type": "call.ended", "call_id": "m2", "reason": "caller_hangup"})).await;
    // Queue gauges are published once a second.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let (status, body) = srv.http_get("/metrics").await;
    assert_eq!(status, 200);
    for name in [
        "ringline_connections{kind=\"agent\"}",
        "ringline_connections{kind=\"gateway\"}",
        "ringline_inbound_calls_total",
        "ringline_offers_total",
        "ringline_answers_total",
        "ringline_abandons_total",
        "ringline_call_outcomes_total{outcome=\"answered\"}",
        "ringline_queue_waiting{account=\"acme\",number=\"+15550100\"}",
        "ringline_queue_longest_wait_seconds{account=\"acme\",number=\"+15550100\"}",
        "ringline_gateway_handoffs{account=\"acme\"}",
        "ringline_offer_latency_seconds_bucket",
        "ringline_ack_latency_seconds_bucket",
        "ringline_journal_commit_seconds_bucket",
    ] {
        assert!(body.contains(name), "{name} missing from /metrics");
    }
    // Counted, not only registered (the recorder is shared by the tests in
    // this binary, so other tests' calls may add to these).
    for name in
        ["ringline_answers_total", "ringline_abandons_total", "ringline_call_outcomes_total{outcome=\"answered\"}"]
    {
        let value = body
            .lines()
            .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.trim().parse::<f64>().ok()))
            .unwrap_or_else(|| panic!("no value for {name} in /metrics"));
        assert!(value >= 1.0, "{name} is {value}");
    }
    srv.stop().await;
}
