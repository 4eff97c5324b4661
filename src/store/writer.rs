//! The single writer thread and its group commit.
//!
//! Producers never touch SQLite: they send [`Command`]s. The writer blocks
//! for one command, drains whatever else is already queued (up to
//! `max_batch`), writes the lot in one transaction and commits once. Under
//! load many appends share one fsync; when idle a lone append is committed
//! as soon as it arrives. Only after the commit returns is the durable
//! watermark moved, so an ack sent on the watermark is never a lie.

use super::codec::{at, int, uint};
use super::error::StoreError;
use super::journal::{SnapshotRow, row_crc};
use super::{crc, records};
use crate::core::history::Record;
use crate::core::ids::AccountId;
use crate::core::time::Instant;
use rusqlite::{Connection, TransactionBehavior, params};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::{Arc, Mutex};
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
}

#[derive(Debug)]
pub(super) struct Producer {
    pub last_seq: u64,
    pub tx: SyncSender<Command>,
}

#[derive(Clone, Debug, Default)]
pub(super) struct Durable {
    /// Every seq at or below this is committed.
    pub seq: u64,
    pub failed: Option<Arc<str>>,
    /// Transactions committed since open; with `seq` it shows how many
    /// appends share an fsync.
    pub commits: u64,
    /// The writer has exited; nothing further will become durable.
    pub closed: bool,
}

impl Shared {
    pub fn mark_closed(&self) {
        self.durable.send_if_modified(|d| !std::mem::replace(&mut d.closed, true));
    }
}

pub(super) struct Writer {
    pub conn: Connection,
    pub shared: Arc<Shared>,
    pub max_batch: usize,
    pub checkpoint: Arc<super::checkpoint::Shared>,
    pub wal_reset_frames: u64,
}

/// Marks the store closed when the writer exits, even by panicking, so no
/// `wait_durable` is left waiting for a commit that will never come.
struct CloseOnExit(Arc<Shared>);

impl Drop for CloseOnExit {
    fn drop(&mut self) {
        self.0.mark_closed();
    }
}

impl Writer {
    pub fn run(mut self, rx: Receiver<Command>) {
        let _close = CloseOnExit(self.shared.clone());
        let mut batch = Vec::with_capacity(self.max_batch.min(64 * 1024));
        while let Ok(first) = rx.recv() {
            let mut shutdown = matches!(first, Command::Shutdown);
            batch.push(first);
            while !shutdown && batch.len() < self.max_batch {
                match rx.try_recv() {
                    Ok(cmd) => {
                        shutdown = matches!(cmd, Command::Shutdown);
                        batch.push(cmd);
                    }
                    Err(_) => break,
                }
            }
            self.commit(&mut batch);
            if shutdown {
                break;
            }
            if self.checkpoint.committed(self.wal_reset_frames) {
                self.rewind_log();
            }
        }
        tracing::debug!("store writer stopped");
    }

    /// Writes and commits the batch, then publishes the outcome. Replies
    /// are sent only after the watermark or the failure is published, so a
    /// caller woken by its reply always sees the state that caused it.
    #[allow(clippy::disallowed_methods)] // commit latency is a metric
    fn commit(&mut self, batch: &mut Vec<Command>) {
        let started = std::time::Instant::now();
        let failed = self.shared.durable.borrow().failed.clone();
        let outcome = match failed {
            // Writing past a hole would make the journal replay to a state
            // the engine never had; refuse everything instead.
            Some(reason) => Err(reason),
            None => {
                let mut purged = Vec::new();
                match self.write(batch, &mut purged) {
                    Ok(max_seq) => {
                        // Time to write and fsync one group of entries.
                        metrics::histogram!("ringline_journal_commit_seconds").record(started.elapsed().as_secs_f64());
                        metrics::histogram!("ringline_journal_batch_entries").record(batch.len() as f64);
                        let seq = self.shared.durable.borrow().seq.max(max_seq);
                        self.shared.durable.send_if_modified(|d| {
                            let moved = seq > d.seq;
                            d.seq = seq;
                            d.commits += 1;
                            moved
                        });
                        Ok((seq, purged))
                    }
                    Err(e) => {
                        let reason: Arc<str> = e.to_string().into();
                        tracing::error!(error = %reason, "store commit failed; journal no longer accepts writes");
                        self.shared.durable.send_modify(|d| d.failed = Some(reason.clone()));
                        Err(reason)
                    }
                }
            }
        };
        match outcome {
            Ok((seq, purged)) => {
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

    /// Copies what the background checkpoints have not yet copied, between
    /// two commits, so the next commit starts the WAL over (see
    /// `checkpoint.rs`). Runs after the previous batch was published
    /// durable, so no ack already committed waits for it; appends that
    /// arrive meanwhile do, which is why it is timed apart from commits.
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
