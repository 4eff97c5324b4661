//! The input journal: the producer handle, the row checksum, the recovery
//! scan and replay.

use super::codec::{int, uint};
use super::crc::Crc32;
use super::error::StoreError;
use super::writer::{Append, Command, Durable, Shared};
use crate::core::history::Record;
use crate::core::ids::AccountId;
use crate::core::time::Instant;
use rusqlite::{Connection, Row};
use std::sync::mpsc::sync_channel;
use std::sync::{Arc, MutexGuard, PoisonError};

/// One journaled input, as handed to [`Store::replay`](super::Store::replay).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct JournalEntry {
    pub seq: u64,
    pub at: Instant,
    pub account: AccountId,
    /// The shell's encoding of the input; opaque to the store.
    pub input: Vec<u8>,
}

/// One shard's state as of `covered_seq` (every entry at or below it is
/// already applied in `data`).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct SnapshotRow {
    pub shard: u32,
    pub covered_seq: u64,
    pub data: Vec<u8>,
}

/// The checksum covers the whole row, not just the input: a flipped bit in
/// `at` or `account` would replay the input at the wrong time or into the
/// wrong account just as surely as a damaged input would.
pub(super) fn row_crc(seq: u64, at: u64, account: &str, input: &[u8]) -> u32 {
    let mut c = Crc32::new();
    c.update(&seq.to_le_bytes());
    c.update(&at.to_le_bytes());
    c.update(&u64::try_from(account.len()).unwrap_or(u64::MAX).to_le_bytes());
    c.update(account.as_bytes());
    c.update(input);
    c.finish()
}

/// A row read and checked, borrowing from SQLite's row buffer so the
/// recovery scan allocates nothing per row.
struct CheckedRow<'a> {
    seq: u64,
    at: u64,
    account: &'a str,
    input: &'a [u8],
}

/// Reads one `seq, at, account, crc, input` row and verifies it. On failure
/// returns the row's seq (if even that is readable) and why.
fn check_row<'a>(row: &'a Row<'_>) -> Result<CheckedRow<'a>, (Option<u64>, String)> {
    let seq = row.get_ref(0).and_then(|v| Ok(v.as_i64()?)).map_err(|e| (None, format!("unreadable seq: {e}")))?;
    let seq = uint(seq);
    let bad = |what: &str, e: &dyn std::fmt::Display| (Some(seq), format!("seq {seq}: unreadable {what}: {e}"));
    let at = row.get_ref(1).and_then(|v| Ok(v.as_i64()?)).map_err(|e| bad("at", &e))?;
    let account = row.get_ref(2).and_then(|v| Ok(v.as_str()?)).map_err(|e| bad("account", &e))?;
    let stored = row.get_ref(3).and_then(|v| Ok(v.as_i64()?)).map_err(|e| bad("crc", &e))?;
    let input = row.get_ref(4).and_then(|v| Ok(v.as_blob()?)).map_err(|e| bad("input", &e))?;
    let at = uint(at);
    let actual = row_crc(seq, at, account, input);
    if i64::from(actual) != stored {
        return Err((Some(seq), format!("seq {seq}: checksum mismatch (stored {stored:#x}, computed {actual:#x})")));
    }
    Ok(CheckedRow { seq, at, account, input })
}

/// Entries from the first bad row on, removed during recovery.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct DroppedTail {
    pub first_seq: u64,
    pub count: u64,
    pub reason: String,
}

pub(super) struct Scan {
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    pub entries: u64,
    pub dropped: Option<DroppedTail>,
}

/// Verifies every journal row in seq order. At the first row that fails its
/// checksum, cannot be read, or breaks the seq sequence, that row and
/// everything after it is deleted: replaying past a damaged input would
/// build a state that never existed, and leaving the rows would make new
/// appends collide with them.
pub(super) fn recover(conn: &Connection) -> Result<Scan, StoreError> {
    let mut first_seq = None;
    let mut last_seq: Option<u64> = None;
    let mut entries = 0;
    let bad = {
        let mut stmt = conn.prepare("SELECT seq, at, account, crc, input FROM journal ORDER BY seq")?;
        let mut rows = stmt.query([])?;
        loop {
            let row = match rows.next() {
                Ok(Some(row)) => row,
                Ok(None) => break None,
                Err(e) => break Some((None, format!("unreadable row: {e}"))),
            };
            match check_row(row) {
                Ok(r) => {
                    if let Some(prev) = last_seq
                        && r.seq != prev + 1
                    {
                        break Some((Some(r.seq), format!("seq {} follows {prev}: entries are missing", r.seq)));
                    }
                    first_seq.get_or_insert(r.seq);
                    last_seq = Some(r.seq);
                    entries += 1;
                }
                Err(bad) => break Some(bad),
            }
        }
    };
    let dropped = match bad {
        None => None,
        Some((seq, reason)) => {
            let keep = last_seq.unwrap_or(0);
            let count = conn.execute("DELETE FROM journal WHERE seq > ?1", [int(keep)])?;
            let first_seq = seq.unwrap_or(keep + 1);
            tracing::warn!(first_seq, count, %reason, "journal tail dropped during recovery");
            Some(DroppedTail { first_seq, count: count as u64, reason })
        }
    };
    Ok(Scan { first_seq, last_seq, entries, dropped })
}

/// Streams entries `after_seq < seq <= through` in order to `f`, checking
/// each row again (the file may have been damaged since open).
pub(super) fn replay<E, F>(conn: &Connection, after_seq: u64, through: u64, mut f: F) -> Result<u64, E>
where
    E: From<StoreError>,
    F: FnMut(JournalEntry) -> Result<(), E>,
{
    let sql = "SELECT seq, at, account, crc, input FROM journal WHERE seq > ?1 AND seq <= ?2 ORDER BY seq";
    let mut stmt = conn.prepare(sql).map_err(StoreError::from)?;
    let mut rows = stmt.query([int(after_seq), int(through)]).map_err(StoreError::from)?;
    let mut expected = after_seq + 1;
    let mut account: Option<AccountId> = None;
    let mut count = 0;
    while let Some(row) = rows.next().map_err(StoreError::from)? {
        let r = check_row(row).map_err(|(_, reason)| StoreError::Corrupt(reason))?;
        if r.seq != expected {
            return Err(StoreError::Corrupt(format!(
                "journal entries {expected}..{} are missing (truncated by a snapshot?)",
                r.seq - 1
            ))
            .into());
        }
        expected += 1;
        // Consecutive entries mostly belong to a few busy accounts; sharing
        // the id saves an allocation per entry on a million-entry replay.
        let acc = match &account {
            Some(a) if a.as_str() == r.account => a.clone(),
            _ => {
                let a = AccountId::from(r.account);
                account = Some(a.clone());
                a
            }
        };
        f(JournalEntry { seq: r.seq, at: Instant::from_micros(r.at), account: acc, input: r.input.to_vec() })?;
        count += 1;
    }
    Ok(count)
}

/// The producer side of the journal. Cheap to clone; every clone feeds the
/// same writer thread.
#[derive(Clone, Debug)]
pub struct JournalHandle {
    pub(super) shared: Arc<Shared>,
}

impl JournalHandle {
    fn producer(&self) -> MutexGuard<'_, super::writer::Producer> {
        // The guarded state is a counter and a sender, both valid whatever
        // a panicking holder was doing.
        self.shared.producer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn send(&self, p: &super::writer::Producer, cmd: Command) {
        self.shared.send(p, cmd);
    }

    /// Queues an input (with the history it produced) for the journal and
    /// returns its seq. It is durable once [`durable`](Self::durable)
    /// reaches that seq; acknowledge it only then.
    ///
    /// Blocks while the writer's queue is full, which is the backpressure
    /// that keeps producers from outrunning the disk without bound.
    pub fn append(&self, at: Instant, account: &AccountId, input: Vec<u8>, records: Vec<(AccountId, Record)>) -> u64 {
        let mut p = self.producer();
        p.last_seq += 1;
        let seq = p.last_seq;
        let cmd = Command::Append(Append { seq, at, account: account.clone(), input, records });
        self.send(&p, cmd);
        seq
    }

    /// Queues history produced without a journaled input (timer firings).
    pub fn records(&self, records: Vec<(AccountId, Record)>) {
        if records.is_empty() {
            return;
        }
        let p = self.producer();
        self.send(&p, Command::Records(records));
    }

    /// Queues a snapshot of `generation`. Once committed, older generations
    /// and journal entries at or below the smallest `covered_seq` are
    /// deleted, in the same transaction. A generation older than the newest
    /// stored one is ignored. Call [`flush`](Self::flush) to learn when (and
    /// whether) it committed.
    pub fn snapshot(&self, generation: u64, shards: Vec<SnapshotRow>) {
        let p = self.producer();
        self.send(&p, Command::Snapshot { generation, shards });
    }

    /// Blocks until everything queued before this call is committed;
    /// returns the durable watermark. For threads outside tokio (tests,
    /// benches, shutdown paths).
    pub fn flush(&self) -> Result<u64, StoreError> {
        let (reply, rx) = sync_channel(1);
        {
            let p = self.producer();
            self.send(&p, Command::Flush(reply));
        }
        rx.recv().map_err(|_| self.stopped_error())?
    }

    /// The highest seq assigned so far.
    pub fn last_seq(&self) -> u64 {
        self.producer().last_seq
    }

    /// Every seq at or below this is committed to disk.
    pub fn durable(&self) -> u64 {
        self.shared.durable.borrow().seq
    }

    /// Batches committed since open (each is one `fdatasync`).
    pub fn commits(&self) -> u64 {
        self.shared.durable.borrow().commits
    }

    /// Why the store stopped accepting writes, if it did. The shell should
    /// report itself unavailable while this is `Some`.
    pub fn failed(&self) -> Option<String> {
        self.shared.durable.borrow().failed.as_deref().map(str::to_owned)
    }

    /// Resolves once `seq` is durable, or with an error once it never will
    /// be (a failed commit, or the store closed).
    pub async fn wait_durable(&self, seq: u64) -> Result<(), StoreError> {
        let mut rx = self.shared.durable.subscribe();
        let state = rx.wait_for(|d| d.seq >= seq || d.failed.is_some() || d.closed).await;
        match state {
            Ok(d) if d.seq >= seq => Ok(()),
            Ok(d) => Err(Self::stopped(&d)),
            Err(_) => Err(StoreError::Closed),
        }
    }

    fn stopped(d: &Durable) -> StoreError {
        match &d.failed {
            Some(reason) => StoreError::Failed(reason.to_string()),
            None => StoreError::Closed,
        }
    }

    pub(super) fn stopped_error(&self) -> StoreError {
        Self::stopped(&self.shared.durable.borrow())
    }

    pub(super) fn purge(&self, cutoff: Instant) -> Result<u64, StoreError> {
        let (reply, rx) = sync_channel(1);
        {
            let p = self.producer();
            self.send(&p, Command::Purge { cutoff, reply });
        }
        rx.recv().map_err(|_| self.stopped_error())?
    }

    pub(super) fn shutdown(&self) {
        let p = self.producer();
        self.send(&p, Command::Shutdown);
    }
}

/// Reads one snapshot row's fields, checking its checksum.
pub(super) fn snapshot_from_row(row: &Row<'_>) -> Result<SnapshotRow, StoreError> {
    let shard: u32 = row.get(0)?;
    let covered: i64 = row.get(1)?;
    let stored: i64 = row.get(2)?;
    let data: Vec<u8> = row.get(3)?;
    let actual = super::crc::crc32(&data);
    if i64::from(actual) != stored {
        return Err(StoreError::Corrupt(format!("snapshot of shard {shard}: checksum mismatch")));
    }
    Ok(SnapshotRow { shard, covered_seq: uint(covered), data })
}
