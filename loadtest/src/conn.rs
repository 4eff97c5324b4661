//! One task per WebSocket: it reads (which also answers the server's pings),
//! stamps and parses what arrives and hands it to the driver, and writes
//! what the driver queues for it. Timestamps are taken here, next to the
//! socket: on receipt right after the frame is read, on send right before
//! the frame is written (and reported to the driver *before* the write, so
//! the driver always knows a send time before anything it caused arrives).

use crate::wire::Incoming;
use futures_util::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Who is on the other end of a connection, from the driver's side.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Peer {
    Gateway,
    Agent(u32),
    Probe,
}

/// Which send the driver wants timed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stamp {
    /// A gateway event with this `seq`.
    GwSeq(u64),
    /// An agent's `offer.accept`.
    Accept,
    /// A baseline probe with this number.
    Probe(u64),
}

/// A frame to write, optionally timed.
#[derive(Debug)]
pub struct Out {
    pub msg: Message,
    pub stamp: Option<Stamp>,
}

/// What connection tasks tell the driver.
#[derive(Debug)]
pub enum Event {
    Msg {
        peer: Peer,
        at: Instant,
        msg: Box<Incoming>,
    },
    Sent {
        peer: Peer,
        at: Instant,
        stamp: Stamp,
    },
    /// A frame that does not parse.
    Garbled {
        peer: Peer,
        error: String,
    },
    Closed {
        peer: Peer,
        why: String,
    },
}

/// Client buffers sized like the server's: 4 KiB reads, writes unbuffered.
pub fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(4 * 1024).write_buffer_size(0)
}

/// Opens a WebSocket with TCP_NODELAY, retrying refused or reset connects
/// (a full accept backlog) a few times.
pub async fn connect(addr: SocketAddr, path_and_query: &str) -> anyhow::Result<Ws> {
    let url = format!("ws://{addr}{path_and_query}");
    let mut delay = Duration::from_millis(50);
    let mut attempt = 0;
    loop {
        let req = url.as_str().into_client_request()?;
        match tokio_tungstenite::connect_async_with_config(req, Some(ws_config()), true).await {
            Ok((ws, _)) => return Ok(ws),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                anyhow::bail!("{path_and_query}: upgrade refused with HTTP {}", resp.status())
            }
            Err(e) if attempt < 5 => {
                attempt += 1;
                tokio::time::sleep(delay).await;
                delay *= 2;
                let _ = e;
            }
            Err(e) => anyhow::bail!("{addr}: cannot connect: {e}"),
        }
    }
}

/// Connects and runs one connection on an OS thread with a single-threaded
/// runtime of its own; returns once the connection is open.
///
/// For the gateway: a real gateway is a process of its own, not one task
/// among ten thousand simulated softphones. On the shared runtime its
/// receipt stamps (the `ack`, `call.bridge`) waited behind the driver's
/// batches and the agents' tasks, which the server did not cause. Its send
/// stamps were already taken right before the write.
pub async fn run_on_own_thread(
    name: &str,
    peer: Peer,
    addr: SocketAddr,
    path_and_query: String,
    rx: mpsc::UnboundedReceiver<Out>,
    events: mpsc::UnboundedSender<Event>,
) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let (opened_tx, opened_rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new().name(name.to_owned()).spawn(move || {
        rt.block_on(async move {
            match connect(addr, &path_and_query).await {
                Ok(ws) => {
                    let _ = opened_tx.send(Ok(()));
                    run(peer, ws, rx, events).await;
                }
                Err(e) => {
                    let _ = opened_tx.send(Err(e));
                }
            }
        });
    })?;
    opened_rx.await.map_err(|_| anyhow::anyhow!("{name}: the connection thread ended before connecting"))?
}

/// Runs one connection until the driver drops its sender or the peer goes.
pub async fn run(peer: Peer, mut ws: Ws, mut rx: mpsc::UnboundedReceiver<Out>, events: mpsc::UnboundedSender<Event>) {
    let why = loop {
        tokio::select! {
            frame = ws.next() => {
                let msg = match frame {
                    Some(Ok(m)) => m,
                    Some(Err(e)) => break format!("read error: {e}"),
                    None => break "closed".to_owned(),
                };
                let at = Instant::now();
                match Incoming::parse(&msg) {
                    Some(Ok(msg)) => {
                        let _ = events.send(Event::Msg { peer, at, msg: Box::new(msg) });
                    }
                    Some(Err(error)) => {
                        let _ = events.send(Event::Garbled { peer, error });
                    }
                    None => {
                        if let Message::Close(frame) = msg {
                            break match frame {
                                Some(f) => format!("closed by the server: {} {}", u16::from(f.code), f.reason),
                                None => "closed by the server".to_owned(),
                            };
                        }
                    }
                }
            }
            out = rx.recv() => {
                let Some(out) = out else {
                    let _ = ws.close(None).await;
                    return;
                };
                if let Some(stamp) = out.stamp {
                    let _ = events.send(Event::Sent { peer, at: Instant::now(), stamp });
                }
                if let Err(e) = ws.send(out.msg).await {
                    break format!("write error: {e}");
                }
            }
        }
    };
    let _ = events.send(Event::Closed { peer, why });
}
