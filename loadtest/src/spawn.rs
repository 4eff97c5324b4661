//! Starting a server process for a run: the ringline binary with a
//! generated config and a fresh data dir, or this program's own bare echo
//! server. Both log `listening on ADDR`; the address is read from there.

use anyhow::{Context, bail};
use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

/// A child server, killed (and its temporary data dir removed) on drop.
#[derive(Debug)]
pub struct Spawned {
    pub addr: SocketAddr,
    pub pid: u32,
    child: Child,
    temp_dir: Option<PathBuf>,
    log_tail: Arc<Mutex<VecDeque<String>>>,
}

/// Removes terminal colour sequences (`ESC [ ... m`).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The address in a `... listening on ADDR` log line.
pub fn listening_addr(line: &str) -> Option<SocketAddr> {
    let clean = strip_ansi(line);
    let (_, rest) = clean.split_once("listening on ")?;
    rest.split_whitespace().next()?.parse().ok()
}

fn pump_lines(r: impl Read + Send + 'static, tx: mpsc::Sender<String>, tail: Arc<Mutex<VecDeque<String>>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            let Ok(line) = line else { break };
            if let Ok(mut t) = tail.lock() {
                if t.len() == 40 {
                    t.pop_front();
                }
                t.push_back(line.clone());
            }
            let _ = tx.send(line);
        }
    });
}

impl Spawned {
    fn start(mut cmd: Command, temp_dir: Option<PathBuf>, wait: Duration) -> anyhow::Result<Spawned> {
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).env("NO_COLOR", "1");
        let mut child = cmd.spawn().with_context(|| format!("cannot start {cmd:?}"))?;
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let (tx, rx) = mpsc::channel();
        if let Some(out) = child.stdout.take() {
            pump_lines(out, tx.clone(), tail.clone());
        }
        if let Some(err) = child.stderr.take() {
            pump_lines(err, tx, tail.clone());
        }
        let deadline = Instant::now() + wait;
        let addr = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left.min(Duration::from_millis(200))) {
                Ok(line) => {
                    if let Some(a) = listening_addr(&line) {
                        break a;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {}
            }
            if let Ok(Some(status)) = child.try_wait() {
                let log: Vec<String> = tail.lock().map(|t| t.iter().cloned().collect()).unwrap_or_default();
                bail!("the server exited ({status}) before listening:\n{}", log.join("\n"));
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("the server did not log `listening on` within {wait:?}");
            }
        };
        // Keep draining its output so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in rx {});
        Ok(Spawned { addr, pid: child.id(), child, temp_dir, log_tail: tail })
    }

    /// `BIN serve --config DIR/loadtest.toml --listen 127.0.0.1:0 --data DIR/data`.
    pub fn ringline(bin: &Path, config_text: &str, data_dir: Option<&Path>) -> anyhow::Result<Spawned> {
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let dir = std::env::temp_dir().join(format!("ringline-loadtest-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let config = dir.join("loadtest.toml");
        std::fs::write(&config, config_text)?;
        let data = data_dir.map(Path::to_path_buf).unwrap_or_else(|| dir.join("data"));
        let mut cmd = Command::new(bin);
        cmd.arg("serve").arg("--config").arg(&config).arg("--listen").arg("127.0.0.1:0").arg("--data").arg(&data);
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        // Provisioning thousands of users is journaled one by one: allow time.
        Spawned::start(cmd, Some(dir), Duration::from_secs(600))
    }

    /// This program's `echo-server` subcommand.
    pub fn echo(self_exe: &Path) -> anyhow::Result<Spawned> {
        let mut cmd = Command::new(self_exe);
        cmd.arg("echo-server").arg("--listen").arg("127.0.0.1:0");
        Spawned::start(cmd, None, Duration::from_secs(30))
    }

    /// The last lines the process logged.
    pub fn log_tail(&self) -> Vec<String> {
        self.log_tail.lock().map(|t| t.iter().cloned().collect()).unwrap_or_default()
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(d) = self.temp_dir.take() {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_address_is_read_from_a_coloured_log_line() {
        let line = "\u{1b}[2m2025-01-01T00:00:00Z\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m listening on 127.0.0.1:41234";
        assert_eq!(listening_addr(line), Some("127.0.0.1:41234".parse().expect("addr")));
        assert_eq!(listening_addr("listening on [::1]:80 now"), Some("[::1]:80".parse().expect("addr")));
        assert_eq!(listening_addr("state recovered"), None);
    }
}
