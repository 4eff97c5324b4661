//! Callbacks. A waiting caller may ask to be called back: its entry turns
//! into a callback *in place* (same priority, same arrival), so it is served
//! exactly when the caller would have been. An agent accepts it like a call;
//! the gateway dials the customer with the number as caller id. A failed
//! attempt frees the agent and, after `callback_retry_after`, puts the entry
//! back in play at its original place, up to `callback_attempts` attempts.

use super::account::Account;
use super::error::CoreError;
use super::history::Outcome;
use super::ids::{CallId, CallbackId, Phone, is_e164};
use super::output::RouteKey;
use super::queue::{EntryKind, Phase};
use super::recent::RecentKey;
use super::timers::Timer;
use super::user::Activity;
use super::{Reply, Seq};
use crate::protocol::agent::{AgentMessage, RevokeReason};
use crate::protocol::gateway::{DialOutcome, GatewayCommand};

impl Account {
    pub(crate) fn on_callback_requested(&mut self, call_id: CallId, phone: Option<Phone>) -> Result<Reply, CoreError> {
        let Some(&seq) = self.entry_by_call.get(&call_id) else {
            if self.recent.contains(&RecentKey::CallbackRequested(call_id.clone())) {
                return Ok(Reply::Duplicate);
            }
            if self.recent.contains(&RecentKey::Call(call_id.clone())) {
                // It ended otherwise (overflow, hang-up, answered) before
                // the request arrived: nothing will call the caller back.
                return Err(CoreError::conflict(format!("call {call_id} is over; no callback was registered")));
            }
            if self.calls.contains_key(&call_id) {
                return Err(CoreError::conflict(format!("call {call_id} is already connected to an agent")));
            }
            return Err(CoreError::not_found(format!("no waiting call {call_id}")));
        };
        let e = &self.entries[&seq];
        if e.phase != Phase::Queued {
            return Err(CoreError::conflict(format!("call {call_id} is being connected to an agent")));
        }
        let n = e.number;
        if !self.number(n).queue_cfg.callback {
            return Err(CoreError::conflict(format!("callbacks are off on {}", self.number(n).id)));
        }
        let phone = phone.unwrap_or_else(|| e.from.clone());
        if !is_e164(phone.as_str()) {
            return Err(CoreError::bad_request(format!("cannot call back {phone:?}: not an E.164 number")));
        }
        // Validated; from here on the request is accepted.
        let offers = e.offers.clone();
        for o in offers {
            self.end_offer(o, super::offer::OfferEnd::Revoked(RevokeReason::Reassigned));
        }
        let callback_id = CallbackId::from(self.issue_id(super::account::IdKind::Callback));
        let now = self.now;
        let (key, from, rung, priority, arrived_at) = {
            let Some(e) = self.entries.get_mut(&seq) else {
                return Ok(Reply::Done);
            };
            self.timers.cancel(e.max_wait_timer.take());
            e.kind =
                EntryKind::Callback { callback_id: callback_id.clone(), origin: call_id.clone(), phone, attempts: 0 };
            e.tried.clear();
            e.announced = None;
            // Who was rung for the call goes in the call's record; the
            // callback's record lists who is offered the callback (and its
            // visibility follows them, not the call's).
            (e.key(), e.from.clone(), std::mem::take(&mut e.rung), e.priority, e.arrived_at)
        };
        self.entry_by_call.remove(&call_id);
        self.entry_by_callback.insert(callback_id.clone(), seq);
        self.number_mut(n).callers.remove(&seq);
        self.bind(RouteKey::Callback(callback_id.clone()));
        // The inbound call itself is over from the engine's side: it ends
        // here with its one outcome, and the callback record continues it.
        let restricted = rung.iter().any(|&u| !self.is_assigned(u, n));
        let number_id = self.number(n).id.clone();
        self.record(super::history::Record::Call(super::history::CallRecord {
            id: call_id.to_string(),
            kind: super::history::CallKind::Inbound,
            number: number_id.clone(),
            from,
            to: Phone::new(number_id.as_str()),
            priority,
            rung: rung.iter().map(|&u| self.user(u).id.clone()).collect(),
            answered_by: None,
            placed_by: None,
            outcome: Outcome::CallbackRequested { callback_id: callback_id.clone() },
            origin_call: None,
            dial_call: None,
            attempts: 0,
            started_at: arrived_at,
            answered_at: None,
            ended_at: now,
            wait_ms: now.millis_since(arrived_at),
            talk_ms: 0,
            restricted,
        }));
        self.remember(RecentKey::Call(call_id.clone()), Some((n, self.entries[&seq].from.clone(), restricted)));
        self.remember(RecentKey::CallbackRequested(call_id.clone()), None);
        let position = self.position(key);
        self.send_gateway(GatewayCommand::CallbackAccepted { call_id, callback_id, position });
        self.dirty.insert(key);
        self.mark_stats(n);
        Ok(Reply::Done)
    }

    pub(crate) fn on_callback_result(
        &mut self,
        callback_id: CallbackId,
        outcome: DialOutcome,
    ) -> Result<Reply, CoreError> {
        let Some(&seq) = self.entry_by_callback.get(&callback_id) else {
            if self.recent.contains(&RecentKey::Callback(callback_id.clone())) {
                return Ok(Reply::Duplicate);
            }
            if self.calls.values().any(|c| c.callback.as_ref().is_some_and(|(cb, _, _)| *cb == callback_id)) {
                return Ok(Reply::Duplicate);
            }
            return Err(CoreError::not_found(format!("no callback {callback_id}")));
        };
        if !matches!(self.entries[&seq].phase, Phase::Connecting { .. }) {
            // Not dialling now: the result of an attempt already settled.
            return Ok(Reply::Duplicate);
        }
        match outcome {
            DialOutcome::Connected => self.callback_connected(seq),
            DialOutcome::NoAnswer | DialOutcome::Busy | DialOutcome::Failed => self.callback_attempt_failed(seq),
        }
        Ok(Reply::Done)
    }

    /// The customer picked up: the callback is done, the dial is a live call.
    pub(crate) fn callback_connected(&mut self, seq: Seq) {
        self.connect_entry(seq);
    }

    /// An attempt did not reach the customer: free the agent (no wrap-up),
    /// then retry later at the same place, or give up with an outcome.
    pub(crate) fn callback_attempt_failed(&mut self, seq: Seq) {
        let Some(e) = self.entries.get_mut(&seq) else {
            return;
        };
        let Phase::Connecting { agent, dial } = e.phase.clone() else {
            return;
        };
        let EntryKind::Callback { attempts, .. } = &mut e.kind else {
            return;
        };
        *attempts += 1;
        let attempts = *attempts;
        let n = e.number;
        if let Some(dial) = &dial {
            self.remember(RecentKey::Call(dial.clone()), None);
            self.send_user(agent, AgentMessage::CallEnded { call_id: dial.clone() });
            if matches!(&self.user(agent).activity, Activity::OnCall(c) if c == dial) {
                self.set_activity(agent, Activity::Idle);
            }
        }
        let cfg = &self.number(n).queue_cfg;
        if attempts >= cfg.callback_attempts {
            if let Some(e) = self.remove_entry(seq, RevokeReason::Reassigned) {
                self.finish_entry(e, Outcome::CallbackFailed);
            }
            return;
        }
        let until = self.now + cfg.callback_retry_after;
        let timer = self.arm(until, Timer::CallbackRetry(seq));
        if let Some(e) = self.entries.get_mut(&seq) {
            e.phase = Phase::RetryWait { until, timer };
            e.tried.clear();
            let key = e.key();
            self.enqueue(key);
        }
    }

    pub(crate) fn on_callback_retry(&mut self, seq: Seq) {
        let Some(e) = self.entries.get_mut(&seq) else {
            return;
        };
        if !matches!(e.phase, Phase::RetryWait { .. }) {
            return;
        }
        e.phase = Phase::Queued;
        let (key, n) = (e.key(), e.number);
        self.number_mut(n).ready.insert(key);
        self.dirty.insert(key);
        self.mark_stats(n);
    }
}

#[cfg(test)]
mod tests {
    use crate::core::Reply;
    use crate::core::admin::{AdminCommand, NumberSpec};
    use crate::core::history::{CallKind, Outcome};
    use crate::core::settings::{QueueSettings, RoutingSettings, Strategy};
    use crate::core::testkit::Bed;
    use crate::protocol::agent::{AgentMessage, OfferKind};
    use crate::protocol::gateway::{DialOutcome, EndReason, GatewayCommand, GatewayEvent};
    use std::time::Duration;

    const N: &str = "+15550100";

    fn bed() -> Bed {
        let mut b = Bed::new();
        b.agents(&["a"]);
        let q = QueueSettings {
            callback: true,
            callback_attempts: 2,
            callback_retry_after: Duration::from_secs(300),
            ..Default::default()
        };
        assert!(
            b.number(N, &["a"], RoutingSettings { strategy: Strategy::RingInOrder, ..Default::default() }, q)
                .result
                .is_ok()
        );
        b.take();
        b
    }

    fn request(b: &mut Bed, call: &str) -> String {
        let h = b.gw(GatewayEvent::CallbackRequested { call_id: call.into(), phone: Some("+15557770000".into()) });
        assert_eq!(h.result, Ok(Reply::Done));
        b.gateway_cmds()
            .into_iter()
            .find_map(|c| match c {
                GatewayCommand::CallbackAccepted { callback_id, call_id, .. } if call_id.as_str() == call => {
                    Some(callback_id.to_string())
                }
                _ => None,
            })
            .unwrap()
    }

    fn order(b: &Bed) -> Vec<String> {
        b.engine.inspect().queue(&b.account, &N.into()).into_iter().map(|q| q.id).collect()
    }

    #[test]
    fn a_callback_keeps_the_callers_place_and_age() {
        let mut b = bed();
        b.inbound("first", N);
        b.inbound("second", N);
        b.inbound("third", N);
        b.take();
        let cb = request(&mut b, "second");
        assert!(b.gateway_cmds().iter().any(|c| matches!(c, GatewayCommand::CallbackAccepted { position: 2, .. })));
        assert_eq!(order(&b), ["first", cb.as_str(), "third"]);
        // The caller leg ends; that is not an abandon.
        b.take();
        assert_eq!(b.ended("second", EndReason::CallerHangup).result, Ok(Reply::Duplicate));
        assert!(b.records().is_empty());
        // It is served exactly between the callers it waited with.
        b.connect("a");
        let mut served = Vec::new();
        for _ in 0..3 {
            let (o, id) = b.offers_to("a").last().cloned().unwrap();
            served.push(id.clone());
            b.take();
            b.accept("a", o);
            if id == cb {
                let dial = b.gateway_cmds().into_iter().find_map(|c| match c {
                    GatewayCommand::CallbackDial { call_id, to, caller_id, .. } => {
                        assert_eq!(to.as_str(), "+15557770000");
                        assert_eq!(caller_id.as_str(), N, "dialled with the number as caller id");
                        Some(call_id)
                    }
                    _ => None,
                });
                let dial = dial.unwrap();
                b.gw(GatewayEvent::CallbackResult { callback_id: cb.as_str().into(), outcome: DialOutcome::Connected });
                b.ended(dial.as_str(), EndReason::AgentHangup);
                let rec = b.call_record(&cb).unwrap();
                assert_eq!(
                    (rec.kind, rec.outcome, rec.answered_by.unwrap().as_str()),
                    (CallKind::Callback, Outcome::CallbackCompleted, "a")
                );
                assert_eq!(rec.origin_call.unwrap().as_str(), "second");
            } else {
                b.answered(&id, "a");
                b.ended(&id, EndReason::AgentHangup);
            }
        }
        assert_eq!(served, ["first", cb.as_str(), "third"]);
        b.check();
    }

    /// Each record lists the users rung for it: the call's, the users
    /// rung while the caller held; the callback's, those offered the
    /// callback.
    #[test]
    fn the_call_and_its_callback_each_record_their_own_rung_users() {
        let mut b = bed();
        b.agents(&["z"]);
        let spec = NumberSpec {
            name: "Line".into(),
            assigned: vec!["a".into(), "z".into()],
            caller_id: vec![],
            routing: RoutingSettings { strategy: Strategy::RingInOrder, ..Default::default() },
            queue: QueueSettings { callback: true, callback_attempts: 2, ..Default::default() },
        };
        assert!(b.admin(AdminCommand::UpsertNumber { number: N.into(), spec }).result.is_ok());
        b.connect("z");
        b.inbound("c1", N);
        b.offer_to("z");
        let away = crate::protocol::agent::AgentCommand::StatusSet {
            status: crate::protocol::agent::WantedStatus::Away,
            reason: None,
        };
        assert!(b.agent("z", away).result.is_ok());
        let cb = request(&mut b, "c1");
        assert_eq!(b.call_record("c1").unwrap().rung, ["z"]);
        b.connect("a");
        let (oa, id) = b.offers_to("a").last().cloned().unwrap();
        assert_eq!(id, cb);
        b.take();
        b.accept("a", oa);
        let dial = b
            .gateway_cmds()
            .into_iter()
            .find_map(|c| match c {
                GatewayCommand::CallbackDial { call_id, .. } => Some(call_id),
                _ => None,
            })
            .unwrap();
        b.gw(GatewayEvent::CallbackResult { callback_id: cb.as_str().into(), outcome: DialOutcome::Connected });
        b.ended(dial.as_str(), EndReason::AgentHangup);
        assert_eq!(b.call_record(&cb).unwrap().rung, ["a"], "z was rung for the call, not the callback");
        b.check();
    }

    #[test]
    fn callbacks_are_offered_as_kind_callback_and_recorded_on_request() {
        let mut b = bed();
        b.inbound("c1", N);
        b.take();
        let cb = request(&mut b, "c1");
        assert_eq!(
            b.call_record("c1").unwrap().outcome,
            Outcome::CallbackRequested { callback_id: cb.as_str().into() }
        );
        b.connect("a");
        assert!(b.user_msgs("a").iter().any(|m| matches!(m, AgentMessage::Offer { kind: OfferKind::Callback, callback_id: Some(id), call_id: None, .. } if id.as_str() == cb)));
    }

    /// c1 asks for a callback, c2 waits behind it; `a` comes online and
    /// accepts the callback. Returns its id.
    fn first_callback_accepted(b: &mut Bed) -> String {
        b.inbound("c1", N);
        b.inbound("c2", N);
        let cb = request(b, "c1");
        b.connect("a");
        let (o, id) = b.offers_to("a")[0].clone();
        assert_eq!(id, cb);
        b.take();
        b.accept("a", o);
        cb
    }

    #[test]
    fn failed_attempts_retry_later_at_the_same_place_then_fail_for_good() {
        let mut b = bed();
        let cb = first_callback_accepted(&mut b);
        b.gw(GatewayEvent::CallbackResult { callback_id: cb.as_str().into(), outcome: DialOutcome::NoAnswer });
        // Agent freed at once (no wrap-up) and takes the next caller; the
        // callback waits for its retry but keeps its place at the head.
        assert_eq!(b.offers_to("a").last().unwrap().1, "c2");
        assert_eq!(order(&b), [cb.as_str(), "c2"]);
        let c2 = b.offers_to("a").last().unwrap().0;
        b.accept("a", c2);
        b.answered("c2", "a");
        b.ended("c2", EndReason::AgentHangup);
        b.take();
        b.advance(Duration::from_secs(299));
        assert!(b.offered_users().is_empty(), "not before callback_retry_after");
        b.advance(Duration::from_secs(1));
        let (o, id) = b.offers_to("a")[0].clone();
        assert_eq!(id, cb);
        b.take();
        b.accept("a", o);
        b.gw(GatewayEvent::CallbackResult { callback_id: cb.as_str().into(), outcome: DialOutcome::Busy });
        let rec = b.call_record(&cb).unwrap();
        assert_eq!((rec.outcome, rec.attempts), (Outcome::CallbackFailed, 2));
        assert!(order(&b).is_empty());
        // A repeated result is a no-op.
        b.take();
        let h = b.gw(GatewayEvent::CallbackResult { callback_id: cb.as_str().into(), outcome: DialOutcome::Busy });
        assert_eq!(h.result, Ok(Reply::Duplicate));
        b.check();
    }

    fn dial_id(b: &Bed) -> String {
        b.gateway_cmds()
            .into_iter()
            .find_map(|c| match c {
                GatewayCommand::CallbackDial { call_id, .. } => Some(call_id.to_string()),
                _ => None,
            })
            .unwrap()
    }

    /// The dial's call id "goes on like any call": a failed agent leg is a
    /// bridge failure, not a failed attempt on the customer.
    #[test]
    fn a_failed_agent_leg_of_a_callback_dial_puts_it_back_without_using_an_attempt() {
        let mut b = bed();
        let cb = first_callback_accepted(&mut b);
        let dial = dial_id(&b);
        b.take();
        let other =
            GatewayEvent::CallBridgeFailed { call_id: dial.as_str().into(), agent: "z".into(), reason: "x".into() };
        assert_eq!(b.gw(other).result, Ok(Reply::Duplicate), "not the agent being bridged: a no-op");
        assert!(b.out.is_empty(), "{:#?}", b.out);
        let failed =
            GatewayEvent::CallBridgeFailed { call_id: dial.as_str().into(), agent: "a".into(), reason: "busy".into() };
        let h = b.gw(failed.clone());
        assert_eq!(h.result, Ok(Reply::Done), "{h:?}");
        assert!(h.journal);
        assert!(b.user_msgs("a").contains(&AgentMessage::CallEnded { call_id: dial.as_str().into() }));
        // Back at its place at once (no retry wait), and `a`, who failed it
        // this cycle, takes the next caller.
        assert_eq!(order(&b), [cb.as_str(), "c2"]);
        let (c2, id) = b.offers_to("a").last().cloned().unwrap();
        assert_eq!(id, "c2");
        assert!(b.unanswered_cmds().iter().all(|c| !matches!(c, GatewayCommand::CallbackDial { .. })));
        b.take();
        assert_eq!(b.gw(failed).result, Ok(Reply::Duplicate), "a repeat is a no-op");
        assert_eq!(b.ended(&dial, EndReason::Failed).result, Ok(Reply::Duplicate), "the dial is over");
        b.accept("a", c2);
        b.answered("c2", "a");
        b.take();
        b.ended("c2", EndReason::AgentHangup);
        // Then the callback again; its first real attempt is attempt 1.
        let (o, id) = b.offers_to("a").last().cloned().unwrap();
        assert_eq!(id, cb);
        b.accept("a", o);
        let dial = dial_id(&b);
        b.gw(GatewayEvent::CallbackResult { callback_id: cb.as_str().into(), outcome: DialOutcome::Connected });
        b.ended(&dial, EndReason::AgentHangup);
        let rec = b.call_record(&cb).unwrap();
        assert_eq!((rec.outcome, rec.attempts), (Outcome::CallbackCompleted, 1));
        b.check();
    }

    #[test]
    fn refused_when_off_or_not_waiting() {
        let mut b = Bed::new();
        b.agents(&["a"]);
        b.simple_number(N, &["a"], Strategy::RingAll);
        b.inbound("c1", N);
        let h = b.gw(GatewayEvent::CallbackRequested { call_id: "c1".into(), phone: None });
        assert_eq!(h.result.unwrap_err().code, crate::protocol::ErrorCode::Conflict);
        let h = b.gw(GatewayEvent::CallbackRequested { call_id: "nope".into(), phone: None });
        assert_eq!(h.result.unwrap_err().code, crate::protocol::ErrorCode::NotFound);
        let mut b = bed();
        b.inbound("c1", N);
        let h = b.gw(GatewayEvent::CallbackRequested { call_id: "c1".into(), phone: Some("call me".into()) });
        assert_eq!(h.result.unwrap_err().code, crate::protocol::ErrorCode::BadRequest);
        assert!(!h.journal);
        b.check();
    }

    #[test]
    fn a_request_for_a_call_that_ended_otherwise_is_refused_not_acked_as_a_repeat() {
        let mut b = Bed::new();
        b.agents(&["a"]);
        let q = QueueSettings { max_wait: Duration::from_secs(60), callback: true, ..Default::default() };
        assert!(b.number(N, &["a"], RoutingSettings::default(), q).result.is_ok());
        b.inbound("c1", N);
        b.advance(Duration::from_secs(60));
        assert!(b.gateway_cmds().iter().any(|c| matches!(c, GatewayCommand::CallVoicemail { .. })));
        b.take();
        // The caller pressed the key just as max_wait sent it to voicemail.
        let h = b.gw(GatewayEvent::CallbackRequested { call_id: "c1".into(), phone: None });
        assert_eq!(h.result.map_err(|e| e.code), Err(crate::protocol::ErrorCode::Conflict));
        assert!(b.gateway_cmds().iter().all(|c| !matches!(c, GatewayCommand::CallbackAccepted { .. })));
        // A real repeat still is one.
        b.inbound("c2", N);
        let cb = request(&mut b, "c2");
        assert!(!cb.is_empty());
        b.take();
        let h = b.gw(GatewayEvent::CallbackRequested { call_id: "c2".into(), phone: None });
        assert_eq!(h.result, Ok(Reply::Duplicate));
        b.check();
    }
}
