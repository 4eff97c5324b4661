//! Conversions between core values and SQLite columns.
//!
//! Enums are stored under their serde names (`"inbound"`, `"queue_full"`)
//! rather than by a hand-written match, so a variant added in the core is
//! stored correctly without touching the store, and the stored text is the
//! same string the wire uses.

use super::error::StoreError;
use crate::core::time::Instant;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// SQLite integers are signed. Engine values never come near `i64::MAX`
/// (micros since 1970 reach it in the year 294247), so saturating is only a
/// guard against a bogus value failing a whole commit.
pub fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub fn uint(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

pub fn instant(v: i64) -> Instant {
    Instant::from_micros(uint(v))
}

pub fn at(t: Instant) -> i64 {
    int(t.as_micros())
}

pub fn enum_name<T: Serialize>(v: &T) -> Result<String, StoreError> {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => Ok(s),
        Ok(other) => Err(StoreError::Codec(format!("expected a unit variant, got {other}"))),
        Err(e) => Err(StoreError::Codec(e.to_string())),
    }
}

pub fn parse_enum<T: DeserializeOwned>(s: &str) -> Result<T, StoreError> {
    serde_json::from_value(serde_json::Value::String(s.to_owned()))
        .map_err(|e| StoreError::Codec(format!("{s:?}: {e}")))
}

pub fn to_json<T: Serialize>(v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Codec(e.to_string()))
}

pub fn from_json<T: DeserializeOwned>(s: &str) -> Result<T, StoreError> {
    serde_json::from_str(s).map_err(|e| StoreError::Codec(format!("{s:?}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::history::{CallKind, Outcome};
    use crate::protocol::gateway::OverflowReason;

    #[test]
    fn enums_round_trip_by_wire_name() {
        assert_eq!(enum_name(&CallKind::Callback).unwrap(), "callback");
        assert_eq!(parse_enum::<CallKind>("callback").unwrap(), CallKind::Callback);
        assert!(parse_enum::<CallKind>("nope").is_err());
        let o = Outcome::Forwarded { to: "+15550199".into(), reason: OverflowReason::QueueFull };
        assert_eq!(from_json::<Outcome>(&to_json(&o).unwrap()).unwrap(), o);
        assert_eq!(int(u64::MAX), i64::MAX);
        assert_eq!(uint(-5), 0);
    }
}
