//! ringline-loadtest: drives a running ringline server through its real
//! WebSocket protocol, playing the gateway and every agent, and measures
//! what it sees. See `docs/benchmarks.md` (## Load tests) for the scenarios.

// Timing is this crate's job: it reads the clock (`Instant::now`) next to
// every socket and sleeps on sampler threads, and its maps are never
// iterated where order matters, so the workspace's clock/HashMap bans
// (meant for the deterministic routing core) do not apply here.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

pub mod coldmem;
pub mod config;
pub mod conn;
pub mod driver;
pub mod echo;
pub mod metrics;
pub mod procfs;
pub mod report;
pub mod run;
pub mod spawn;
pub mod stats;
pub mod wire;
