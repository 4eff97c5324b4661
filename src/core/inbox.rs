//! The shared inbox: SMS in and out, voicemails. Assigned users of a number
//! get each item live; the store keeps them for history.

use super::account::Account;
use super::error::CoreError;
use super::history::{MessageRecord, Record, VoicemailRecord};
use super::ids::{CallId, MessageId, NumberId, Phone, is_e164};
use super::output::RouteKey;
use super::recent::RecentKey;
use super::time::Timestamp;
use super::{Reply, UserIx};
use crate::protocol::Ref;
use crate::protocol::agent::{AgentMessage, Direction};
use crate::protocol::gateway::{DeliveryStatus, GatewayCommand};

/// Longest SMS body accepted (ten concatenated segments).
pub const MAX_BODY_CHARS: usize = 1600;
/// Longest voicemail URL accepted.
pub const MAX_URL_BYTES: usize = 2048;

fn check_body(body: &str) -> Result<(), CoreError> {
    if body.is_empty() {
        return Err(CoreError::bad_request("body is empty"));
    }
    if body.chars().count() > MAX_BODY_CHARS {
        return Err(CoreError::bad_request(format!("body is longer than {MAX_BODY_CHARS} characters")));
    }
    Ok(())
}

impl Account {
    pub(crate) fn on_message_inbound(
        &mut self,
        message_id: MessageId,
        to: NumberId,
        from: Phone,
        body: String,
    ) -> Result<Reply, CoreError> {
        if self.recent.contains(&RecentKey::Message(message_id.clone())) {
            return Ok(Reply::Duplicate);
        }
        let n = self.number_named(&to).ok_or_else(|| CoreError::not_found(format!("no number {to}")))?;
        check_body(&body)?;
        let now = self.now;
        self.remember(RecentKey::Message(message_id.clone()), None);
        self.send_assigned(
            n,
            AgentMessage::InboxMessage {
                ref_: None,
                number: to.clone(),
                message_id: message_id.clone(),
                direction: Direction::Inbound,
                from: from.clone(),
                to: Phone::new(to.as_str()),
                body: body.clone(),
                at: Timestamp(now),
            },
        );
        self.record(Record::Message(MessageRecord {
            id: message_id,
            number: to.clone(),
            direction: Direction::Inbound,
            from,
            to: Phone::new(to.as_str()),
            body,
            at: now,
            sent_by: None,
            restricted: false,
        }));
        Ok(Reply::Done)
    }

    pub(crate) fn on_message_status(
        &mut self,
        message_id: MessageId,
        status: DeliveryStatus,
    ) -> Result<Reply, CoreError> {
        let key = RecentKey::Message(message_id.clone());
        if !self.recent.contains(&key) {
            return Err(CoreError::not_found(format!("no recent message {message_id}")));
        }
        self.settle_handoff(&key);
        self.record(Record::MessageStatus { id: message_id, status, at: self.now });
        Ok(Reply::Done)
    }

    /// `message.send` from a softphone.
    pub(crate) fn send_message(
        &mut self,
        u: UserIx,
        from: NumberId,
        to: Phone,
        body: String,
        ref_: Option<Ref>,
    ) -> Result<Reply, CoreError> {
        let n = self.usable_number(u, &from)?;
        if !is_e164(to.as_str()) {
            return Err(CoreError::bad_request(format!("to {to:?} is not an E.164 number")));
        }
        check_body(&body)?;
        let message_id = MessageId::from(self.issue_id(super::account::IdKind::Message));
        let now = self.now;
        // Text sent by an outbound-only user stays between it and the managers.
        let restricted = !self.is_assigned(u, n);
        self.remember(RecentKey::Message(message_id.clone()), None);
        self.bind(RouteKey::Message(message_id.clone()));
        let item = |ref_| AgentMessage::InboxMessage {
            ref_,
            number: from.clone(),
            message_id: message_id.clone(),
            direction: Direction::Outbound,
            from: Phone::new(from.as_str()),
            to: to.clone(),
            body: body.clone(),
            at: Timestamp(now),
        };
        self.send_user(u, item(ref_));
        if !restricted {
            let others: Vec<_> = self
                .number(n)
                .assigned
                .iter()
                .filter(|&&o| o != u)
                .map(|&o| self.user(o))
                .filter(|user| user.active() && user.connected())
                .map(|user| user.id.clone())
                .collect();
            if !others.is_empty() {
                self.out.push(super::output::Output::Users {
                    account: self.id.clone(),
                    users: others,
                    msg: item(None),
                });
            }
        }
        // Kept until the gateway reports its status (super::recent).
        self.hand_off(
            RecentKey::Message(message_id.clone()),
            GatewayCommand::MessageSend {
                message_id: message_id.clone(),
                from: from.clone(),
                to: to.clone(),
                body: body.clone(),
            },
        );
        self.record(Record::Message(MessageRecord {
            id: message_id,
            number: from.clone(),
            direction: Direction::Outbound,
            from: Phone::new(from.as_str()),
            to,
            body,
            at: now,
            sent_by: Some(self.user(u).id.clone()),
            restricted,
        }));
        Ok(Reply::Done)
    }

    pub(crate) fn on_voicemail(&mut self, call_id: CallId, url: String, duration_ms: u64) -> Result<Reply, CoreError> {
        if self.recent.contains(&RecentKey::Voicemail(call_id.clone())) {
            return Ok(Reply::Duplicate);
        }
        if url.is_empty() || url.len() > MAX_URL_BYTES {
            return Err(CoreError::bad_request(format!("url must be 1 to {MAX_URL_BYTES} bytes")));
        }
        // A gateway may report the voicemail before the call's end: taking
        // it only once the call is over would lose it.
        let trace = self.recent.trace(&RecentKey::Call(call_id.clone())).cloned();
        let Some((n, from, restricted)) = trace.or_else(|| self.live_call_trace(&call_id)) else {
            return Err(CoreError::not_found(format!("no live or recently ended call {call_id}")));
        };
        let now = self.now;
        let number = self.number(n).id.clone();
        // A voicemail shows the gateway had the call.voicemail.
        self.settle_handoff(&RecentKey::Call(call_id.clone()));
        self.remember(RecentKey::Voicemail(call_id.clone()), None);
        if !restricted {
            self.send_assigned(
                n,
                AgentMessage::Voicemail {
                    number: number.clone(),
                    call_id: call_id.clone(),
                    from: from.clone(),
                    url: url.clone(),
                    duration_ms,
                    at: Timestamp(now),
                },
            );
        }
        self.record(Record::Voicemail(VoicemailRecord {
            call_id,
            number,
            from,
            url,
            duration_ms,
            at: now,
            restricted,
        }));
        Ok(Reply::Done)
    }
}

#[cfg(test)]
mod tests {
    use crate::core::Reply;
    use crate::core::admin::{AdminCommand, NumberSpec};
    use crate::core::history::Record;
    use crate::core::settings::{QueueSettings, RoutingSettings, Strategy};
    use crate::core::testkit::Bed;
    use crate::protocol::agent::{AgentCommand, AgentMessage, Direction};
    use crate::protocol::gateway::{DeliveryStatus, EndReason, GatewayCommand, GatewayEvent};
    use std::time::Duration;

    const N: &str = "+15550100";

    /// a and b assigned; t is a routing target but not assigned; o is
    /// outbound-only; x is in the account with nothing to do with N.
    fn bed() -> Bed {
        let mut b = Bed::new();
        b.agents(&["a", "b", "t", "o", "x"]);
        let spec = NumberSpec {
            name: "Support".into(),
            assigned: vec!["a".into(), "b".into()],
            caller_id: vec!["o".into()],
            routing: RoutingSettings {
                strategy: Strategy::RingInOrder,
                targets: Some(vec!["t".into(), "a".into()]),
                ..Default::default()
            },
            queue: QueueSettings { max_wait: Duration::from_secs(60), ..Default::default() },
        };
        assert!(b.admin(AdminCommand::UpsertNumber { number: N.into(), spec }).result.is_ok());
        for u in ["a", "b", "t", "o", "x"] {
            b.connect(u);
        }
        b.take();
        b
    }

    fn got(b: &Bed, user: &str, pred: impl Fn(&AgentMessage) -> bool) -> bool {
        b.user_msgs(user).iter().any(pred)
    }

    #[test]
    fn inbound_sms_reaches_assigned_users_only_once() {
        let mut b = bed();
        let sms = GatewayEvent::MessageInbound {
            message_id: "m1".into(),
            to: N.into(),
            from: "+15557770000".into(),
            body: "hello".into(),
        };
        assert_eq!(b.gw(sms.clone()).result, Ok(Reply::Done));
        let is_inbox = |m: &AgentMessage| matches!(m, AgentMessage::InboxMessage { direction: Direction::Inbound, .. });
        assert!(got(&b, "a", is_inbox) && got(&b, "b", is_inbox));
        for u in ["t", "o", "x"] {
            assert!(!got(&b, u, is_inbox), "{u} must not see the inbox");
        }
        b.take();
        assert_eq!(b.gw(sms).result, Ok(Reply::Duplicate));
        assert!(b.out.is_empty());
        let bad = GatewayEvent::MessageInbound {
            message_id: "m2".into(),
            to: "+15559999999".into(),
            from: "+1555".into(),
            body: "x".into(),
        };
        assert_eq!(b.gw(bad).result.unwrap_err().code, crate::protocol::ErrorCode::NotFound);
    }

    #[test]
    fn a_call_that_rang_a_non_assigned_target_is_hidden_from_assigned_users() {
        let mut b = bed();
        b.inbound("c1", N);
        assert_eq!(b.offered_users(), ["t"]);
        b.ended("c1", EndReason::CallerHangup);
        assert!(b.call_record("c1").unwrap().restricted);
        assert!(!got(&b, "a", |m| matches!(m, AgentMessage::MissedCall { .. })));
        // A call only assigned users handled is visible and announced.
        b.agent("t", AgentCommand::StatusSet { status: crate::protocol::agent::WantedStatus::Away, reason: None });
        b.take();
        b.inbound("c2", N);
        assert_eq!(b.offered_users(), ["a"]);
        b.ended("c2", EndReason::CallerHangup);
        assert!(!b.call_record("c2").unwrap().restricted);
        assert!(got(&b, "a", |m| matches!(m, AgentMessage::MissedCall { .. })));
        assert!(got(&b, "b", |m| matches!(m, AgentMessage::MissedCall { .. })));
        assert!(!got(&b, "t", |m| matches!(m, AgentMessage::MissedCall { .. })));
    }

    #[test]
    fn voicemail_fans_out_for_visible_calls() {
        let mut b = bed();
        for u in ["t", "a"] {
            b.agent(u, AgentCommand::StatusSet { status: crate::protocol::agent::WantedStatus::Away, reason: None });
        }
        b.inbound("c1", N);
        b.advance(Duration::from_secs(60));
        assert!(b.gateway_cmds().iter().any(|c| matches!(c, GatewayCommand::CallVoicemail { .. })));
        assert_eq!(b.unanswered_cmds().len(), 1, "handed off to voicemail");
        b.take();
        let vm = GatewayEvent::VoicemailRecorded {
            call_id: "c1".into(),
            url: "https://vm.test/1.wav".into(),
            duration_ms: 12_000,
        };
        assert_eq!(b.gw(vm.clone()).result, Ok(Reply::Done));
        assert!(b.unanswered_cmds().is_empty(), "a voicemail shows the gateway had the call");
        assert!(got(&b, "b", |m| matches!(m, AgentMessage::Voicemail { duration_ms: 12_000, .. })));
        assert!(!got(&b, "o", |m| matches!(m, AgentMessage::Voicemail { .. })));
        assert!(b.records().iter().any(|r| matches!(r, Record::Voicemail(v) if !v.restricted)));
        b.take();
        assert_eq!(b.gw(vm).result, Ok(Reply::Duplicate));
        let unknown = GatewayEvent::VoicemailRecorded { call_id: "zz".into(), url: "u".into(), duration_ms: 1 };
        assert!(b.gw(unknown).result.is_err());
    }

    /// A gateway may report the voicemail before the call's end: it is
    /// kept and announced then, once, and the call still ends normally.
    #[test]
    fn voicemail_before_the_calls_end_is_kept_once() {
        let mut b = bed();
        b.agent("t", AgentCommand::StatusSet { status: crate::protocol::agent::WantedStatus::Away, reason: None });
        let vm = |call: &str| GatewayEvent::VoicemailRecorded {
            call_id: call.into(),
            url: format!("https://vm.test/{call}.wav"),
            duration_ms: 9_000,
        };
        let is_vm = |call: &'static str| move |m: &AgentMessage| matches!(m, AgentMessage::Voicemail { call_id, from, .. } if call_id.as_str() == call && from.as_str() == "+15551230001");
        let vm_records = |b: &Bed, call: &str| {
            b.records()
                .iter()
                .filter(|r| matches!(r, Record::Voicemail(v) if v.call_id.as_str() == call && !v.restricted))
                .count()
        };
        // Still rung (the entry is held).
        b.inbound("c1", N);
        assert_eq!(b.offered_users(), ["a"]);
        let h = b.gw(vm("c1"));
        assert_eq!((h.result, h.journal), (Ok(Reply::Done), true));
        assert!(got(&b, "a", is_vm("c1")) && got(&b, "b", is_vm("c1")));
        assert!(!got(&b, "o", is_vm("c1")));
        assert_eq!(b.gw(vm("c1")).result, Ok(Reply::Duplicate));
        b.ended("c1", EndReason::CallerHangup);
        assert!(b.call_record("c1").is_some());
        assert_eq!(b.gw(vm("c1")).result, Ok(Reply::Duplicate), "after the end too");
        assert_eq!(vm_records(&b, "c1"), 1);
        // Connected to an agent (say, sent on to voicemail by the agent).
        b.take();
        b.inbound("c2", N);
        let o = b.offer_to("a");
        b.accept("a", o);
        b.answered("c2", "a");
        assert_eq!(b.gw(vm("c2")).result, Ok(Reply::Done));
        assert!(got(&b, "b", is_vm("c2")));
        assert_eq!(b.gw(vm("c2")).result, Ok(Reply::Duplicate));
        b.ended("c2", EndReason::Transferred);
        assert_eq!(b.gw(vm("c2")).result, Ok(Reply::Duplicate));
        assert_eq!(vm_records(&b, "c2"), 1);
        b.check();
    }

    #[test]
    fn outbound_sms_by_an_outbound_only_user_stays_private() {
        let mut b = bed();
        let send = |to: &str| AgentCommand::MessageSend { from: N.into(), to: to.into(), body: "on my way".into() };
        assert!(b.agent("o", send("+15557770000")).result.is_ok());
        assert!(got(&b, "o", |m| matches!(m, AgentMessage::InboxMessage { direction: Direction::Outbound, .. })));
        assert!(!got(&b, "a", |m| matches!(m, AgentMessage::InboxMessage { .. })));
        assert!(matches!(&b.gateway_cmds()[..], [GatewayCommand::MessageSend { .. }]));
        assert!(b.records().iter().any(|r| matches!(r, Record::Message(m) if m.restricted)));
        b.take();
        assert!(b.agent("a", send("+15557770000")).result.is_ok());
        assert!(got(&b, "b", |m| matches!(m, AgentMessage::InboxMessage { direction: Direction::Outbound, .. })));
        let long = "x".repeat(super::MAX_BODY_CHARS + 1);
        let h = b.agent("a", AgentCommand::MessageSend { from: N.into(), to: "+15557770000".into(), body: long });
        assert_eq!(h.result.unwrap_err().code, crate::protocol::ErrorCode::BadRequest);
    }

    /// An SMS handed to the gateway is sent again to a reconnecting
    /// gateway until the gateway reports its status, or its id is
    /// forgotten.
    #[test]
    fn an_sms_is_handed_off_until_its_status_arrives() {
        let mut b = bed();
        let send = |to: &str| AgentCommand::MessageSend { from: N.into(), to: to.into(), body: "on my way".into() };
        assert!(b.agent("a", send("+15557770001")).result.is_ok());
        assert!(b.agent("a", send("+15557770002")).result.is_ok());
        let sent = b.gateway_cmds();
        assert_eq!(b.unanswered_cmds(), sent, "both, oldest first, as they were sent");
        let count = |b: &Bed| {
            let mut n = 0;
            b.engine.handoff_counts(|a, c| {
                assert_eq!(a.as_str(), "acme");
                n = c;
            });
            n
        };
        assert_eq!(count(&b), 2, "the metric counts them");
        let GatewayCommand::MessageSend { message_id, .. } = &sent[0] else { panic!("{sent:?}") };
        let status = GatewayEvent::MessageStatus { message_id: message_id.clone(), status: DeliveryStatus::Sent };
        let h = b.gw(status);
        assert_eq!((h.result, h.journal), (Ok(Reply::Done), true));
        assert_eq!(b.unanswered_cmds(), sent[1..], "the first is settled");
        assert_eq!(count(&b), 1);
        b.check();
        // Never reported: kept as long as its id, then dropped with it.
        b.advance(crate::core::recent::RECENT_WINDOW + Duration::from_secs(1));
        assert!(b.unanswered_cmds().is_empty());
        assert_eq!(count(&b), 0);
        b.check();
    }

    #[test]
    fn accounts_are_isolated() {
        let mut b = bed();
        b.add_account("globex", crate::core::team::Plan::Team);
        let other = crate::core::Input::Gateway {
            account: "globex".into(),
            event: GatewayEvent::MessageInbound {
                message_id: "m1".into(),
                to: N.into(),
                from: "+1555".into(),
                body: "x".into(),
            },
        };
        let h = b.input(other);
        assert_eq!(
            h.result.unwrap_err().code,
            crate::protocol::ErrorCode::NotFound,
            "acme's number is unknown to globex"
        );
        // An acme connection id cannot act in globex.
        let conn = b.conns["a"][0];
        let h = b.input(crate::core::Input::Agent {
            account: "globex".into(),
            conn,
            ref_: None,
            cmd: AgentCommand::Ping {},
        });
        assert!(h.result.is_err());
        assert!(
            b.out.iter().all(|o| !matches!(o, crate::core::Output::User { .. } | crate::core::Output::Conn { .. }))
        );
    }
}
