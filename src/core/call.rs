//! Calls with an agent on them, and the gateway events that move calls
//! along: answered, bridge failed, ended. Also the agent's own call
//! commands: dial out, hang up, monitor.

use super::account::Account;
use super::error::CoreError;
use super::history::{CallKind, CallRecord, Outcome, Record};
use super::ids::{CallId, CallbackId, NumberId, Phone, UserId, is_e164};
use super::offer::OfferEnd;
use super::output::RouteKey;
use super::queue::{EntryKind, Phase};
use super::recent::RecentKey;
use super::time::Instant;
use super::timers::Timer;
use super::user::Activity;
use super::{NumberIx, Reply, Seq, UserIx};
use crate::protocol::Ref;
use crate::protocol::agent::{AgentMessage, RevokeReason};
use crate::protocol::gateway::{EndReason, GatewayCommand, HangupReason, MonitorMode};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct LiveCall {
    pub(crate) id: CallId,
    pub(crate) kind: CallKind,
    pub(crate) number: NumberIx,
    pub(crate) agent: UserIx,
    pub(crate) from: Phone,
    pub(crate) to: Phone,
    pub(crate) priority: u8,
    pub(crate) started_at: Instant,
    pub(crate) answered_at: Option<Instant>,
    pub(crate) rung: Vec<UserIx>,
    pub(crate) placed_by: Option<UserIx>,
    /// For a callback dial: (callback, the call that asked for it, attempts).
    pub(crate) callback: Option<(CallbackId, CallId, u32)>,
}

impl Account {
    pub(crate) fn on_call_answered(&mut self, call_id: CallId, agent: UserId) -> Result<Reply, CoreError> {
        if let Some(&seq) = self.entry_by_call.get(&call_id) {
            let e = &self.entries[&seq];
            return match &e.phase {
                Phase::Connecting { agent: a, .. } if self.user(*a).id == agent => {
                    self.connect_entry(seq);
                    Ok(Reply::Done)
                }
                Phase::Connecting { agent: a, .. } => Err(CoreError::conflict(format!(
                    "call {call_id} is being bridged to {}, not {agent}",
                    self.user(*a).id
                ))),
                _ => Err(CoreError::conflict(format!("call {call_id} was not bridged to an agent"))),
            };
        }
        if let Some(c) = self.calls.get_mut(&call_id) {
            if self.users[c.agent.0 as usize].id != agent {
                return Err(CoreError::conflict(format!("call {call_id} belongs to another agent")));
            }
            if c.answered_at.is_some() {
                return Ok(Reply::Duplicate);
            }
            c.answered_at = Some(self.now);
            return Ok(Reply::Done);
        }
        // Gateways may also report the pickup of a callback dial this way.
        if let Some(seq) = self.dialling_callback(&call_id) {
            self.connect_entry(seq);
            return Ok(Reply::Done);
        }
        self.unknown_call(&call_id)
    }

    /// The bridge is up: the entry becomes a live call with its agent.
    pub(crate) fn connect_entry(&mut self, seq: Seq) {
        let Some(e) = self.remove_entry(seq, RevokeReason::AnsweredElsewhere) else {
            return;
        };
        let Phase::Connecting { agent, dial } = e.phase else {
            return;
        };
        let number_id = self.number(e.number).id.clone();
        let (id, kind, to, callback) = match e.kind {
            EntryKind::Call { call_id } => (call_id, CallKind::Inbound, Phone::new(number_id.as_str()), None),
            EntryKind::Callback { callback_id, origin, phone, attempts } => {
                let Some(dial) = dial else { return };
                (dial, CallKind::Callback, phone, Some((callback_id, origin, attempts + 1)))
            }
        };
        self.calls.insert(
            id.clone(),
            LiveCall {
                id,
                kind,
                number: e.number,
                agent,
                from: e.from,
                to,
                priority: e.priority,
                started_at: e.arrived_at,
                answered_at: Some(self.now),
                rung: e.rung,
                placed_by: None,
                callback,
            },
        );
    }

    pub(crate) fn on_bridge_failed(&mut self, call_id: CallId, agent: UserId) -> Result<Reply, CoreError> {
        let Some(&seq) = self.entry_by_call.get(&call_id) else {
            if self.calls.contains_key(&call_id) {
                return Err(CoreError::conflict(format!("call {call_id} is already connected")));
            }
            return self.unknown_call(&call_id);
        };
        let Phase::Connecting { agent: a, .. } = self.entries[&seq].phase else {
            // Already back in the queue: a repeat of the same failure.
            return Ok(Reply::Duplicate);
        };
        if self.user(a).id != agent {
            return Err(CoreError::conflict(format!(
                "call {call_id} is being bridged to {}, not {agent}",
                self.user(a).id
            )));
        }
        self.back_to_queue(seq, a);
        self.send_user(a, AgentMessage::CallEnded { call_id });
        self.set_activity(a, Activity::Idle);
        Ok(Reply::Done)
    }

    /// A connection attempt failed: the entry goes back to its original
    /// place (same priority and arrival), and the agent is not offered it
    /// again in this cycle.
    pub(crate) fn back_to_queue(&mut self, seq: Seq, agent: UserIx) {
        let now = self.now;
        let Some(e) = self.entries.get_mut(&seq) else {
            return;
        };
        e.phase = Phase::Queued;
        if !e.tried.contains(&agent) {
            e.tried.push(agent);
        }
        let (key, n, arrived, caller) = (e.key(), e.number, e.arrived_at, !e.is_callback());
        let cfg = &self.number(n).queue_cfg;
        if caller && cfg.enabled && self.entries[&seq].max_wait_timer.is_none() {
            let at = (arrived + cfg.max_wait).max(now);
            let t = self.arm(at, Timer::MaxWait(seq));
            if let Some(e) = self.entries.get_mut(&seq) {
                e.max_wait_timer = Some(t);
            }
        }
        self.enqueue(key);
    }

    pub(crate) fn on_call_ended(&mut self, call_id: CallId, reason: EndReason) -> Result<Reply, CoreError> {
        if let Some(&seq) = self.entry_by_call.get(&call_id) {
            let e = &self.entries[&seq];
            let rung = !e.rung.is_empty();
            let connecting = match &e.phase {
                Phase::Connecting { agent, .. } => Some(*agent),
                _ => None,
            };
            let outcome = match reason {
                EndReason::Failed => Outcome::Failed,
                _ if rung => Outcome::Missed,
                _ => Outcome::Abandoned,
            };
            let Some(e) = self.remove_entry(seq, RevokeReason::CallerHangup) else {
                return Ok(Reply::Done);
            };
            if let Some(a) = connecting {
                self.send_user(a, AgentMessage::CallEnded { call_id });
                self.set_activity(a, Activity::Idle);
            }
            self.finish_entry(e, outcome);
            return Ok(Reply::Done);
        }
        if let Some(c) = self.calls.remove(&call_id) {
            self.finish_call(c, reason);
            return Ok(Reply::Done);
        }
        // A callback dial that ended before its result: count it failed.
        if let Some(seq) = self.dialling_callback(&call_id) {
            self.callback_attempt_failed(seq);
            return Ok(Reply::Done);
        }
        self.unknown_call(&call_id)
    }

    fn dialling_callback(&self, call_id: &CallId) -> Option<Seq> {
        self.entry_by_callback
            .values()
            .copied()
            .find(|seq| matches!(&self.entries[seq].phase, Phase::Connecting { dial: Some(d), .. } if d == call_id))
    }

    /// A call with an agent is over: record it, then wrap-up or free the agent.
    fn finish_call(&mut self, c: LiveCall, reason: EndReason) {
        let now = self.now;
        let n = c.number;
        let number_id = self.number(n).id.clone();
        let outcome = match (c.kind, c.answered_at, reason) {
            (CallKind::Callback, _, _) => Outcome::CallbackCompleted,
            (_, Some(_), _) => Outcome::Answered,
            (CallKind::Outbound, None, EndReason::Failed) => Outcome::Failed,
            (CallKind::Outbound, None, _) => Outcome::NoAnswer,
            (_, None, EndReason::Failed) => Outcome::Failed,
            (_, None, _) => Outcome::Missed,
        };
        let placed_by_outbound_only = c.placed_by.is_some_and(|u| !self.is_assigned(u, n));
        let restricted = placed_by_outbound_only
            || c.rung.iter().any(|&u| !self.is_assigned(u, n))
            || (c.kind != CallKind::Outbound && !self.is_assigned(c.agent, n));
        let talk_ms = c.answered_at.map_or(0, |a| now.millis_since(a));
        let (id, origin_call, dial_call, attempts) = match &c.callback {
            Some((cb, origin, attempts)) => (cb.to_string(), Some(origin.clone()), Some(c.id.clone()), *attempts),
            None => (c.id.to_string(), None, None, 0),
        };
        let answered_by =
            (c.answered_at.is_some() || c.kind == CallKind::Callback).then(|| self.user(c.agent).id.clone());
        let record = CallRecord {
            id,
            kind: c.kind,
            number: number_id,
            from: c.from.clone(),
            to: c.to.clone(),
            priority: c.priority,
            rung: c.rung.iter().map(|&u| self.user(u).id.clone()).collect(),
            answered_by,
            placed_by: c.placed_by.map(|u| self.user(u).id.clone()),
            outcome,
            origin_call,
            dial_call,
            attempts,
            started_at: c.started_at,
            answered_at: c.answered_at,
            ended_at: now,
            wait_ms: c.answered_at.unwrap_or(now).millis_since(c.started_at),
            talk_ms,
            restricted,
        };
        self.remember(RecentKey::Call(c.id.clone()), Some((n, c.from.clone(), restricted)));
        if let Some((cb, _, _)) = &c.callback {
            self.remember(RecentKey::Callback(cb.clone()), None);
        }
        self.record(Record::Call(record));
        self.send_user(c.agent, AgentMessage::CallEnded { call_id: c.id.clone() });
        if c.answered_at.is_some() {
            let wrap = self.number(n).routing.wrap_up;
            // Handle time (talk plus wrap-up) feeds the wait estimate.
            let handle_ms = talk_ms + super::time::millis(wrap);
            if c.kind != CallKind::Outbound {
                self.number_mut(n).handle_times.record(handle_ms);
            }
            self.end_call_for_agent(c.agent, &c.id, wrap);
        } else {
            self.end_call_for_agent(c.agent, &c.id, std::time::Duration::ZERO);
        }
    }

    /// The agent's call is over: wrap-up if configured, else idle at once.
    pub(crate) fn end_call_for_agent(&mut self, u: UserIx, call_id: &CallId, wrap: std::time::Duration) {
        if !matches!(&self.user(u).activity, Activity::OnCall(c) if c == call_id) {
            return;
        }
        let now = self.now;
        if wrap.is_zero() {
            self.change_user(u, |user, now| {
                user.activity = Activity::Idle;
                user.idle_since = now;
            });
        } else {
            let until = now + wrap;
            let timer = self.arm(until, Timer::WrapUpEnd(u));
            self.set_activity(u, Activity::WrapUp { until, timer });
        }
    }

    pub(crate) fn end_wrap_up(&mut self, u: UserIx) {
        if let Activity::WrapUp { timer, .. } = self.user(u).activity {
            self.timers.cancel(Some(timer));
            self.change_user(u, |user, now| {
                user.activity = Activity::Idle;
                user.idle_since = now;
            });
        }
    }

    /// An id we do not hold: a late repeat of something already finished is
    /// a no-op; anything else is unknown.
    pub(crate) fn unknown_call(&self, call_id: &CallId) -> Result<Reply, CoreError> {
        if self.recent.contains(&RecentKey::Call(call_id.clone())) {
            Ok(Reply::Duplicate)
        } else {
            Err(CoreError::not_found(format!("no call {call_id}")))
        }
    }

    // ---- agent commands --------------------------------------------------

    /// `call.dial`: an outbound call from a number the user may use.
    pub(crate) fn dial(&mut self, u: UserIx, from: NumberId, to: Phone, ref_: Option<Ref>) -> Result<Reply, CoreError> {
        let n = self.usable_number(u, &from)?;
        if !is_e164(to.as_str()) {
            return Err(CoreError::bad_request(format!("to {to:?} is not an E.164 number")));
        }
        if matches!(self.user(u).activity, Activity::OnCall(_)) {
            return Err(CoreError::conflict("you are already on a call"));
        }
        self.end_pending_offer(u, OfferEnd::Withdrawn);
        self.end_wrap_up(u);
        let call_id = self.new_call_id("d");
        let now = self.now;
        self.calls.insert(
            call_id.clone(),
            LiveCall {
                id: call_id.clone(),
                kind: CallKind::Outbound,
                number: n,
                agent: u,
                from: Phone::new(from.as_str()),
                to: to.clone(),
                priority: 0,
                started_at: now,
                answered_at: None,
                rung: Vec::new(),
                placed_by: Some(u),
                callback: None,
            },
        );
        self.bind(RouteKey::Call(call_id.clone()));
        self.set_activity(u, Activity::OnCall(call_id.clone()));
        let agent = self.user(u).id.clone();
        self.send_user(
            u,
            AgentMessage::CallDialing { ref_, call_id: call_id.clone(), from: from.clone(), to: to.clone() },
        );
        self.send_gateway(GatewayCommand::CallDial { call_id, agent, to, caller_id: from });
        Ok(Reply::Done)
    }

    /// The number, if it is in this account and `u` may call or text from it.
    pub(crate) fn usable_number(&self, u: UserIx, from: &NumberId) -> Result<NumberIx, CoreError> {
        let n = self.number_named(from).ok_or_else(|| CoreError::not_found(format!("no number {from}")))?;
        if !self.may_use(u, n) {
            return Err(CoreError::forbidden(format!("you may not use {from}: not assigned and no caller-id access")));
        }
        Ok(n)
    }

    /// `call.hangup`: only for the caller's own current call.
    pub(crate) fn hangup(&mut self, u: UserIx, call_id: CallId) -> Result<Reply, CoreError> {
        if !matches!(&self.user(u).activity, Activity::OnCall(c) if *c == call_id) {
            return Err(CoreError::not_found(format!("you have no call {call_id}")));
        }
        self.send_gateway(GatewayCommand::CallHangup { call_id, reason: HangupReason::AgentRequest });
        Ok(Reply::ReadOnly)
    }

    /// `monitor`: a supervisor (or admin, owner) listens to, whispers to or
    /// barges into a live call on one of its numbers.
    pub(crate) fn monitor(&mut self, u: UserIx, call_id: CallId, mode: MonitorMode) -> Result<Reply, CoreError> {
        self.require_supervision(u)?;
        let c = self.calls.get(&call_id).filter(|c| c.answered_at.is_some());
        let Some(c) = c else {
            return Err(CoreError::not_found(format!("no live call {call_id}")));
        };
        if !self.user(u).role.is_manager() && !self.is_assigned(u, c.number) {
            return Err(CoreError::forbidden("you may only monitor calls on numbers you are assigned to"));
        }
        if c.agent == u {
            return Err(CoreError::conflict("you cannot monitor your own call"));
        }
        let supervisor = self.user(u).id.clone();
        self.send_gateway(GatewayCommand::CallMonitor { call_id, supervisor, mode });
        Ok(Reply::ReadOnly)
    }

    /// Monitoring and live queue stats: supervisors on Pro, admins, owner.
    pub(crate) fn require_supervision(&self, u: UserIx) -> Result<(), CoreError> {
        use super::team::Role;
        match self.user(u).role {
            Role::Owner | Role::Admin => Ok(()),
            Role::Supervisor if self.plan.has_supervisors() => Ok(()),
            Role::Supervisor => Err(CoreError::forbidden("supervisor features need the pro plan")),
            Role::Agent => Err(CoreError::forbidden("supervisors, admins and the owner only")),
        }
    }
}
