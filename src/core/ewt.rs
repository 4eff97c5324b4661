//! Estimated wait time.
//!
//! For the caller at position `p` (1-based, counting everyone ahead,
//! callbacks included) on a number with `N` staffed targets and a mean
//! handle time `AHT` (talk plus wrap-up) over its last [`WINDOW`] answered
//! calls:
//!
//! ```text
//!     ewt(p) = p * AHT / N
//! ```
//!
//! Why: a caller waits only when every staffed agent is busy. Each of the
//! `N` agents then frees up on average once per `AHT`, so completions arrive
//! at rate `N / AHT` (the departure process of an M/M/N queue with all
//! servers busy), and the caller at position `p` is served at the `p`-th
//! completion, expected `p * AHT / N` from now. Unlike a queue-wide average
//! wait this grows with the position, so the tenth caller hears a longer
//! wait than the second.
//!
//! An estimate is only announced when it can be honest: at least
//! [`MIN_SAMPLES`] recent handle times and at least one staffed agent.
//! Otherwise the wire carries `ewt_known: false` and `ewt_ms: 0`, and the
//! gateway should say nothing about the wait; a wrong wait is worse than none.
//! Limitation: an agent who serves several numbers counts fully in each.

use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

pub const WINDOW: usize = 20;
pub const MIN_SAMPLES: usize = 3;

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct HandleTimes {
    samples: VecDeque<u64>,
    sum: u64,
}

impl HandleTimes {
    pub(crate) fn record(&mut self, handle_ms: u64) {
        if self.samples.len() == WINDOW
            && let Some(old) = self.samples.pop_front()
        {
            self.sum -= old;
        }
        self.samples.push_back(handle_ms);
        self.sum += handle_ms;
    }

    pub(crate) fn mean_ms(&self) -> Option<u64> {
        if self.samples.len() < MIN_SAMPLES {
            return None;
        }
        Some(self.sum / self.samples.len() as u64)
    }

    /// `(ewt_ms, known)` for the caller at `position` with `staffed` agents.
    pub(crate) fn estimate(&self, position: u32, staffed: u32) -> (u64, bool) {
        match self.mean_ms() {
            Some(aht) if staffed > 0 => (u64::from(position) * aht / u64::from(staffed), true),
            _ => (0, false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_estimate_without_enough_history_or_staff() {
        let mut h = HandleTimes::default();
        h.record(60_000);
        h.record(60_000);
        assert_eq!(h.estimate(1, 2), (0, false));
        h.record(60_000);
        assert_eq!(h.estimate(1, 0), (0, false));
        assert_eq!(h.estimate(1, 2), (30_000, true));
    }

    #[test]
    fn grows_with_position_and_shrinks_with_staff() {
        let mut h = HandleTimes::default();
        for _ in 0..5 {
            h.record(120_000);
        }
        assert_eq!(h.estimate(4, 2).0, 240_000);
        assert_eq!(h.estimate(8, 2).0, 480_000);
        assert_eq!(h.estimate(8, 4).0, 240_000);
    }

    #[test]
    fn keeps_only_the_recent_window() {
        let mut h = HandleTimes::default();
        for _ in 0..WINDOW {
            h.record(1_000_000);
        }
        for _ in 0..WINDOW {
            h.record(10_000);
        }
        assert_eq!(h.mean_ms(), Some(10_000));
    }
}
