//! ringline: a real-time call-distribution engine (ACD) for shared numbers.
//!
//! - [`core`]: the routing engine, a deterministic state machine.
//! - [`protocol`]: the wire messages of `shared/PROTOCOL.md`.
//! - [`config`]: the TOML config file.
//! - [`store`]: the journal, snapshots and history (SQLite).
//! - [`server`]: the tokio shell: WebSocket endpoints, HTTP, metrics.
//! - [`clock`]: the one place that reads the clock.

pub mod clock;
pub mod config;
pub mod core;
pub mod huge_pages;
pub mod protocol;
pub mod server;
pub mod store;
