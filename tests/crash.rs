//! Crash recovery with the real binary: SIGKILL at several points while a
//! gateway streams events, restart on the same data dir, and check that
//! every acknowledged event took effect exactly once and nothing
//! acknowledged was lost. Also: a damaged journal tail, SIGTERM, and the
//! start-up step that moves the binary's code onto 2 MiB pages.

mod common;

use common::*;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const N: &str = "+15550100";

fn crash_config() -> String {
    config(&number(N, "ring_in_order", "", "max_wait = \"1h\"\ncallback = true\nmax_waiting = 100"))
}

struct Server {
    child: Child,
    addr: SocketAddr,
    log: Arc<Mutex<String>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Server {
    fn start(config: &Path, data: &Path) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ringline"))
            .args(["serve", "--config"])
            .arg(config)
            .args(["--listen", "127.0.0.1:0", "--data"])
            .arg(data)
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the ringline binary starts");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let mut readers = Vec::new();
        for pipe in [
            child.stdout.take().map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child.stderr.take().map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let (log, tx) = (log.clone(), tx.clone());
            readers.push(std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    if let Some(rest) = line.split("listening on ").nth(1) {
                        let addr = rest.split_whitespace().next().unwrap_or_default().to_string();
                        let _ = tx.send(addr);
                    }
                    log.lock().expect("log").push_str(&(line + "\n"));
                }
            }));
        }
        drop(tx);
        let addr = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                panic!("the server did not start:\n{}", log.lock().expect("log"));
            }
        };
        Server { child, addr: addr.parse().expect("address"), log, readers }
    }

    fn kill(mut self) {
        self.child.kill().expect("SIGKILL");
        let _ = self.child.wait();
    }

    /// Waits for the process to exit and its output to be read.
    fn wait_exit(&mut self) -> std::process::ExitStatus {
        let status = self.child.wait().expect("exit");
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        status
    }

    fn log(&self) -> String {
        self.log.lock().expect("log").clone()
    }
}

/// The gateway's script: calls, callback requests, hang-ups, an SMS.
fn script() -> Vec<Value> {
    let mut events = Vec::new();
    for i in 1..=12 {
        events.push(json!({"type": "call.inbound", "call_id": format!("c{i}"), "to": N, "from": "+15551230001"}));
        if i == 5 || i == 8 {
            events
                .push(json!({"type": "callback.requested", "call_id": format!("c{}", i - 1), "phone": "+15557770000"}));
        }
        if i == 9 {
            events.push(json!({"type": "call.ended", "call_id": "c6", "reason": "caller_hangup"}));
        }
    }
    events.push(
        json!({"type": "message.inbound", "message_id": "sms-1", "to": N, "from": "+15557770000", "body": "hello"}),
    );
    events
}

/// What each call must end as, whatever the kill point.
fn expected() -> BTreeMap<String, &'static str> {
    let mut want = BTreeMap::new();
    for i in 1..=12 {
        let outcome = match i {
            4 | 7 => "callback_requested",
            6 => "abandoned",
            _ => "answered",
        };
        want.insert(format!("c{i}"), outcome);
    }
    want
}

/// A temporary dir with the crash config written in it, and where the
/// data dir goes.
fn fresh_dir() -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("dir");
    let cfg_path = dir.path().join("ringline.toml");
    std::fs::write(&cfg_path, crash_config()).expect("config");
    let data = dir.path().join("data");
    (dir, cfg_path, data)
}

/// A softphone of `user`, past its `hello`.
async fn agent(addr: SocketAddr, user: &str) -> Client {
    let mut c = Client::connect(addr, "/v1/agent", &format!("{user}-token"), "json").await.expect("agent");
    c.expect("hello").await;
    c
}

async fn connect_gateway(addr: SocketAddr) -> Gateway {
    Gateway { c: Client::connect(addr, "/v1/gateway", "gw-secret", "json").await.expect("gateway"), seq: 0 }
}

/// Sends the whole script pipelined, and returns after `kill_after` acks
/// with the indexes of the events acked so far.
async fn stream_until(addr: SocketAddr, events: &[Value], kill_after: usize) -> (Gateway, BTreeSet<usize>) {
    let mut gw = connect_gateway(addr).await;
    let mut by_seq = BTreeMap::new();
    for (i, e) in events.iter().enumerate() {
        let seq = gw.event(e.clone()).await;
        by_seq.insert(seq, i);
    }
    let mut acked = BTreeSet::new();
    while acked.len() < kill_after {
        let m = gw.c.expect_where("ack", |m| m["type"] == "ack").await;
        let seq = m["seq"].as_u64().expect("seq");
        acked.insert(by_seq[&seq]);
    }
    (gw, acked)
}

/// Serves everything that is waiting: the agent takes each offer, the
/// gateway connects, answers and ends each call (callbacks connect).
async fn drain(addr: SocketAddr, gw: &mut Gateway, open: usize) {
    let mut a1 = agent(addr, "a1").await;
    for _ in 0..open {
        let offer = a1.accept_next().await;
        if offer["kind"] == "callback" {
            let dial = gw.c.expect_where("callback.dial", |m| m["type"] == "callback.dial").await;
            gw.acked(json!({"type": "callback.result", "callback_id": offer["callback_id"], "outcome": "connected"}))
                .await;
            gw.acked(json!({"type": "call.ended", "call_id": dial["call_id"], "reason": "agent_hangup"})).await;
        } else {
            let call = offer["call_id"].as_str().expect("call id").to_string();
            gw.expect_for("call.bridge", &call).await;
            gw.acked(json!({"type": "call.answered", "call_id": call, "agent": "a1"})).await;
            gw.acked(json!({"type": "call.ended", "call_id": call, "reason": "agent_hangup"})).await;
        }
        a1.expect("call.ended").await;
    }
}

async fn history(addr: SocketAddr) -> Vec<Value> {
    let (status, body) = get_json(addr, "/v1/calls?limit=500", "alice-token").await;
    assert_eq!(status, 200, "{body}");
    body["items"].as_array().expect("items").clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_any_point_loses_nothing_acknowledged() {
    let events = script();
    for kill_after in [0, 1, 5, 9, events.len()] {
        let (_dir, cfg_path, data) = fresh_dir();

        let first = Server::start(&cfg_path, &data);
        let _a1 = agent(first.addr, "a1").await;
        let (_gw, acked) = stream_until(first.addr, &events, kill_after).await;
        first.kill();

        let second = Server::start(&cfg_path, &data);
        let mut gw = connect_gateway(second.addr).await;
        // A gateway re-sends exactly what was not acknowledged.
        for (i, e) in events.iter().enumerate() {
            if !acked.contains(&i) {
                gw.acked(e.clone()).await;
            }
        }
        // Twelve calls, one hung up, two became callbacks: 11 to serve.
        drain(second.addr, &mut gw, 11).await;
        let records = history(second.addr).await;
        let mut outcomes: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for r in &records {
            outcomes
                .entry(r["id"].as_str().expect("id").to_string())
                .or_default()
                .push(r["outcome"].as_str().expect("outcome").to_string());
        }
        for (call, want) in expected() {
            assert_eq!(
                outcomes.get(&call).map(Vec::as_slice),
                Some(&[want.to_string()][..]),
                "kill after {kill_after} acks: {call}"
            );
        }
        let callbacks: Vec<_> = records.iter().filter(|r| r["kind"] == "callback").collect();
        assert_eq!(callbacks.len(), 2, "kill after {kill_after}: one callback per request");
        assert!(callbacks.iter().all(|r| r["outcome"] == "callback_completed"));
        let (_, msgs) = get_json(second.addr, &format!("/v1/numbers/{N}/messages"), "alice-token").await;
        assert_eq!(msgs["items"].as_array().map(Vec::len), Some(1), "kill after {kill_after}: the SMS once");
        second.kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_journal_tail_is_dropped_reported_and_the_server_starts() {
    let (_dir, cfg_path, data) = fresh_dir();
    let events: Vec<Value> = (1..=10)
        .map(|i| json!({"type": "call.inbound", "call_id": format!("c{i}"), "to": N, "from": "+15551230001"}))
        .collect();
    let first = Server::start(&cfg_path, &data);
    let (_gw, _) = stream_until(first.addr, &events, events.len()).await;
    first.kill();

    // Flip bytes in the last three journal rows, as a torn or bad write would.
    let db = rusqlite::Connection::open(data.join("ringline.db")).expect("open db");
    let max: i64 = db.query_row("SELECT MAX(seq) FROM journal", [], |r| r.get(0)).expect("max seq");
    db.execute("UPDATE journal SET input = zeroblob(length(input)) WHERE seq > ?1", [max - 3]).expect("damage");
    drop(db);

    let second = Server::start(&cfg_path, &data);
    let log = second.log();
    assert!(log.contains("journal tail damaged"), "the damage is reported:\n{log}");
    assert!(log.contains("dropped 3 entries"), "{log}");
    // Everything before the damage is there: the first seven calls wait in
    // order and are offered to the agent.
    let mut a1 = Client::connect(second.addr, "/v1/agent", "a1-token", "json").await.expect("agent");
    let offer = a1.expect("offer").await;
    assert_eq!(offer["call_id"], "c1");
    let mut gw = connect_gateway(second.addr).await;
    // c1..c7 are known (re-sending is a no-op); c8 is new again.
    gw.acked(events[6].clone()).await;
    gw.c.expect_none("call.queued", Duration::from_millis(300)).await;
    gw.acked(events[7].clone()).await;
    gw.expect_for("call.queued", "c8").await;
    second.kill();
}

/// Shards are snapshotted one after another, so a snapshot round can end
/// at different journal positions, and the journal keeps what the lowest
/// does not cover. A damaged row below the highest one leaves a hole in
/// the seqs once new entries are numbered past it: the start that drops
/// the damage must close that hole, or the next start takes it for
/// damage too and drops everything acknowledged since.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tail_dropped_under_a_snapshot_costs_nothing_acknowledged_later() {
    let (_dir, cfg_path, data) = fresh_dir();
    // acme alone: the other shard holds no account.
    let only_acme = crash_config()
        .split("\n[[accounts]]\nid = \"other\"")
        .next()
        .expect("acme")
        .replace("[[gateways]]\nname = \"edge-other\"\ntoken = \"gw-other\"\naccounts = [\"other\"]\n", "");
    assert!(!only_acme.contains("other"), "{only_acme}");
    std::fs::write(&cfg_path, only_acme).expect("config");
    let inbound = |i: u32| json!({"type": "call.inbound", "call_id": format!("c{i}"), "to": N, "from": "+15551230001"});
    // A clean stop: both shards snapshotted, the journal truncated.
    let mut first = Server::start(&cfg_path, &data);
    connect_gateway(first.addr).await.acked(inbound(1)).await;
    let status = Command::new("kill").args(["-TERM", &first.child.id().to_string()]).status().expect("kill");
    assert!(status.success());
    assert!(first.wait_exit().success(), "{}", first.log());
    // Ten more calls, then a crash: ten journal rows after the snapshots.
    let second = Server::start(&cfg_path, &data);
    let events: Vec<Value> = (2..=11).map(inbound).collect();
    stream_until(second.addr, &events, events.len()).await;
    second.kill();

    // Raise the snapshot of the shard without accounts to the journal's
    // end (its state is the same there), as a round taken under load
    // leaves them; then damage the last three rows, below that end.
    let acme_shard = ringline::server::directory::shard_index(&"acme".into(), 2) as i64;
    let db = rusqlite::Connection::open(data.join("ringline.db")).expect("open db");
    let max: i64 = db.query_row("SELECT MAX(seq) FROM journal", [], |r| r.get(0)).expect("max seq");
    let raised =
        db.execute("UPDATE snapshots SET covered_seq = ?1 WHERE shard != ?2", [max, acme_shard]).expect("raise");
    assert_eq!(raised, 1, "one other shard");
    // The round's generation is the journal's end once every shard
    // answered, which may be past the damage too.
    db.execute("UPDATE snapshots SET generation = ?1", [max + 2]).expect("generation");
    db.execute("UPDATE journal SET input = zeroblob(length(input)) WHERE seq > ?1", [max - 3]).expect("damage");
    drop(db);

    let third = Server::start(&cfg_path, &data);
    assert!(third.log().contains("dropped 3 entries"), "{}", third.log());
    let mut gw = connect_gateway(third.addr).await;
    gw.inbound("c20", N).await;
    gw.inbound("c21", N).await;
    third.kill();

    let fourth = Server::start(&cfg_path, &data);
    let log = fourth.log();
    assert!(!log.contains("journal tail damaged"), "nothing was damaged this time:\n{log}");
    let mut gw = connect_gateway(fourth.addr).await;
    // Known calls: re-sending them is a no-op.
    gw.acked(inbound(20)).await;
    gw.acked(inbound(21)).await;
    gw.acked(inbound(8)).await;
    gw.c.expect_none("call.queued", Duration::from_millis(300)).await;
    fourth.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_clients_flushes_and_exits_zero() {
    let (_dir, cfg_path, data) = fresh_dir();
    let mut server = Server::start(&cfg_path, &data);
    let mut a1 = agent(server.addr, "a1").await;
    let mut gw = connect_gateway(server.addr).await;
    gw.inbound("c1", N).await;
    let status = Command::new("kill").args(["-TERM", &server.child.id().to_string()]).status().expect("kill");
    assert!(status.success());
    assert_eq!(a1.expect_close().await.map(|c| c.0), Some(1001));
    let exit = server.wait_exit();
    assert!(exit.success(), "exit status {exit:?}\n{}", server.log());
    assert!(server.log().contains("journal flushed"), "{}", server.log());
    // The acked call survived the clean stop.
    let again = Server::start(&cfg_path, &data);
    let mut a1 = Client::connect(again.addr, "/v1/agent", "a1-token", "json").await.expect("agent");
    assert_eq!(a1.expect("offer").await["call_id"], "c1");
    again.kill();
}

/// A call rung at the crash, whose ring timeout passes while the server is
/// down: at start nobody is rung for it (no agent is connected yet, though
/// the recovered state still lists their old connections), and the gateway
/// hears no `call.ringing` until an agent is back and really rung.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_rings_nobody_whose_connection_is_gone() {
    let (_dir, cfg_path, data) = fresh_dir();
    let first = Server::start(&cfg_path, &data);
    let mut a1 = agent(first.addr, "a1").await;
    let _a2 = agent(first.addr, "a2").await;
    let mut gw = connect_gateway(first.addr).await;
    gw.acked(json!({"type": "call.inbound", "call_id": "c1", "to": N, "from": "+15551230001"})).await;
    assert_eq!(a1.expect("offer").await["call_id"], "c1");
    first.kill();
    // Longer than the 2 s ring timeout: it comes due while the server is down.
    tokio::time::sleep(Duration::from_millis(2500)).await;

    let second = Server::start(&cfg_path, &data);
    let mut gw = connect_gateway(second.addr).await;
    gw.c.expect_none("call.ringing", Duration::from_millis(700)).await;
    let mut a2 = agent(second.addr, "a2").await;
    assert_eq!(a2.expect("offer").await["call_id"], "c1");
    let ringing = gw.expect_for("call.ringing", "c1").await;
    assert_eq!(ringing["agents"], json!(["a2"]));
    second.kill();
}

/// Bytes on huge pages in anonymous executable mappings (inode 0, no
/// path; `[vdso]` has a name), from the text of `/proc/<pid>/smaps`: where
/// start-up moved the code, and nothing else.
fn moved_code_huge_bytes(smaps: &str) -> usize {
    smaps
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let anonymous_code = f.len() == 5 && f[1] == "r-xp" && f[4] == "0";
            let start = f.first()?.split_once('-')?.0;
            anonymous_code.then(|| usize::from_str_radix(start, 16).ok()).flatten()
        })
        .filter_map(|start| ringline::huge_pages::anon_huge_bytes(smaps, start))
        .sum()
}

/// The binary moves its code onto 2 MiB pages at start-up (unless told
/// not to) and routes a call with it either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_code_runs_from_huge_pages_unless_configured_off() {
    let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
    for on in [true, false] {
        let (_dir, cfg_path, data) = fresh_dir();
        if !on {
            let text = crash_config().replacen("[server]\n", "[server]\nhuge_code_pages = false\n", 1);
            assert!(text.contains("huge_code_pages = false"));
            std::fs::write(&cfg_path, text).expect("config");
        }
        let server = Server::start(&cfg_path, &data);
        let smaps = std::fs::read_to_string(format!("/proc/{}/smaps", server.child.id())).expect("smaps");
        let huge = moved_code_huge_bytes(&smaps);
        if on && !thp.contains("[never]") {
            assert!(server.log().contains("machine code moved onto 2 MiB pages"), "{}", server.log());
            assert!(huge >= 2 << 20, "{huge} bytes of moved code on huge pages");
        } else {
            assert!(server.log().contains("machine code stays on 4 KiB pages"), "{}", server.log());
            assert_eq!(huge, 0);
        }
        let mut a1 = agent(server.addr, "a1").await;
        let mut gw = connect_gateway(server.addr).await;
        gw.inbound("c1", N).await;
        assert_eq!(a1.expect("offer").await["call_id"], "c1", "huge pages {on}");
        server.kill();
    }
}
