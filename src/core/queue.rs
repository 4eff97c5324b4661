//! The per-number queue. Inbound calls and callbacks are *entries*; an entry
//! holds its place from arrival until an agent is connected, ordered by
//! priority (higher first) and then arrival. A callback is the same entry as
//! the call that asked for it, so it keeps that call's place and age.

use super::account::Account;
use super::history::{CallKind, CallRecord, Outcome};
use super::ids::{CallId, CallbackId, OfferId, Phone};
use super::offer::OfferEnd;
use super::output::RouteKey;
use super::recent::RecentKey;
use super::settings::Overflow;
use super::time::Instant;
use super::timers::{Timer, TimerKey};
use super::{NumberIx, Seq, UserIx};
use crate::protocol::agent::{AgentMessage, RevokeReason};
use crate::protocol::gateway::{GatewayCommand, OverflowReason};
use serde::{Deserialize, Serialize};

/// Service order: `rank` is `255 - priority`, so priority 9 sorts first;
/// then arrival sequence, unique per account, so there are no ties.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug, Serialize, Deserialize, Hash)]
pub(crate) struct QKey {
    pub(crate) rank: u8,
    pub(crate) seq: Seq,
}

impl QKey {
    pub(crate) fn new(priority: u8, seq: Seq) -> Self {
        QKey { rank: 255 - priority, seq }
    }
}

#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub(crate) enum EntryKind {
    Call { call_id: CallId },
    Callback { callback_id: CallbackId, origin: CallId, phone: Phone, attempts: u32 },
}

#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub(crate) enum Phase {
    /// In the queue: waiting, or being offered.
    Queued,
    /// A callback between dial attempts: keeps its place, is not offered.
    RetryWait { until: Instant, timer: TimerKey },
    /// An agent accepted: the gateway is bridging (call) or dialling
    /// (callback, as `dial`). Out of the queue; back in at the same place if
    /// the bridge or dial fails.
    Connecting { agent: UserIx, dial: Option<CallId> },
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Entry {
    pub(crate) seq: Seq,
    pub(crate) number: NumberIx,
    pub(crate) priority: u8,
    pub(crate) arrived_at: Instant,
    /// The caller's number.
    pub(crate) from: Phone,
    pub(crate) kind: EntryKind,
    pub(crate) phase: Phase,
    pub(crate) offers: Vec<OfferId>,
    /// Targets that declined or let this entry's offer expire during the
    /// current cycle; skipped until every eligible target has had a turn.
    pub(crate) tried: Vec<UserIx>,
    /// Everyone ever offered it, for history and visibility.
    pub(crate) rung: Vec<UserIx>,
    /// Last announcement to the caller: (when, position). `None` until the
    /// call first had to wait (`call.queued`).
    pub(crate) announced: Option<(Instant, u32)>,
    pub(crate) max_wait_timer: Option<TimerKey>,
}

impl Entry {
    pub(crate) fn key(&self) -> QKey {
        QKey::new(self.priority, self.seq)
    }
    pub(crate) fn is_callback(&self) -> bool {
        matches!(self.kind, EntryKind::Callback { .. })
    }
    pub(crate) fn call_id(&self) -> Option<&CallId> {
        match &self.kind {
            EntryKind::Call { call_id } => Some(call_id),
            EntryKind::Callback { .. } => None,
        }
    }
}

impl Account {
    /// A caller dialled `number`. Routes it at once; it waits, overflows or
    /// rings someone before this returns.
    pub(crate) fn new_inbound(&mut self, call_id: CallId, number: NumberIx, from: Phone, priority: u8) {
        let seq = self.next_seq();
        let now = self.now;
        let cfg = &self.number(number).queue_cfg;
        let max_wait = cfg.enabled.then(|| now + cfg.max_wait);
        let max_wait_timer = max_wait.map(|at| self.arm(at, Timer::MaxWait(seq)));
        let entry = Entry {
            seq,
            number,
            priority,
            arrived_at: now,
            from,
            kind: EntryKind::Call { call_id: call_id.clone() },
            phase: Phase::Queued,
            offers: Vec::new(),
            tried: Vec::new(),
            rung: Vec::new(),
            announced: None,
            max_wait_timer,
        };
        let key = entry.key();
        self.entries.insert(seq, entry);
        self.entry_by_call.insert(call_id.clone(), seq);
        self.bind(RouteKey::Call(call_id));
        self.enqueue(key);
        self.route_entry(seq);
    }

    /// Puts an entry (back) at its place in its number's queue.
    pub(crate) fn enqueue(&mut self, key: QKey) {
        let Some(e) = self.entries.get(&key.seq) else {
            return;
        };
        let n = e.number;
        let caller = !e.is_callback();
        let ready = e.phase == Phase::Queued;
        let number = self.number_mut(n);
        number.queue.insert(key);
        if caller {
            number.callers.insert(key.seq);
        }
        if ready {
            number.ready.insert(key);
            self.dirty.insert(key);
        }
        self.positions_changed(n);
    }

    /// Takes an entry out of its number's queue (it keeps existing).
    pub(crate) fn dequeue(&mut self, seq: Seq) {
        let Some(e) = self.entries.get(&seq) else {
            return;
        };
        let (key, n) = (e.key(), e.number);
        let number = self.number_mut(n);
        number.queue.remove(&key);
        number.ready.remove(&key);
        number.callers.remove(&seq);
        self.dirty.remove(&key);
        self.positions_changed(n);
    }

    /// Deletes an entry for good: out of the queue, timers cancelled, offers
    /// revoked with `why`. Returns it for the history record.
    pub(crate) fn remove_entry(&mut self, seq: Seq, why: RevokeReason) -> Option<Entry> {
        let offers = self.entries.get(&seq)?.offers.clone();
        for o in offers {
            self.end_offer(o, OfferEnd::Revoked(why));
        }
        self.dequeue(seq);
        let e = self.entries.remove(&seq)?;
        self.timers.cancel(e.max_wait_timer);
        if let Phase::RetryWait { timer, .. } = &e.phase {
            self.timers.cancel(Some(*timer));
        }
        match &e.kind {
            EntryKind::Call { call_id } => {
                self.entry_by_call.remove(call_id);
            }
            EntryKind::Callback { callback_id, .. } => {
                self.entry_by_callback.remove(callback_id);
            }
        }
        self.mark_stats(e.number);
        Some(e)
    }

    /// 1-based place in the number's queue. Counts from whichever end is
    /// nearer, so a caller joining the tail of a long queue costs O(1).
    pub(crate) fn position(&self, key: QKey) -> u32 {
        let Some(e) = self.entries.get(&key.seq) else {
            return 0;
        };
        let q = &self.number(e.number).queue;
        let behind = if q.last() == Some(&key) { 0 } else { q.range(key..).count().saturating_sub(1) };
        let pos = q.len().saturating_sub(behind);
        u32::try_from(pos).unwrap_or(u32::MAX)
    }

    /// `(ewt_ms, known)` for a caller at `position` on number `n`.
    pub(crate) fn estimate(&self, n: NumberIx, position: u32) -> (u64, bool) {
        let number = self.number(n);
        number.handle_times.estimate(position, number.staffed)
    }

    /// Nobody could be offered the entry. A caller is told to hold (once), or
    /// overflows if it may not wait. A callback just keeps its place.
    pub(crate) fn must_wait(&mut self, seq: Seq) {
        let Some(e) = self.entries.get(&seq) else {
            return;
        };
        if e.is_callback() || e.announced.is_some() {
            return;
        }
        let (n, key) = (e.number, e.key());
        let cfg = &self.number(n).queue_cfg;
        if !cfg.enabled {
            self.overflow(seq, OverflowReason::NoAgents);
            return;
        }
        let others = self.number(n).queue.len().saturating_sub(1);
        if others >= cfg.max_waiting as usize {
            self.overflow(seq, OverflowReason::QueueFull);
            return;
        }
        let position = self.position(key);
        let (ewt_ms, ewt_known) = self.estimate(n, position);
        let now = self.now;
        let Some(e) = self.entries.get_mut(&seq) else {
            return;
        };
        e.announced = Some((now, position));
        if let EntryKind::Call { call_id } = &e.kind {
            let call_id = call_id.clone();
            self.send_gateway(GatewayCommand::CallQueued { call_id, position, ewt_ms, ewt_known });
        }
        self.mark_stats(n);
    }

    /// The caller cannot be served here: voicemail, forward or hang up as
    /// the number is configured, with one final outcome.
    pub(crate) fn overflow(&mut self, seq: Seq, reason: OverflowReason) {
        let Some(e) = self.entries.get(&seq) else {
            return;
        };
        let Some(call_id) = e.call_id().cloned() else {
            return;
        };
        let overflow = self.number(e.number).queue_cfg.overflow.clone();
        let Some(e) = self.remove_entry(seq, RevokeReason::Reassigned) else {
            return;
        };
        let outcome = match overflow {
            Overflow::Voicemail => {
                self.send_gateway(GatewayCommand::CallVoicemail { call_id: call_id.clone(), reason });
                Outcome::Voicemail { reason }
            }
            Overflow::Forward(to) => {
                self.send_gateway(GatewayCommand::CallForward { call_id: call_id.clone(), to: to.clone(), reason });
                Outcome::Forwarded { to, reason }
            }
            Overflow::Hangup => {
                self.send_gateway(GatewayCommand::CallHangup { call_id: call_id.clone(), reason: reason.into() });
                Outcome::HungUp { reason }
            }
        };
        self.finish_entry(e, outcome);
    }

    /// Writes the one history record of an entry that is over, and tells
    /// the number's assigned users about a missed call.
    pub(crate) fn finish_entry(&mut self, e: Entry, outcome: Outcome) {
        let now = self.now;
        let number_id = self.number(e.number).id.clone();
        let restricted = e.rung.iter().any(|&u| !self.is_assigned(u, e.number));
        let (id, kind, origin_call, dial_call, attempts, to) = match &e.kind {
            EntryKind::Call { call_id } => {
                (call_id.to_string(), CallKind::Inbound, None, None, 0, Phone::new(number_id.as_str()))
            }
            EntryKind::Callback { callback_id, origin, phone, attempts } => {
                let dial = match &e.phase {
                    Phase::Connecting { dial, .. } => dial.clone(),
                    _ => None,
                };
                (callback_id.to_string(), CallKind::Callback, Some(origin.clone()), dial, *attempts, phone.clone())
            }
        };
        let missed = kind == CallKind::Inbound && outcome.is_missed() && !restricted;
        let record = CallRecord {
            id,
            kind,
            number: number_id.clone(),
            from: e.from.clone(),
            to,
            priority: e.priority,
            rung: e.rung.iter().map(|&u| self.user(u).id.clone()).collect(),
            answered_by: None,
            placed_by: None,
            outcome,
            origin_call,
            dial_call,
            attempts,
            started_at: e.arrived_at,
            answered_at: None,
            ended_at: now,
            wait_ms: now.millis_since(e.arrived_at),
            talk_ms: 0,
            restricted,
        };
        match &e.kind {
            EntryKind::Call { call_id } => {
                self.remember(RecentKey::Call(call_id.clone()), Some((e.number, e.from.clone(), restricted)));
                if missed {
                    let msg = AgentMessage::MissedCall {
                        number: number_id,
                        call_id: call_id.clone(),
                        from: e.from.clone(),
                        at: super::time::Timestamp(now),
                    };
                    self.send_assigned(e.number, msg);
                }
            }
            EntryKind::Callback { callback_id, .. } => {
                self.remember(RecentKey::Callback(callback_id.clone()), None);
            }
        }
        self.record(super::history::Record::Call(record));
    }

    /// `max_wait` passed for a caller still waiting.
    pub(crate) fn on_max_wait(&mut self, seq: Seq) {
        let Some(e) = self.entries.get_mut(&seq) else {
            return;
        };
        e.max_wait_timer = None;
        if e.phase == Phase::Queued && !e.is_callback() {
            self.overflow(seq, OverflowReason::MaxWait);
        }
    }

    /// Sends `msg` to every connected, active user assigned to number `n`.
    pub(crate) fn send_assigned(&mut self, n: NumberIx, msg: AgentMessage) {
        let assigned = self.number(n).assigned.clone();
        for u in assigned {
            if self.user(u).active() {
                self.send_user(u, msg.clone());
            }
        }
    }
}
