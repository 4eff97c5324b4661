//! A five-minute tour: plays a telephony gateway and one agent (bob) against
//! a server running the default config, printing every message.
//!
//! ```sh
//! cargo run --release -- serve            # terminal 1
//! cargo run --example tour                # terminal 2 (or: -- 127.0.0.1:8040)
//! ```

#![allow(clippy::disallowed_methods, clippy::unwrap_used)] // a demo, not the server

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

struct Peer {
    name: &'static str,
    ws: Ws,
    seq: u64,
    /// Messages already shown, not yet waited for.
    seen: Vec<Value>,
}

impl Peer {
    async fn connect(addr: &str, path: &str, token: &str, name: &'static str) -> Peer {
        let url = format!("ws://{addr}{path}?token={token}");
        let (ws, _) = tokio_tungstenite::connect_async(&url)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {url}: {e} (is `cargo run --release -- serve` running?)"));
        println!("\n== {name} connected to {path}");
        Peer { name, ws, seq: 0, seen: Vec::new() }
    }

    async fn send(&mut self, mut v: Value) {
        if self.name == "gateway" {
            self.seq += 1;
            v["seq"] = json!(self.seq);
        }
        println!("  {:>8} -> {v}", self.name);
        self.ws.send(Message::Text(v.to_string().into())).await.unwrap();
    }

    /// Prints messages until one of type `ty` arrives; returns it. Messages
    /// may arrive in any order relative to what we wait for next.
    async fn until(&mut self, ty: &str) -> Value {
        if let Some(i) = self.seen.iter().position(|v| v["type"] == ty) {
            return self.seen.remove(i);
        }
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(10), self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("{} waited 10s for {ty}", self.name))
                .unwrap()
                .unwrap();
            if let Message::Text(t) = msg {
                let v: Value = serde_json::from_str(&t).unwrap();
                println!("  {:>8} <- {v}", self.name);
                if v["type"] == ty {
                    return v;
                }
                self.seen.push(v);
            }
        }
    }
}

fn step(text: &str) {
    println!("\n-- {text}");
}

#[tokio::main]
async fn main() {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:8040".into());
    let run = std::process::id();

    step("Bob opens his softphone. The engine says hello: who he is, his numbers, his status.");
    let mut bob = Peer::connect(&addr, "/v1/agent", "bob-token", "bob").await;
    bob.until("hello").await;
    let mut gw = Peer::connect(&addr, "/v1/gateway", "gw-secret", "gateway").await;

    step("A customer calls Tech (+15550103, longest_idle). Bob is the only one online, so he rings.");
    let first = format!("tour-{run}-1");
    gw.send(json!({"type": "call.inbound", "call_id": first, "to": "+15550103", "from": "+15551230001"})).await;
    gw.until("ack").await;
    gw.until("call.ringing").await;
    let offer = bob.until("offer").await;

    step("Bob accepts. He wins the call; the gateway is told to bridge it to him.");
    bob.send(json!({"type": "offer.accept", "offer_id": offer["offer_id"], "ref": "take-it"})).await;
    bob.until("offer.won").await;
    gw.until("call.bridge").await;
    gw.send(json!({"type": "call.answered", "call_id": first, "agent": "bob"})).await;
    gw.until("ack").await;

    step("While Bob talks, someone calls Support (+15550100, ring_all). Nobody is free: the caller queues.");
    let second = format!("tour-{run}-2");
    gw.send(json!({"type": "call.inbound", "call_id": second, "to": "+15550100", "from": "+15551230002"})).await;
    gw.until("call.queued").await;

    step("Bob hangs up. The moment he is free, the waiting caller is offered to him.");
    gw.send(json!({"type": "call.ended", "call_id": first, "reason": "agent_hangup"})).await;
    bob.until("call.ended").await;
    let offer = bob.until("offer").await;
    bob.send(json!({"type": "offer.accept", "offer_id": offer["offer_id"]})).await;
    bob.until("offer.won").await;
    gw.until("call.bridge").await;
    gw.send(json!({"type": "call.answered", "call_id": second, "agent": "bob"})).await;
    gw.send(json!({"type": "call.ended", "call_id": second, "reason": "caller_hangup"})).await;
    bob.until("call.ended").await;

    step("Both calls are in the history, which alice (the owner) can read over HTTP:");
    println!("  curl -s -H 'Authorization: Bearer alice-token' http://{addr}/v1/calls");
}
