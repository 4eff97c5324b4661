//! Position announcements to waiting callers: on entry (`call.queued`),
//! every `announce_every`, and when the position changed, but never more
//! often than `announce_min_gap` for one caller and never twice in the same
//! instant.
//!
//! One timer per number drives a *sweep* over its queue, so the cost is one
//! pass over the queue per sweep rather than a timer per caller. Sweeps run
//! at most once per `granularity`, so periodic announcements may be up to
//! that late; they are emitted as their own input, after any offer or
//! bridge that the triggering event produced.

use super::NumberIx;
use super::account::Account;
use super::queue::{EntryKind, Phase};
use super::time::Instant;
use super::timers::Timer;
use crate::protocol::gateway::GatewayCommand;
use std::time::Duration;

/// How often one number's queue may be swept: one second, or the minimum
/// gap if that is shorter (tests use short gaps).
fn granularity(min_gap: Duration) -> Duration {
    min_gap.min(Duration::from_secs(1)).max(Duration::from_millis(1))
}

impl Account {
    /// Someone joined or left the queue of `n`: positions behind them moved.
    pub(crate) fn positions_changed(&mut self, n: NumberIx) {
        self.mark_stats(n);
        let number = self.number(n);
        if !number.queue_cfg.announce_position || number.callers.is_empty() {
            return;
        }
        let gran = granularity(number.queue_cfg.announce_min_gap);
        let at = match number.last_sweep {
            Some(last) => (last + gran).max(self.now),
            None => self.now,
        };
        self.sweep_at(n, at);
    }

    /// A caller's next periodic announcement is due at `at`.
    pub(crate) fn announce_due(&mut self, n: NumberIx, at: Instant) {
        if self.number(n).queue_cfg.announce_position {
            self.sweep_at(n, at);
        }
    }

    /// Arms the number's sweep for `at`, unless one is armed sooner.
    fn sweep_at(&mut self, n: NumberIx, at: Instant) {
        if let Some(t) = self.number(n).announce_timer {
            if t.at() <= at {
                return;
            }
            self.timers.cancel(Some(t));
        }
        let t = self.arm(at, Timer::Announce(n));
        self.number_mut(n).announce_timer = Some(t);
    }

    pub(crate) fn sweep(&mut self, n: NumberIx) {
        let now = self.now;
        let number = self.number_mut(n);
        number.announce_timer = None;
        number.last_sweep = Some(now);
        let cfg = number.queue_cfg.clone();
        if !cfg.announce_position {
            return;
        }
        let keys: Vec<_> = number.queue.iter().copied().collect();
        let mut next: Option<Instant> = None;
        let mut due = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            let position = u32::try_from(i + 1).unwrap_or(u32::MAX);
            let Some(e) = self.entries.get(&key.seq) else {
                continue;
            };
            let (EntryKind::Call { call_id }, Phase::Queued, Some((at, last_pos))) = (&e.kind, &e.phase, e.announced)
            else {
                continue;
            };
            if !e.offers.is_empty() {
                // Being rung right now: the next announcement can wait.
                continue;
            }
            let moved = last_pos != position;
            let when =
                if moved { (at + cfg.announce_min_gap).min(at + cfg.announce_every) } else { at + cfg.announce_every };
            if when <= now && now > at {
                due.push((key.seq, call_id.clone(), position));
                let again = now + cfg.announce_every;
                next = Some(next.map_or(again, |x| x.min(again)));
            } else {
                let when = when.max(now + Duration::from_micros(1));
                next = Some(next.map_or(when, |x| x.min(when)));
            }
        }
        for (seq, call_id, position) in due {
            let (ewt_ms, ewt_known) = self.estimate(n, position);
            if let Some(e) = self.entries.get_mut(&seq) {
                e.announced = Some((now, position));
            }
            self.send_gateway(GatewayCommand::CallAnnounce { call_id, position, ewt_ms, ewt_known });
        }
        if let Some(at) = next {
            let at = at.max(now + granularity(cfg.announce_min_gap));
            self.sweep_at(n, at);
        }
    }
}
