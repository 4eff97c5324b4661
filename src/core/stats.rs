//! Live queue statistics for supervisors (`subscribe queues`). Changes only
//! mark a number dirty; one account timer flushes dirty numbers at most once
//! per [`STATS_INTERVAL`], so a busy queue costs a subscriber one message
//! per number per interval however many events happen. While callers wait,
//! their numbers are refreshed every interval so `longest_wait_ms` stays
//! current.

use super::account::Account;
use super::error::CoreError;
use super::ids::ConnId;
use super::queue::{EntryKind, Phase};
use super::timers::Timer;
use super::{NumberIx, UserIx};
use crate::protocol::agent::{AgentCounts, AgentMessage, Status};
use std::time::Duration;

pub const STATS_INTERVAL: Duration = Duration::from_secs(1);

impl Account {
    pub(crate) fn subscribe_queues(&mut self, u: UserIx, conn: ConnId) -> Result<(), CoreError> {
        self.require_supervision(u)?;
        let numbers = self.stats_numbers(u);
        // The snapshot counts as this interval's message.
        if self.stats_timer.is_none() {
            self.last_stats_flush = Some(self.now);
        }
        self.unsubscribe(conn);
        self.subscribe_to(conn, numbers.clone());
        for n in numbers {
            let msg = self.queue_stats(n);
            self.send_conn(conn, msg);
        }
        Ok(())
    }

    /// The numbers whose stats `u` may see: every number for a manager, the
    /// assigned ones for a supervisor; sorted.
    fn stats_numbers(&self, u: UserIx) -> Vec<NumberIx> {
        let mut numbers: Vec<NumberIx> = if self.user(u).role.is_manager() {
            (0..self.numbers.len() as u32).map(NumberIx).collect()
        } else {
            self.user(u).assigned.clone()
        };
        numbers.sort();
        numbers
    }

    fn subscribe_to(&mut self, conn: ConnId, numbers: Vec<NumberIx>) {
        let mut waiting = false;
        for &n in &numbers {
            let number = self.number_mut(n);
            number.stats_subs.insert(conn);
            waiting |= !number.callers.is_empty();
            *self.subscribed_numbers.entry(n).or_default() += 1;
        }
        self.subs.insert(conn, numbers);
        // Waiting callers' numbers are refreshed every interval, even when
        // nothing else happens to mark them.
        if waiting {
            self.ensure_stats_timer();
        }
    }

    /// Brings every `queue.stats` subscription in line with what its user
    /// may see now, after a change of roles, plan or a number's assignment:
    /// a user who may no longer supervise loses the subscription, a number
    /// no longer visible stops, and a number newly visible starts with its
    /// snapshot. Subscribers are few (supervisors' connections), so this
    /// walks them all.
    pub(crate) fn refresh_subscriptions(&mut self) {
        if self.subs.is_empty() {
            return;
        }
        let conns: Vec<ConnId> = self.subs.keys().copied().collect();
        for conn in conns {
            let user = self.conn_user.get(&conn).copied();
            let Some(u) = user.filter(|&u| self.require_supervision(u).is_ok()) else {
                self.unsubscribe(conn);
                continue;
            };
            let allowed = self.stats_numbers(u);
            let current = self.subs.get(&conn).cloned().unwrap_or_default();
            if allowed == current {
                continue;
            }
            self.unsubscribe(conn);
            self.subscribe_to(conn, allowed.clone());
            for n in allowed.into_iter().filter(|n| !current.contains(n)) {
                let msg = self.queue_stats(n);
                self.send_conn(conn, msg);
            }
        }
    }

    pub(crate) fn unsubscribe(&mut self, conn: ConnId) {
        let Some(numbers) = self.subs.remove(&conn) else {
            return;
        };
        for n in numbers {
            self.number_mut(n).stats_subs.remove(&conn);
            if let Some(c) = self.subscribed_numbers.get_mut(&n) {
                *c -= 1;
                if *c == 0 {
                    self.subscribed_numbers.remove(&n);
                }
            }
        }
    }

    /// Something visible in `n`'s stats changed.
    pub(crate) fn mark_stats(&mut self, n: NumberIx) {
        if self.subscribed_numbers.is_empty() || !self.subscribed_numbers.contains_key(&n) {
            return;
        }
        self.number_mut(n).stats_dirty = true;
        self.ensure_stats_timer();
    }

    pub(crate) fn mark_stats_for_user(&mut self, u: UserIx) {
        if self.subscribed_numbers.is_empty() {
            return;
        }
        let serves: Vec<NumberIx> = self.user(u).serves.iter().map(|&(n, _)| n).collect();
        for n in serves {
            self.mark_stats(n);
        }
    }

    fn ensure_stats_timer(&mut self) {
        if self.stats_timer.is_some() {
            return;
        }
        let at = match self.last_stats_flush {
            Some(last) => (last + STATS_INTERVAL).max(self.now),
            None => self.now,
        };
        let t = self.arm(at, Timer::StatsFlush);
        self.stats_timer = Some(t);
    }

    pub(crate) fn flush_stats(&mut self) {
        self.stats_timer = None;
        self.last_stats_flush = Some(self.now);
        let numbers: Vec<NumberIx> = self.subscribed_numbers.keys().copied().collect();
        let mut waiting = false;
        for n in numbers {
            let number = self.number(n);
            let live = !number.callers.is_empty();
            if !number.stats_dirty && !live {
                continue;
            }
            waiting |= live;
            self.number_mut(n).stats_dirty = false;
            let msg = self.queue_stats(n);
            let subs: Vec<ConnId> = self.number(n).stats_subs.iter().copied().collect();
            for conn in subs {
                self.send_conn(conn, msg.clone());
            }
        }
        if waiting {
            self.ensure_stats_timer();
        }
    }

    pub(crate) fn queue_stats(&self, n: NumberIx) -> AgentMessage {
        let number = self.number(n);
        let mut waiting = 0;
        let mut callbacks = 0;
        for key in &number.queue {
            match (&self.entries[&key.seq].kind, &self.entries[&key.seq].phase) {
                (EntryKind::Call { .. }, _) => waiting += 1,
                (EntryKind::Callback { .. }, Phase::Queued | Phase::RetryWait { .. }) => callbacks += 1,
                _ => {}
            }
        }
        let longest_wait_ms = number
            .callers
            .first()
            .and_then(|seq| self.entries.get(seq))
            .map_or(0, |e| self.now.millis_since(e.arrived_at));
        let mut agents = AgentCounts::default();
        for &u in &number.targets {
            match self.user(u).status().0 {
                Status::Available => agents.available += 1,
                Status::OnCall => agents.on_call += 1,
                Status::WrapUp => agents.wrap_up += 1,
                Status::Away => agents.away += 1,
                Status::Ringing => agents.ringing += 1,
                Status::Offline => {}
            }
        }
        AgentMessage::QueueStats { number: number.id.clone(), waiting, callbacks, longest_wait_ms, agents }
    }
}
