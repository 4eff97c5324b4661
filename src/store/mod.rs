//! Embedded storage: the input journal (group commit), snapshots and call
//! history, in one SQLite file under the data dir.
//!
//! - `<dir>/ringline.db`, WAL mode: every commit's `-wal` file is
//!   `fdatasync`ed before anything in it is reported durable (by the writer
//!   itself, so two syncs can overlap; see `writer.rs`).
//! - Writer lanes take turns with the only write connection; every
//!   producer goes through a [`JournalHandle`]. History reads use their own
//!   connections ([`History`]).
//! - [`Store::open`] migrates the schema, verifies the journal and returns
//!   what the shell needs to rebuild the engine: the latest snapshots and,
//!   through [`Store::replay`], the journal entries after them.

mod checkpoint;
mod codec;
mod crc;
mod error;
mod history;
mod journal;
mod records;
mod schema;
mod turn;
mod writer;

pub use error::StoreError;
pub use history::{
    CallQuery, DEFAULT_LIMIT, History, MAX_LIMIT, MessageQuery, MessageView, Page, Viewer, VoicemailQuery,
};
pub use journal::{DroppedTail, JournalEntry, JournalHandle, SnapshotRow};
pub use schema::SCHEMA_VERSION;

use rusqlite::OptionalExtension;
use std::path::{Path, PathBuf};
use std::sync::mpsc::sync_channel;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use tokio::sync::watch;
use writer::{Durable, Producer, Shared, Writer};

pub const DB_FILE: &str = "ringline.db";

#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// The data dir; created if missing.
    pub dir: PathBuf,
    /// Most commands the writer puts in one transaction.
    pub max_batch: usize,
    /// Commands that may wait for the writer before `append` blocks.
    pub queue_capacity: usize,
    /// Read connections for history queries.
    pub read_connections: usize,
    /// How often the background thread copies committed pages from the
    /// WAL into the database file; short on purpose (see `checkpoint.rs`
    /// and docs/benchmarks.md, "Re-measured 2026-12-04, morning").
    pub checkpoint_every: std::time::Duration,
    /// WAL length, in 4 KiB frames, at which the writer copies the rest
    /// itself between two commits so the log can start over.
    pub wal_reset_frames: u64,
    /// Writer lanes: how many batches may be syncing at once (see
    /// `writer.rs`). One gives a plain commit-then-sync loop.
    pub sync_lanes: usize,
}

impl StoreConfig {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        StoreConfig {
            dir: dir.into(),
            max_batch: 4096,
            queue_capacity: 64 * 1024,
            read_connections: 2,
            checkpoint_every: std::time::Duration::from_millis(10),
            wal_reset_frames: 4096,
            sync_lanes: 2,
        }
    }
}

/// What [`Store::open`] found on disk.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Recovered {
    /// The schema version before opening (0 for a new file).
    pub schema_version_found: u32,
    pub snapshot_generation: Option<u64>,
    /// The shards of the latest snapshot generation, by shard.
    pub snapshots: Vec<SnapshotRow>,
    /// The highest seq in use: new appends continue after it.
    pub last_seq: u64,
    /// Journal entries kept (all verified), and their seq range.
    pub journal_entries: u64,
    pub journal_first_seq: Option<u64>,
    /// Entries removed because the first of them was damaged.
    pub dropped: Option<DroppedTail>,
}

/// The open store. Dropping it stops the writer after it has committed
/// everything queued so far.
#[derive(Debug)]
pub struct Store {
    path: PathBuf,
    journal: JournalHandle,
    history: History,
    lanes: Vec<JoinHandle<()>>,
    /// (device, inode) of the `-wal` file the lanes sync.
    #[cfg(test)]
    wal_file_id: (u64, u64),
    checkpointer: Option<checkpoint::Checkpointer>,
}

impl Store {
    /// Rounds the checkpoint thread woke for, and checkpoints it ran.
    #[cfg(test)]
    pub(super) fn checkpoint_rounds(&self) -> (u64, u64) {
        self.checkpointer.as_ref().map_or((0, 0), checkpoint::Checkpointer::rounds)
    }

    pub fn open(config: StoreConfig) -> Result<(Store, Recovered), StoreError> {
        std::fs::create_dir_all(&config.dir)?;
        let path = config.dir.join(DB_FILE);
        let mut conn = schema::open_writer(&path)?;
        let schema_version_found = schema::migrate(&mut conn)?;

        let (snapshot_generation, snapshots) = load_snapshots(&conn)?;
        let scan = journal::recover(&conn)?;
        let covered = snapshots.iter().map(|s| s.covered_seq).max().unwrap_or(0);
        // A snapshot may cover seqs whose journal rows are already gone;
        // never hand those seqs out again.
        let last_seq = scan.last_seq.unwrap_or(0).max(covered);
        tracing::info!(
            path = %path.display(),
            snapshot_generation,
            shards = snapshots.len(),
            journal_entries = scan.entries,
            last_seq,
            "store opened"
        );

        // Opened apart from SQLite for the lanes to sync (see `writer.rs`).
        // Reading the journal above made SQLite open (and create) it.
        let wal_path = wal_path(&path);
        let wal = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&wal_path)
            .map_err(|e| StoreError::Io(std::io::Error::new(e.kind(), format!("{}: {e}", wal_path.display()))))?;
        // Migrations and a dropped tail were committed without a sync.
        wal.sync_data()?;
        #[cfg(test)]
        let wal_file_id = file_id(&wal.metadata()?);

        let (tx, rx) = sync_channel(config.queue_capacity.max(1));
        let (durable, _) = watch::channel(Durable { seq: last_seq, ..Durable::default() });
        let shared =
            Arc::new(Shared { producer: Mutex::new(Producer { last_seq, tx }), durable, turn: Default::default() });
        let ckpt = Arc::new(checkpoint::Shared::default());
        let checkpointer = checkpoint::Checkpointer::start(&path, config.checkpoint_every, ckpt.clone())?;
        let writer = Writer {
            conn,
            rx,
            max_batch: config.max_batch.max(1),
            checkpoint: ckpt,
            wal_reset_frames: config.wal_reset_frames.max(1),
            committed: last_seq,
            rewind_due: false,
        };
        let lanes = writer::start(writer, wal, shared.clone(), config.sync_lanes)?;
        let journal = JournalHandle { shared };

        let history = match History::open(&path, config.read_connections, journal.clone()) {
            Ok(h) => h,
            Err(e) => {
                journal.shutdown();
                for lane in lanes {
                    let _ = lane.join();
                }
                return Err(e);
            }
        };
        let recovered = Recovered {
            schema_version_found,
            snapshot_generation,
            snapshots,
            last_seq,
            journal_entries: scan.entries,
            journal_first_seq: scan.first_seq,
            dropped: scan.dropped,
        };
        Ok((
            Store {
                path,
                journal,
                history,
                lanes,
                #[cfg(test)]
                wal_file_id,
                checkpointer: Some(checkpointer),
            },
            recovered,
        ))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn journal(&self) -> JournalHandle {
        self.journal.clone()
    }

    pub fn history(&self) -> History {
        self.history.clone()
    }

    /// Streams the durable journal entries with `seq > after_seq` to `f`, in
    /// seq order, one row in memory at a time; returns how many it passed.
    /// Stops at the first error `f` returns. Fails with
    /// [`StoreError::Corrupt`] if an entry in the range is missing or
    /// damaged (recovery already cut the journal at the first bad row, so
    /// this means the file changed since).
    pub fn replay<E, F>(&self, after_seq: u64, f: F) -> Result<u64, E>
    where
        E: From<StoreError>,
        F: FnMut(JournalEntry) -> Result<(), E>,
    {
        let conn = schema::open_reader(&self.path)?;
        journal::replay(&conn, after_seq, self.journal.durable(), f)
    }

    /// Commits everything queued, stops the writer and reports whether the
    /// store had failed.
    pub fn close(mut self) -> Result<(), StoreError> {
        self.stop()?;
        match self.journal.failed() {
            Some(reason) => Err(StoreError::Failed(reason)),
            None => Ok(()),
        }
    }

    fn stop(&mut self) -> Result<(), StoreError> {
        drop(self.checkpointer.take());
        if self.lanes.is_empty() {
            return Ok(());
        }
        self.journal.shutdown();
        let mut panicked = false;
        for lane in self.lanes.drain(..) {
            panicked |= lane.join().is_err();
        }
        if panicked { Err(StoreError::Failed("store writer panicked".into())) } else { Ok(()) }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            tracing::error!(error = %e, "store writer did not stop cleanly");
        }
    }
}

/// SQLite's name for the log beside `db`.
fn wal_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push("-wal");
    PathBuf::from(name)
}

#[cfg(test)]
fn file_id(meta: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (meta.dev(), meta.ino())
}

fn load_snapshots(conn: &rusqlite::Connection) -> Result<(Option<u64>, Vec<SnapshotRow>), StoreError> {
    let generation: Option<i64> =
        conn.query_row("SELECT max(generation) FROM snapshots", [], |r| r.get(0)).optional()?.flatten();
    let Some(generation) = generation else {
        return Ok((None, Vec::new()));
    };
    let mut stmt =
        conn.prepare("SELECT shard, covered_seq, crc, data FROM snapshots WHERE generation = ?1 ORDER BY shard")?;
    let mut rows = stmt.query([generation])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(journal::snapshot_from_row(row)?);
    }
    Ok((Some(codec::uint(generation)), out))
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod testutil;
