//! ringline: a real-time call-distribution engine (ACD) for shared numbers.
//!
//! - [`core`]: the routing engine, a deterministic state machine.
//! - [`protocol`]: the wire messages of `shared/PROTOCOL.md`.

pub mod core;
pub mod protocol;
