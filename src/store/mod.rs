//! Embedded storage: the input journal (group commit), snapshots and call
//! history, in one SQLite file under the data dir.
