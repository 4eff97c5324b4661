use thiserror::Error;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The file was written by a newer ringline; migrating down is not
    /// supported, and writing to it could corrupt what the newer version
    /// expects.
    #[error("database schema version {found} is newer than this build supports ({supported})")]
    SchemaTooNew { found: u32, supported: u32 },
    #[error("malformed cursor {0:?}")]
    BadCursor(String),
    /// Data that passed SQLite's own checks but fails ours (a snapshot
    /// checksum, a journal row read during replay).
    #[error("corrupt store: {0}")]
    Corrupt(String),
    /// A stored history value that no longer decodes into the core's types.
    #[error("cannot decode stored value: {0}")]
    Codec(String),
    /// An earlier commit failed. The journal no longer matches what the
    /// engine has applied, so no further write is accepted: the shell must
    /// report unavailable and restart, which recovers the durable prefix.
    #[error("store unavailable after a failed write: {0}")]
    Failed(String),
    #[error("store is closed")]
    Closed,
}
