//! Softphone (agent) <-> engine messages.

use super::gateway::MonitorMode;
use super::{ErrorCode, Ref};
use crate::core::ids::{CallId, CallbackId, MessageId, NumberId, OfferId, Phone, UserId};
use crate::core::time::Timestamp;
use serde::{Deserialize, Serialize};

/// Commands a softphone sends. `ref` travels beside it in [`AgentFrame`].
#[derive(Clone, PartialEq, Eq, Debug, Deserialize, Serialize)]
#[serde(tag = "type")]
pub enum AgentCommand {
    #[serde(rename = "status.set")]
    StatusSet {
        status: WantedStatus,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    #[serde(rename = "offer.accept")]
    OfferAccept { offer_id: OfferId },
    #[serde(rename = "offer.decline")]
    OfferDecline { offer_id: OfferId },
    #[serde(rename = "wrapup.done")]
    WrapupDone {},
    #[serde(rename = "call.dial")]
    CallDial { from: NumberId, to: Phone },
    #[serde(rename = "call.hangup")]
    CallHangup { call_id: CallId },
    #[serde(rename = "message.send")]
    MessageSend { from: NumberId, to: Phone, body: String },
    #[serde(rename = "monitor")]
    Monitor { call_id: CallId, mode: MonitorMode },
    #[serde(rename = "subscribe")]
    Subscribe { topic: Topic },
    #[serde(rename = "ping")]
    Ping {},
}

impl AgentCommand {
    pub const TYPES: [&'static str; 10] = [
        "status.set",
        "offer.accept",
        "offer.decline",
        "wrapup.done",
        "call.dial",
        "call.hangup",
        "message.send",
        "monitor",
        "subscribe",
        "ping",
    ];
}

#[derive(Clone, PartialEq, Eq, Debug, Deserialize, Serialize)]
pub struct AgentFrame {
    #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
    pub ref_: Option<Ref>,
    #[serde(flatten)]
    pub cmd: AgentCommand,
}

/// What a user may ask to be: the rest of the states are the engine's.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Deserialize, Serialize, Hash)]
#[serde(rename_all = "snake_case")]
pub enum WantedStatus {
    Available,
    Away,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, Deserialize, Serialize, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Topic {
    Queues,
}

/// A user's state as shown to clients.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Deserialize, Serialize, Hash, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Available,
    Away,
    Ringing,
    OnCall,
    WrapUp,
    Offline,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OfferKind {
    Inbound,
    Callback,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RevokeReason {
    AnsweredElsewhere,
    CallerHangup,
    Expired,
    Reassigned,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LostReason {
    /// Someone else accepted first.
    AnsweredElsewhere,
    /// The offer had already expired, been declined or withdrawn.
    TooLate,
    /// The call or callback no longer exists.
    Gone,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Inbound,
    Outbound,
}

#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct NumberAccess {
    pub number: NumberId,
    pub name: String,
    /// Assigned: sees the number's calls and inbox, rung by default.
    pub assigned: bool,
    /// May place calls and send SMS with it as caller id.
    pub caller_id: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize, Default)]
pub struct AgentCounts {
    pub available: u32,
    pub on_call: u32,
    pub wrap_up: u32,
    pub away: u32,
    pub ringing: u32,
}

/// Messages the engine sends to softphones.
#[derive(Clone, PartialEq, Debug, Serialize)]
#[serde(tag = "type")]
pub enum AgentMessage {
    #[serde(rename = "hello")]
    Hello {
        user: UserId,
        account: crate::core::ids::AccountId,
        role: crate::core::team::Role,
        numbers: Vec<NumberAccess>,
        status: Status,
        server_time: Timestamp,
    },
    #[serde(rename = "offer")]
    Offer {
        offer_id: OfferId,
        kind: OfferKind,
        #[serde(skip_serializing_if = "Option::is_none")]
        call_id: Option<CallId>,
        #[serde(skip_serializing_if = "Option::is_none")]
        callback_id: Option<CallbackId>,
        number: NumberId,
        from: Phone,
        expires_in_ms: u64,
    },
    #[serde(rename = "offer.revoked")]
    OfferRevoked { offer_id: OfferId, reason: RevokeReason },
    #[serde(rename = "offer.won")]
    OfferWon {
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        ref_: Option<Ref>,
        offer_id: OfferId,
        #[serde(skip_serializing_if = "Option::is_none")]
        call_id: Option<CallId>,
        #[serde(skip_serializing_if = "Option::is_none")]
        callback_id: Option<CallbackId>,
    },
    #[serde(rename = "offer.lost")]
    OfferLost {
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        ref_: Option<Ref>,
        offer_id: OfferId,
        reason: LostReason,
    },
    #[serde(rename = "status")]
    Status {
        status: Status,
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        until: Option<Timestamp>,
    },
    #[serde(rename = "call.ended")]
    CallEnded { call_id: CallId },
    /// Extension: the engine-issued id of an outbound call this user asked
    /// for, echoing the `call.dial` ref.
    #[serde(rename = "call.dialing")]
    CallDialing {
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        ref_: Option<Ref>,
        call_id: CallId,
        from: NumberId,
        to: Phone,
    },
    #[serde(rename = "inbox.message")]
    InboxMessage {
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        ref_: Option<Ref>,
        number: NumberId,
        message_id: MessageId,
        direction: Direction,
        from: Phone,
        to: Phone,
        body: String,
        at: Timestamp,
    },
    #[serde(rename = "voicemail")]
    Voicemail { number: NumberId, call_id: CallId, from: Phone, url: String, duration_ms: u64, at: Timestamp },
    #[serde(rename = "missed_call")]
    MissedCall { number: NumberId, call_id: CallId, from: Phone, at: Timestamp },
    #[serde(rename = "queue.stats")]
    QueueStats { number: NumberId, waiting: u32, callbacks: u32, longest_wait_ms: u64, agents: AgentCounts },
    /// Extension: acknowledges a command that has no other reply
    /// (`status.set`, `wrapup.done`, `subscribe`, `monitor`, `call.hangup`)
    /// when it carried a `ref`.
    #[serde(rename = "ok")]
    Ok {
        #[serde(rename = "ref")]
        ref_: Ref,
    },
    #[serde(rename = "pong")]
    Pong {
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        ref_: Option<Ref>,
    },
    #[serde(rename = "error")]
    Error {
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        ref_: Option<Ref>,
        code: ErrorCode,
        message: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse_with_ref() {
        let f: AgentFrame = serde_json::from_str(r#"{"type":"offer.accept","ref":"a1","offer_id":"o12"}"#).unwrap();
        assert_eq!(f.cmd, AgentCommand::OfferAccept { offer_id: OfferId(12) });
        assert_eq!(f.ref_.as_deref(), Some("a1"));
        let f: AgentFrame = serde_json::from_str(r#"{"type":"ping"}"#).unwrap();
        assert_eq!(f.cmd, AgentCommand::Ping {});
        let f: AgentFrame = serde_json::from_str(r#"{"type":"wrapup.done"}"#).unwrap();
        assert_eq!(f.cmd, AgentCommand::WrapupDone {});
    }

    #[test]
    fn offer_serializes_only_the_relevant_id() {
        let m = AgentMessage::Offer {
            offer_id: OfferId(1),
            kind: OfferKind::Callback,
            call_id: None,
            callback_id: Some("acme.cb1".into()),
            number: "+15550100".into(),
            from: "+15551230001".into(),
            expires_in_ms: 15000,
        };
        let v = serde_json::to_value(&m).unwrap();
        assert_eq!(v["type"], "offer");
        assert_eq!(v["offer_id"], "o1");
        assert!(v.get("call_id").is_none());
        assert_eq!(v["callback_id"], "acme.cb1");
    }
}
