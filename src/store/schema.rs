//! Connection setup and schema migrations.
//!
//! The schema version lives in `PRAGMA user_version`. `MIGRATIONS[i]` takes
//! the file from version `i` to `i + 1`; each runs in its own transaction
//! together with the version bump, so a crash mid-migration leaves the old
//! version intact. Append new migrations; never edit a released one.

use super::error::StoreError;
use rusqlite::{Connection, OpenFlags};
use std::path::Path;
use std::time::Duration;

const V1: &str = "
CREATE TABLE journal (
    seq     INTEGER PRIMARY KEY,
    at      INTEGER NOT NULL,
    account TEXT    NOT NULL,
    crc     INTEGER NOT NULL,
    input   BLOB    NOT NULL
);

CREATE TABLE snapshots (
    generation  INTEGER NOT NULL,
    shard       INTEGER NOT NULL,
    covered_seq INTEGER NOT NULL,
    crc         INTEGER NOT NULL,
    data        BLOB    NOT NULL,
    PRIMARY KEY (generation, shard)
) WITHOUT ROWID;

-- History rows are keyed by (account, id) rather than id alone so that a
-- gateway reusing an id in another account can never overwrite that
-- account's row.
CREATE TABLE calls (
    account        TEXT    NOT NULL,
    id             TEXT    NOT NULL,
    kind           TEXT    NOT NULL,
    number         TEXT    NOT NULL,
    from_phone     TEXT    NOT NULL,
    to_phone       TEXT    NOT NULL,
    priority       INTEGER NOT NULL,
    rung           TEXT    NOT NULL, -- JSON array of user ids, in offer order
    answered_by    TEXT,
    placed_by      TEXT,
    outcome        TEXT    NOT NULL, -- Outcome::name(), for filtering
    outcome_detail TEXT    NOT NULL, -- the whole Outcome as JSON
    origin_call    TEXT,
    dial_call      TEXT,
    attempts       INTEGER NOT NULL,
    started_at     INTEGER NOT NULL,
    answered_at    INTEGER,
    ended_at       INTEGER NOT NULL,
    wait_ms        INTEGER NOT NULL,
    talk_ms        INTEGER NOT NULL,
    restricted     INTEGER NOT NULL,
    PRIMARY KEY (account, id)
) WITHOUT ROWID;
CREATE INDEX calls_by_time ON calls (account, ended_at, id);
CREATE INDEX calls_by_number ON calls (account, number, ended_at, id);

-- Who was involved in a call, so 'the viewer was involved' is an index
-- probe instead of a scan of the rung JSON.
CREATE TABLE call_users (
    account TEXT NOT NULL,
    call_id TEXT NOT NULL,
    user    TEXT NOT NULL,
    role    TEXT NOT NULL, -- rung | answered | placed
    PRIMARY KEY (account, call_id, user, role)
) WITHOUT ROWID;
CREATE INDEX call_users_by_user ON call_users (account, user, call_id);

CREATE TABLE messages (
    account    TEXT    NOT NULL,
    id         TEXT    NOT NULL,
    number     TEXT    NOT NULL,
    direction  TEXT    NOT NULL,
    from_phone TEXT    NOT NULL,
    to_phone   TEXT    NOT NULL,
    body       TEXT    NOT NULL,
    at         INTEGER NOT NULL,
    sent_by    TEXT,
    restricted INTEGER NOT NULL,
    status     TEXT,
    status_at  INTEGER,
    PRIMARY KEY (account, id)
) WITHOUT ROWID;
CREATE INDEX messages_by_number ON messages (account, number, at, id);

CREATE TABLE voicemails (
    account     TEXT    NOT NULL,
    call_id     TEXT    NOT NULL,
    number      TEXT    NOT NULL,
    from_phone  TEXT    NOT NULL,
    url         TEXT    NOT NULL,
    duration_ms INTEGER NOT NULL,
    at          INTEGER NOT NULL,
    restricted  INTEGER NOT NULL,
    PRIMARY KEY (account, call_id)
) WITHOUT ROWID;
CREATE INDEX voicemails_by_time ON voicemails (account, at, call_id);
CREATE INDEX voicemails_by_number ON voicemails (account, number, at, call_id);
";

// `call_users` answered "was the viewer involved in this call?", but each
// call cost a random B-tree page in the table and one per user rung in its
// index (which no query used): twenty-odd for a `ring_all` call. Journal
// syncs wait behind the checkpoints that write those pages back; that was
// most of the gateway ack's latency tail (docs/benchmarks.md). The same
// answer comes from the call's own row: `answered_by`, `placed_by` and the
// `rung` JSON array.
const V2: &str = "DROP TABLE call_users;";

// A gateway may use a call or message id again once the engine has
// forgotten it (15 minutes after the call ended): it is a new call, with its
// own outcome. Keyed by `(account, id)` alone, its record replaced the
// earlier call's, which then vanished from history. The start time joins
// each key; the indexes and columns stay as they were.
const V3: &str = "
CREATE TABLE calls_v3 (
    account        TEXT    NOT NULL,
    id             TEXT    NOT NULL,
    kind           TEXT    NOT NULL,
    number         TEXT    NOT NULL,
    from_phone     TEXT    NOT NULL,
    to_phone       TEXT    NOT NULL,
    priority       INTEGER NOT NULL,
    rung           TEXT    NOT NULL,
    answered_by    TEXT,
    placed_by      TEXT,
    outcome        TEXT    NOT NULL,
    outcome_detail TEXT    NOT NULL,
    origin_call    TEXT,
    dial_call      TEXT,
    attempts       INTEGER NOT NULL,
    started_at     INTEGER NOT NULL,
    answered_at    INTEGER,
    ended_at       INTEGER NOT NULL,
    wait_ms        INTEGER NOT NULL,
    talk_ms        INTEGER NOT NULL,
    restricted     INTEGER NOT NULL,
    PRIMARY KEY (account, id, started_at)
) WITHOUT ROWID;
INSERT INTO calls_v3 SELECT * FROM calls;
DROP TABLE calls;
ALTER TABLE calls_v3 RENAME TO calls;
CREATE INDEX calls_by_time ON calls (account, ended_at, id);
CREATE INDEX calls_by_number ON calls (account, number, ended_at, id);

CREATE TABLE messages_v3 (
    account    TEXT    NOT NULL,
    id         TEXT    NOT NULL,
    number     TEXT    NOT NULL,
    direction  TEXT    NOT NULL,
    from_phone TEXT    NOT NULL,
    to_phone   TEXT    NOT NULL,
    body       TEXT    NOT NULL,
    at         INTEGER NOT NULL,
    sent_by    TEXT,
    restricted INTEGER NOT NULL,
    status     TEXT,
    status_at  INTEGER,
    PRIMARY KEY (account, id, at)
) WITHOUT ROWID;
INSERT INTO messages_v3 SELECT * FROM messages;
DROP TABLE messages;
ALTER TABLE messages_v3 RENAME TO messages;
CREATE INDEX messages_by_number ON messages (account, number, at, id);

CREATE TABLE voicemails_v3 (
    account     TEXT    NOT NULL,
    call_id     TEXT    NOT NULL,
    number      TEXT    NOT NULL,
    from_phone  TEXT    NOT NULL,
    url         TEXT    NOT NULL,
    duration_ms INTEGER NOT NULL,
    at          INTEGER NOT NULL,
    restricted  INTEGER NOT NULL,
    PRIMARY KEY (account, call_id, at)
) WITHOUT ROWID;
INSERT INTO voicemails_v3 SELECT * FROM voicemails;
DROP TABLE voicemails;
ALTER TABLE voicemails_v3 RENAME TO voicemails;
CREATE INDEX voicemails_by_time ON voicemails (account, at, call_id);
CREATE INDEX voicemails_by_number ON voicemails (account, number, at, call_id);
";

const MIGRATIONS: &[&str] = &[V1, V2, V3];

pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The writer connection's page cache, in KiB. Small on purpose: when a
/// B-tree split has to reorder its pages, SQLite parks one under the
/// lock-byte page's number (page 262,145 with 4 KiB pages), and the end of
/// that transaction then walks every page in the cache to drop the ones
/// past the end of the file. With 32 MiB (8,192 pages, full after a
/// couple of minutes under load) that walk took 0.9 ms at the median and
/// 2.4 ms at p99, on about one commit in twenty, holding up every ack
/// behind it; with 512 KiB and 2 MiB it took 12 and 43 µs at the median.
/// The pages the writer then reads again come from the OS's cache.
/// Readers keep SQLite's default cache. Measured in docs/benchmarks.md,
/// "Re-measured 2026-12-05, late morning".
const WRITER_CACHE_KIB: i64 = 1024;
const _: () = assert!(WRITER_CACHE_KIB > 0 && WRITER_CACHE_KIB <= 2048, "keep the writer's page cache small");

/// Opens (creating if needed) the connection the writer thread owns.
pub fn open_writer(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Corrupt(format!("cannot switch {} to WAL mode (got {mode})", path.display())));
    }
    // NORMAL: a commit writes the WAL but does not sync it. The writer
    // lanes `fdatasync` the WAL themselves after each commit and only then
    // report it durable (`writer.rs`), so an acked event still survives
    // power loss, and two syncs can overlap. Checkpoints and the WAL's
    // header after a restart are still synced by SQLite (only OFF skips
    // those).
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    // Caps the WAL file after checkpoints so a burst does not leave a
    // gigabyte-sized -wal file behind forever.
    conn.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)?;
    conn.pragma_update(None, "cache_size", -WRITER_CACHE_KIB)?;
    // Checkpoints run on their own thread (`checkpoint.rs`), not inside
    // whichever commit crosses SQLite's threshold.
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    conn.set_prepared_statement_cache_capacity(32);
    Ok(conn)
}

/// Opens the connection the background checkpoint thread uses. It syncs
/// like the writer: the database file is fsynced after each checkpoint.
pub fn open_checkpointer(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    Ok(conn)
}

/// Opens a connection that only reads (history queries, replay).
pub fn open_reader(path: &Path) -> Result<Connection, StoreError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI;
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // Read-write open (so it can attach to the WAL index like any client)
    // but refusing writes, so a query bug can never race the writer.
    conn.pragma_update(None, "query_only", true)?;
    conn.set_prepared_statement_cache_capacity(32);
    Ok(conn)
}

/// Brings the file up to [`SCHEMA_VERSION`].
pub fn migrate(conn: &mut Connection) -> Result<u32, StoreError> {
    let found: u32 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if found > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew { found, supported: SCHEMA_VERSION });
    }
    for (to, sql) in (1u32..).zip(MIGRATIONS).skip(found as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", to)?;
        tx.commit()?;
        tracing::info!(version = to, "store schema migrated");
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrates_once_and_refuses_newer_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let mut conn = open_writer(&path).unwrap();
        assert_eq!(migrate(&mut conn).unwrap(), 0);
        assert_eq!(migrate(&mut conn).unwrap(), SCHEMA_VERSION);
        let v: u32 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
        assert_eq!(v, SCHEMA_VERSION);
        let sync: i64 = conn.query_row("PRAGMA synchronous", [], |r| r.get(0)).unwrap();
        // NORMAL, not OFF: SQLite still syncs checkpoints and the WAL's
        // header; the lanes sync each commit (`writer.rs`).
        assert_eq!(sync, 1, "synchronous must be NORMAL");
        // A big writer cache makes each commit after a reordering B-tree
        // split walk all of it (see WRITER_CACHE_KIB).
        let cache: i64 = conn.query_row("PRAGMA cache_size", [], |r| r.get(0)).unwrap();
        assert_eq!(cache, -WRITER_CACHE_KIB);

        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1).unwrap();
        assert!(matches!(migrate(&mut conn), Err(StoreError::SchemaTooNew { .. })));
    }

    #[test]
    fn version_2_drops_call_users_and_keeps_the_calls() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let mut conn = open_writer(&path).unwrap();
        conn.execute_batch(V1).unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
        conn.execute_batch(
            "INSERT INTO calls VALUES ('acme', 'c1', 'inbound', 'support', '+1', '+2', 0, '[\"bob\"]', NULL, \
             NULL, 'missed', '{}', NULL, NULL, 1, 10, NULL, 20, 10, 0, 0);
             INSERT INTO call_users VALUES ('acme', 'c1', 'bob', 'rung');",
        )
        .unwrap();
        assert_eq!(migrate(&mut conn).unwrap(), 1);
        let tables: i64 = conn
            .query_row("SELECT count(*) FROM sqlite_schema WHERE name LIKE 'call_users%'", [], |r| r.get(0))
            .unwrap();
        assert_eq!(tables, 0, "call_users and its index are gone");
        let rung: String = conn.query_row("SELECT rung FROM calls WHERE id = 'c1'", [], |r| r.get(0)).unwrap();
        assert_eq!(rung, r#"["bob"]"#);
    }

    #[test]
    fn version_3_keys_history_by_id_and_time_and_keeps_the_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let mut conn = open_writer(&path).unwrap();
        conn.execute_batch(V1).unwrap();
        conn.execute_batch(V2).unwrap();
        conn.pragma_update(None, "user_version", 2).unwrap();
        conn.execute_batch(
            "INSERT INTO calls VALUES ('acme', 'c1', 'inbound', 'support', '+1', '+2', 0, '[\"bob\"]', NULL, \
             NULL, 'missed', '{}', NULL, NULL, 1, 10, NULL, 20, 10, 0, 0);
             INSERT INTO messages VALUES ('acme', 'm1', '+2', 'outbound', '+2', '+1', 'hi', 30, 'bob', 0, 'sent', 31);
             INSERT INTO voicemails VALUES ('acme', 'c1', '+2', '+1', 'https://vm.test/1', 5000, 40, 0);",
        )
        .unwrap();
        assert_eq!(migrate(&mut conn).unwrap(), 2);
        let row: (String, i64, i64) = conn
            .query_row("SELECT rung, started_at, ended_at FROM calls WHERE id = 'c1'", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .unwrap();
        assert_eq!(row, (r#"["bob"]"#.to_string(), 10, 20));
        let msg: (String, String) = conn
            .query_row("SELECT body, status FROM messages WHERE id = 'm1'", [], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap();
        assert_eq!(msg, ("hi".to_string(), "sent".to_string()));
        let url: String = conn.query_row("SELECT url FROM voicemails WHERE call_id = 'c1'", [], |r| r.get(0)).unwrap();
        assert_eq!(url, "https://vm.test/1");
        // The same id at another time is a second row now.
        conn.execute_batch(
            "INSERT INTO calls VALUES ('acme', 'c1', 'inbound', 'support', '+1', '+2', 0, '[]', NULL, \
             NULL, 'missed', '{}', NULL, NULL, 1, 5000, NULL, 5010, 10, 0, 0);
             INSERT INTO messages VALUES ('acme', 'm1', '+2', 'inbound', '+1', '+2', 'again', 5000, NULL, 0, NULL, NULL);
             INSERT INTO voicemails VALUES ('acme', 'c1', '+2', '+1', 'https://vm.test/2', 5000, 5020, 0);",
        )
        .unwrap();
        for table in ["calls", "messages", "voicemails"] {
            let n: i64 = conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0)).unwrap();
            assert_eq!(n, 2, "{table}");
        }
        let indexes: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_schema WHERE type = 'index' AND name NOT LIKE 'sqlite_%'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(
            indexes, 5,
            "calls_by_time, calls_by_number, messages_by_number, voicemails_by_time, voicemails_by_number"
        );
    }
}
