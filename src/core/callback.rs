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
            if self.recent.contains(&RecentKey::Call(call_id.clone())) {
                return Ok(Reply::Duplicate);
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
        self.counters.callback += 1;
        let callback_id = CallbackId::from(format!("{}.cb{}", self.id, self.counters.callback));
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
            (e.key(), e.from.clone(), e.rung.clone(), e.priority, e.arrived_at)
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
