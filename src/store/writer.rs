//! The writer lanes and their group commit.
//!
//! Producers never touch SQLite: they send [`Command`]s. The lane holding
//! the turn (`turn.rs`) has the one write connection: it blocks for one
//! command, drains whatever else is already queued (up to `max_batch`),
//! writes the lot in one transaction and commits it to the WAL. Under load many appends share one commit;
//! when idle a lone append is committed as soon as it arrives.
//!
//! The connection runs with `synchronous = NORMAL`, so SQLite's commit
//! writes the WAL but does not sync it. The lane then lets the turn go
//! (`turn.rs`) and runs `fdatasync` on the `-wal` file itself; only when that
//! returns does it move the durable watermark, so an ack sent on the
//! watermark is never a lie. A command that arrives during the sync calls
//! the other lane in, which commits it and starts that batch's own sync at
//! once: it waits for one sync, not for the running one to end and then
//! its own (the "wait for two commits" in docs/benchmarks.md). With `n`
//! lanes (`server.journal_sync_lanes`, default 2) at most `n` syncs run at
//! once.

use super::codec::{at, int, uint};
use super::error::StoreError;
use super::journal::{SnapshotRow, row_crc};
use super::turn::Turn;
use super::{crc, records};
use crate::core::history::Record;
use crate::core::ids::AccountId;
use crate::core::time::Instant;
use rusqlite::{Connection, TransactionBehavior, params};
use std::fs::File;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use tokio::sync::watch;

pub(super) type Reply<T> = SyncSender<Result<T, StoreError>>;

pub(super) enum Command {
    Append(Append),
    Records(Vec<(AccountId, Record)>),
    Snapshot { generation: u64, shards: Vec<SnapshotRow> },
    Purge { cutoff: Instant, reply: Reply<u64> },
    Flush(Reply<u64>),
    Shutdown,
}

pub(super) struct Append {
    pub seq: u64,
    pub at: Instant,
    pub account: AccountId,
    pub input: Vec<u8>,
    pub records: Vec<(AccountId, Record)>,
}

/// What producers and the writer share.
#[derive(Debug)]
pub(super) struct Shared {
    /// Assigning a seq and sending happen under this lock, which is what
    /// makes channel order equal seq order.
    pub producer: Mutex<Producer>,
    pub durable: watch::Sender<Durable>,
    pub turn: Turn,
}

#[derive(Debug)]
pub(super) struct Producer {
    pub last_seq: u64,
    pub tx: SyncSender<Command>,
}

#[derive(Clone, Debug, Default)]
pub(super) struct Durable {
    /// Every seq at or below this is committed and synced.
    pub seq: u64,
    pub failed: Option<Arc<str>>,
    /// Batches committed and synced since open (one `fdatasync` each); with
    /// `seq` it shows how many appends share a sync.
    pub commits: u64,
    /// Every lane has exited; nothing further will become durable.
    pub closed: bool,
}

impl Shared {
    /// Sends under the producer lock `p`, calling a lane in if none is
    /// waiting for commands.
    pub fn send(&self, p: &Producer, cmd: Command) {
        self.turn.sending();
        if p.tx.send(cmd).is_err() {
            self.turn.received(1);
            self.mark_closed();
            return;
        }
        self.turn.sent();
    }

    pub fn mark_closed(&self) {
        self.durable.send_if_modified(|d| !std::mem::replace(&mut d.closed, true));
    }
}

pub(super) struct Writer {
    pub conn: Connection,
    pub rx: Receiver<Command>,
    pub max_batch: usize,
    pub checkpoint: Arc<super::checkpoint::Shared>,
    pub wal_reset_frames: u64,
    /// The highest seq committed to the WAL, synced or not: what a sync
    /// that starts now makes durable.
    pub committed: u64,
    /// The log is long: the lane holding the turn copies it (see
    /// `rewind_log`) before it waits for commands.
    pub rewind_due: bool,
}

/// What the lanes share: the connection (used by the lane holding the
/// turn) and the `-wal` file they sync.
pub(super) struct Lanes {
    /// Only the turn's holder locks it; the lock is never contended.
    writer: Mutex<Writer>,
    /// The `-wal` file, opened apart from SQLite. `fdatasync` flushes the
    /// file (inode), whichever descriptor asks, and SQLite never replaces
    /// the file while the writer's connection is open: it deletes the log
    /// only when the last connection closes.
    wal: File,
    shared: Arc<Shared>,
    /// Lanes still running; the last one out marks the store closed.
    running: AtomicUsize,
}

/// Starts `count` lanes (at least one).
pub(super) fn start(
    writer: Writer,
    wal: File,
    shared: Arc<Shared>,
    count: usize,
) -> std::io::Result<Vec<JoinHandle<()>>> {
    let count = count.max(1);
    let lanes = Arc::new(Lanes { writer: Mutex::new(writer), wal, shared, running: AtomicUsize::new(count) });
    let mut handles = Vec::with_capacity(count);
    for i in 0..count {
        // Made before the spawn so a lane that never starts still counts
        // itself out when the closure is dropped.
        let exit = LaneExit(lanes.clone());
        let spawned = std::thread::Builder::new().name(format!("ringline-store-{i}")).spawn(move || {
            exit.0.run();
            drop(exit);
        });
        match spawned {
            Ok(h) => handles.push(h),
            Err(e) => {
                // The lanes themselves keep the channel open, so only a
                // `Shutdown` stops a running lane waiting for commands.
                let p = lanes.shared.producer.lock().unwrap_or_else(PoisonError::into_inner);
                lanes.shared.send(&p, Command::Shutdown);
                return Err(e);
            }
        }
    }
    Ok(handles)
}

/// Counts a lane out when it exits, even by panicking. A lane that
/// panicked may have lost a batch that a later sync would otherwise cover,
/// so the store is failed rather than let the watermark jump the hole; the
/// last lane out marks it closed, so no `wait_durable` waits forever.
struct LaneExit(Arc<Lanes>);

impl Drop for LaneExit {
    fn drop(&mut self) {
        let shared = &self.0.shared;
        if std::thread::panicking() {
            shared.durable.send_modify(|d| {
                d.failed.get_or_insert_with(|| "store writer panicked".into());
            });
            shared.turn.stop();
        }
        if self.0.running.fetch_sub(1, Ordering::AcqRel) == 1 {
            shared.mark_closed();
        }
    }
}

/// One batch, committed to the WAL (or refused), on its way to a sync.
struct Committed {
    /// Everything up to here is in the WAL once this batch's commit is.
    covered: u64,
    result: Result<(), Arc<str>>,
    purged: Vec<u64>,
    shutdown: bool,
    started: std::time::Instant,
}

impl Lanes {
    fn run(&self) {
        let turn = &self.shared.turn;
        let mut batch = Vec::new();
        if !turn.take() {
            return;
        }
        // This lane holds the turn at the top of each round.
        loop {
            let Some(done) = self.commit_next(&mut batch) else {
                // The channel closed or another lane panicked: nothing more
                // comes.
                turn.stop();
                turn.release();
                break;
            };
            let shutdown = done.shutdown;
            if shutdown {
                turn.stop();
            }
            turn.release();
            let synced = done.result.and_then(|()| self.sync());
            // Back for the turn before anyone hears of the sync, so the
            // next lone command finds this lane receiving instead of
            // calling a parked one in.
            let mine = !shutdown && turn.try_take();
            let outcome = synced.and_then(|()| self.publish(done.covered, done.started, batch.len()));
            reply(outcome, done.purged, &mut batch);
            if shutdown || !(mine || turn.take()) {
                break;
            }
        }
        tracing::debug!("store writer lane stopped");
    }

    /// Waits for commands and commits one batch to the WAL; the caller holds
    /// the turn. `None` when the lane should stop.
    #[allow(clippy::disallowed_methods)] // commit latency is a metric
    fn commit_next(&self, batch: &mut Vec<Command>) -> Option<Committed> {
        let turn = &self.shared.turn;
        // Poisoned: another lane panicked using the connection, and its
        // exit has already failed the store.
        let mut w = self.writer.lock().ok()?;
        if turn.stopping() {
            return None;
        }
        if std::mem::take(&mut w.rewind_due) {
            w.rewind_log();
        }
        let first = w.rx.recv().ok()?;
        let started = std::time::Instant::now();
        let mut shutdown = matches!(first, Command::Shutdown);
        batch.push(first);
        while !shutdown && batch.len() < w.max_batch {
            match w.rx.try_recv() {
                Ok(cmd) => {
                    shutdown = matches!(cmd, Command::Shutdown);
                    batch.push(cmd);
                }
                Err(_) => break,
            }
        }
        turn.received(batch.len());
        let mut purged = Vec::new();
        let failed = self.shared.durable.borrow().failed.clone();
        let result = match failed {
            // Writing past a hole would make the journal replay to a state
            // the engine never had; refuse everything instead.
            Some(reason) => Err(reason),
            None => match w.write(batch, &mut purged) {
                Ok(max_seq) => {
                    w.committed = w.committed.max(max_seq);
                    w.rewind_due = w.checkpoint.committed(w.wal_reset_frames);
                    Ok(())
                }
                // Published before the turn is let go, so no later batch is
                // committed after a failed one.
                Err(e) => Err(self.fail(&e.to_string())),
            },
        };
        Some(Committed { covered: w.committed, result, purged, shutdown, started })
    }

    fn sync(&self) -> Result<(), Arc<str>> {
        // Linux may drop the dirty pages after a failed sync; nothing
        // written since can be trusted to reach the disk.
        self.wal.sync_data().map_err(|e| self.fail(&format!("fdatasync of the journal's WAL failed: {e}")))
    }

    /// Moves the watermark to `covered` (never back: the other lane's sync
    /// may have covered more) and returns it; refuses once the store failed.
    fn publish(&self, covered: u64, started: std::time::Instant, entries: usize) -> Result<u64, Arc<str>> {
        let mut outcome = Ok(0);
        self.shared.durable.send_if_modified(|d| {
            if let Some(reason) = &d.failed {
                // A sync that failed may have lost pages this one did not
                // see; a success after it proves nothing.
                outcome = Err(reason.clone());
                return false;
            }
            let moved = covered > d.seq;
            d.seq = d.seq.max(covered);
            d.commits += 1;
            outcome = Ok(d.seq);
            moved
        });
        if outcome.is_ok() {
            // Time to write and sync one group of entries.
            metrics::histogram!("ringline_journal_commit_seconds").record(started.elapsed().as_secs_f64());
            metrics::histogram!("ringline_journal_batch_entries").record(entries as f64);
        }
        outcome
    }

    fn fail(&self, reason: &str) -> Arc<str> {
        let mut first: Arc<str> = reason.into();
        self.shared.durable.send_modify(|d| match &d.failed {
            Some(earlier) => first = earlier.clone(),
            None => d.failed = Some(first.clone()),
        });
        tracing::error!(error = %reason, "store commit failed; journal no longer accepts writes");
        first
    }
}

/// Answers the batch's `Flush` and `Purge` once its outcome is published,
/// so a caller woken by its reply always sees the state that caused it.
fn reply(outcome: Result<u64, Arc<str>>, purged: Vec<u64>, batch: &mut Vec<Command>) {
    match outcome {
        Ok(seq) => {
            let mut purged = purged.into_iter();
            for cmd in batch.drain(..) {
                match cmd {
                    Command::Flush(r) => {
                        let _ = r.send(Ok(seq));
                    }
                    Command::Purge { reply, .. } => {
                        let _ = reply.send(Ok(purged.next().unwrap_or(0)));
                    }
                    _ => {}
                }
            }
        }
        Err(reason) => {
            for cmd in batch.drain(..) {
                if let Command::Flush(r) | Command::Purge { reply: r, .. } = cmd {
                    let _ = r.send(Err(StoreError::Failed(reason.to_string())));
                }
            }
        }
    }
}

impl Writer {
    /// Copies what the background checkpoints have not yet copied, between
    /// two commits, so the next commit starts the WAL over (see
    /// `checkpoint.rs`). Runs when a lane takes the connection after the
    /// commit that found the log long, while that commit's own sync runs on
    /// the other lane, so no ack already committed waits for it; appends
    /// that arrive meanwhile do, which is why it is timed apart from commits.
    #[allow(clippy::disallowed_methods)] // its duration is a metric
    fn rewind_log(&mut self) {
        let started = std::time::Instant::now();
        let copied = super::checkpoint::passive(&self.conn);
        metrics::histogram!("ringline_journal_wal_reset_seconds").record(started.elapsed().as_secs_f64());
        if let Err(e) = copied {
            tracing::warn!(error = %e, "checkpoint to rewind the WAL failed");
        }
        // Copied or not (a history reader may still use old frames), the
        // background thread reports the log's length again on its next
        // round, and this runs again if it is still long.
        self.checkpoint.log_frames.store(0, std::sync::atomic::Ordering::Release);
    }

    /// Writes the batch in one transaction and commits; returns the highest
    /// seq in it (0 when it held no append) and, in order, how many rows
    /// each purge removed.
    fn write(&mut self, batch: &[Command], purged: &mut Vec<u64>) -> Result<u64, StoreError> {
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut max_seq = 0;
        {
            let mut insert =
                tx.prepare_cached("INSERT INTO journal (seq, at, account, crc, input) VALUES (?1, ?2, ?3, ?4, ?5)")?;
            for cmd in batch {
                match cmd {
                    Command::Append(a) => {
                        // Checksummed as stored, so a saturated time still verifies.
                        let at = at(a.at);
                        let crc = row_crc(a.seq, uint(at), a.account.as_str(), &a.input);
                        insert.execute(params![int(a.seq), at, a.account.as_str(), crc, a.input])?;
                        write_records(&tx, &a.records)?;
                        max_seq = max_seq.max(a.seq);
                    }
                    Command::Records(recs) => write_records(&tx, recs)?,
                    Command::Snapshot { generation, shards } => write_snapshot(&tx, *generation, shards)?,
                    Command::Purge { cutoff, .. } => purged.push(records::purge_before(&tx, *cutoff)?),
                    Command::Flush(_) | Command::Shutdown => {}
                }
            }
        }
        tx.commit()?;
        Ok(max_seq)
    }
}

fn write_records(conn: &Connection, recs: &[(AccountId, Record)]) -> Result<(), StoreError> {
    for (account, rec) in recs {
        match records::write(conn, account, rec) {
            Ok(()) => {}
            // History is derived data; a record that cannot be encoded must
            // not cost the journal its durability.
            Err(StoreError::Codec(e)) => {
                tracing::error!(%account, error = %e, "history record skipped");
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn write_snapshot(conn: &Connection, generation: u64, shards: &[SnapshotRow]) -> Result<(), StoreError> {
    let Some(min_covered) = shards.iter().map(|s| s.covered_seq).min() else {
        tracing::warn!(generation, "empty snapshot ignored");
        return Ok(());
    };
    let newest: Option<i64> = conn.query_row("SELECT max(generation) FROM snapshots", [], |r| r.get(0))?;
    if newest.is_some_and(|g| g > int(generation)) {
        // An older generation arriving late must not truncate the journal
        // that the newer one still relies on.
        tracing::warn!(generation, newest = newest.unwrap_or_default(), "stale snapshot ignored");
        return Ok(());
    }
    let mut ins = conn.prepare_cached(
        "INSERT OR REPLACE INTO snapshots (generation, shard, covered_seq, crc, data) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    for s in shards {
        ins.execute(params![int(generation), s.shard, int(s.covered_seq), crc::crc32(&s.data), s.data])?;
    }
    conn.prepare_cached("DELETE FROM snapshots WHERE generation < ?1")?.execute([int(generation)])?;
    conn.prepare_cached("DELETE FROM journal WHERE seq <= ?1")?.execute([int(min_covered)])?;
    Ok(())
}
