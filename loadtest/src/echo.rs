//! The baseline: a bare tokio-tungstenite echo server (4 KiB read buffer,
//! one task per connection, TCP_NODELAY, like the ringline server's). Run
//! in-process on its own runtime for the round-trip baseline, or as a
//! process of its own (`echo-server`) for the idle-memory comparison.

use futures_util::{SinkExt, StreamExt};
use std::net::SocketAddr;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

async fn serve_conn(stream: TcpStream) {
    // As the ringline server does: without it an echo can sit out a 40 ms
    // delayed ACK (Nagle), which inflated the baseline's tail.
    let _ = stream.set_nodelay(true);
    let Ok(mut ws) = tokio_tungstenite::accept_async_with_config(stream, Some(crate::conn::ws_config())).await else {
        return;
    };
    while let Some(Ok(msg)) = ws.next().await {
        if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
            return;
        }
    }
}

/// Accepts and echoes until `stop` turns true.
pub async fn serve(listener: TcpListener, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    tokio::spawn(serve_conn(stream));
                }
            }
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// An echo server on a runtime of its own (as many workers as the ringline
/// server uses by default: one per core), stopped when dropped.
#[derive(Debug)]
pub struct EchoServer {
    pub addr: SocketAddr,
    stop: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EchoServer {
    pub fn start() -> anyhow::Result<EchoServer> {
        let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("echo").build()?;
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let (stop, stop_rx) = watch::channel(false);
        let thread = std::thread::Builder::new().name("echo-main".into()).spawn(move || {
            runtime.block_on(async move {
                match TcpListener::from_std(std_listener) {
                    Ok(l) => serve(l, stop_rx).await,
                    Err(e) => eprintln!("echo server: {e}"),
                }
            });
            runtime.shutdown_background();
        })?;
        Ok(EchoServer { addr, stop, thread: Some(thread) })
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn it_echoes_text_and_binary() {
        let echo = EchoServer::start().expect("starts");
        let mut ws = crate::conn::connect(echo.addr, "/").await.expect("connects");
        ws.send(tokio_tungstenite::tungstenite::Message::Text("hi".into())).await.expect("send");
        let back = ws.next().await.expect("a reply").expect("ok");
        assert_eq!(back.into_text().expect("text").as_str(), "hi");
        ws.send(tokio_tungstenite::tungstenite::Message::Binary(vec![1u8, 2].into())).await.expect("send");
        let back = ws.next().await.expect("a reply").expect("ok");
        assert_eq!(back.into_data().as_ref(), &[1u8, 2]);
    }
}
