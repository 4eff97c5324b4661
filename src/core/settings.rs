//! Per-number routing and queue settings, in the shape of the config file
//! (`[accounts.numbers.routing]`, `[accounts.numbers.queue]`). The same
//! structs are read from TOML, accepted by the admin API and kept in the
//! core, so a setting means one thing everywhere.

use super::ids::{NumberId, UserId, is_e164};
use super::time::duration_str;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::time::Duration;

#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize, Default, PartialOrd, Ord, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Offer every eligible target at once; first accept wins.
    #[default]
    RingAll,
    /// Targets in the configured order; every new call starts at the top.
    RingInOrder,
    /// Start after the target last offered a call on this number.
    RoundRobin,
    /// The eligible target idle the longest.
    LongestIdle,
}

impl Strategy {
    pub const ALL: [Strategy; 4] =
        [Strategy::RingAll, Strategy::RingInOrder, Strategy::RoundRobin, Strategy::LongestIdle];
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::RingAll => "ring_all",
            Strategy::RingInOrder => "ring_in_order",
            Strategy::RoundRobin => "round_robin",
            Strategy::LongestIdle => "longest_idle",
        }
    }
}

#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoutingSettings {
    pub strategy: Strategy,
    #[serde(with = "duration_str")]
    pub ring_timeout: Duration,
    #[serde(with = "duration_str")]
    pub wrap_up: Duration,
    /// Who is rung, in order. `None` means the number's assigned users.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub targets: Option<Vec<UserId>>,
    /// After this many offers expired in a row the user is set away; 0 never.
    pub auto_away_after_missed: u32,
}

impl Default for RoutingSettings {
    fn default() -> Self {
        RoutingSettings {
            strategy: Strategy::RingAll,
            ring_timeout: Duration::from_secs(15),
            wrap_up: Duration::ZERO,
            targets: None,
            auto_away_after_missed: 0,
        }
    }
}

/// Where a call goes when it cannot wait (queue full, waited too long, queue
/// disabled with nobody free).
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub enum Overflow {
    #[default]
    Voicemail,
    Hangup,
    Forward(NumberId),
}

impl fmt::Display for Overflow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Overflow::Voicemail => f.write_str("voicemail"),
            Overflow::Hangup => f.write_str("hangup"),
            Overflow::Forward(to) => write!(f, "forward:{to}"),
        }
    }
}

impl std::str::FromStr for Overflow {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "voicemail" => Ok(Overflow::Voicemail),
            "hangup" => Ok(Overflow::Hangup),
            _ => match s.strip_prefix("forward:") {
                Some(to) if is_e164(to) => Ok(Overflow::Forward(NumberId::from(to))),
                Some(to) => Err(format!("overflow forward target {to:?} is not an E.164 number")),
                None => Err(format!("overflow must be \"voicemail\", \"hangup\" or \"forward:+E164\", not {s:?}")),
            },
        }
    }
}

impl Serialize for Overflow {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Overflow {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueueSettings {
    /// Without a queue, a call nobody can take overflows at once (`no_agents`).
    pub enabled: bool,
    /// Callers (and callbacks) holding a place; one more overflows `queue_full`.
    pub max_waiting: u32,
    #[serde(with = "duration_str")]
    pub max_wait: Duration,
    pub announce_position: bool,
    #[serde(with = "duration_str")]
    pub announce_every: Duration,
    /// Extension: the least time between two announcements to one caller, so
    /// a fast-moving queue does not talk over itself. Default 5s.
    #[serde(with = "duration_str")]
    pub announce_min_gap: Duration,
    pub callback: bool,
    pub callback_attempts: u32,
    #[serde(with = "duration_str")]
    pub callback_retry_after: Duration,
    pub overflow: Overflow,
}

impl Default for QueueSettings {
    fn default() -> Self {
        QueueSettings {
            enabled: true,
            max_waiting: 50,
            max_wait: Duration::from_secs(600),
            announce_position: true,
            announce_every: Duration::from_secs(30),
            announce_min_gap: Duration::from_secs(5),
            callback: false,
            callback_attempts: 3,
            callback_retry_after: Duration::from_secs(300),
            overflow: Overflow::Voicemail,
        }
    }
}

/// Documented limits; anything outside is refused with the field's name.
pub mod limits {
    use std::time::Duration;
    pub const MAX_RING_TIMEOUT: Duration = Duration::from_secs(600);
    pub const MAX_WRAP_UP: Duration = Duration::from_secs(3600);
    pub const MAX_WAITING: u32 = 100_000;
    pub const MAX_WAIT: Duration = Duration::from_secs(24 * 3600);
    pub const MAX_CALLBACK_ATTEMPTS: u32 = 10;
    pub const MIN_ANNOUNCE_EVERY: Duration = Duration::from_millis(100);
}

impl RoutingSettings {
    pub fn validate(&self) -> Result<(), String> {
        if self.ring_timeout.is_zero() || self.ring_timeout > limits::MAX_RING_TIMEOUT {
            return Err("routing.ring_timeout must be between 1ms and 10m".into());
        }
        if self.wrap_up > limits::MAX_WRAP_UP {
            return Err("routing.wrap_up must be at most 1h".into());
        }
        Ok(())
    }
}

impl QueueSettings {
    pub fn validate(&self) -> Result<(), String> {
        if self.max_waiting > limits::MAX_WAITING {
            return Err(format!("queue.max_waiting must be at most {}", limits::MAX_WAITING));
        }
        if self.max_wait.is_zero() || self.max_wait > limits::MAX_WAIT {
            return Err("queue.max_wait must be between 1ms and 24h".into());
        }
        if self.announce_position && self.announce_every < limits::MIN_ANNOUNCE_EVERY {
            return Err("queue.announce_every must be at least 100ms".into());
        }
        if self.callback && (self.callback_attempts == 0 || self.callback_attempts > limits::MAX_CALLBACK_ATTEMPTS) {
            return Err(format!("queue.callback_attempts must be between 1 and {}", limits::MAX_CALLBACK_ATTEMPTS));
        }
        if self.callback && self.callback_retry_after.is_zero() {
            return Err("queue.callback_retry_after must be more than 0".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overflow_strings() {
        assert_eq!("voicemail".parse::<Overflow>(), Ok(Overflow::Voicemail));
        assert_eq!("forward:+15550199".parse::<Overflow>(), Ok(Overflow::Forward("+15550199".into())));
        assert!("forward:nowhere".parse::<Overflow>().is_err());
        assert!("drop".parse::<Overflow>().is_err());
        assert_eq!(Overflow::Forward("+15550199".into()).to_string(), "forward:+15550199");
    }

    #[test]
    fn settings_round_trip_through_json_as_strings() {
        let q = QueueSettings::default();
        let v = serde_json::to_value(&q).unwrap();
        assert_eq!(v["max_wait"], "10m");
        assert_eq!(v["overflow"], "voicemail");
        let back: QueueSettings = serde_json::from_value(v).unwrap();
        assert_eq!(back, q);
        assert!(serde_json::from_str::<RoutingSettings>(r#"{"strategy":"fastest"}"#).is_err());
        assert!(serde_json::from_str::<RoutingSettings>(r#"{"unknown":1}"#).is_err());
    }

    #[test]
    fn validation_names_the_field() {
        let r = RoutingSettings { ring_timeout: Duration::ZERO, ..Default::default() };
        assert!(r.validate().unwrap_err().contains("ring_timeout"));
        let q = QueueSettings { callback: true, callback_attempts: 0, ..Default::default() };
        assert!(q.validate().unwrap_err().contains("callback_attempts"));
    }
}
