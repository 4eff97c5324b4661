//! Engine time. The core never reads a clock: every input arrives with the
//! current time, chosen by the shell (or by a test's virtual clock).
//!
//! An [`Instant`] is microseconds since the Unix epoch. Using wall-clock
//! origin rather than an opaque monotonic one means a journaled time is still
//! meaningful after a restart: deadlines stored as absolute instants need no
//! conversion, and history timestamps print as RFC 3339 directly. The shell
//! guarantees monotonicity (it never hands in a time earlier than the last
//! one); the core clamps anyway so a misbehaving caller cannot move time back.

use serde::{Deserialize, Serialize, Serializer};
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct Instant(u64);

impl Instant {
    pub const EPOCH: Instant = Instant(0);

    pub const fn from_micros(us: u64) -> Self {
        Instant(us)
    }
    pub const fn from_millis(ms: u64) -> Self {
        Instant(ms.saturating_mul(1000))
    }
    pub const fn as_micros(self) -> u64 {
        self.0
    }
    pub const fn as_millis(self) -> u64 {
        self.0 / 1000
    }
    /// Converts a wall-clock reading (taken by the shell) into engine time.
    pub fn from_system(t: SystemTime) -> Self {
        let us = t.duration_since(UNIX_EPOCH).map(|d| d.as_micros()).unwrap_or(0);
        Instant(u64::try_from(us).unwrap_or(u64::MAX))
    }
    pub fn to_system(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_micros(self.0)
    }
    pub fn saturating_since(self, earlier: Instant) -> Duration {
        Duration::from_micros(self.0.saturating_sub(earlier.0))
    }
    /// Whole milliseconds from `earlier` to `self`, 0 if `earlier` is later.
    pub fn millis_since(self, earlier: Instant) -> u64 {
        self.0.saturating_sub(earlier.0) / 1000
    }
    /// RFC 3339 in UTC with millisecond precision, as the wire contract wants.
    pub fn rfc3339(self) -> String {
        humantime::format_rfc3339_millis(self.to_system()).to_string()
    }
}

impl std::ops::Add<Duration> for Instant {
    type Output = Instant;
    fn add(self, d: Duration) -> Instant {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        Instant(self.0.saturating_add(us))
    }
}

impl fmt::Debug for Instant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "t+{}us", self.0)
    }
}

/// An instant that serializes as an RFC 3339 string (wire timestamps).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Timestamp(pub Instant);

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0.rfc3339())
    }
}

/// Milliseconds of a duration, saturating, for `_ms` wire fields.
pub fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Durations written as strings such as `"250ms"`, `"15s"`, `"10m"` (config
/// files and the admin API). Serialize back to the same short form.
pub mod duration_str {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn parse(s: &str) -> Result<Duration, String> {
        let s = s.trim();
        if s == "0" {
            return Ok(Duration::ZERO);
        }
        humantime::parse_duration(s)
            .map_err(|e| format!("invalid duration {s:?}: {e} (use e.g. \"250ms\", \"15s\", \"10m\")"))
    }

    pub fn format(d: Duration) -> String {
        if d.is_zero() {
            return "0s".into();
        }
        humantime::format_duration(d).to_string().replace(' ', "")
    }

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_is_utc_millis() {
        assert_eq!(Instant::from_millis(1_700_000_000_123).rfc3339(), "2023-11-14T22:13:20.123Z");
    }

    #[test]
    fn durations_parse_and_format() {
        assert_eq!(duration_str::parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(duration_str::parse("15s"), Ok(Duration::from_secs(15)));
        assert_eq!(duration_str::parse("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(duration_str::parse("0s"), Ok(Duration::ZERO));
        assert!(duration_str::parse("soon").is_err());
        assert_eq!(duration_str::format(Duration::from_secs(90)), "1m30s");
        assert_eq!(duration_str::format(Duration::ZERO), "0s");
    }

    #[test]
    fn arithmetic_saturates() {
        let t = Instant::from_millis(10);
        assert_eq!(t.millis_since(Instant::from_millis(20)), 0);
        assert_eq!((t + Duration::from_millis(5)).as_millis(), 15);
    }
}
