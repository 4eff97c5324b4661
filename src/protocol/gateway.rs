//! Gateway <-> engine messages.

use super::{ErrorCode, Ref};
use crate::core::ids::{CallId, CallbackId, MessageId, NumberId, Phone, UserId};
use serde::{Deserialize, Serialize};

/// Events a gateway sends. `seq` and `ref` travel beside the event in the
/// frame (see [`GatewayFrame`]); the core never sees them.
#[derive(Clone, PartialEq, Eq, Debug, Deserialize, Serialize)]
#[serde(tag = "type")]
pub enum GatewayEvent {
    #[serde(rename = "call.inbound")]
    CallInbound {
        call_id: CallId,
        to: NumberId,
        from: Phone,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        priority: Option<u8>,
    },
    #[serde(rename = "call.answered")]
    CallAnswered { call_id: CallId, agent: UserId },
    #[serde(rename = "call.bridge_failed")]
    CallBridgeFailed { call_id: CallId, agent: UserId, reason: String },
    #[serde(rename = "call.ended")]
    CallEnded { call_id: CallId, reason: EndReason },
    #[serde(rename = "callback.requested")]
    CallbackRequested {
        call_id: CallId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        phone: Option<Phone>,
    },
    #[serde(rename = "callback.result")]
    CallbackResult { callback_id: CallbackId, outcome: DialOutcome },
    #[serde(rename = "message.inbound")]
    MessageInbound { message_id: MessageId, to: NumberId, from: Phone, body: String },
    #[serde(rename = "message.status")]
    MessageStatus { message_id: MessageId, status: DeliveryStatus },
    #[serde(rename = "voicemail.recorded")]
    VoicemailRecorded { call_id: CallId, url: String, duration_ms: u64 },
}

impl GatewayEvent {
    pub const TYPES: [&'static str; 9] = [
        "call.inbound",
        "call.answered",
        "call.bridge_failed",
        "call.ended",
        "callback.requested",
        "callback.result",
        "message.inbound",
        "message.status",
        "voicemail.recorded",
    ];

    pub fn type_name(&self) -> &'static str {
        match self {
            GatewayEvent::CallInbound { .. } => "call.inbound",
            GatewayEvent::CallAnswered { .. } => "call.answered",
            GatewayEvent::CallBridgeFailed { .. } => "call.bridge_failed",
            GatewayEvent::CallEnded { .. } => "call.ended",
            GatewayEvent::CallbackRequested { .. } => "callback.requested",
            GatewayEvent::CallbackResult { .. } => "callback.result",
            GatewayEvent::MessageInbound { .. } => "message.inbound",
            GatewayEvent::MessageStatus { .. } => "message.status",
            GatewayEvent::VoicemailRecorded { .. } => "voicemail.recorded",
        }
    }
}

/// A whole gateway frame: the event plus transport fields.
#[derive(Clone, PartialEq, Eq, Debug, Deserialize, Serialize)]
pub struct GatewayFrame {
    pub seq: u64,
    #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
    pub ref_: Option<Ref>,
    #[serde(flatten)]
    pub event: GatewayEvent,
}

/// Every field of every gateway event side by side, read in one pass.
///
/// `GatewayFrame` flattens an internally tagged enum, so serde buffers the
/// whole frame into an intermediate tree, twice, before it builds the
/// event: on the offer's path that was the largest single cost of the
/// reader (about 20 us of a cold ~150 us, measured at 10 calls/s). This
/// reads the same frame straight into fields. It is only a fast path:
/// whenever it cannot build the event (a missing field, an unknown type, a
/// field of another event with an unexpected type) it returns `None` and
/// the caller parses the frame the general way, so both accept and refuse
/// exactly the same frames (property-tested in `server::wire`).
#[derive(Debug, Deserialize)]
pub struct FlatGatewayFrame {
    #[serde(rename = "type")]
    ty: String,
    seq: u64,
    #[serde(rename = "ref", default)]
    ref_: Option<Ref>,
    call_id: Option<CallId>,
    to: Option<NumberId>,
    from: Option<Phone>,
    priority: Option<u8>,
    agent: Option<UserId>,
    /// `call.bridge_failed` carries free text, `call.ended` an [`EndReason`].
    reason: Option<String>,
    phone: Option<Phone>,
    callback_id: Option<CallbackId>,
    outcome: Option<DialOutcome>,
    message_id: Option<MessageId>,
    body: Option<String>,
    status: Option<DeliveryStatus>,
    url: Option<String>,
    duration_ms: Option<u64>,
}

impl FlatGatewayFrame {
    pub fn into_frame(self) -> Option<GatewayFrame> {
        let f = self;
        let event = match f.ty.as_str() {
            "call.inbound" => {
                GatewayEvent::CallInbound { call_id: f.call_id?, to: f.to?, from: f.from?, priority: f.priority }
            }
            "call.answered" => GatewayEvent::CallAnswered { call_id: f.call_id?, agent: f.agent? },
            "call.bridge_failed" => {
                GatewayEvent::CallBridgeFailed { call_id: f.call_id?, agent: f.agent?, reason: f.reason? }
            }
            "call.ended" => {
                use serde::de::IntoDeserializer;
                let reason = f.reason?;
                let de: serde::de::value::StrDeserializer<'_, serde::de::value::Error> =
                    reason.as_str().into_deserializer();
                GatewayEvent::CallEnded { call_id: f.call_id?, reason: EndReason::deserialize(de).ok()? }
            }
            "callback.requested" => GatewayEvent::CallbackRequested { call_id: f.call_id?, phone: f.phone },
            "callback.result" => GatewayEvent::CallbackResult { callback_id: f.callback_id?, outcome: f.outcome? },
            "message.inbound" => {
                GatewayEvent::MessageInbound { message_id: f.message_id?, to: f.to?, from: f.from?, body: f.body? }
            }
            "message.status" => GatewayEvent::MessageStatus { message_id: f.message_id?, status: f.status? },
            "voicemail.recorded" => {
                GatewayEvent::VoicemailRecorded { call_id: f.call_id?, url: f.url?, duration_ms: f.duration_ms? }
            }
            _ => return None,
        };
        Some(GatewayFrame { seq: f.seq, ref_: f.ref_, event })
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, Deserialize, Serialize, Hash)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    CallerHangup,
    AgentHangup,
    VoicemailDone,
    Transferred,
    Failed,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, Deserialize, Serialize, Hash)]
#[serde(rename_all = "snake_case")]
pub enum DialOutcome {
    Connected,
    NoAnswer,
    Busy,
    Failed,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, Deserialize, Serialize, Hash)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    Sent,
    Delivered,
    Failed,
}

/// Why a call is sent to voicemail, forwarded or hung up by the engine.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Deserialize, Serialize, Hash)]
#[serde(rename_all = "snake_case")]
pub enum OverflowReason {
    QueueFull,
    MaxWait,
    NoAgents,
    Closed,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, Deserialize, Serialize, Hash)]
#[serde(rename_all = "snake_case")]
pub enum MonitorMode {
    Listen,
    Whisper,
    Barge,
}

fn yes() -> bool {
    true
}

// By reference: that is what serde's `skip_serializing_if` passes.
fn is_true(b: &bool) -> bool {
    *b
}

/// Commands the engine sends to a gateway.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum GatewayCommand {
    #[serde(rename = "ack")]
    Ack { seq: u64 },
    #[serde(rename = "call.ringing")]
    CallRinging { call_id: CallId, agents: Vec<UserId> },
    #[serde(rename = "call.queued")]
    CallQueued {
        call_id: CallId,
        position: u32,
        ewt_ms: u64,
        /// Extension: false when no honest estimate exists (too few recent
        /// calls, nobody staffed); the gateway should not announce a wait.
        ewt_known: bool,
        /// Extension: false when the number has `announce_position` off.
        /// The caller must still be held, but the gateway plays neither
        /// position nor wait. Omitted when true, so gateways that predate
        /// it see the contract's message unchanged.
        #[serde(default = "yes", skip_serializing_if = "is_true")]
        announce: bool,
    },
    #[serde(rename = "call.announce")]
    CallAnnounce { call_id: CallId, position: u32, ewt_ms: u64, ewt_known: bool },
    #[serde(rename = "call.bridge")]
    CallBridge { call_id: CallId, agent: UserId },
    #[serde(rename = "call.voicemail")]
    CallVoicemail { call_id: CallId, reason: OverflowReason },
    #[serde(rename = "call.forward")]
    CallForward { call_id: CallId, to: NumberId, reason: OverflowReason },
    #[serde(rename = "call.hangup")]
    CallHangup { call_id: CallId, reason: HangupReason },
    #[serde(rename = "callback.accepted")]
    CallbackAccepted { call_id: CallId, callback_id: CallbackId, position: u32 },
    #[serde(rename = "callback.dial")]
    CallbackDial { callback_id: CallbackId, call_id: CallId, agent: UserId, to: Phone, caller_id: NumberId },
    #[serde(rename = "call.dial")]
    CallDial { call_id: CallId, agent: UserId, to: Phone, caller_id: NumberId },
    #[serde(rename = "call.monitor")]
    CallMonitor { call_id: CallId, supervisor: UserId, mode: MonitorMode },
    #[serde(rename = "message.send")]
    MessageSend { message_id: MessageId, from: NumberId, to: Phone, body: String },
    #[serde(rename = "error")]
    Error {
        #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
        ref_: Option<Ref>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seq: Option<u64>,
        code: ErrorCode,
        message: String,
    },
}

impl GatewayCommand {
    /// The call this command is about, for delivering it to the gateway that
    /// carries that call.
    pub fn call_id(&self) -> Option<&CallId> {
        match self {
            GatewayCommand::CallRinging { call_id, .. }
            | GatewayCommand::CallQueued { call_id, .. }
            | GatewayCommand::CallAnnounce { call_id, .. }
            | GatewayCommand::CallBridge { call_id, .. }
            | GatewayCommand::CallVoicemail { call_id, .. }
            | GatewayCommand::CallForward { call_id, .. }
            | GatewayCommand::CallHangup { call_id, .. }
            | GatewayCommand::CallbackAccepted { call_id, .. }
            | GatewayCommand::CallMonitor { call_id, .. } => Some(call_id),
            _ => None,
        }
    }
}

/// Why the engine asks the gateway to end a call.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Deserialize, Serialize, Hash)]
#[serde(rename_all = "snake_case")]
pub enum HangupReason {
    /// Overflow with `overflow = "hangup"`.
    QueueFull,
    MaxWait,
    NoAgents,
    Closed,
    /// The agent asked (`call.hangup` from the softphone).
    AgentRequest,
}

impl From<OverflowReason> for HangupReason {
    fn from(r: OverflowReason) -> Self {
        match r {
            OverflowReason::QueueFull => HangupReason::QueueFull,
            OverflowReason::MaxWait => HangupReason::MaxWait,
            OverflowReason::NoAgents => HangupReason::NoAgents,
            OverflowReason::Closed => HangupReason::Closed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_queued_carries_announce_only_when_false() {
        let queued = |announce| GatewayCommand::CallQueued {
            call_id: "c1".into(),
            position: 2,
            ewt_ms: 0,
            ewt_known: false,
            announce,
        };
        let on = serde_json::to_value(queued(true)).unwrap();
        assert_eq!(on.get("announce"), None, "the contract's message, unchanged: {on}");
        assert_eq!(on["position"], 2);
        let off = serde_json::to_value(queued(false)).unwrap();
        assert_eq!((off["type"].as_str(), off["announce"].as_bool()), (Some("call.queued"), Some(false)));
        assert_eq!(serde_json::from_value::<GatewayCommand>(on).unwrap(), queued(true));
        let packed = rmp_serde::to_vec_named(&queued(false)).unwrap();
        assert_eq!(rmp_serde::from_slice::<GatewayCommand>(&packed).unwrap(), queued(false));
    }

    #[test]
    fn frame_parses_with_seq_and_ref() {
        let f: GatewayFrame = serde_json::from_str(
            r#"{"type":"call.inbound","seq":3,"ref":"r1","call_id":"c1","to":"+15550100","from":"+15551230001"}"#,
        )
        .unwrap();
        assert_eq!(f.seq, 3);
        assert_eq!(f.ref_.as_deref(), Some("r1"));
        assert!(matches!(f.event, GatewayEvent::CallInbound { priority: None, .. }));
    }

    #[test]
    fn commands_serialize_with_dotted_types() {
        let c = GatewayCommand::CallBridge { call_id: "c1".into(), agent: "alice".into() };
        assert_eq!(serde_json::to_string(&c).unwrap(), r#"{"type":"call.bridge","call_id":"c1","agent":"alice"}"#);
    }
}
