//! The wire contract of `shared/PROTOCOL.md` as Rust types: pure data, no I/O.
//!
//! Incoming frames (gateway events, agent commands) derive `Deserialize`;
//! outgoing ones (gateway commands, agent messages) derive `Serialize`. Both
//! encodings (JSON text frames, MessagePack binary maps) go through the same
//! serde definitions, so they carry identical field names.

pub mod agent;
pub mod gateway;

use serde::{Deserialize, Serialize};
use std::fmt;

/// The `code` of an `error` message.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize, Hash)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    UnknownType,
    Unauthorized,
    Forbidden,
    NotFound,
    Conflict,
    RateLimited,
    Unavailable,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Conflict => "conflict",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Unavailable => "unavailable",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A client-chosen correlation string, echoed on replies it caused.
pub type Ref = std::sync::Arc<str>;
