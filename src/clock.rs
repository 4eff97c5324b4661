//! The one place that reads a clock. Everything else receives time.
//!
//! Engine time is wall-clock microseconds, advanced by tokio's monotonic
//! clock from a single wall reading at start-up: wall-clock jumps (NTP) do
//! not move it backwards, tokio's paused clock drives it in tests, and it
//! never falls below the last journaled time, so a replayed state's
//! deadlines stay meaningful after a restart.

use crate::core::Instant;
use std::time::Duration;

#[derive(Clone, Copy, Debug)]
pub struct Clock {
    origin: tokio::time::Instant,
    origin_engine: Instant,
}

impl Clock {
    /// Starts engine time at the wall clock, or at `not_before` if that is
    /// later (the last journaled time, when the wall clock went back).
    #[allow(clippy::disallowed_methods)]
    pub fn start(not_before: Instant) -> Clock {
        let wall = Instant::from_system(std::time::SystemTime::now());
        Clock { origin: tokio::time::Instant::now(), origin_engine: wall.max(not_before) }
    }

    #[allow(clippy::disallowed_methods)]
    pub fn now(&self) -> Instant {
        self.at(tokio::time::Instant::now())
    }

    /// Engine time of a tokio instant.
    pub fn at(&self, t: tokio::time::Instant) -> Instant {
        self.origin_engine + t.saturating_duration_since(self.origin)
    }

    /// The tokio instant at which engine time reaches `t`.
    pub fn deadline(&self, t: Instant) -> tokio::time::Instant {
        let ahead = Duration::from_micros(t.as_micros().saturating_sub(self.origin_engine.as_micros()));
        self.origin + ahead
    }

    #[allow(clippy::disallowed_methods)]
    pub fn tokio_now() -> tokio::time::Instant {
        tokio::time::Instant::now()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn follows_tokio_time_and_never_starts_before_the_floor() {
        let far = Instant::from_millis(u64::MAX / 4000);
        let c = Clock::start(far);
        let t0 = c.now();
        assert!(t0 >= far);
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert_eq!(c.now().millis_since(t0), 1500);
        let d = c.deadline(t0 + Duration::from_secs(2));
        assert_eq!(d - Clock::tokio_now(), Duration::from_millis(500));
    }
}
