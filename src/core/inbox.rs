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
        if !self.recent.contains(&RecentKey::Message(message_id.clone())) {
            return Err(CoreError::not_found(format!("no recent message {message_id}")));
        }
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
        self.counters.message += 1;
        let message_id = MessageId::from(format!("{}.m{}", self.id, self.counters.message));
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
            for other in self.number(n).assigned.clone() {
                if other != u && self.user(other).active() {
                    self.send_user(other, item(None));
                }
            }
        }
        self.send_gateway(GatewayCommand::MessageSend {
            message_id: message_id.clone(),
            from: from.clone(),
            to: to.clone(),
            body: body.clone(),
        });
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
        let Some((n, from, restricted)) = self.recent.trace(&RecentKey::Call(call_id.clone())).cloned() else {
            return Err(CoreError::not_found(format!("no recently ended call {call_id}")));
        };
        let now = self.now;
        let number = self.number(n).id.clone();
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
