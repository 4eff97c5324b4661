//! The account's timer wheel: an ordered map of deadlines. Timers are
//! cancelled eagerly (each owner keeps its key), so every timer that fires is
//! live and firing one is always a state change worth journaling.

use super::ids::OfferId;
use super::time::Instant;
use super::{NumberIx, Seq, UserIx};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub(crate) enum Timer {
    OfferExpiry(OfferId),
    WrapUpEnd(UserIx),
    MaxWait(Seq),
    CallbackRetry(Seq),
    Announce(NumberIx),
    StatsFlush,
    ForgetRecent,
    /// The account's billing cycle ends: invoice and start the next one.
    BillingRenewal,
}

/// Identifies one armed timer, for cancelling it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug, Serialize, Deserialize)]
pub(crate) struct TimerKey(Instant, u64);

impl TimerKey {
    pub(crate) fn at(self) -> Instant {
        self.0
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Timers {
    map: BTreeMap<TimerKey, Timer>,
    next: u64,
}

impl Timers {
    pub(crate) fn arm(&mut self, at: Instant, t: Timer) -> TimerKey {
        let key = TimerKey(at, self.next);
        self.next += 1;
        self.map.insert(key, t);
        key
    }

    pub(crate) fn cancel(&mut self, key: Option<TimerKey>) {
        if let Some(k) = key {
            self.map.remove(&k);
        }
    }

    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.map.first_key_value().map(|(k, _)| k.0)
    }

    /// Removes and returns the earliest timer due at or before `now`.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<(TimerKey, Timer)> {
        let (k, _) = self.map.first_key_value()?;
        if k.0 > now {
            return None;
        }
        self.map.pop_first()
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
}
