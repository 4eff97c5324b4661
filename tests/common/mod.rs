//! Shared harness for end-to-end tests: the real server on 127.0.0.1:0 with
//! a temporary data dir, and real WebSocket clients.

#![allow(dead_code, clippy::disallowed_methods)]

use futures_util::{SinkExt, StreamExt};
use ringline::server::{self, Options, Running};
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const WAIT: Duration = Duration::from_secs(5);

/// A test account: owner alice, agents a1..a4, supervisor sam, outbound-only
/// olga; `numbers` is TOML for `[[accounts.numbers]]` tables.
pub fn config(numbers: &str) -> String {
    format!(
        r#"
listen = "127.0.0.1:0"
data_dir = "unused"

[server]
ping_interval = "1s"
idle_timeout = "3s"
rate_limit_per_sec = 50
rate_limit_burst = 100
abuse_errors_before_close = 20
outbound_queue = 160
max_frame_bytes = 4096

[[gateways]]
name = "edge-1"
token = "gw-secret"

[[gateways]]
name = "edge-other"
token = "gw-other"
accounts = ["other"]

[[accounts]]
id = "acme"
plan = "pro"

[[accounts.users]]
id = "alice"
email = "alice@acme.test"
role = "owner"
token = "alice-token"

[[accounts.users]]
id = "a1"
email = "a1@acme.test"
role = "agent"
token = "a1-token"

[[accounts.users]]
id = "a2"
email = "a2@acme.test"
role = "agent"
token = "a2-token"

[[accounts.users]]
id = "a3"
email = "a3@acme.test"
role = "agent"
token = "a3-token"

[[accounts.users]]
id = "a4"
email = "a4@acme.test"
role = "agent"
token = "a4-token"

[[accounts.users]]
id = "sam"
email = "sam@acme.test"
role = "supervisor"
token = "sam-token"

[[accounts.users]]
id = "olga"
email = "olga@acme.test"
role = "agent"
token = "olga-token"

{numbers}

[[accounts]]
id = "other"
plan = "team"

[[accounts.users]]
id = "owen"
email = "owen@other.test"
role = "owner"
token = "owen-token"

[[accounts.numbers]]
number = "+15559990000"
name = "Other line"
assigned = ["owen"]
"#
    )
}

/// A number table with `strategy`, assigned a1..a3, plus `extra` settings.
pub fn number(n: &str, strategy: &str, extra_routing: &str, extra_queue: &str) -> String {
    format!(
        r#"
[[accounts.numbers]]
number = "{n}"
name = "Line {n}"
assigned = ["a1", "a2", "a3", "sam"]
caller_id = ["olga"]

[accounts.numbers.routing]
strategy = "{strategy}"
targets = ["a1", "a2", "a3"]
ring_timeout = "2s"
{extra_routing}

[accounts.numbers.queue]
announce_min_gap = "100ms"
{extra_queue}
"#
    )
}

#[derive(Debug)]
pub struct TestServer {
    pub addr: SocketAddr,
    pub running: Option<Running>,
    pub data: tempfile::TempDir,
    pub config_text: String,
}

impl TestServer {
    pub async fn start(config_text: &str) -> TestServer {
        let data = tempfile::tempdir().expect("temp dir");
        Self::start_in(config_text, data).await
    }

    pub async fn start_in(config_text: &str, data: tempfile::TempDir) -> TestServer {
        let cfg = ringline::config::parse(config_text, Path::new("test.toml")).expect("test config parses");
        let opts =
            Options { listen: Some("127.0.0.1:0".parse().expect("addr")), data_dir: Some(data.path().to_owned()) };
        let running = server::start(cfg, opts).await.expect("server starts");
        TestServer { addr: running.addr, running: Some(running), data, config_text: config_text.to_owned() }
    }

    pub async fn stop(mut self) -> tempfile::TempDir {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
        self.data
    }

    pub async fn gateway(&self) -> Gateway {
        Gateway {
            c: Client::connect(self.addr, "/v1/gateway", "gw-secret", "json").await.expect("gateway connects"),
            seq: 0,
        }
    }

    pub async fn agent(&self, user: &str) -> Client {
        let mut c =
            Client::connect(self.addr, "/v1/agent", &format!("{user}-token"), "json").await.expect("agent connects");
        c.expect("hello").await;
        c
    }

    pub async fn http_get(&self, path: &str) -> (u16, String) {
        http_get(self.addr, path).await
    }
}

/// A minimal HTTP/1.1 GET over a fresh connection.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.expect("read");
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

/// Any HTTP/1.1 request with an optional bearer token and body
/// (`content_type`, text); returns (status, body).
pub async fn http_call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<(&str, String)>,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
    if let Some(t) = token {
        req += &format!("Authorization: Bearer {t}\r\n");
    }
    let body = match body {
        Some((ct, b)) => {
            req += &format!("Content-Type: {ct}\r\nContent-Length: {}\r\n", b.len());
            b
        }
        None => String::new(),
    };
    req += "\r\n";
    req += &body;
    s.write_all(req.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.expect("read");
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let (head, body) = text.split_once("\r\n\r\n").map(|(h, b)| (h.to_string(), b.to_string())).unwrap_or_default();
    // Chunked bodies (axum streams some): join the chunks.
    let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { dechunk(&body) } else { body };
    (status, body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else { break };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// GET with a bearer token, parsed as JSON.
pub async fn get_json(addr: SocketAddr, path: &str, token: &str) -> (u16, Value) {
    let (status, body) = http_call(addr, "GET", path, Some(token), None).await;
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

#[derive(Debug)]
pub struct Client {
    pub ws: Ws,
    pub msgpack: bool,
    backlog: VecDeque<Value>,
}

impl Client {
    /// Connects with `?token=`; `Err(status)` when the upgrade is refused.
    pub async fn connect(addr: SocketAddr, path: &str, token: &str, encoding: &str) -> Result<Client, u16> {
        let url = format!("ws://{addr}{path}?token={token}&encoding={encoding}");
        Self::connect_request(url.into_client_request().expect("request"), encoding == "msgpack").await
    }

    pub async fn connect_request(
        req: tokio_tungstenite::tungstenite::handshake::client::Request,
        msgpack: bool,
    ) -> Result<Client, u16> {
        match tokio_tungstenite::connect_async(req).await {
            Ok((ws, _)) => Ok(Client { ws, msgpack, backlog: VecDeque::new() }),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
            Err(e) => panic!("connect failed: {e}"),
        }
    }

    pub async fn send(&mut self, v: Value) {
        let msg = if self.msgpack {
            Message::Binary(rmp_serde::to_vec_named(&v).expect("msgpack").into())
        } else {
            Message::Text(v.to_string().into())
        };
        self.ws.send(msg).await.expect("send");
    }

    /// Drops messages read while waiting for something else.
    #[allow(dead_code)]
    pub fn forget_backlog(&mut self) {
        self.backlog.clear();
    }

    pub async fn send_raw(&mut self, msg: Message) {
        self.ws.send(msg).await.expect("send");
    }

    /// The next message, or `None` on close / timeout.
    pub async fn next(&mut self, wait: Duration) -> Option<Value> {
        if let Some(v) = self.backlog.pop_front() {
            return Some(v);
        }
        self.read(wait).await
    }

    async fn read(&mut self, wait: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.ws.next()).await.ok()??.ok()?;
            match msg {
                Message::Text(t) => return Some(serde_json::from_str(&t).expect("server sends JSON objects")),
                Message::Binary(b) => return Some(rmp_serde::from_slice(&b).expect("server sends MessagePack maps")),
                Message::Close(_) => return None,
                _ => continue,
            }
        }
    }

    /// Waits for a message matching `pred`; others are kept for later.
    pub async fn expect_where(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        if let Some(i) = self.backlog.iter().position(&pred) {
            return self.backlog.remove(i).expect("present");
        }
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.read(left).await {
                Some(v) if pred(&v) => return v,
                Some(v) => self.backlog.push_back(v),
                None => panic!("no {what} (got {:?})", self.backlog),
            }
        }
    }

    pub async fn expect(&mut self, ty: &str) -> Value {
        self.expect_where(ty, |v| v["type"] == ty).await
    }

    /// Asserts no message of type `ty` arrives within `wait`.
    pub async fn expect_none(&mut self, ty: &str, wait: Duration) {
        if let Some(v) = self.backlog.iter().find(|v| v["type"] == ty) {
            panic!("unexpected {ty}: {v}");
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return;
            }
            match self.read(left).await {
                Some(v) if v["type"] == ty => panic!("unexpected {ty}: {v}"),
                Some(v) => self.backlog.push_back(v),
                None => return,
            }
        }
    }

    /// The close frame the server sent, if the connection is closing.
    pub async fn expect_close(&mut self) -> Option<(u16, String)> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Ok(Some(Ok(Message::Close(frame)))) => return frame.map(|f| (u16::from(f.code), f.reason.to_string())),
                Ok(Some(Ok(_))) => continue,
                Ok(Some(Err(_))) | Ok(None) => return None,
                Err(_) => panic!("connection did not close"),
            }
        }
    }

    pub async fn cmd(&mut self, v: Value) {
        self.send(v).await
    }

    /// Accepts the next offer; returns it.
    pub async fn accept_next(&mut self) -> Value {
        let offer = self.expect("offer").await;
        self.send(json!({"type": "offer.accept", "offer_id": offer["offer_id"]})).await;
        self.expect("offer.won").await;
        offer
    }
}

#[derive(Debug)]
pub struct Gateway {
    pub c: Client,
    pub seq: u64,
}

impl Gateway {
    /// Sends an event with the next seq; returns the seq.
    pub async fn event(&mut self, mut v: Value) -> u64 {
        self.seq += 1;
        v["seq"] = json!(self.seq);
        self.c.send(v).await;
        self.seq
    }

    /// Sends an event and waits for its ack.
    pub async fn acked(&mut self, v: Value) -> u64 {
        let seq = self.event(v).await;
        self.c.expect_where("ack", |m| m["type"] == "ack" && m["seq"] == seq).await;
        seq
    }

    pub async fn inbound(&mut self, call: &str, to: &str) {
        self.acked(json!({"type": "call.inbound", "call_id": call, "to": to, "from": "+15551230001"})).await;
    }

    pub async fn expect(&mut self, ty: &str) -> Value {
        self.c.expect(ty).await
    }

    pub async fn expect_for(&mut self, ty: &str, call: &str) -> Value {
        self.c.expect_where(&format!("{ty} for {call}"), |m| m["type"] == ty && m["call_id"] == call).await
    }
}

/// A minimal HTTP/1.1 request over a fresh connection: any method, an
/// optional bearer token, an optional `(content type, body)`. Returns the
/// status and the body (chunked bodies decoded).
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<(&str, &str)>,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
    if let Some(t) = token {
        req += &format!("Authorization: Bearer {t}\r\n");
    }
    let (content_type, text) = body.unwrap_or(("", ""));
    if body.is_some() {
        req += &format!("Content-Type: {content_type}\r\n");
    }
    req += &format!("Content-Length: {}\r\n\r\n{text}", text.len());
    s.write_all(req.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.expect("read");
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    if !chunked {
        return (status, body.to_string());
    }
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || after.len() < n {
            break;
        }
        out += &after[..n];
        rest = after[n..].strip_prefix("\r\n").unwrap_or(&after[n..]);
    }
    (status, out)
}

/// JSON in, JSON out: `Value::Null` for an empty or non-JSON answer.
pub async fn http_json(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> (u16, Value) {
    let text = body.map(Value::to_string);
    let (status, answer) =
        http_request(addr, method, path, token, text.as_deref().map(|t| ("application/json", t))).await;
    (status, serde_json::from_str(&answer).unwrap_or(Value::Null))
}
