//! Restarts on the same data dir keep the state the issue lists: round-robin
//! positions, waiting calls in order, callback retry schedules, wrap-up
//! deadlines. Run once replaying the journal only, once with snapshots (the
//! journal truncated behind them). A graceful stop leaves a snapshot and
//! nothing to replay.

mod common;

use common::*;
use serde_json::json;
use std::time::Duration;

const N: &str = "+15550100";

/// With `snapshot_every` of 100 or more, no snapshot is written at all
/// (not even on stop), so restarts replay the whole journal.
fn cfg(snapshot_every: u32) -> String {
    let numbers = number(
        N,
        "round_robin",
        "wrap_up = \"2s\"",
        "callback = true\ncallback_attempts = 2\ncallback_retry_after = \"2s\"\nmax_wait = \"1h\"",
    );
    let on_stop = snapshot_every < 100;
    config(&numbers)
        .replace("[server]\n", &format!("[server]\nsnapshot_every = {snapshot_every}\nsnapshot_on_stop = {on_stop}\n"))
}

async fn restart(srv: TestServer) -> TestServer {
    let text = srv.config_text.clone();
    let data = srv.stop().await;
    TestServer::start_in(&text, data).await
}

async fn serve(gw: &mut Gateway, agent: &mut Client, call: &str, who: &str) {
    gw.inbound(call, N).await;
    let offer = agent.accept_next().await;
    assert_eq!(offer["call_id"], call);
    gw.expect_for("call.bridge", call).await;
    gw.acked(json!({"type": "call.answered", "call_id": call, "agent": who})).await;
    gw.acked(json!({"type": "call.ended", "call_id": call, "reason": "agent_hangup"})).await;
}

/// Rows in the journal and snapshot tables of the data dir.
fn journal_rows(data: &std::path::Path) -> (i64, i64) {
    let db = rusqlite::Connection::open(data.join("ringline.db")).expect("db");
    let journal: i64 = db.query_row("SELECT COUNT(*) FROM journal", [], |r| r.get(0)).expect("count");
    let snapshots: i64 = db.query_row("SELECT COUNT(*) FROM snapshots", [], |r| r.get(0)).expect("count");
    (journal, snapshots)
}

async fn available(srv: &TestServer, who: &str) -> Client {
    let mut c = srv.agent(who).await;
    c.send(json!({"type": "status.set", "status": "available", "ref": "back"})).await;
    c.expect("ok").await;
    c
}

async fn away(c: &mut Client) {
    c.send(json!({"type": "status.set", "status": "away", "ref": "gone"})).await;
    c.expect("ok").await;
}

async fn state_survives_a_restart(snapshot_every: u32) {
    let snapshots = snapshot_every < 100;
    // Round robin: a1 then a2 served; after a restart the next is a3.
    let srv = TestServer::start(&cfg(snapshot_every)).await;
    let mut gw = srv.gateway().await;
    let mut a = vec![srv.agent("a1").await, srv.agent("a2").await, srv.agent("a3").await];
    serve(&mut gw, &mut a[0], "rr1", "a1").await;
    serve(&mut gw, &mut a[1], "rr2", "a2").await;
    tokio::time::sleep(Duration::from_millis(2200)).await; // wrap-ups over
    if snapshots {
        tokio::time::sleep(Duration::from_millis(1200)).await; // the snapshot loop runs every second
    }
    let (journal, snapshot_rows) = journal_rows(srv.data.path());
    if snapshots {
        assert!(journal < 20, "the journal was truncated behind a periodic snapshot ({journal} rows)");
    } else {
        // The start-up round (2 shards), taken before anything was
        // journaled: the restart replays every call from the journal.
        assert_eq!(snapshot_rows, 2, "only the start-up snapshot");
        assert!(journal >= 20, "the calls are in the journal ({journal} rows)");
    }
    drop((a, gw));
    let srv = restart(srv).await;
    let mut gw = srv.gateway().await;
    let mut a = vec![available(&srv, "a1").await, available(&srv, "a2").await, available(&srv, "a3").await];
    serve(&mut gw, &mut a[2], "rr3", "a3").await;

    // Waiting calls keep their order, a callback keeps its caller's place.
    for c in a.iter_mut() {
        away(c).await;
    }
    gw.inbound("w1", N).await;
    gw.inbound("w2", N).await;
    gw.acked(json!({"type": "callback.requested", "call_id": "w1"})).await;
    let cb = gw.expect_for("callback.accepted", "w1").await["callback_id"].as_str().expect("id").to_string();
    drop((a, gw));
    let srv = restart(srv).await;
    let mut gw = srv.gateway().await;
    let mut a3 = available(&srv, "a3").await;
    let offer = a3.accept_next().await;
    assert_eq!(offer["callback_id"], cb, "the callback kept w1's place, ahead of w2");
    gw.c.expect_where("callback.dial", |m| m["type"] == "callback.dial").await;
    gw.acked(json!({"type": "callback.result", "callback_id": cb, "outcome": "no_answer"})).await;
    let failed_at = tokio::time::Instant::now();
    assert_eq!(a3.accept_next().await["call_id"], "w2");
    gw.expect_for("call.bridge", "w2").await;
    gw.acked(json!({"type": "call.answered", "call_id": "w2", "agent": "a3"})).await;

    // The retry schedule survives: offered 2s after the failed attempt,
    // not at once after the restart.
    drop((a3, gw));
    let srv = restart(srv).await;
    let mut gw = srv.gateway().await;
    let mut a1 = available(&srv, "a1").await;
    let retry = a1.expect("offer").await;
    assert_eq!(retry["callback_id"], cb);
    assert!(failed_at.elapsed() >= Duration::from_millis(1900), "retried after {:?}", failed_at.elapsed());
    a1.send(json!({"type": "offer.accept", "offer_id": retry["offer_id"]})).await;
    a1.expect("offer.won").await;
    let dial = gw.c.expect_where("callback.dial", |m| m["type"] == "callback.dial").await;
    gw.acked(json!({"type": "callback.result", "callback_id": cb, "outcome": "connected"})).await;
    gw.acked(json!({"type": "call.ended", "call_id": dial["call_id"], "reason": "agent_hangup"})).await;
    let ended_at = tokio::time::Instant::now();

    // a1 is now in wrap-up for 2s; restart in the middle of it. The
    // deadline is absolute: a1 is offered a call only once it has passed.
    drop((a1, gw));
    let srv = restart(srv).await;
    let mut gw = srv.gateway().await;
    let mut a1 = srv.agent("a1").await;
    gw.inbound("after", N).await;
    let offer = a1.expect("offer").await;
    assert_eq!(offer["call_id"], "after");
    assert!(ended_at.elapsed() >= Duration::from_millis(1900), "offered {:?} after the call ended", ended_at.elapsed());

    let (_, calls) = get_json(srv.addr, "/v1/calls?limit=100", "alice-token").await;
    let outcome = |id: &str| {
        calls["items"].as_array().expect("items").iter().find(|c| c["id"] == id).map(|c| c["outcome"].clone())
    };
    assert_eq!(outcome(&cb), Some(json!("callback_completed")));
    assert_eq!(outcome("w1"), Some(json!("callback_requested")));
    assert_eq!(outcome("rr1"), Some(json!("answered")));
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_survives_restarts_from_the_journal() {
    state_survives_a_restart(1_000_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_survives_restarts_from_snapshots() {
    state_survives_a_restart(3).await;
}

/// A graceful stop writes a last snapshot covering everything journaled:
/// the next start restores it and has nothing to replay, with the state
/// intact (the round-robin position here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_leaves_a_snapshot_and_nothing_to_replay() {
    let numbers = number(N, "round_robin", "", "");
    let srv = TestServer::start(&config(&numbers)).await;
    let mut gw = srv.gateway().await;
    let mut a = vec![srv.agent("a1").await, srv.agent("a2").await, srv.agent("a3").await];
    serve(&mut gw, &mut a[0], "rr1", "a1").await;
    assert!(journal_rows(srv.data.path()).0 > 0, "the call was journaled");
    assert_eq!(journal_rows(srv.data.path()).1, 2, "only the start-up snapshot (2 shards)");
    drop((a, gw));
    let text = srv.config_text.clone();
    let data = srv.stop().await;
    let (journal, snapshots) = journal_rows(data.path());
    assert!(snapshots > 0, "the stop wrote a snapshot");
    assert_eq!(journal, 0, "the snapshot covers the whole journal");
    let srv = TestServer::start_in(&text, data).await;
    let mut gw = srv.gateway().await;
    let mut a2 = available(&srv, "a2").await;
    let _a1 = available(&srv, "a1").await;
    gw.inbound("rr2", N).await;
    assert_eq!(a2.accept_next().await["call_id"], "rr2", "round robin goes on after a1");
    srv.stop().await;
}

/// An admin removes a user the config file assigns to a number; the file
/// still names it at the next start, which must not refuse to come up.
#[tokio::test]
async fn a_user_removed_at_run_time_does_not_stop_the_next_start() {
    let srv = TestServer::start(&cfg(100)).await;
    let (status, body) = http_call(srv.addr, "DELETE", "/v1/users/a2", Some("alice-token"), None).await;
    assert_eq!(status, 200, "{body}");
    let srv = restart(srv).await;
    let (status, v) = get_json(srv.addr, &format!("/v1/numbers/%2B{}", &N[1..]), "alice-token").await;
    assert_eq!(status, 200, "{v}");
    let names = |k: &str| v[k].as_array().cloned().unwrap_or_default();
    assert!(!names("assigned").contains(&json!("a2")), "{v}");
    assert_eq!(names("targets"), [json!("a1"), json!("a3")], "{v}");
    let (status, user) = get_json(srv.addr, "/v1/users/a2", "alice-token").await;
    assert_eq!((status, &user["status"]), (200, &json!("removed")), "{user}");
    srv.stop().await;
}

/// Starts on `data` with `text`; the error as printed when it refuses.
async fn start_err(text: &str, data: &std::path::Path) -> Option<String> {
    let cfg = ringline::config::parse(text, std::path::Path::new("test.toml")).expect("config parses");
    let opts = ringline::server::Options {
        listen: Some("127.0.0.1:0".parse().expect("addr")),
        data_dir: Some(data.to_owned()),
    };
    match ringline::server::start(cfg, opts).await {
        Ok(running) => {
            running.shutdown().await;
            None
        }
        Err(e) => Some(e.to_string()),
    }
}

/// A number another account created through the API is not the file's to
/// take: the start is refused, naming the line, and nothing moved.
#[tokio::test]
async fn the_file_cannot_take_a_number_another_account_created() {
    const TAKEN: &str = "+15550400";
    let srv = TestServer::start(&cfg(100)).await;
    let body = json!({"number": TAKEN, "name": "Owen's new line"}).to_string();
    let (status, text) =
        http_call(srv.addr, "POST", "/v1/numbers", Some("owen-token"), Some(("application/json", body))).await;
    assert_eq!(status, 201, "{text}");
    let data = srv.stop().await;

    // acme's part of the file lists it too.
    let theirs = "\n[[accounts]]\nid = \"other\"";
    let grabbing = cfg(100).replace(theirs, &(number(TAKEN, "ring_all", "", "") + theirs));
    let line = grabbing.lines().position(|l| l.contains(&format!("number = \"{TAKEN}\""))).expect("line") + 1;
    let err = start_err(&grabbing, data.path()).await.expect("refused");
    assert!(err.starts_with(&format!("test.toml:{line}: ")) && err.contains("belongs to account \"other\""), "{err}");

    let srv = TestServer::start_in(&cfg(100), data).await;
    let (status, v) = get_json(srv.addr, &format!("/v1/numbers/%2B{}", &TAKEN[1..]), "owen-token").await;
    assert_eq!((status, &v["name"]), (200, &json!("Owen's new line")), "{v}");
    srv.stop().await;
}

/// A token stays one user's: a file cannot give another user the token an
/// earlier file gave someone it no longer gives any; handing it over from
/// a user the file gives a new token is fine.
#[tokio::test]
async fn a_token_cannot_end_up_with_two_users() {
    let srv = TestServer::start(&cfg(100)).await;
    let data = srv.stop().await;

    // a1 keeps "a1-token" (the file no longer names a token for a1), and
    // owen of the other account is given it too.
    let clash =
        cfg(100).replace("token = \"a1-token\"\n", "").replace("token = \"owen-token\"", "token = \"a1-token\"");
    let line = clash.lines().position(|l| l.contains("a1-token")).expect("line") + 1;
    let err = start_err(&clash, data.path()).await.expect("refused");
    assert!(err.starts_with(&format!("test.toml:{line}: ")) && err.contains("already used by user \"a1\""), "{err}");

    // Handed over: a1 gets a new token, owen the old one.
    let swap = cfg(100).replace("a1-token", "a1-new-token").replace("owen-token", "a1-token");
    let srv = TestServer::start_in(&swap, data).await;
    let (_, me) = get_json(srv.addr, "/v1/account", "a1-token").await;
    assert_eq!((&me["you"], &me["id"]), (&json!("owen"), &json!("other")), "{me}");
    let (_, me) = get_json(srv.addr, "/v1/account", "a1-new-token").await;
    assert_eq!((&me["you"], &me["id"]), (&json!("a1"), &json!("acme")), "{me}");
    let data = srv.stop().await;

    // And back: a1 (provisioned first) takes the token owen holds now,
    // owen gets a new one; owen's update must not take it from a1 again.
    let back = cfg(100).replace("owen-token", "owen-new-token");
    let srv = TestServer::start_in(&back, data).await;
    let (_, me) = get_json(srv.addr, "/v1/account", "a1-token").await;
    assert_eq!((&me["you"], &me["id"]), (&json!("a1"), &json!("acme")), "{me}");
    let (_, me) = get_json(srv.addr, "/v1/account", "owen-new-token").await;
    assert_eq!((&me["you"], &me["id"]), (&json!("owen"), &json!("other")), "{me}");
    srv.stop().await;
}
