//! Journal, writer and recovery tests (history queries are tested in
//! `history.rs`).

use super::testutil::{open, payload, t};
use super::*;
use crate::core::ids::AccountId;
use std::fs;
use std::sync::mpsc::sync_channel;
use tokio::sync::watch;

fn acme() -> AccountId {
    AccountId::from("acme")
}

fn append_n(j: &JournalHandle, from: u64, to: u64) {
    for i in from..=to {
        let acc = if i % 3 == 0 { AccountId::from("globex") } else { acme() };
        let seq = j.append(t(i), &acc, payload(i), Vec::new());
        assert_eq!(seq, i);
    }
}

fn replay_all(store: &Store, after: u64) -> Result<Vec<JournalEntry>, StoreError> {
    let mut out = Vec::new();
    store.replay(after, |e| {
        out.push(e);
        Ok::<(), StoreError>(())
    })?;
    Ok(out)
}

/// Checks `entries` are exactly `from..=to` as written by `append_n`.
fn assert_entries(entries: &[JournalEntry], from: u64, to: u64) {
    let seqs: Vec<u64> = entries.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (from..=to).collect::<Vec<_>>());
    for e in entries {
        assert_eq!(e.input, payload(e.seq), "seq {}", e.seq);
        assert_eq!(e.at, t(e.seq));
        assert_eq!(e.account.as_str(), if e.seq % 3 == 0 { "globex" } else { "acme" });
    }
}

#[test]
fn append_flush_replay_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let (store, rec) = open(dir.path());
    assert_eq!(rec.last_seq, 0);
    assert_eq!(rec.schema_version_found, 0);
    assert!(rec.dropped.is_none() && rec.snapshots.is_empty());
    let j = store.journal();
    append_n(&j, 1, 100);
    assert_eq!(j.flush().unwrap(), 100);
    assert_eq!(j.durable(), 100);
    assert_eq!(j.last_seq(), 100);
    assert!(j.failed().is_none());
    assert_entries(&replay_all(&store, 0).unwrap(), 1, 100);
    assert_entries(&replay_all(&store, 57).unwrap(), 58, 100);
    assert!(replay_all(&store, 100).unwrap().is_empty());

    // The callback's error stops the replay and comes back as is.
    let mut seen = 0;
    let r = store.replay(0, |_| {
        seen += 1;
        if seen == 3 { Err(StoreError::Closed) } else { Ok(()) }
    });
    assert!(matches!(r, Err(StoreError::Closed)));
    assert_eq!(seen, 3);
    store.close().unwrap();
}

#[test]
fn group_commit_from_many_threads_keeps_seq_order() {
    const THREADS: u64 = 4;
    const PER: u64 = 2_000;
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(dir.path());
    let written: Vec<Vec<(u64, Vec<u8>)>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|th| {
                let j = store.journal();
                s.spawn(move || {
                    let acc = AccountId::from(format!("acct-{th}"));
                    (0..PER)
                        .map(|i| {
                            let input = format!("thread {th} item {i}").into_bytes();
                            (j.append(t(i), &acc, input.clone(), Vec::new()), input)
                        })
                        .collect()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let j = store.journal();
    assert_eq!(j.flush().unwrap(), THREADS * PER);
    assert_eq!(j.durable(), THREADS * PER);
    assert!(j.commits() < THREADS * PER / 2, "{} commits for {} appends: no group commit", j.commits(), THREADS * PER);

    let mut expected = std::collections::BTreeMap::new();
    for (th, items) in written.iter().enumerate() {
        // Each producer's seqs increase: channel order is seq order.
        assert!(items.windows(2).all(|w| w[0].0 < w[1].0), "thread {th}");
        for (seq, input) in items {
            assert!(expected.insert(*seq, input.clone()).is_none(), "seq {seq} handed out twice");
        }
    }
    let entries = replay_all(&store, 0).unwrap();
    assert_eq!(entries.len() as u64, THREADS * PER);
    for (e, want) in entries.iter().zip(1..) {
        assert_eq!(e.seq, want);
        assert_eq!(&e.input, &expected[&e.seq]);
    }
}

#[test]
fn wait_durable_resolves_and_fails_once_closed() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(dir.path());
    let j = store.journal();
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let seq = j.append(t(1), &acme(), b"x".to_vec(), Vec::new());
    rt.block_on(j.wait_durable(seq)).unwrap();
    assert!(j.durable() >= seq);
    store.close().unwrap();
    // Nothing will ever make seq 2 durable now; the waiter must not hang.
    let seq = j.append(t(2), &acme(), b"y".to_vec(), Vec::new());
    assert!(matches!(rt.block_on(j.wait_durable(seq)), Err(StoreError::Closed)));
    assert!(matches!(j.flush(), Err(StoreError::Closed)));
    // Already-durable seqs still resolve.
    rt.block_on(j.wait_durable(1)).unwrap();
}

#[test]
fn reopen_after_close_continues_the_sequence() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (store, _) = open(dir.path());
        append_n(&store.journal(), 1, 30);
        store.close().unwrap();
    }
    {
        // Dropping without close also commits what was queued.
        let (store, rec) = open(dir.path());
        assert_eq!(rec.schema_version_found, SCHEMA_VERSION);
        assert_eq!((rec.last_seq, rec.journal_entries, rec.journal_first_seq), (30, 30, Some(1)));
        assert_entries(&replay_all(&store, 0).unwrap(), 1, 30);
        append_n(&store.journal(), 31, 40);
    }
    let (store, rec) = open(dir.path());
    assert_eq!(rec.last_seq, 40);
    assert!(rec.dropped.is_none());
    assert_entries(&replay_all(&store, 0).unwrap(), 1, 40);
}

fn snap(shard: u32, covered_seq: u64) -> SnapshotRow {
    SnapshotRow { shard, covered_seq, data: format!("state of shard {shard} at {covered_seq}").into_bytes() }
}

#[test]
fn snapshot_truncates_the_journal_and_is_recovered() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (store, _) = open(dir.path());
        let j = store.journal();
        append_n(&j, 1, 100);
        j.snapshot(1, vec![snap(0, 60), snap(1, 80)]);
        j.flush().unwrap();
        assert_entries(&replay_all(&store, 60).unwrap(), 61, 100);
        // Entries 1..=60 are gone: asking for them is an error, not a
        // silent partial replay.
        assert!(matches!(replay_all(&store, 0), Err(StoreError::Corrupt(_))));
    }
    {
        let (store, rec) = open(dir.path());
        assert_eq!(rec.snapshot_generation, Some(1));
        assert_eq!(rec.snapshots, vec![snap(0, 60), snap(1, 80)]);
        assert_eq!((rec.last_seq, rec.journal_entries, rec.journal_first_seq), (100, 40, Some(61)));
        let j = store.journal();
        j.snapshot(2, vec![snap(0, 100), snap(1, 100)]);
        // A late, older generation must not replace the newer one.
        j.snapshot(1, vec![snap(0, 10)]);
        j.flush().unwrap();
    }
    let (store, rec) = open(dir.path());
    assert_eq!(rec.snapshot_generation, Some(2));
    assert_eq!(rec.snapshots, vec![snap(0, 100), snap(1, 100)]);
    // The journal is empty, yet seqs the snapshot covers are not reused.
    assert_eq!((rec.last_seq, rec.journal_entries, rec.journal_first_seq), (100, 0, None));
    assert_eq!(store.journal().append(t(101), &acme(), payload(101), Vec::new()), 101);
    store.journal().flush().unwrap();
    assert_entries(&replay_all(&store, 100).unwrap(), 101, 101);
}

#[test]
fn damaged_snapshot_refuses_to_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (store, _) = open(dir.path());
        append_n(&store.journal(), 1, 5);
        store.journal().snapshot(1, vec![snap(0, 5)]);
    }
    let raw = rusqlite::Connection::open(dir.path().join(DB_FILE)).unwrap();
    raw.execute("UPDATE snapshots SET data = CAST(X'00' || data AS BLOB)", []).unwrap();
    drop(raw);
    assert!(matches!(Store::open(StoreConfig::new(dir.path())), Err(StoreError::Corrupt(_))));
}

#[test]
fn checksum_failure_drops_the_rest_of_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (store, _) = open(dir.path());
        append_n(&store.journal(), 1, 100);
    }
    let raw = rusqlite::Connection::open(dir.path().join(DB_FILE)).unwrap();
    let n = raw
        .execute("UPDATE journal SET input = CAST(X'DEADBEEF' || substr(input, 5) AS BLOB) WHERE seq = 50", [])
        .unwrap();
    assert_eq!(n, 1);
    drop(raw);
    {
        let (store, rec) = open(dir.path());
        let dropped = rec.dropped.expect("tail dropped");
        assert_eq!((dropped.first_seq, dropped.count), (50, 51));
        assert!(dropped.reason.contains("checksum"), "{}", dropped.reason);
        assert_eq!((rec.last_seq, rec.journal_entries), (49, 49));
        assert_entries(&replay_all(&store, 0).unwrap(), 1, 49);
        // New appends continue cleanly after the last good entry.
        append_n(&store.journal(), 50, 55);
    }
    let (store, rec) = open(dir.path());
    assert!(rec.dropped.is_none());
    assert_eq!(rec.last_seq, 55);
    assert_entries(&replay_all(&store, 0).unwrap(), 1, 55);
}

#[test]
fn unreadable_or_missing_rows_end_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (store, _) = open(dir.path());
        append_n(&store.journal(), 1, 20);
    }
    let raw = rusqlite::Connection::open(dir.path().join(DB_FILE)).unwrap();
    raw.execute("DELETE FROM journal WHERE seq = 15", []).unwrap();
    raw.execute("UPDATE journal SET input = 'not a blob' WHERE seq = 8", []).unwrap();
    drop(raw);
    let (store, rec) = open(dir.path());
    let dropped = rec.dropped.expect("tail dropped");
    assert_eq!((dropped.first_seq, dropped.count), (8, 12));
    assert!(dropped.reason.contains("input"), "{}", dropped.reason);
    assert_entries(&replay_all(&store, 0).unwrap(), 1, 7);
    drop(store);

    let raw = rusqlite::Connection::open(dir.path().join(DB_FILE)).unwrap();
    raw.execute("DELETE FROM journal WHERE seq = 4", []).unwrap();
    drop(raw);
    let (_, rec) = open(dir.path());
    let dropped = rec.dropped.expect("gap");
    assert_eq!((dropped.first_seq, dropped.count, rec.last_seq), (5, 3, 3));
}

/// Copies `ringline.db` and its WAL (taken while the store is open, so the
/// WAL still holds every commit) and replays a WAL torn at many offsets:
/// SQLite must discard the incomplete tail, and the store must come back
/// with a clean prefix of what was written.
#[test]
fn torn_wal_tail_recovers_a_clean_prefix() {
    const TOTAL: u64 = 200;
    let live = tempfile::tempdir().unwrap();
    let saved = tempfile::tempdir().unwrap();
    // No background checkpoint while the files are copied: one running
    // between the two copies leaves a database file newer than a torn
    // log's prefix, which no crash can produce (the log is only ever cut
    // past what was checkpointed).
    let cfg = StoreConfig { checkpoint_every: std::time::Duration::from_secs(3600), ..StoreConfig::new(live.path()) };
    let (store, _) = Store::open(cfg).unwrap();
    let j = store.journal();
    for chunk in 0..10 {
        append_n(&j, chunk * 20 + 1, chunk * 20 + 20);
        j.flush().unwrap();
    }
    let db = live.path().join(DB_FILE);
    let wal = live.path().join(format!("{DB_FILE}-wal"));
    fs::copy(&db, saved.path().join(DB_FILE)).unwrap();
    fs::copy(&wal, saved.path().join("wal")).unwrap();
    drop(store);

    let wal_bytes = fs::read(saved.path().join("wal")).unwrap();
    let len = wal_bytes.len();
    assert!(len > 4096, "the WAL should hold the commits, got {len} bytes");
    let mut offsets: Vec<usize> = vec![0, 16, 32, 33, 100, 4096, 4120, len - 1, len];
    offsets.extend((1..24).map(|k| len * k / 24 + 7 * k));
    offsets.sort_unstable();
    offsets.dedup();
    offsets.retain(|&o| o <= len);

    let mut last = 0;
    let mut prefixes = std::collections::BTreeSet::new();
    for off in offsets {
        let dir = tempfile::tempdir().unwrap();
        fs::copy(saved.path().join(DB_FILE), dir.path().join(DB_FILE)).unwrap();
        fs::write(dir.path().join(format!("{DB_FILE}-wal")), &wal_bytes[..off]).unwrap();
        let (store, rec) = open(dir.path());
        assert!(rec.dropped.is_none(), "offset {off}: {:?}", rec.dropped);
        let entries = replay_all(&store, 0).unwrap();
        let k = entries.len() as u64;
        assert_entries(&entries, 1, k);
        assert_eq!(rec.last_seq, k, "offset {off}");
        assert!(k >= last, "offset {off}: a longer WAL recovered fewer entries ({k} < {last})");
        last = k;
        prefixes.insert(k);
        if off == len {
            assert_eq!(k, TOTAL);
        }
        // The reopened store takes new appends right after the prefix.
        assert_eq!(store.journal().append(t(999), &acme(), b"after".to_vec(), Vec::new()), k + 1);
        assert_eq!(store.journal().flush().unwrap(), k + 1);
    }
    assert!(prefixes.len() >= 5, "tears should land in different commits: {prefixes:?}");
}

/// A commit that fails (here a trigger standing in for a full disk) must
/// not move the watermark, and must stop every later write: appending past
/// the hole would make the journal replay to a state the engine never had.
#[test]
fn failed_commit_stops_the_journal_and_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (store, _) = open(dir.path());
        let j = store.journal();
        append_n(&j, 1, 4);
        j.flush().unwrap();
        let raw = rusqlite::Connection::open(dir.path().join(DB_FILE)).unwrap();
        raw.execute_batch(
            "CREATE TRIGGER full_disk BEFORE INSERT ON journal WHEN NEW.seq = 5
             BEGIN SELECT RAISE(ABORT, 'simulated: database or disk is full'); END;",
        )
        .unwrap();
        drop(raw);
        let seq = j.append(t(5), &acme(), payload(5), Vec::new());
        assert!(matches!(j.flush(), Err(StoreError::Failed(_))));
        assert_eq!(j.durable(), 4);
        assert!(j.failed().unwrap().contains("disk is full"));
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        assert!(matches!(rt.block_on(j.wait_durable(seq)), Err(StoreError::Failed(_))));
        j.append(t(6), &acme(), payload(6), Vec::new());
        assert!(matches!(j.flush(), Err(StoreError::Failed(_))));
        assert!(matches!(store.history().purge_history_before(t(0)), Err(StoreError::Failed(_))));
        assert!(matches!(store.close(), Err(StoreError::Failed(_))));
    }
    let raw = rusqlite::Connection::open(dir.path().join(DB_FILE)).unwrap();
    raw.execute_batch("DROP TRIGGER full_disk").unwrap();
    drop(raw);
    let (store, rec) = open(dir.path());
    assert_eq!(rec.last_seq, 4);
    assert_entries(&replay_all(&store, 0).unwrap(), 1, 4);
}

/// Lanes over a fresh database whose commits are synced through `wal`
/// (see `writer.rs`), with the store's other parts left out.
fn lanes_syncing(
    dir: &std::path::Path,
    wal: impl FnOnce(&std::path::Path) -> fs::File,
) -> (JournalHandle, Vec<std::thread::JoinHandle<()>>) {
    let path = dir.join(DB_FILE);
    let mut conn = schema::open_writer(&path).unwrap();
    schema::migrate(&mut conn).unwrap();
    let (tx, rx) = sync_channel(64);
    let (durable, _) = watch::channel(Durable::default());
    let shared =
        Arc::new(Shared { producer: Mutex::new(Producer { last_seq: 0, tx }), durable, turn: Default::default() });
    let writer = Writer {
        conn,
        rx,
        max_batch: 64,
        checkpoint: Arc::default(),
        wal_reset_frames: 4096,
        committed: 0,
        rewind_due: false,
    };
    let lanes = writer::start(writer, wal(&wal_path(&path)), shared.clone(), 2).unwrap();
    (JournalHandle { shared }, lanes)
}

fn stop_lanes(j: &JournalHandle, lanes: Vec<std::thread::JoinHandle<()>>) {
    j.shutdown();
    for lane in lanes {
        lane.join().unwrap();
    }
}

/// The control for the next test: the same lanes syncing the real log.
#[test]
fn lanes_report_a_batch_durable_once_its_log_is_synced() {
    let dir = tempfile::tempdir().unwrap();
    let (j, lanes) = lanes_syncing(dir.path(), |wal| fs::OpenOptions::new().write(true).open(wal).unwrap());
    append_n(&j, 1, 3);
    assert_eq!(j.flush().unwrap(), 3);
    assert_eq!(j.durable(), 3);
    assert!(j.failed().is_none());
    stop_lanes(&j, lanes);
    assert!(j.shared.durable.borrow().closed);
}

/// SQLite no longer syncs commits (`synchronous = NORMAL`); the lanes'
/// own `fdatasync` is what makes a batch durable. `/dev/null` refuses
/// `fdatasync` (EINVAL), so nothing may be reported durable, and the store
/// must fail rather than go on.
#[test]
fn a_failed_sync_reports_nothing_durable_and_fails_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let (j, lanes) = lanes_syncing(dir.path(), |_| fs::OpenOptions::new().write(true).open("/dev/null").unwrap());
    let seq = j.append(t(1), &acme(), payload(1), Vec::new());
    let err = j.flush().unwrap_err();
    assert!(matches!(&err, StoreError::Failed(r) if r.contains("fdatasync")), "{err}");
    assert_eq!(j.durable(), 0);
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    assert!(matches!(rt.block_on(j.wait_durable(seq)), Err(StoreError::Failed(_))));
    append_n(&j, 2, 2);
    assert!(matches!(j.flush(), Err(StoreError::Failed(_))));
    assert_eq!(j.durable(), 0);
    stop_lanes(&j, lanes);
}

#[test]
fn replay_streams_into_a_typed_error() {
    #[derive(Debug)]
    enum AppError {
        Store(StoreError),
    }
    impl From<StoreError> for AppError {
        fn from(e: StoreError) -> Self {
            AppError::Store(e)
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(dir.path());
    append_n(&store.journal(), 1, 3);
    store.journal().flush().unwrap();
    let n = store.replay(0, |_| Ok::<(), AppError>(())).unwrap();
    assert_eq!(n, 3);
    store.journal().snapshot(1, vec![snap(0, 2)]);
    store.journal().flush().unwrap();
    assert!(matches!(store.replay(0, |_| Ok::<(), AppError>(())), Err(AppError::Store(StoreError::Corrupt(_)))));
}

/// Checkpoints run off the commit path (`checkpoint.rs`); the writer still
/// makes the log start over, so a steady stream of commits cannot grow the
/// `-wal` file without bound. Before: SQLite's own checkpoint every 1,000
/// frames (about 4 MB of log); with no checkpoint at all the log would hold
/// all 3,000 commits (over 12 MB).
#[test]
fn the_wal_starts_over_under_sustained_commits() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = StoreConfig::new(dir.path());
    config.checkpoint_every = std::time::Duration::from_millis(5);
    config.wal_reset_frames = 64;
    let (store, _) = Store::open(config).unwrap();
    let j = store.journal();
    let wal = dir.path().join(format!("{DB_FILE}-wal"));
    let mut largest = 0;
    for i in 1..=3000 {
        append_n(&j, i, i);
        // One commit, so at least one frame, per append.
        j.flush().unwrap();
        if i % 100 == 0 {
            largest = largest.max(fs::metadata(&wal).unwrap().len());
        }
    }
    assert!(largest < 400 * 4120, "the WAL grew to {largest} bytes");
    // The log started over many times and is still the file the lanes
    // opened and sync.
    assert_eq!(store.wal_file_id, file_id(&fs::metadata(&wal).unwrap()));
    assert_entries(&replay_all(&store, 0).unwrap(), 1, 3000);
    drop(store);
    let (store, rec) = open(dir.path());
    assert_eq!(rec.last_seq, 3000);
    assert_entries(&replay_all(&store, 0).unwrap(), 1, 3000);
}

/// An idle store lets its checkpoint thread sleep (it used to wake every
/// `checkpoint_every` with nothing to copy: 100 times a second by
/// default); the next commit wakes it and is copied.
#[test]
#[allow(clippy::disallowed_methods)] // watches a real thread over real time
fn an_idle_store_lets_its_checkpoint_thread_sleep() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = StoreConfig::new(dir.path());
    config.checkpoint_every = std::time::Duration::from_millis(1);
    let (store, _) = Store::open(config).unwrap();
    let j = store.journal();
    append_n(&j, 1, 1);
    j.flush().unwrap();
    let settled = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while store.checkpoint_rounds().1 == 0 && std::time::Instant::now() < settled {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert_eq!(store.checkpoint_rounds().1, 1, "the commit is copied");
    std::thread::sleep(std::time::Duration::from_millis(20));
    let (rounds, _) = store.checkpoint_rounds();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let (later, copies) = store.checkpoint_rounds();
    assert!(later - rounds <= 1, "woke {} times in 300 ms with nothing to copy", later - rounds);
    assert_eq!(copies, 1);

    append_n(&j, 2, 2);
    j.flush().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while store.checkpoint_rounds().1 < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert_eq!(store.checkpoint_rounds().1, 2, "the next commit woke it and was copied");
    drop(store);
    let (store, rec) = open(dir.path());
    assert_eq!(rec.last_seq, 2);
    assert_entries(&replay_all(&store, 0).unwrap(), 1, 2);
}
