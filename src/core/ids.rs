//! Identifier newtypes. Every id that crosses the wire is a string; inside the
//! core they are reference-counted so cloning one into an output is a pointer
//! copy, not an allocation.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::sync::Arc;

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(Arc<str>);

        impl $name {
            pub fn new(s: impl Into<Arc<str>>) -> Self {
                Self(s.into())
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:?}", &*self.0)
            }
        }
        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self(s.into())
            }
        }
        impl From<String> for $name {
            fn from(s: String) -> Self {
                Self(s.into())
            }
        }
        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                &*self.0 == other
            }
        }
        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                &*self.0 == *other
            }
        }
        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }
    };
}

string_id!(
    /// A tenant. Nothing in one account can reach another's state.
    AccountId
);
string_id!(
    /// A user of one account (owner, admin, supervisor or agent).
    UserId
);
string_id!(
    /// One of our phone numbers, as E.164 (`+15550100`).
    NumberId
);
string_id!(
    /// Any phone number outside our control (a caller, an SMS peer), E.164.
    Phone
);
string_id!(
    /// A call. Inbound calls carry the gateway's id; calls the engine places
    /// (outbound dials, callback dials) get engine-issued ids.
    CallId
);
string_id!(
    /// A callback request, engine-issued.
    CallbackId
);
string_id!(
    /// An SMS. Inbound messages carry the gateway's id, outbound ones an
    /// engine-issued id.
    MessageId
);
string_id!(
    /// A configured telephony gateway (by name).
    GatewayName
);

/// One WebSocket connection of an agent, numbered by the shell. The core only
/// uses it to address replies and to count a user's devices.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize)]
pub struct ConnId(pub u64);

/// An offer made to one user. On the wire it is the string `o<n>`; the
/// number is per account and never reused, so a stale id can never hit a
/// newer offer.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct OfferId(pub u64);

impl fmt::Display for OfferId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "o{}", self.0)
    }
}

impl OfferId {
    /// Parses the wire form; `None` for anything that is not `o<digits>`.
    pub fn parse(s: &str) -> Option<Self> {
        let digits = s.strip_prefix('o')?;
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok().map(OfferId)
    }
}

impl Serialize for OfferId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // Not `collect_str`: every offer carries one, and the formatting
        // machinery is cold code at light load.
        let mut buf = [0u8; 21];
        buf[0] = b'o';
        let n = decimal(self.0, &mut buf[1..]).len();
        let wire = std::str::from_utf8(&buf[..=n]).map_err(serde::ser::Error::custom)?;
        s.serialize_str(wire)
    }
}

/// Writes `n` in decimal at the start of `out` (20 bytes hold any `u64`)
/// and returns the digits; used where `format!` would be on a hot path.
pub(crate) fn decimal(mut n: u64, out: &mut [u8]) -> &str {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let len = digits.len() - i;
    out[..len].copy_from_slice(&digits[i..]);
    // Only ASCII digits were written.
    std::str::from_utf8(&out[..len]).unwrap_or_default()
}

impl<'de> Deserialize<'de> for OfferId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        OfferId::parse(&s).ok_or_else(|| serde::de::Error::custom("offer_id must look like o<number>"))
    }
}

/// Checks the E.164 shape: `+`, a non-zero leading digit, 3 to 15 digits.
pub fn is_e164(s: &str) -> bool {
    let Some(digits) = s.strip_prefix('+') else {
        return false;
    };
    (3..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()) && !digits.starts_with('0')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offer_ids_round_trip_and_reject_garbage() {
        assert_eq!(OfferId::parse("o42"), Some(OfferId(42)));
        assert_eq!(OfferId(7).to_string(), "o7");
        for bad in ["", "o", "42", "o-1", "o1x", "x1", "o99999999999999999999999"] {
            assert_eq!(OfferId::parse(bad), None, "{bad}");
        }
        for n in [0, 7, 10, 1_000_007, u64::MAX] {
            let json = serde_json::to_string(&OfferId(n)).expect("serializes");
            assert_eq!(json, format!("\"o{n}\""));
            assert_eq!(serde_json::from_str::<OfferId>(&json).ok(), Some(OfferId(n)));
        }
    }

    #[test]
    fn decimals_match_display() {
        for n in [0, 1, 9, 10, 42, 100, 1_000_007, u64::MAX] {
            assert_eq!(decimal(n, &mut [0; 20]), n.to_string());
        }
    }

    #[test]
    fn e164_shape() {
        assert!(is_e164("+15550100"));
        assert!(is_e164("+442071838750"));
        for bad in ["15550100", "+", "+0555", "+1 555", "+12", "+1234567890123456", "+1555a"] {
            assert!(!is_e164(bad), "{bad}");
        }
    }
}
