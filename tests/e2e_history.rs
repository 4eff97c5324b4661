//! End to end: call history, messages and voicemails over HTTP, with the
//! visibility rules applied to real users.

mod common;

use common::*;
use serde_json::{Value, json};
use std::collections::BTreeSet;

const N: &str = "+15550100";
const ONLY_A4: &str = "+15550111";

/// +15550100: a1..a3 and sam assigned; routing targets a1..a3.
/// +15550111: assigned a1 only, but its routing target is a4 (not assigned).
fn cfg() -> String {
    let mut numbers = number(N, "ring_in_order", "", "max_wait = \"1s\"");
    numbers += r#"
[[accounts.numbers]]
number = "+15550111"
name = "Escalations"
assigned = ["a1"]

[accounts.numbers.routing]
strategy = "ring_all"
targets = ["a4"]
"#;
    config(&numbers)
}

fn ids(v: &Value) -> BTreeSet<String> {
    v["items"].as_array().expect("items").iter().map(|c| c["id"].as_str().expect("id").to_string()).collect()
}

async fn answered_call(gw: &mut Gateway, agent: &mut Client, call: &str, to: &str, who: &str) {
    gw.inbound(call, to).await;
    agent.accept_next().await;
    gw.expect_for("call.bridge", call).await;
    gw.acked(json!({"type": "call.answered", "call_id": call, "agent": who})).await;
    gw.acked(json!({"type": "call.ended", "call_id": call, "reason": "agent_hangup"})).await;
    agent.expect("call.ended").await;
}

#[tokio::test]
async fn history_follows_the_visibility_rules() {
    let srv = TestServer::start(&cfg()).await;
    let mut gw = srv.gateway().await;
    let mut a1 = srv.agent("a1").await;
    let mut a4 = srv.agent("a4").await;
    answered_call(&mut gw, &mut a1, "visible", N, "a1").await;
    // Handled by a4, a routing target not assigned to the number.
    answered_call(&mut gw, &mut a4, "escalated", ONLY_A4, "a4").await;
    // An outbound call placed by olga, who only has caller-id access.
    let mut olga = srv.agent("olga").await;
    olga.send(json!({"type": "call.dial", "from": N, "to": "+15557770000"})).await;
    let dial = olga.expect("call.dialing").await["call_id"].as_str().unwrap().to_string();
    gw.acked(json!({"type": "call.answered", "call_id": dial, "agent": "olga"})).await;
    gw.acked(json!({"type": "call.ended", "call_id": dial, "reason": "agent_hangup"})).await;
    // A caller nobody answered: voicemail after max_wait, then a recording.
    drop(a1);
    gw.inbound("vm", N).await;
    gw.expect_for("call.voicemail", "vm").await;
    gw.acked(json!({"type": "call.ended", "call_id": "vm", "reason": "voicemail_done"})).await;
    gw.acked(
        json!({"type": "voicemail.recorded", "call_id": "vm", "url": "https://vm.test/vm.wav", "duration_ms": 9000}),
    )
    .await;
    gw.acked(json!({"type": "message.inbound", "message_id": "sms1", "to": N, "from": "+15557770000", "body": "hi"}))
        .await;

    let all: BTreeSet<String> = ["visible", "escalated", "vm", dial.as_str()].iter().map(|s| s.to_string()).collect();
    let cases: [(&str, BTreeSet<String>); 6] = [
        ("alice", all.clone()),
        ("a1", ["visible", "vm"].iter().map(|s| s.to_string()).collect()),
        ("a2", ["visible", "vm"].iter().map(|s| s.to_string()).collect()),
        ("a4", ["escalated"].iter().map(|s| s.to_string()).collect()),
        ("olga", [dial.clone()].into_iter().collect()),
        ("owen", BTreeSet::new()),
    ];
    for (user, want) in cases {
        let (status, body) = get_json(srv.addr, "/v1/calls", &format!("{user}-token")).await;
        assert_eq!(status, 200, "{user}: {body}");
        assert_eq!(ids(&body), want, "what {user} sees");
    }
    let (_, vms) = get_json(srv.addr, "/v1/voicemails", "a2-token").await;
    assert_eq!(vms["items"][0]["url"], "https://vm.test/vm.wav");
    assert_eq!(get_json(srv.addr, "/v1/voicemails", "a4-token").await.1["items"], json!([]));
    let (_, msgs) = get_json(srv.addr, &format!("/v1/numbers/{N}/messages"), "a3-token").await;
    assert_eq!(msgs["items"][0]["body"], "hi");
    assert_eq!(get_json(srv.addr, &format!("/v1/numbers/{N}/messages"), "owen-token").await.1["items"], json!([]));
    srv.stop().await;
}

#[tokio::test]
async fn history_filters_pages_and_refuses_bad_requests() {
    let srv = TestServer::start(&cfg()).await;
    let mut gw = srv.gateway().await;
    for i in 0..7 {
        gw.inbound(&format!("c{i}"), N).await;
        gw.acked(json!({"type": "call.ended", "call_id": format!("c{i}"), "reason": "caller_hangup"})).await;
    }
    let mut seen = BTreeSet::new();
    let mut path = "/v1/calls?limit=3".to_string();
    let mut pages = 0;
    loop {
        let (status, body) = get_json(srv.addr, &path, "alice-token").await;
        assert_eq!(status, 200);
        for id in ids(&body) {
            assert!(seen.insert(id), "no duplicates across pages");
        }
        pages += 1;
        match body["next_cursor"].as_str() {
            Some(c) => path = format!("/v1/calls?limit=3&cursor={}", c.replace(':', "%3A").replace('~', "%7E")),
            None => break,
        }
    }
    assert_eq!((seen.len(), pages), (7, 3));
    let (_, body) = get_json(srv.addr, "/v1/calls?outcome=abandoned&number=%2B15550100", "alice-token").await;
    assert_eq!(body["items"].as_array().unwrap().len(), 7);
    assert_eq!(body["items"][0]["outcome"], "abandoned");
    let (_, body) = get_json(srv.addr, "/v1/calls?outcome=answered", "alice-token").await;
    assert_eq!(body["items"], json!([]));
    let (_, body) = get_json(srv.addr, "/v1/calls?since=2999-01-01T00:00:00Z", "alice-token").await;
    assert_eq!(body["items"], json!([]));
    assert_eq!(get_json(srv.addr, "/v1/calls?since=yesterday", "alice-token").await.0, 400);
    assert_eq!(get_json(srv.addr, "/v1/calls?cursor=garbage", "alice-token").await.0, 400);
    assert_eq!(get_json(srv.addr, "/v1/calls?limit=lots", "alice-token").await.0, 400);
    assert_eq!(http_call(srv.addr, "GET", "/v1/calls", None, None).await.0, 401);
    assert_eq!(http_call(srv.addr, "GET", "/v1/calls", Some("gw-secret"), None).await.0, 403);
    srv.stop().await;
}

/// A gateway may report a voicemail before the call's end: it is kept,
/// announced once, and listed once.
#[tokio::test]
async fn a_voicemail_reported_before_the_calls_end_is_kept_once() {
    let srv = TestServer::start(&cfg()).await;
    let mut gw = srv.gateway().await;
    let mut a1 = srv.agent("a1").await;
    // Nobody can take it (a4 is offline): the caller waits.
    gw.inbound("early", ONLY_A4).await;
    gw.expect_for("call.queued", "early").await;
    let vm = json!({"type": "voicemail.recorded", "call_id": "early", "url": "https://vm.test/early.wav", "duration_ms": 4000});
    gw.acked(vm.clone()).await;
    let pushed = a1.expect("voicemail").await;
    assert_eq!((&pushed["call_id"], &pushed["from"]), (&json!("early"), &json!("+15551230001")));
    gw.acked(vm.clone()).await;
    gw.acked(json!({"type": "call.ended", "call_id": "early", "reason": "voicemail_done"})).await;
    gw.acked(vm).await;
    let (status, vms) = get_json(srv.addr, "/v1/voicemails", "a1-token").await;
    assert_eq!(status, 200, "{vms}");
    let items = vms["items"].as_array().expect("items");
    assert_eq!(items.len(), 1, "{vms}");
    assert_eq!((&items[0]["call_id"], &items[0]["url"]), (&json!("early"), &json!("https://vm.test/early.wav")));
    let (_, calls) = get_json(srv.addr, "/v1/calls", "alice-token").await;
    assert!(ids(&calls).contains("early"), "{calls}");
    a1.expect_none("voicemail", std::time::Duration::from_millis(300)).await;
    srv.stop().await;
}

/// `ended_at` (`...Z`) written as the same instant in UTC+05:00, keeping
/// its fractional seconds.
fn at_plus_five(ended_at: &str) -> String {
    use time::format_description::well_known::Rfc3339;
    let t = time::OffsetDateTime::parse(ended_at, &Rfc3339)
        .expect("RFC 3339")
        .to_offset(time::UtcOffset::from_hms(5, 0, 0).expect("offset"));
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}%2B05:00",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

#[tokio::test]
async fn history_times_with_an_offset_bound_the_window_exactly() {
    let srv = TestServer::start(&cfg()).await;
    let mut gw = srv.gateway().await;
    gw.inbound("c1", N).await;
    gw.acked(json!({"type": "call.ended", "call_id": "c1", "reason": "caller_hangup"})).await;
    let (_, body) = get_json(srv.addr, "/v1/calls", "alice-token").await;
    let ended = body["items"][0]["ended_at"].as_str().expect("ended_at").to_string();
    let local = at_plus_five(&ended);
    // `since` is inclusive and `until` exclusive, at the very instant the
    // call ended, written with fractional seconds and an offset.
    let (status, body) = get_json(srv.addr, &format!("/v1/calls?since={local}"), "alice-token").await;
    assert_eq!(status, 200, "{local}: {body}");
    assert_eq!(ids(&body), BTreeSet::from(["c1".to_string()]), "since={local} (ended {ended})");
    let (status, body) = get_json(srv.addr, &format!("/v1/calls?until={local}"), "alice-token").await;
    assert_eq!(status, 200, "{local}: {body}");
    assert_eq!(body["items"], json!([]), "until={local} (ended {ended})");
    let (status, body) = get_json(srv.addr, "/v1/calls?since=2024-05-01T05:00:00", "alice-token").await;
    assert_eq!(status, 400, "a time without an offset names no instant");
    assert_eq!(body["error"]["code"], "bad_request");
    assert!(body["error"]["message"].as_str().unwrap().contains("RFC 3339"), "{body}");
    srv.stop().await;
}

#[tokio::test]
async fn history_refuses_filters_that_are_wrong_or_do_not_apply() {
    let srv = TestServer::start(&cfg()).await;
    let cases = [
        ("/v1/calls?outcome=answerd", "outcome must be one of answered, abandoned"),
        ("/v1/calls?number=+15550100", "must be sent as %2B"),
        ("/v1/calls?number=15550100", "number must be an E.164 number"),
        ("/v1/voicemails?number=%2B1555x", "number must be an E.164 number"),
        ("/v1/voicemails?outcome=missed", "/v1/voicemails does not take the outcome parameter"),
        (
            "/v1/numbers/%2B15550100/messages?outcome=missed",
            "/v1/numbers/{number}/messages does not take the outcome parameter",
        ),
        (
            "/v1/numbers/%2B15550100/messages?number=%2B15550111",
            "/v1/numbers/{number}/messages does not take the number parameter",
        ),
        ("/v1/numbers/sales/messages", "the number in the path must be an E.164 number"),
    ];
    for (path, why) in cases {
        let (status, body) = get_json(srv.addr, path, "alice-token").await;
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(body["error"]["code"], "bad_request", "{path}: {body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(why), "{path}: {message}");
    }
    for path in ["/v1/calls?outcome=no_answer&number=%2B15550100", "/v1/voicemails?number=%2B15550100"] {
        assert_eq!(get_json(srv.addr, path, "alice-token").await.0, 200, "{path}");
    }
    srv.stop().await;
}
