//! End to end: the team, number and billing API over a real server, with
//! real WebSocket clients for what routing makes of the changes.

// The billing test back-dates a journal, so it reads the wall clock.
#![allow(clippy::disallowed_methods)]

mod common;

use common::*;
use ringline::core::{Input, Instant};
use ringline::store::{Store, StoreConfig};
use serde_json::{Value, json};
use std::path::Path;
use std::time::{Duration, SystemTime};

const N: &str = "+15550100";
const N2: &str = "+15550200";

/// The common test account plus N2, assigned to a1 only.
fn cfg() -> String {
    let mut numbers = number(N, "ring_all", "", "");
    numbers += r#"
[[accounts.numbers]]
number = "+15550200"
name = "Back office"
assigned = ["a1"]
"#;
    config(&numbers)
}

async fn api(srv: &TestServer, method: &str, path: &str, token: Option<&str>, body: Option<Value>) -> (u16, Value) {
    http_json(srv.addr, method, path, token, body.as_ref()).await
}

async fn csv(srv: &TestServer, token: &str, text: &str) -> (u16, Value) {
    let (s, b) = http_request(srv.addr, "POST", "/v1/invites/bulk", Some(token), Some(("text/csv", text))).await;
    (s, serde_json::from_str(&b).unwrap_or(Value::Null))
}

async fn accept(srv: &TestServer, invite: &str) -> (u16, Value) {
    api(srv, "POST", "/v1/invites/accept", None, Some(json!({ "invite": invite }))).await
}

fn ids(list: &Value) -> Vec<String> {
    list.as_array().expect("a list").iter().map(|u| u["id"].as_str().expect("id").to_string()).collect()
}

#[tokio::test]
async fn invite_accept_connect_and_take_calls() {
    let srv = TestServer::start(&cfg()).await;
    let body = json!({"email": "Newbie@acme.test", "role": "agent", "number": N});
    let (s, v) = api(&srv, "POST", "/v1/invites", Some("alice-token"), Some(body)).await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["user"]["id"], "newbie");
    assert_eq!(v["user"]["status"], "invited");
    assert_eq!(v["user"]["assigned"], json!([N]));
    assert!(v["invite"]["expires_at"].is_string());
    let invite = v["invite"]["token"].as_str().expect("invite token").to_string();
    // The invitation is not a login, and a second invite is a conflict.
    assert_eq!(Client::connect(srv.addr, "/v1/agent", &invite, "json").await.err(), Some(401));
    let again = json!({"email": "newbie@ACME.test", "role": "agent"});
    let (s, v) = api(&srv, "POST", "/v1/invites", Some("alice-token"), Some(again)).await;
    assert_eq!((s, &v["error"]["code"]), (409, &json!("conflict")), "{v}");
    let bad = json!({"email": "nope", "role": "agent"});
    assert_eq!(api(&srv, "POST", "/v1/invites", Some("alice-token"), Some(bad)).await.0, 400);
    let bad = json!({"email": "x@acme.test", "role": "boss"});
    assert_eq!(api(&srv, "POST", "/v1/invites", Some("alice-token"), Some(bad)).await.0, 400);

    assert_eq!(accept(&srv, "rli_not-a-real-one").await.0, 404);
    let (s, v) = accept(&srv, &invite).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (&v["account"], &v["user"]["id"], &v["user"]["status"]),
        (&json!("acme"), &json!("newbie"), &json!("active"))
    );
    let token = v["token"].as_str().expect("api token").to_string();
    assert_eq!(accept(&srv, &invite).await.0, 404, "used once");

    // Routing follows: N rings its assigned users again (newbie among them).
    let patch = json!({"routing": {"targets": null}});
    let (s, v) = api(&srv, "PATCH", "/v1/numbers/+15550100", Some("alice-token"), Some(patch)).await;
    assert_eq!(s, 200, "{v}");
    assert!(v["targets"].as_array().expect("targets").contains(&json!("newbie")), "{v}");
    let mut newbie = Client::connect(srv.addr, "/v1/agent", &token, "json").await.expect("the new token logs in");
    let hello = newbie.expect("hello").await;
    assert_eq!((&hello["user"], &hello["role"]), (&json!("newbie"), &json!("agent")));
    assert_eq!(hello["numbers"][0]["number"], N);
    let mut gw = srv.gateway().await;
    gw.inbound("c1", N).await;
    let offer = newbie.accept_next().await;
    assert_eq!(offer["call_id"], "c1");
    let bridge = gw.expect_for("call.bridge", "c1").await;
    assert_eq!(bridge["agent"], "newbie");
    let (s, v) = api(&srv, "GET", "/v1/users/newbie", Some(&token), None).await;
    assert_eq!((s, &v["presence"]), (200, &json!("on_call")), "{v}");
    srv.stop().await;
}

#[tokio::test]
async fn deactivation_closes_connections_refuses_logins_and_reactivation_restores() {
    let srv = TestServer::start(&cfg()).await;
    let mut a1 = srv.agent("a1").await;
    let mut gw = srv.gateway().await;
    gw.inbound("c1", N).await;
    a1.expect("offer").await;
    let (s, v) = api(&srv, "POST", "/v1/users/a1/deactivate", Some("alice-token"), None).await;
    assert_eq!((s, &v["status"]), (200, &json!("deactivated")), "{v}");
    assert_eq!(a1.expect_close().await, Some((4003, "user deactivated".to_string())));
    assert_eq!(Client::connect(srv.addr, "/v1/agent", "a1-token", "json").await.err(), Some(403));
    assert_eq!(api(&srv, "GET", "/v1/account", Some("a1-token"), None).await.0, 403);
    // The offer was withdrawn: the call waits for the next target.
    let mut a2 = srv.agent("a2").await;
    assert_eq!(a2.expect("offer").await["call_id"], "c1");
    // Data kept, no seat billed while deactivated.
    let (_, billing) = api(&srv, "GET", "/v1/billing", Some("alice-token"), None).await;
    assert_eq!(billing["seats"]["deactivated"], 1, "{billing}");
    assert_eq!(billing["next_invoice"]["seats"], 6, "{billing}");
    let (_, n) = api(&srv, "GET", "/v1/numbers/+15550100", Some("alice-token"), None).await;
    assert!(n["assigned"].as_array().expect("assigned").contains(&json!("a1")));

    let (s, v) = api(&srv, "POST", "/v1/users/a1/reactivate", Some("alice-token"), None).await;
    assert_eq!((s, &v["status"]), (200, &json!("active")), "{v}");
    let mut a1 = srv.agent("a1").await;
    a1.send(json!({"type": "ping"})).await;
    a1.expect("pong").await;
    srv.stop().await;
}

/// `team` at $29/user/month with 5 users; a 6th added on day 15 of a
/// 30-day cycle is charged $14.50 now, and the next invoice is $174. The
/// account's history starts 15 days ago: its provisioning is journaled
/// back-dated before the server starts.
#[tokio::test]
async fn the_help_centre_billing_example_over_http() {
    let text = r#"
listen = "127.0.0.1:0"
data_dir = "unused"

[[accounts]]
id = "shop"
plan = "team"

[[accounts.users]]
id = "o"
email = "o@shop.test"
role = "owner"
token = "o-token"

[[accounts.users]]
id = "b"
email = "b@shop.test"
role = "agent"
token = "b-token"

[[accounts.users]]
id = "c"
email = "c@shop.test"
role = "agent"

[[accounts.users]]
id = "d"
email = "d@shop.test"
role = "agent"

[[accounts.users]]
id = "e"
email = "e@shop.test"
role = "admin"
token = "e-token"
"#;
    let data = tempfile::tempdir().expect("temp dir");
    let cfg = ringline::config::parse(text, Path::new("shop.toml")).expect("config");
    let fifteen_days_ago = Instant::from_system(SystemTime::now() - Duration::from_secs(15 * 86_400));
    {
        let (store, _) = Store::open(StoreConfig::new(data.path())).expect("store");
        let journal = store.journal();
        for input in cfg.provisioning() {
            let account = input.account().cloned().expect("account");
            let bytes = rmp_serde::to_vec_named(&input).expect("encode");
            journal.append(fifteen_days_ago, &account, bytes, vec![]);
        }
        journal.flush().expect("flush");
        store.close().expect("close");
    }
    let srv = TestServer::start_in(text, data).await;
    let (s, v) = api(&srv, "GET", "/v1/billing", Some("o-token"), None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!((&v["plan"], &v["seat_price_cents"]), (&json!("team"), &json!(2900)));
    assert_eq!((&v["seats"]["active"], &v["seats"]["paid"]), (&json!(5), &json!(5)));
    assert_eq!((&v["cycle"]["day"], &v["cycle"]["days_left"]), (&json!(15), &json!(15)), "{v}");
    assert_eq!(v["next_invoice"]["amount_cents"], 14_500);
    // Only the owner sees billing.
    assert_eq!(api(&srv, "GET", "/v1/billing", Some("e-token"), None).await.0, 403);
    assert_eq!(api(&srv, "GET", "/v1/billing", Some("b-token"), None).await.0, 403);

    let (s, v) =
        api(&srv, "POST", "/v1/invites", Some("e-token"), Some(json!({"email": "six@shop.test", "role": "agent"})))
            .await;
    assert_eq!(s, 201, "{v}");
    let (_, before) = api(&srv, "GET", "/v1/billing", Some("o-token"), None).await;
    assert_eq!(before["seats"]["invited"], 1);
    assert_eq!(before["next_invoice"]["amount_cents"], 14_500, "invitations are billed once accepted");
    let (s, _) = accept(&srv, v["invite"]["token"].as_str().expect("token")).await;
    assert_eq!(s, 200);

    let (_, v) = api(&srv, "GET", "/v1/billing", Some("o-token"), None).await;
    let last = v["ledger"].as_array().expect("ledger").last().cloned().expect("an entry");
    assert_eq!(last["kind"], "seat_added");
    assert_eq!(last["amount_cents"], 1450, "$14.50 now: {v}");
    assert_eq!((&last["days"], &last["cycle_days"], &last["user"]), (&json!(15), &json!(30), &json!("six")));
    assert_eq!(v["next_invoice"]["seats"], 6);
    assert_eq!(v["next_invoice"]["amount_cents"], 17_400, "$174 next: {v}");
    // Edge: essentials allows 5 seats; the owner's downgrade is refused.
    let (s, e) = api(&srv, "PATCH", "/v1/billing", Some("o-token"), Some(json!({"plan": "essentials"}))).await;
    assert_eq!((s, &e["error"]["code"]), (409, &json!("conflict")), "{e}");
    let (s, v) = api(&srv, "PATCH", "/v1/billing", Some("o-token"), Some(json!({"plan": "pro"}))).await;
    assert_eq!((s, &v["plan"], &v["next_invoice"]["amount_cents"]), (200, &json!("pro"), &json!(6 * 4900)));
    srv.stop().await;
}

/// Callers, in the order each route is tried (the owner last, so what the
/// others may not do has not been done yet).
const CALLERS: [&str; 7] = ["none", "a1", "owen", "sam", "olga", "a4", "alice"];

/// Expected status per caller (same order as [`CALLERS`]): nobody (401), a
/// deactivated agent, the owner of another account, a supervisor, an
/// agent, an admin, the owner.
const MATRIX: [(&str, [u16; 7]); 20] = [
    ("account", [401, 403, 200, 200, 200, 200, 200]),
    ("list users", [401, 403, 200, 403, 403, 200, 200]),
    ("get another user", [401, 403, 404, 403, 403, 200, 200]),
    ("get oneself", [401, 403, 200, 200, 200, 200, 200]),
    ("invite", [401, 403, 404, 403, 403, 201, 201]),
    ("bulk invite", [401, 403, 200, 403, 403, 200, 200]),
    ("resend invite", [401, 403, 404, 403, 403, 200, 200]),
    ("change role", [401, 403, 404, 403, 403, 200, 200]),
    ("deactivate", [401, 403, 404, 403, 403, 200, 200]),
    ("reactivate", [401, 403, 404, 403, 403, 200, 200]),
    ("remove", [401, 403, 404, 403, 403, 200, 200]),
    ("accept a bad invite", [404, 404, 404, 404, 404, 404, 404]),
    ("list numbers", [401, 403, 200, 200, 200, 200, 200]),
    ("get own number", [401, 403, 404, 200, 200, 200, 200]),
    ("get another number", [401, 403, 404, 403, 403, 200, 200]),
    ("create number", [401, 403, 409, 403, 403, 201, 201]),
    ("update number", [401, 403, 404, 403, 403, 200, 200]),
    ("get billing", [401, 403, 200, 403, 403, 403, 200]),
    ("change plan", [401, 403, 200, 403, 403, 403, 200]),
    ("transfer ownership", [401, 403, 404, 403, 403, 403, 200]),
];

enum Body {
    None,
    Json(Value),
    Csv(String),
}

/// The request for `route` by `caller`. Users changed are per caller (the
/// owner changes a2, the admin a3), so every allowed cell succeeds on its
/// own; for the other account's owner, acme's names are unknown.
fn request(route: &str, caller: &str) -> (&'static str, String, Body) {
    let target = if caller == "a4" { "a3" } else { "a2" };
    let number = match caller {
        "alice" => "+15550301",
        "a4" => "+15550302",
        "owen" => N, // acme's: numbers are unique across accounts
        _ => "+15550309",
    };
    match route {
        "account" => ("GET", "/v1/account".into(), Body::None),
        "list users" => ("GET", "/v1/users".into(), Body::None),
        "get another user" => ("GET", format!("/v1/users/{target}"), Body::None),
        "get oneself" => ("GET", format!("/v1/users/{caller}"), Body::None),
        "invite" => (
            "POST",
            "/v1/invites".into(),
            Body::Json(
                json!({"email": format!("inv-{caller}@acme.test"), "role": "agent", "number": N, "id": format!("inv-{caller}")}),
            ),
        ),
        "bulk invite" => (
            "POST",
            "/v1/invites/bulk".into(),
            Body::Csv(format!("email,role,phone_number\nbulk-{caller}@acme.test,agent,\n")),
        ),
        "resend invite" => ("POST", format!("/v1/users/inv-{caller}/invite"), Body::None),
        "change role" => ("PATCH", format!("/v1/users/{target}"), Body::Json(json!({"role": "supervisor"}))),
        "deactivate" => ("POST", format!("/v1/users/{target}/deactivate"), Body::None),
        "reactivate" => ("POST", format!("/v1/users/{target}/reactivate"), Body::None),
        "remove" => ("DELETE", format!("/v1/users/{target}"), Body::None),
        "accept a bad invite" => ("POST", "/v1/invites/accept".into(), Body::Json(json!({"invite": "rli_bogus"}))),
        "list numbers" => ("GET", "/v1/numbers".into(), Body::None),
        "get own number" => ("GET", format!("/v1/numbers/{N}"), Body::None),
        "get another number" => ("GET", format!("/v1/numbers/{N2}"), Body::None),
        "create number" => {
            ("POST", "/v1/numbers".into(), Body::Json(json!({"number": number, "name": format!("Line of {caller}")})))
        }
        "update number" => {
            ("PATCH", format!("/v1/numbers/{N}"), Body::Json(json!({"name": format!("Support ({caller})")})))
        }
        "get billing" => ("GET", "/v1/billing".into(), Body::None),
        "change plan" => ("PATCH", "/v1/billing".into(), Body::Json(json!({"plan": "pro"}))),
        "transfer ownership" => {
            ("POST", "/v1/account/transfer".into(), Body::Json(json!({"to": "a4", "token": format!("{caller}-token")})))
        }
        other => panic!("no route {other}"),
    }
}

#[tokio::test]
async fn the_permission_matrix_over_http() {
    let srv = TestServer::start(&cfg()).await;
    // An admin, and a deactivated agent.
    let (s, v) = api(&srv, "PATCH", "/v1/users/a4", Some("alice-token"), Some(json!({"role": "admin"}))).await;
    assert_eq!((s, &v["role"]), (200, &json!("admin")), "{v}");
    assert_eq!(api(&srv, "POST", "/v1/users/a1/deactivate", Some("alice-token"), None).await.0, 200);

    let mut failures = Vec::new();
    for (route, expected) in MATRIX {
        for (caller, want) in CALLERS.iter().zip(expected) {
            let token = (*caller != "none").then(|| format!("{caller}-token"));
            let (method, path, body) = request(route, caller);
            let (got, answer) = match body {
                Body::None => {
                    let (s, b) = http_request(srv.addr, method, &path, token.as_deref(), None).await;
                    (s, b)
                }
                Body::Json(v) => {
                    let t = v.to_string();
                    http_request(srv.addr, method, &path, token.as_deref(), Some(("application/json", &t))).await
                }
                Body::Csv(t) => http_request(srv.addr, method, &path, token.as_deref(), Some(("text/csv", &t))).await,
            };
            if got != want {
                failures.push(format!("{route} by {caller}: {method} {path} -> {got}, want {want}: {answer}"));
            }
            // Every refusal is the JSON error body.
            if got >= 400 {
                let v: Value = serde_json::from_str(&answer).unwrap_or(Value::Null);
                if !v["error"]["code"].is_string() {
                    failures.push(format!("{route} by {caller}: not a JSON error body: {answer}"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{} cells wrong:\n{}", failures.len(), failures.join("\n"));

    // A gateway token is not a user.
    assert_eq!(api(&srv, "GET", "/v1/account", Some("gw-secret"), None).await.0, 403);
    // The transfer made a4 the owner and alice an admin.
    let (_, v) = api(&srv, "GET", "/v1/account", Some("a4-token"), None).await;
    assert_eq!((&v["owner"], &v["role"]), (&json!("a4"), &json!("owner")));
    // Nothing of acme leaks to the other account's owner.
    let (_, users) = api(&srv, "GET", "/v1/users", Some("owen-token"), None).await;
    assert_eq!(ids(&users["users"]), ["owen", "bulk-owen"]);
    let (_, numbers) = api(&srv, "GET", "/v1/numbers", Some("owen-token"), None).await;
    assert_eq!(numbers["numbers"].as_array().map(Vec::len), Some(1));
    assert_eq!(numbers["numbers"][0]["number"], "+15559990000");
    // And none of owen's attempts changed acme: a2 and a3 were removed by
    // their managers, N was renamed by alice last.
    let (_, n) = api(&srv, "GET", "/v1/numbers/+15550100", Some("a4-token"), None).await;
    assert_eq!(n["name"], "Support (alice)");

    // WebSocket commands by role: supervisors (on pro) and managers may
    // watch queues; agents may not.
    let mut sam = srv.agent("sam").await;
    sam.send(json!({"type": "subscribe", "topic": "queues", "ref": "s"})).await;
    sam.expect("queue.stats").await;
    let mut olga = srv.agent("olga").await;
    olga.send(json!({"type": "subscribe", "topic": "queues", "ref": "o"})).await;
    let e = olga.expect("error").await;
    assert_eq!((&e["code"], &e["ref"]), (&json!("forbidden"), &json!("o")));
    olga.send(json!({"type": "monitor", "call_id": "nope", "mode": "listen"})).await;
    assert_eq!(olga.expect("error").await["code"], "forbidden");
    srv.stop().await;
}

#[tokio::test]
async fn ownership_transfer_needs_the_owners_token() {
    let srv = TestServer::start(&cfg()).await;
    let t = |token: &str| json!({"to": "a2", "token": token});
    let (s, v) = api(&srv, "POST", "/v1/account/transfer", Some("alice-token"), Some(t("a2-token"))).await;
    assert_eq!((s, &v["error"]["code"]), (403, &json!("forbidden")), "{v}");
    let (s, v) = api(&srv, "POST", "/v1/account/transfer", Some("alice-token"), Some(t("alice-token"))).await;
    assert_eq!((s, &v["owner"], &v["role"]), (200, &json!("a2"), &json!("admin")), "{v}");
    assert_eq!(api(&srv, "GET", "/v1/billing", Some("alice-token"), None).await.0, 403);
    assert_eq!(api(&srv, "GET", "/v1/billing", Some("a2-token"), None).await.0, 200);
    // The old owner is now removable, by the new owner.
    let (s, v) = api(&srv, "DELETE", "/v1/users/alice", Some("a2-token"), None).await;
    assert_eq!((s, &v["status"]), (200, &json!("removed")), "{v}");
    // Its token is revoked: 403 (removed), never a login again.
    assert_eq!(api(&srv, "GET", "/v1/account", Some("alice-token"), None).await.0, 403);
    assert_eq!(Client::connect(srv.addr, "/v1/agent", "alice-token", "json").await.err(), Some(403));
    // The new owner cannot remove itself.
    assert_eq!(api(&srv, "DELETE", "/v1/users/a2", Some("a2-token"), None).await.0, 409);
    srv.stop().await;
}

#[tokio::test]
async fn bulk_csv_reports_every_row() {
    let srv = TestServer::start(&cfg()).await;
    let mixed = "email,role,phone_number\n\
                 ann@acme.test,agent,+15550100\n\
                 bob@acme.test,boss,\n\
                 not-an-email,agent,\n\
                 a1@acme.test,agent,\n\
                 cat@acme.test,agent,,+15550100\n\
                 dan@acme.test,admin,+15559990000\n\
                 eve@acme.test,Agent,\n\
                 flo@acme.test,admin\n\
                 gil@acme.test\n";
    let (s, v) = csv(&srv, "alice-token", mixed).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!((&v["invited"], &v["failed"]), (&json!(3), &json!(6)), "{v}");
    let rows = v["rows"].as_array().expect("rows");
    let summary: Vec<(u64, bool, String)> = rows
        .iter()
        .map(|r| {
            let code = r["error"]["code"].as_str().unwrap_or("").to_string();
            (r["line"].as_u64().expect("line"), r["ok"].as_bool().expect("ok"), code)
        })
        .collect();
    let want: Vec<(u64, bool, String)> = [
        (2, true, ""),
        (3, false, "bad_request"),
        (4, false, "bad_request"),
        (5, false, "conflict"),
        (6, false, "bad_request"),
        (7, false, "not_found"),
        (8, true, ""),
        (9, true, ""),
        (10, false, "bad_request"),
    ]
    .into_iter()
    .map(|(l, ok, c)| (l, ok, c.to_string()))
    .collect();
    assert_eq!(summary, want, "{v}");
    assert!(rows[1]["error"]["message"].as_str().expect("why").contains("boss"));
    assert!(rows[4]["error"]["message"].as_str().expect("why").contains("expected at most 3 fields, found 4"));
    assert!(rows[8]["error"]["message"].as_str().expect("why").contains("expected at least 2 fields"));
    // The optional trailing phone_number may be left out of a row.
    assert_eq!((&rows[7]["email"], &rows[7]["user"]["role"]), (&json!("flo@acme.test"), &json!("admin")), "{v}");
    assert!(rows[0]["invite"]["token"].as_str().is_some_and(|t| t.starts_with("rli_")));
    assert_eq!(rows[0]["user"]["assigned"], json!([N]));
    // The good rows are invited; an invitation from the batch works.
    let (_, users) = api(&srv, "GET", "/v1/users", Some("alice-token"), None).await;
    let listed = ids(&users["users"]);
    assert!(listed.contains(&"ann".to_string()) && listed.contains(&"eve".to_string()), "{listed:?}");
    assert!(!listed.contains(&"bob".to_string()));
    let (s, _) = accept(&srv, rows[6]["invite"]["token"].as_str().expect("token")).await;
    assert_eq!(s, 200);

    // All bad: nothing invited, every row reported.
    let (s, v) = csv(&srv, "alice-token", "email,role\nann@acme.test,agent\nzed@acme.test,owner\n").await;
    assert_eq!((s, &v["invited"], &v["failed"]), (200, &json!(0), &json!(2)), "{v}");
    // All good, without the optional column.
    let (s, v) = csv(&srv, "alice-token", "email,role\nfay@acme.test,agent\ngus@acme.test,admin\n").await;
    assert_eq!((s, &v["invited"], &v["failed"]), (200, &json!(2), &json!(0)), "{v}");
    // A bad header refuses the upload.
    let (s, v) = csv(&srv, "alice-token", "mail,role\nx@acme.test,agent\n").await;
    assert_eq!((s, &v["error"]["code"]), (400, &json!("bad_request")), "{v}");
    srv.stop().await;
}

#[tokio::test]
async fn numbers_are_validated_and_the_file_wins_for_what_it_declares() {
    let srv = TestServer::start(&cfg()).await;
    let create = |body: Value| api(&srv, "POST", "/v1/numbers", Some("alice-token"), Some(body));
    let (s, v) =
        create(json!({"number": "+15550400", "name": "Night", "queue": {"overflow": "forward:+15550400"}})).await;
    assert_eq!(s, 400, "{v}");
    assert!(v["error"]["message"].as_str().expect("why").contains("itself"));
    assert_eq!(create(json!({"number": "555-0400", "name": "Night"})).await.0, 400);
    assert_eq!(create(json!({"number": "+15550400", "name": "Night", "routing": {"ring_timeout": "0s"}})).await.0, 400);
    assert_eq!(create(json!({"number": "+15550400", "name": "Night", "assigned": ["zed"]})).await.0, 400);
    assert_eq!(create(json!({"number": N, "name": "Again"})).await.0, 409);
    let (s, v) = create(json!({"number": "+15550400", "name": "Night", "assigned": ["a1", "a2"]})).await;
    assert_eq!(s, 201, "{v}");
    assert_eq!((&v["routing"]["strategy"], &v["targets"]), (&json!("ring_all"), &json!(["a1", "a2"])));
    let patch = json!({"routing": {"strategy": "round_robin", "wrap_up": "5s"}, "queue": {"max_waiting": 7}});
    let (s, v) = api(&srv, "PATCH", "/v1/numbers/+15550400", Some("alice-token"), Some(patch)).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (&v["name"], &v["routing"]["strategy"], &v["routing"]["wrap_up"]),
        (&json!("Night"), &json!("round_robin"), &json!("5s"))
    );
    assert_eq!(v["queue"]["max_waiting"], 7);
    let typo = json!({"routing": {"stratgy": "round_robin"}});
    assert_eq!(api(&srv, "PATCH", "/v1/numbers/+15550400", Some("alice-token"), Some(typo)).await.0, 400);
    // A file number changed through the API, a role, an accepted invitation.
    let rename = json!({"name": "Front desk"});
    assert_eq!(api(&srv, "PATCH", "/v1/numbers/+15550100", Some("alice-token"), Some(rename)).await.0, 200);
    assert_eq!(api(&srv, "PATCH", "/v1/users/a2", Some("alice-token"), Some(json!({"role": "admin"}))).await.0, 200);
    let (_, inv) =
        api(&srv, "POST", "/v1/invites", Some("alice-token"), Some(json!({"email": "kim@acme.test", "role": "agent"})))
            .await;
    let (_, acc) = accept(&srv, inv["invite"]["token"].as_str().expect("token")).await;
    let kim = acc["token"].as_str().expect("token").to_string();

    let data = srv.stop().await;
    let srv = TestServer::start_in(&cfg(), data).await;
    let (_, v) = api(&srv, "GET", "/v1/numbers/+15550400", Some("alice-token"), None).await;
    assert_eq!((&v["routing"]["strategy"], &v["queue"]["max_waiting"]), (&json!("round_robin"), &json!(7)), "{v}");
    // What was created at run time is kept as it was changed; what the file
    // declares is set back to match the file (PROTOCOL, "Running the server").
    let (_, v) = api(&srv, "GET", "/v1/numbers/+15550100", Some("alice-token"), None).await;
    assert_ne!(v["name"], "Front desk", "the file's name again: {v}");
    let (_, v) = api(&srv, "GET", "/v1/users/a2", Some("alice-token"), None).await;
    assert_eq!(v["role"], "agent");
    let (s, v) = api(&srv, "GET", "/v1/account", Some(&kim), None).await;
    assert_eq!((s, &v["you"]), (200, &json!("kim")), "{v}");
    srv.stop().await;
}

#[tokio::test]
async fn journaled_admin_inputs_are_plain_inputs() {
    // What the shell journals for the API decodes as an input of the
    // account it names (a guard against a variant that cannot round-trip).
    let patch: ringline::core::admin::NumberPatch =
        serde_json::from_value(json!({"routing": {"targets": null}, "queue": {"max_wait": "2m"}})).expect("patch");
    let input = Input::Admin {
        account: "acme".into(),
        actor: ringline::core::Actor::User("alice".into()),
        cmd: Box::new(ringline::core::AdminCommand::UpdateNumber { number: N.into(), patch: Box::new(patch) }),
    };
    let bytes = rmp_serde::to_vec_named(&input).expect("encode");
    let back: Input = rmp_serde::from_slice(&bytes).expect("decode");
    assert_eq!(back, input);
}

#[tokio::test]
async fn a_path_that_does_not_decode_gets_the_json_error_body() {
    let srv = TestServer::start(&cfg()).await;
    let cases = [
        ("GET", "/v1/users/%FF"),
        ("POST", "/v1/users/%FF/deactivate"),
        ("GET", "/v1/numbers/%FF"),
        ("GET", "/v1/numbers/%FF/messages"),
    ];
    for (method, path) in cases {
        let (status, body) = http_request(srv.addr, method, path, Some("alice-token"), None).await;
        assert_eq!(status, 400, "{method} {path}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{method} {path}: {e}: {body:?}"));
        assert_eq!(v["error"]["code"], "bad_request", "{method} {path}: {v}");
        assert!(v["error"]["message"].as_str().is_some_and(|m| m.starts_with("bad path: ")), "{v}");
    }
    srv.stop().await;
}

#[tokio::test]
async fn unknown_routes_and_wrong_methods_get_the_json_error_body() {
    let srv = TestServer::start(&cfg()).await;
    let cases = [
        ("GET", "/v1/callz", 404, "not_found"),
        ("GET", "/nothing/here", 404, "not_found"),
        ("DELETE", "/v1/numbers/%2B15550100", 405, "bad_request"),
        ("PUT", "/v1/calls", 405, "bad_request"),
        ("POST", "/v1/voicemails", 405, "bad_request"),
    ];
    for (method, path, want, code) in cases {
        let (status, v) = api(&srv, method, path, Some("alice-token"), None).await;
        assert_eq!((status, &v["error"]["code"]), (want, &json!(code)), "{method} {path}: {v}");
        assert!(v["error"]["message"].is_string(), "{method} {path}: {v}");
    }
    srv.stop().await;
}
