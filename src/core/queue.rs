//! The per-number queue. Inbound calls and callbacks are *entries*; an entry
//! holds its place from arrival until an agent is connected, ordered by
//! priority (higher first) and then arrival. A callback is the same entry as
//! the call that asked for it, so it keeps that call's place and age.

use super::account::Account;
use super::history::{CallKind, CallRecord, Outcome};
use super::ids::{CallId, CallbackId, OfferId, Phone, UserId};
use super::offer::OfferEnd;
use super::output::{Output, RouteKey};
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
        // Routed right here, so it need not wait in the dirty set.
        self.dirty.remove(&key);
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
        // Joining at the tail moves nobody.
        let moved_others = number.queue.last() != Some(&key);
        if caller {
            number.callers.insert(key.seq);
        }
        if ready {
            number.ready.insert(key);
            self.dirty.insert(key);
        }
        if moved_others {
            self.positions_changed(n);
        } else {
            self.mark_stats(n);
        }
    }

    /// Takes an entry out of its number's queue (it keeps existing).
    pub(crate) fn dequeue(&mut self, seq: Seq) {
        let Some(e) = self.entries.get(&seq) else {
            return;
        };
        let (key, n) = (e.key(), e.number);
        let number = self.number_mut(n);
        // Leaving from the tail moves nobody.
        let moved_others = number.queue.last().is_some_and(|last| *last != key);
        number.queue.remove(&key);
        number.ready.remove(&key);
        number.callers.remove(&seq);
        self.dirty.remove(&key);
        if moved_others {
            self.positions_changed(n);
        } else {
            self.mark_stats(n);
        }
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
        let announce = cfg.announce_position;
        // A call that was ringing when the queue was switched on had no
        // `max_wait` running; it starts counting from its arrival now.
        self.arm_max_wait(seq);
        let position = self.position(key);
        let (ewt_ms, ewt_known) = self.estimate(n, position);
        let now = self.now;
        let Some(e) = self.entries.get_mut(&seq) else {
            return;
        };
        e.announced = Some((now, position));
        if let EntryKind::Call { call_id } = &e.kind {
            let call_id = call_id.clone();
            self.send_gateway(GatewayCommand::CallQueued { call_id, position, ewt_ms, ewt_known, announce });
        }
        self.announce_due(n, now + self.number(n).queue_cfg.announce_every);
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
        let (cmd, outcome) = match overflow {
            Overflow::Voicemail => {
                (GatewayCommand::CallVoicemail { call_id: call_id.clone(), reason }, Outcome::Voicemail { reason })
            }
            Overflow::Forward(to) => (
                GatewayCommand::CallForward { call_id: call_id.clone(), to: to.clone(), reason },
                Outcome::Forwarded { to, reason },
            ),
            Overflow::Hangup => (
                GatewayCommand::CallHangup { call_id: call_id.clone(), reason: reason.into() },
                Outcome::HungUp { reason },
            ),
        };
        // Kept until the gateway reports the call ended (super::recent).
        self.hand_off(RecentKey::Call(call_id), cmd);
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

    /// Arms a waiting caller's `max_wait` (counted from its arrival, never
    /// in the past) if its number queues and none is running.
    pub(crate) fn arm_max_wait(&mut self, seq: Seq) {
        let Some(e) = self.entries.get(&seq) else {
            return;
        };
        let (n, arrived) = (e.number, e.arrived_at);
        let cfg = &self.number(n).queue_cfg;
        if e.is_callback() || !cfg.enabled || e.max_wait_timer.is_some() {
            return;
        }
        let at = (arrived + cfg.max_wait).max(self.now);
        let t = self.arm(at, Timer::MaxWait(seq));
        if let Some(e) = self.entries.get_mut(&seq) {
            e.max_wait_timer = Some(t);
        }
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
        let users: Vec<UserId> = self
            .number(n)
            .assigned
            .iter()
            .map(|&u| self.user(u))
            .filter(|user| user.active() && user.connected())
            .map(|user| user.id.clone())
            .collect();
        if !users.is_empty() {
            self.out.push(Output::Users { account: self.id.clone(), users, msg });
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::core::history::Outcome;
    use crate::core::settings::{Overflow, QueueSettings, RoutingSettings, Strategy};
    use crate::core::testkit::Bed;
    use crate::protocol::agent::AgentMessage;
    use crate::protocol::gateway::{EndReason, GatewayCommand, HangupReason, OverflowReason};
    use std::time::Duration;

    const N: &str = "+15550100";

    fn bed(queue: QueueSettings) -> Bed {
        let mut b = Bed::new();
        b.agents(&["a"]);
        assert!(
            b.number(N, &["a"], RoutingSettings { strategy: Strategy::RingAll, ..Default::default() }, queue)
                .result
                .is_ok()
        );
        b.take();
        b
    }

    fn queued(b: &Bed) -> Vec<(String, u32)> {
        b.gateway_cmds()
            .into_iter()
            .filter_map(|c| match c {
                GatewayCommand::CallQueued { call_id, position, .. } => Some((call_id.to_string(), position)),
                _ => None,
            })
            .collect()
    }

    fn announced(b: &Bed) -> Vec<(String, u32)> {
        b.gateway_cmds()
            .into_iter()
            .filter_map(|c| match c {
                GatewayCommand::CallAnnounce { call_id, position, .. } => Some((call_id.to_string(), position)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn priority_first_then_arrival() {
        let mut b = bed(QueueSettings::default());
        b.inbound("low1", N);
        b.inbound_prio("high", N, Some(7));
        b.inbound("low2", N);
        b.inbound_prio("mid", N, Some(3));
        assert_eq!(queued(&b), [("low1".into(), 1), ("high".into(), 1), ("low2".into(), 3), ("mid".into(), 2)]);
        let order: Vec<_> = b.engine.inspect().queue(&b.account, &N.into()).into_iter().map(|q| q.id).collect();
        assert_eq!(order, ["high", "mid", "low1", "low2"]);
        b.take();
        b.connect("a");
        assert_eq!(b.offers_to("a")[0].1, "high");
        b.check();
    }

    #[test]
    fn max_waiting_overflows_to_the_configured_place() {
        for (overflow, expect) in [
            (
                Overflow::Voicemail,
                GatewayCommand::CallVoicemail { call_id: "c3".into(), reason: OverflowReason::QueueFull },
            ),
            (Overflow::Hangup, GatewayCommand::CallHangup { call_id: "c3".into(), reason: HangupReason::QueueFull }),
            (
                Overflow::Forward("+15550199".into()),
                GatewayCommand::CallForward {
                    call_id: "c3".into(),
                    to: "+15550199".into(),
                    reason: OverflowReason::QueueFull,
                },
            ),
        ] {
            let mut b = bed(QueueSettings { max_waiting: 2, overflow: overflow.clone(), ..Default::default() });
            b.inbound("c1", N);
            b.inbound("c2", N);
            b.take();
            b.inbound("c3", N);
            assert_eq!(b.gateway_cmds(), std::slice::from_ref(&expect), "{overflow}");
            let rec = b.call_record("c3").unwrap();
            assert!(!matches!(rec.outcome, Outcome::Missed | Outcome::Abandoned));
            // Handed off: sent again to a reconnecting gateway until the
            // gateway reports the call over.
            assert_eq!(b.unanswered_cmds(), [expect], "{overflow}");
            // The gateway's call.ended settles that, with no second outcome;
            // a repeat of it is a no-op.
            b.take();
            let h = b.ended("c3", EndReason::VoicemailDone);
            assert_eq!((h.result, h.journal), (Ok(crate::core::Reply::Done), true));
            assert!(b.records().is_empty());
            assert!(b.unanswered_cmds().is_empty());
            assert_eq!(b.ended("c3", EndReason::VoicemailDone).result, Ok(crate::core::Reply::Duplicate));
            b.check();
        }
    }

    #[test]
    fn max_wait_sends_the_caller_to_voicemail() {
        let mut b = bed(QueueSettings { max_wait: Duration::from_secs(60), ..Default::default() });
        b.inbound("c1", N);
        b.take();
        b.advance(Duration::from_secs(59));
        assert!(b.gateway_cmds().iter().all(|c| !matches!(c, GatewayCommand::CallVoicemail { .. })));
        b.advance(Duration::from_secs(1));
        assert!(
            b.gateway_cmds()
                .contains(&GatewayCommand::CallVoicemail { call_id: "c1".into(), reason: OverflowReason::MaxWait })
        );
        assert_eq!(b.call_record("c1").unwrap().outcome, Outcome::Voicemail { reason: OverflowReason::MaxWait });
        b.check();
    }

    #[test]
    fn without_a_queue_nobody_free_means_no_agents() {
        let mut b = bed(QueueSettings { enabled: false, ..Default::default() });
        b.inbound("c1", N);
        assert_eq!(
            b.gateway_cmds(),
            [GatewayCommand::CallVoicemail { call_id: "c1".into(), reason: OverflowReason::NoAgents }]
        );
    }

    #[test]
    fn a_number_with_no_targets_still_queues_and_overflows() {
        let mut b = Bed::new();
        b.number(N, &[], RoutingSettings::default(), QueueSettings { max_waiting: 1, ..Default::default() });
        b.inbound("c1", N);
        b.inbound("c2", N);
        assert_eq!(queued(&b).len(), 1);
        assert!(b.gateway_cmds().iter().any(|c| matches!(c, GatewayCommand::CallVoicemail { .. })));
    }

    #[test]
    fn position_announcements_follow_departures_rate_limited() {
        let q = QueueSettings {
            announce_every: Duration::from_secs(30),
            announce_min_gap: Duration::from_secs(5),
            ..Default::default()
        };
        let mut b = bed(q);
        for c in ["c1", "c2", "c3"] {
            b.inbound(c, N);
        }
        b.take();
        b.ended("c1", EndReason::CallerHangup);
        b.advance(Duration::from_millis(1));
        assert!(announced(&b).is_empty(), "too soon after call.queued");
        b.take();
        b.advance(Duration::from_secs(5));
        assert_eq!(announced(&b), [("c2".into(), 1), ("c3".into(), 2)]);
        b.take();
        // The position changes again right away: one announcement each,
        // not before the minimum gap.
        b.ended("c2", EndReason::CallerHangup);
        b.advance(Duration::from_secs(1));
        assert!(announced(&b).is_empty());
        b.advance(Duration::from_secs(4));
        assert_eq!(announced(&b), [("c3".into(), 1)]);
        b.take();
        // Nothing moves: the periodic announcement comes every 30s.
        b.advance(Duration::from_secs(29));
        assert!(announced(&b).is_empty());
        b.advance(Duration::from_secs(1));
        assert_eq!(announced(&b), [("c3".into(), 1)]);
        b.check();
    }

    #[test]
    fn a_lone_caller_hears_periodic_announcements() {
        let mut b = bed(QueueSettings { announce_every: Duration::from_secs(30), ..Default::default() });
        b.inbound("c1", N);
        b.take();
        b.advance(Duration::from_secs(29));
        assert!(announced(&b).is_empty());
        b.advance(Duration::from_secs(1));
        assert_eq!(announced(&b), [("c1".into(), 1)]);
        b.take();
        b.advance(Duration::from_secs(30));
        assert_eq!(announced(&b), [("c1".into(), 1)]);
    }

    #[test]
    fn no_announcements_when_switched_off() {
        let mut b = bed(QueueSettings { announce_position: false, ..Default::default() });
        b.inbound("c1", N);
        b.inbound("c2", N);
        b.take();
        b.ended("c1", EndReason::CallerHangup);
        b.advance(Duration::from_secs(120));
        assert!(announced(&b).is_empty());
    }

    /// The gateway must still hold the caller, so `call.queued` goes out,
    /// but it says not to play position or wait.
    #[test]
    fn call_queued_says_not_to_announce_when_switched_off() {
        let queued = |b: &Bed| {
            b.gateway_cmds()
                .into_iter()
                .filter_map(|c| match c {
                    GatewayCommand::CallQueued { call_id, announce, .. } => Some((call_id.to_string(), announce)),
                    _ => None,
                })
                .collect::<Vec<_>>()
        };
        let mut b = bed(QueueSettings { announce_position: false, ..Default::default() });
        b.inbound("c1", N);
        assert_eq!(queued(&b), [("c1".to_string(), false)]);
        let mut b = bed(QueueSettings::default());
        b.inbound("c1", N);
        assert_eq!(queued(&b), [("c1".to_string(), true)]);
    }

    #[test]
    fn announcements_never_delay_an_offer() {
        let mut b = bed(QueueSettings { announce_min_gap: Duration::from_millis(1), ..Default::default() });
        b.inbound("c1", N);
        b.inbound("c2", N);
        b.take();
        b.connect("a");
        // The offer and call.ringing come out of the connect itself; the
        // re-announcement of c2 is a later, separate step.
        assert_eq!(b.offered_users(), ["a"]);
        assert!(announced(&b).is_empty());
        b.advance(Duration::from_millis(1));
        assert!(announced(&b).is_empty(), "c1 is ringing, c2 did not move");
    }

    #[test]
    fn the_estimate_depends_on_position_and_staffing() {
        let mut b = Bed::new();
        b.agents(&["a", "b"]);
        b.simple_number(N, &["a", "b"], Strategy::RingInOrder);
        b.connect("a");
        b.connect("b");
        // Three calls of 60s each build the handle-time history.
        for i in 0..3 {
            let c = format!("h{i}");
            b.inbound(&c, N);
            let o = b.offers_to("a").last().unwrap().0;
            b.accept("a", o);
            b.answered(&c, "a");
            b.advance(Duration::from_secs(60));
            b.ended(&c, EndReason::AgentHangup);
            b.take();
        }
        // Both agents busy; callers queue.
        for c in ["x", "y"] {
            b.inbound(c, N);
            let who = b.offered_users()[0].clone();
            let o = b.offer_to(&who);
            b.accept(&who, o);
            b.take();
        }
        b.inbound("w1", N);
        b.inbound("w2", N);
        let ewts: Vec<_> = b
            .gateway_cmds()
            .into_iter()
            .filter_map(|c| match c {
                GatewayCommand::CallQueued { ewt_ms, ewt_known, position, .. } => Some((position, ewt_ms, ewt_known)),
                _ => None,
            })
            .collect();
        // AHT 60s, 2 staffed agents: position p waits p * 30s.
        assert_eq!(ewts, [(1, 30_000, true), (2, 60_000, true)]);
    }

    #[test]
    fn no_estimate_without_history() {
        let mut b = bed(QueueSettings::default());
        b.connect("a");
        b.inbound("c1", N);
        b.inbound("c2", N);
        assert!(
            b.gateway_cmds()
                .iter()
                .any(|c| matches!(c, GatewayCommand::CallQueued { ewt_known: false, ewt_ms: 0, .. }))
        );
    }

    #[test]
    fn caller_hangup_records_abandoned_or_missed_and_tells_assigned_users() {
        let mut b = bed(QueueSettings::default());
        b.connect("a");
        b.inbound("rung", N);
        b.inbound("never", N);
        b.take();
        b.ended("never", EndReason::CallerHangup);
        assert_eq!(b.call_record("never").unwrap().outcome, Outcome::Abandoned);
        b.ended("rung", EndReason::CallerHangup);
        assert_eq!(b.call_record("rung").unwrap().outcome, Outcome::Missed);
        let missed = b.user_msgs("a").into_iter().filter(|m| matches!(m, AgentMessage::MissedCall { .. })).count();
        assert_eq!(missed, 2);
        b.check();
    }

    #[test]
    fn a_call_ringing_when_the_queue_is_switched_on_gets_its_max_wait() {
        use crate::protocol::agent::{AgentCommand, WantedStatus};
        let mut b = Bed::new();
        b.agents(&["a"]);
        let closed = QueueSettings { enabled: false, ..Default::default() };
        let open = QueueSettings { enabled: true, max_wait: Duration::from_secs(60), ..Default::default() };
        assert!(b.number(N, &["a"], RoutingSettings::default(), closed).result.is_ok());
        b.connect("a");
        b.inbound("c1", N);
        assert_eq!(b.offered_users(), ["a"]);
        b.advance(Duration::from_secs(10));
        assert!(b.number(N, &["a"], RoutingSettings::default(), open).result.is_ok());
        b.agent("a", AgentCommand::StatusSet { status: WantedStatus::Away, reason: None });
        assert_eq!(queued(&b), [("c1".to_string(), 1)], "c1 now waits");
        b.take();
        // Counted from the call's arrival: 60 s after it, 50 s from here.
        let overflowed = |b: &Bed| b.gateway_cmds().iter().any(|c| matches!(c, GatewayCommand::CallVoicemail { .. }));
        b.advance(Duration::from_secs(49));
        assert!(!overflowed(&b), "{:?}", b.gateway_cmds());
        b.advance(Duration::from_secs(1));
        assert!(
            b.gateway_cmds()
                .iter()
                .any(|c| matches!(c, GatewayCommand::CallVoicemail { reason: OverflowReason::MaxWait, .. })),
            "{:?}",
            b.gateway_cmds()
        );
        b.check();
    }

    #[test]
    fn announcements_switched_off_and_on_resume_for_callers_already_waiting() {
        let on = QueueSettings {
            announce_every: Duration::from_secs(30),
            max_wait: Duration::from_secs(3600),
            ..Default::default()
        };
        let off = QueueSettings { announce_position: false, ..on.clone() };
        let mut b = bed(on.clone());
        b.inbound("c1", N);
        assert_eq!(queued(&b), [("c1".to_string(), 1)]);
        b.advance(Duration::from_secs(5));
        assert!(b.number(N, &["a"], RoutingSettings::default(), off).result.is_ok());
        b.advance(Duration::from_secs(60));
        assert!(announced(&b).is_empty(), "off: {:?}", announced(&b));
        assert!(b.number(N, &["a"], RoutingSettings::default(), on).result.is_ok());
        b.take();
        b.advance(Duration::from_secs(1));
        assert_eq!(announced(&b), [("c1".to_string(), 1)], "back on: the overdue announcement goes out");
        b.take();
        b.advance(Duration::from_secs(30));
        assert_eq!(announced(&b), [("c1".to_string(), 1)], "and then every 30 s");
        b.check();
    }
}
