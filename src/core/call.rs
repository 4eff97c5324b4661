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
use super::recent::{CallTrace, RecentKey};
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

    /// A failure that does not name the bridge in progress (the call is
    /// back in the queue, connected, or bridged to someone else since) is
    /// a re-send of one already applied: the gateway re-sends what was not
    /// acked however things moved on meanwhile, and the contract makes a
    /// repeat a no-op that is acked again.
    pub(crate) fn on_bridge_failed(&mut self, call_id: CallId, agent: UserId) -> Result<Reply, CoreError> {
        let Some(&seq) = self.entry_by_call.get(&call_id) else {
            if self.calls.contains_key(&call_id) {
                return Ok(Reply::Duplicate);
            }
            // A callback dial's call id names a call like any other, so the
            // agent leg of a callback can fail this way too.
            if let Some(seq) = self.dialling_callback(&call_id) {
                return Ok(self.callback_bridge_failed(seq, call_id, &agent));
            }
            return self.unknown_call(&call_id);
        };
        let Phase::Connecting { agent: a, .. } = self.entries[&seq].phase else {
            return Ok(Reply::Duplicate);
        };
        if self.user(a).id != agent {
            return Ok(Reply::Duplicate);
        }
        self.back_to_queue(seq, a);
        self.send_user(a, AgentMessage::CallEnded { call_id });
        self.set_activity(a, Activity::Idle);
        Ok(Reply::Done)
    }

    /// The agent leg of callback dial `dial` failed. The customer was not
    /// the failure, so it is not an attempt: the callback goes back to its
    /// place at once, as a caller's call would, and the agent is not
    /// offered it again in this cycle.
    fn callback_bridge_failed(&mut self, seq: Seq, dial: CallId, agent: &UserId) -> Reply {
        let Phase::Connecting { agent: a, .. } = self.entries[&seq].phase else {
            return Reply::Duplicate;
        };
        if self.user(a).id != *agent {
            return Reply::Duplicate;
        }
        // The dial is over; its id stays known so that repeats, and the
        // gateway's `call.ended` for it, are no-ops.
        self.remember(RecentKey::Call(dial.clone()), None);
        self.back_to_queue(seq, a);
        self.send_user(a, AgentMessage::CallEnded { call_id: dial.clone() });
        if matches!(&self.user(a).activity, Activity::OnCall(c) if *c == dial) {
            self.set_activity(a, Activity::Idle);
        }
        Reply::Done
    }

    /// A connection attempt failed: the entry goes back to its original
    /// place (same priority and arrival), and the agent is not offered it
    /// again in this cycle.
    pub(crate) fn back_to_queue(&mut self, seq: Seq, agent: UserIx) {
        let Some(e) = self.entries.get_mut(&seq) else {
            return;
        };
        e.phase = Phase::Queued;
        if !e.tried.contains(&agent) {
            e.tried.push(agent);
        }
        let key = e.key();
        self.arm_max_wait(seq);
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
        // A call handed to voicemail, a forward or a hang-up is over.
        if self.settle_handoff(&RecentKey::Call(call_id.clone())) {
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
        let restricted = self.is_restricted(&c);
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

    /// Whether the call's record is hidden from the number's assigned users
    /// (see docs/protocol.md, "Visibility").
    fn is_restricted(&self, c: &LiveCall) -> bool {
        let n = c.number;
        c.placed_by.is_some_and(|u| !self.is_assigned(u, n))
            || c.rung.iter().any(|&u| !self.is_assigned(u, n))
            || (c.kind != CallKind::Outbound && !self.is_assigned(c.agent, n))
    }

    /// For a call still held (waiting, rung, being bridged or connected):
    /// what a finished call leaves behind, as far as it went so far.
    pub(crate) fn live_call_trace(&self, call_id: &CallId) -> Option<CallTrace> {
        if let Some(e) = self.entry_by_call.get(call_id).and_then(|seq| self.entries.get(seq)) {
            let restricted = e.rung.iter().any(|&u| !self.is_assigned(u, e.number));
            return Some((e.number, e.from.clone(), restricted));
        }
        let c = self.calls.get(call_id)?;
        Some((c.number, c.from.clone(), self.is_restricted(c)))
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
        self.end_pending_offer(u, OfferEnd::Released);
        self.end_wrap_up(u);
        let call_id = self.new_call_id();
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
    /// The rule is the permission matrix's (`Role::may`); this adds the
    /// messages.
    pub(crate) fn require_supervision(&self, u: UserIx) -> Result<(), CoreError> {
        use super::team::{Action, Role};
        let role = self.user(u).role;
        if role.may(Action::Supervise, self.plan) {
            return Ok(());
        }
        Err(match role {
            Role::Supervisor => CoreError::forbidden("supervisor features need the pro plan"),
            _ => CoreError::forbidden("supervisors, admins and the owner only"),
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::core::admin::{AdminCommand, NumberSpec};
    use crate::core::history::{CallKind, Outcome};
    use crate::core::settings::{QueueSettings, RoutingSettings, Strategy};
    use crate::core::team::{Lifecycle, Plan, Role};
    use crate::core::testkit::Bed;
    use crate::core::{Output, Reply};
    use crate::protocol::ErrorCode;
    use crate::protocol::agent::{AgentCommand, AgentMessage, Status};
    use crate::protocol::gateway::{EndReason, GatewayCommand, GatewayEvent, MonitorMode};
    use std::time::Duration;

    const N: &str = "+15550100";

    fn bed(agents: &[&str], wrap_up: Duration) -> Bed {
        let mut b = Bed::new();
        b.agents(agents);
        let routing = RoutingSettings { strategy: Strategy::RingInOrder, wrap_up, ..Default::default() };
        assert!(b.number(N, agents, routing, QueueSettings::default()).result.is_ok());
        for a in agents {
            b.connect(a);
        }
        b.take();
        b
    }

    fn ringing_and_accepted(b: &mut Bed, call: &str, agent: &str) {
        b.inbound(call, N);
        let o = b.offer_to(agent);
        b.take();
        b.accept(agent, o);
    }

    #[test]
    fn bridge_failure_puts_the_call_back_at_its_place_and_moves_on() {
        let mut b = bed(&["a", "b"], Duration::ZERO);
        b.agent("b", AgentCommand::StatusSet { status: crate::protocol::agent::WantedStatus::Away, reason: None });
        ringing_and_accepted(&mut b, "c1", "a");
        b.inbound("c2", N);
        b.take();
        let h = b.gw(GatewayEvent::CallBridgeFailed {
            call_id: "c1".into(),
            agent: "a".into(),
            reason: "device offline".into(),
        });
        assert_eq!(h.result, Ok(Reply::Done));
        assert!(b.user_msgs("a").contains(&AgentMessage::CallEnded { call_id: "c1".into() }));
        let order: Vec<_> = b.engine.inspect().queue(&b.account, &N.into()).into_iter().map(|q| q.id).collect();
        assert_eq!(order, ["c1", "c2"], "c1 keeps its place ahead of c2");
        // a is free again but already failed c1, so a takes c2; c1 goes to b
        // once b is back.
        assert_eq!(b.offers_to("a").last().unwrap().1, "c2");
        b.take();
        b.agent("b", AgentCommand::StatusSet { status: crate::protocol::agent::WantedStatus::Available, reason: None });
        assert_eq!(b.offers_to("b").last().unwrap().1, "c1");
        // A repeated failure report is a no-op.
        assert_eq!(
            b.gw(GatewayEvent::CallBridgeFailed { call_id: "c1".into(), agent: "a".into(), reason: "x".into() }).result,
            Ok(Reply::Duplicate)
        );
        b.check();
    }

    /// The gateway re-sends what was not acked, however the call moved on
    /// meanwhile: a failure naming an agent the call is no longer being
    /// bridged to is a no-op, acked again, while the call is known.
    #[test]
    fn a_bridge_failure_re_sent_after_another_agent_took_the_call_is_a_no_op() {
        use crate::protocol::agent::WantedStatus;
        let mut b = bed(&["a", "b"], Duration::ZERO);
        b.agent("b", AgentCommand::StatusSet { status: WantedStatus::Away, reason: None });
        ringing_and_accepted(&mut b, "c1", "a");
        // a takes c2 once free, so c1 waits for b.
        b.inbound("c2", N);
        let failed = GatewayEvent::CallBridgeFailed { call_id: "c1".into(), agent: "a".into(), reason: "x".into() };
        assert_eq!(b.gw(failed.clone()).result, Ok(Reply::Done));
        b.take();
        b.agent("b", AgentCommand::StatusSet { status: WantedStatus::Available, reason: None });
        let o = b.offer_to("b");
        b.accept("b", o);
        b.take();
        let before = b.engine.state_bytes();
        let h = b.gw(failed.clone());
        assert_eq!((h.result, h.journal), (Ok(Reply::Duplicate), false), "while b's bridge is in progress");
        assert!(b.out.is_empty(), "{:#?}", b.out);
        assert!(b.engine.state_bytes() == before, "no state change");
        assert_eq!(b.status_of("b"), Status::OnCall);
        assert!(b.unanswered_cmds().contains(&GatewayCommand::CallBridge { call_id: "c1".into(), agent: "b".into() }));
        b.answered("c1", "b");
        assert_eq!(b.gw(failed.clone()).result, Ok(Reply::Duplicate), "once connected to b");
        b.ended("c1", EndReason::AgentHangup);
        assert_eq!(b.gw(failed).result, Ok(Reply::Duplicate), "once over");
        let unknown = GatewayEvent::CallBridgeFailed { call_id: "zz".into(), agent: "a".into(), reason: "x".into() };
        assert_eq!(b.gw(unknown).result.unwrap_err().code, ErrorCode::NotFound);
        b.check();
    }

    #[test]
    fn answered_then_ended_records_one_outcome_and_wraps_up() {
        let mut b = bed(&["a"], Duration::from_secs(10));
        ringing_and_accepted(&mut b, "c1", "a");
        assert!(b.gateway_cmds().contains(&GatewayCommand::CallBridge { call_id: "c1".into(), agent: "a".into() }));
        b.answered("c1", "a");
        assert_eq!(b.answered("c1", "a").result, Ok(Reply::Duplicate));
        assert_eq!(b.status_of("a"), Status::OnCall);
        b.advance(Duration::from_secs(42));
        b.inbound("c2", N);
        b.take();
        b.ended("c1", EndReason::CallerHangup);
        let rec = b.call_record("c1").unwrap();
        assert_eq!(
            (rec.outcome, rec.answered_by.as_ref().map(|u| u.as_str()), rec.talk_ms),
            (Outcome::Answered, Some("a"), 42_000)
        );
        assert_eq!(b.status_of("a"), Status::WrapUp);
        assert!(b.offered_users().is_empty(), "no offer during wrap-up");
        b.take();
        b.advance(Duration::from_secs(10));
        assert_eq!(b.offers_to("a").len(), 1, "eligible again after wrap-up");
        assert_eq!(b.ended("c1", EndReason::CallerHangup).result, Ok(Reply::Duplicate));
        b.check();
    }

    #[test]
    fn wrapup_done_ends_wrap_up_early() {
        let mut b = bed(&["a"], Duration::from_secs(60));
        ringing_and_accepted(&mut b, "c1", "a");
        b.answered("c1", "a");
        b.ended("c1", EndReason::AgentHangup);
        b.inbound("c2", N);
        b.take();
        assert!(b.agent("a", AgentCommand::WrapupDone {}).result.is_ok());
        assert_eq!(b.offers_to("a").len(), 1);
        assert_eq!(b.agent("a", AgentCommand::WrapupDone {}).result.unwrap_err().code, ErrorCode::Conflict);
    }

    #[test]
    fn outbound_needs_assignment_or_caller_id_access() {
        let mut b = bed(&["a"], Duration::ZERO);
        b.agents(&["carol", "mallory"]);
        let spec = NumberSpec {
            name: "Support".into(),
            assigned: vec!["a".into()],
            caller_id: vec!["carol".into()],
            routing: RoutingSettings::default(),
            queue: QueueSettings::default(),
        };
        b.admin(AdminCommand::UpsertNumber { number: N.into(), spec });
        b.connect("carol");
        b.connect("mallory");
        b.take();
        let dial = |to: &str| AgentCommand::CallDial { from: N.into(), to: to.into() };
        let h = b.agent("mallory", dial("+15557770000"));
        assert_eq!(h.result.unwrap_err().code, ErrorCode::Forbidden);
        assert!(!h.journal);
        let h = b.agent(
            "mallory",
            AgentCommand::MessageSend { from: N.into(), to: "+15557770000".into(), body: "hi".into() },
        );
        assert_eq!(h.result.unwrap_err().code, ErrorCode::Forbidden);
        assert!(b.gateway_cmds().is_empty());
        assert_eq!(b.agent("carol", dial("not a number")).result.unwrap_err().code, ErrorCode::BadRequest);
        assert_eq!(
            b.agent("carol", AgentCommand::CallDial { from: "+15559999999".into(), to: "+15557770000".into() })
                .result
                .unwrap_err()
                .code,
            ErrorCode::NotFound
        );
        assert!(b.agent("carol", dial("+15557770000")).result.is_ok());
        let call_id = match &b.gateway_cmds()[..] {
            [GatewayCommand::CallDial { call_id, agent, caller_id, .. }] => {
                assert_eq!((agent.as_str(), caller_id.as_str()), ("carol", N));
                call_id.clone()
            }
            other => panic!("{other:?}"),
        };
        assert_eq!(b.status_of("carol"), Status::OnCall);
        assert_eq!(
            b.agent("carol", dial("+15557770000")).result.unwrap_err().code,
            ErrorCode::Conflict,
            "one call at a time"
        );
        b.answered(call_id.as_str(), "carol");
        b.ended(call_id.as_str(), EndReason::AgentHangup);
        let rec = b.call_record(call_id.as_str()).unwrap();
        assert_eq!((rec.kind, rec.outcome, rec.restricted), (CallKind::Outbound, Outcome::Answered, true));
        assert!(b.agent("a", dial("+15557770000")).result.is_ok());
        b.check();
    }

    /// What a gateway must be told again when it reconnects: the bridge in
    /// progress and the outbound dial nobody picked up yet, each until the
    /// gateway answers it.
    #[test]
    fn bridges_and_unanswered_dials_are_the_commands_to_send_again() {
        let mut b = bed(&["a", "b"], Duration::ZERO);
        ringing_and_accepted(&mut b, "c1", "a");
        b.take();
        assert!(b.agent("b", AgentCommand::CallDial { from: N.into(), to: "+15557770000".into() }).result.is_ok());
        let dial = match &b.gateway_cmds()[..] {
            [d @ GatewayCommand::CallDial { .. }] => d.clone(),
            other => panic!("{other:?}"),
        };
        let GatewayCommand::CallDial { call_id: dialled, .. } = &dial else { unreachable!() };
        let again = b.unanswered_cmds();
        assert_eq!(again.len(), 2, "{again:?}");
        assert!(again.contains(&GatewayCommand::CallBridge { call_id: "c1".into(), agent: "a".into() }));
        assert!(again.contains(&dial), "the dial is sent again as it was: {again:?}");

        b.answered(dialled.as_str(), "b");
        b.answered("c1", "a");
        assert!(b.unanswered_cmds().is_empty(), "answered calls need nothing again");
        b.check();
    }

    #[test]
    fn agents_hang_up_only_their_own_calls() {
        let mut b = bed(&["a", "b"], Duration::ZERO);
        ringing_and_accepted(&mut b, "c1", "a");
        b.answered("c1", "a");
        b.take();
        assert_eq!(
            b.agent("b", AgentCommand::CallHangup { call_id: "c1".into() }).result.unwrap_err().code,
            ErrorCode::NotFound
        );
        assert!(b.agent("a", AgentCommand::CallHangup { call_id: "c1".into() }).result.is_ok());
        assert!(matches!(&b.gateway_cmds()[..], [GatewayCommand::CallHangup { .. }]));
    }

    #[test]
    fn monitor_is_for_supervisors_on_pro_and_their_numbers() {
        let mut b = bed(&["a"], Duration::ZERO);
        b.user("sue", Role::Supervisor);
        b.user("sid", Role::Supervisor);
        b.user("ada", Role::Admin);
        let spec = NumberSpec {
            name: "Support".into(),
            assigned: vec!["a".into(), "sue".into()],
            caller_id: vec![],
            routing: RoutingSettings { targets: Some(vec!["a".into()]), ..Default::default() },
            queue: QueueSettings::default(),
        };
        b.admin(AdminCommand::UpsertNumber { number: N.into(), spec });
        for u in ["sue", "sid", "ada"] {
            b.connect(u);
        }
        ringing_and_accepted(&mut b, "c1", "a");
        let listen = AgentCommand::Monitor { call_id: "c1".into(), mode: MonitorMode::Listen };
        assert_eq!(
            b.agent("sue", listen.clone()).result.unwrap_err().code,
            ErrorCode::NotFound,
            "not live before it is answered"
        );
        b.answered("c1", "a");
        b.take();
        assert_eq!(
            b.agent("a", listen.clone()).result.unwrap_err().code,
            ErrorCode::Forbidden,
            "agents cannot monitor"
        );
        assert_eq!(b.agent("sid", listen.clone()).result.unwrap_err().code, ErrorCode::Forbidden, "not sid's number");
        assert!(b.agent("sue", listen.clone()).result.is_ok());
        assert!(
            b.agent("ada", AgentCommand::Monitor { call_id: "c1".into(), mode: MonitorMode::Barge }).result.is_ok()
        );
        assert_eq!(
            b.gateway_cmds(),
            [
                GatewayCommand::CallMonitor {
                    call_id: "c1".into(),
                    supervisor: "sue".into(),
                    mode: MonitorMode::Listen
                },
                GatewayCommand::CallMonitor {
                    call_id: "c1".into(),
                    supervisor: "ada".into(),
                    mode: MonitorMode::Barge
                },
            ]
        );
        // Off the pro plan, supervisors lose it.
        b.admin(AdminCommand::SetPlan { plan: Plan::Team });
        assert_eq!(b.agent("sue", listen).result.unwrap_err().code, ErrorCode::Forbidden);
    }

    #[test]
    fn queue_stats_are_coalesced_per_interval() {
        let mut b = bed(&["a"], Duration::ZERO);
        b.user("sue", Role::Supervisor);
        b.admin(AdminCommand::UpsertNumber {
            number: N.into(),
            spec: NumberSpec {
                name: "Support".into(),
                assigned: vec!["a".into(), "sue".into()],
                caller_id: vec![],
                routing: RoutingSettings { targets: Some(vec!["a".into()]), ..Default::default() },
                queue: QueueSettings::default(),
            },
        });
        let sue = b.connect("sue");
        b.take();
        assert!(b.agent("a", AgentCommand::Subscribe { topic: crate::protocol::agent::Topic::Queues }).result.is_err());
        b.agent("sue", AgentCommand::Subscribe { topic: crate::protocol::agent::Topic::Queues });
        assert_eq!(b.conn_msgs(sue).len(), 1, "a snapshot at once");
        b.take();
        for i in 0..50 {
            b.inbound(&format!("c{i}"), N);
        }
        b.advance(Duration::from_millis(999));
        assert!(b.conn_msgs(sue).is_empty(), "nothing before the interval");
        b.advance(Duration::from_millis(1));
        match &b.conn_msgs(sue)[..] {
            [AgentMessage::QueueStats { waiting, agents, .. }] => {
                assert_eq!(*waiting, 50);
                assert_eq!(agents.ringing, 1);
            }
            other => panic!("expected one coalesced update, got {other:?}"),
        }
        b.take();
        b.disconnect(sue);
        b.advance(Duration::from_secs(5));
        assert!(b.conn_msgs(sue).is_empty());
    }

    #[test]
    fn deactivating_a_ringing_user_closes_it_and_moves_the_call_on() {
        let mut b = bed(&["a", "b"], Duration::ZERO);
        b.inbound("c1", N);
        b.offer_to("a");
        b.take();
        b.admin(AdminCommand::SetLifecycle { user: "a".into(), lifecycle: Lifecycle::Deactivated });
        assert!(b.out.iter().any(|o| matches!(o, Output::Close { .. })));
        assert_eq!(b.offered_users(), ["b"]);
        assert_eq!(b.status_of("a"), Status::Offline);
        let h = b.input(crate::core::Input::Connect {
            account: b.account.clone(),
            user: "a".into(),
            conn: crate::core::ids::ConnId(99),
        });
        assert_eq!(h.result.unwrap_err().code, ErrorCode::Forbidden);
        b.check();
    }

    #[test]
    fn removing_a_user_on_a_call_keeps_the_call_and_its_history() {
        let mut b = bed(&["a", "b"], Duration::ZERO);
        ringing_and_accepted(&mut b, "c1", "a");
        b.answered("c1", "a");
        b.admin(AdminCommand::SetLifecycle { user: "a".into(), lifecycle: Lifecycle::Removed });
        assert!(b.engine.inspect().targets(&b.account, &N.into()) == ["b"]);
        b.take();
        b.ended("c1", EndReason::AgentHangup);
        assert_eq!(b.call_record("c1").unwrap().answered_by.unwrap().as_str(), "a");
        b.inbound("c2", N);
        assert_eq!(b.offered_users(), ["b"]);
        b.check();
    }
}
