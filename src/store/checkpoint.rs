//! WAL checkpoints off the commit path.
//!
//! SQLite's automatic checkpoint runs inside the commit that crosses the
//! threshold (1,000 frames): that commit copies the pages into the database
//! file and fsyncs it before it returns, and every append queued behind it
//! waits. Under load that was one commit in a few hundred, and it was the
//! gateway `ack` latency's p99. So the writer's connection has automatic
//! checkpoints off, and this thread copies pages with PASSIVE checkpoints on
//! its own connection, concurrently with the writer's commits.
//!
//! A PASSIVE checkpoint never blocks the writer, but it also cannot restart
//! the WAL: SQLite rewinds the log only when a write transaction begins
//! after everything has been copied. Run every few milliseconds, the
//! background copy is small and often does catch up between two commits
//! (in a 20 s run at ~1,030 gateway events/s: one writer reset instead of
//! 18 at 100 ms), but under a steady stream it can stay a few frames
//! behind. So once the log holds
//! [`StoreConfig::wal_reset_frames`](super::StoreConfig) frames, the writer
//! itself runs one PASSIVE checkpoint between two commits (nobody else
//! writes then, so it copies everything); the next commit rewinds the log.
//! The background copy has done nearly all the work by then, so that
//! checkpoint is short and rare, and the `-wal` file stays bounded.

use super::error::StoreError;
use rusqlite::Connection;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

/// What the writer and the checkpoint thread share.
#[derive(Debug, Default)]
pub(super) struct Shared {
    /// Frames in the log as of the last checkpoint (either thread's).
    pub log_frames: AtomicU64,
    /// Commits happened since the checkpoint thread last looked.
    pub dirty: AtomicBool,
    /// The checkpoint thread sleeps until the next commit.
    idle: AtomicBool,
    /// Rounds the checkpoint thread woke for, and checkpoints it ran.
    rounds: AtomicU64,
    copies: AtomicU64,
    stop: Mutex<bool>,
    wake: Condvar,
}

impl Shared {
    /// Called by the writer after a commit; returns whether it should run
    /// the resetting checkpoint now.
    pub fn committed(&self, reset_frames: u64) -> bool {
        // SeqCst pairs with the checkpoint thread's `idle` store and `dirty`
        // load: either it sees this commit before it sleeps, or this sees
        // it asleep and wakes it (under the lock it sleeps with, so the
        // wake cannot fall between its check and its wait).
        self.dirty.store(true, Ordering::SeqCst);
        if self.idle.load(Ordering::SeqCst) {
            let _guard = self.stop.lock().unwrap_or_else(PoisonError::into_inner);
            self.wake.notify_all();
        }
        self.log_frames.load(Ordering::Acquire) >= reset_frames
    }

    fn stop(&self) {
        *self.stop.lock().unwrap_or_else(PoisonError::into_inner) = true;
        self.wake.notify_all();
    }
}

/// Runs a PASSIVE checkpoint; returns how many frames the log holds.
pub(super) fn passive(conn: &Connection) -> Result<u64, StoreError> {
    // The row is (busy, frames in the log, frames copied); the log is -1
    // when the database is not in WAL mode (never here).
    let log: i64 = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get(1))?;
    Ok(u64::try_from(log).unwrap_or(0))
}

/// The background checkpoint thread; stopped and joined on drop.
#[derive(Debug)]
pub(super) struct Checkpointer {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    pub fn start(path: &Path, every: Duration, shared: Arc<Shared>) -> Result<Checkpointer, StoreError> {
        let conn = super::schema::open_checkpointer(path)?;
        let s = shared.clone();
        let thread =
            std::thread::Builder::new().name("ringline-checkpoint".into()).spawn(move || run(conn, every, &s))?;
        Ok(Checkpointer { shared, thread: Some(thread) })
    }
}

#[cfg(test)]
impl Checkpointer {
    pub fn rounds(&self) -> (u64, u64) {
        (self.shared.rounds.load(Ordering::Relaxed), self.shared.copies.load(Ordering::Relaxed))
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.shared.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[allow(clippy::disallowed_methods)] // checkpoint duration is a metric
fn run(conn: Connection, every: Duration, shared: &Shared) {
    let mut stopped = shared.stop.lock().unwrap_or_else(PoisonError::into_inner);
    loop {
        stopped = shared.wake.wait_timeout(stopped, every).unwrap_or_else(PoisonError::into_inner).0;
        if *stopped {
            return;
        }
        shared.rounds.fetch_add(1, Ordering::Relaxed);
        if !shared.dirty.swap(false, Ordering::SeqCst) {
            // A whole round without a commit: sleep until the next one
            // rather than wake every round (100 times a second by default)
            // on an idle server. The round after that wake copies it,
            // with whatever else was committed meanwhile.
            shared.idle.store(true, Ordering::SeqCst);
            while !*stopped && !shared.dirty.load(Ordering::SeqCst) {
                stopped = shared.wake.wait(stopped).unwrap_or_else(PoisonError::into_inner);
            }
            shared.idle.store(false, Ordering::SeqCst);
            if *stopped {
                return;
            }
            continue;
        }
        shared.copies.fetch_add(1, Ordering::Relaxed);
        drop(stopped);
        let started = std::time::Instant::now();
        match passive(&conn) {
            Ok(log) => {
                shared.log_frames.store(log, Ordering::Release);
                metrics::histogram!("ringline_journal_checkpoint_seconds").record(started.elapsed().as_secs_f64());
            }
            // The next round tries again; the writer's own checkpoint still
            // bounds the log.
            Err(e) => tracing::warn!(error = %e, "background checkpoint failed"),
        }
        stopped = shared.stop.lock().unwrap_or_else(PoisonError::into_inner);
    }
}
