//! The wire contract as the harness speaks it: what it sends (gateway
//! events, agent commands, baseline probes) and the one flat shape it parses
//! everything it receives into. JSON text frames or MessagePack binary maps
//! with the same field names, as `shared/PROTOCOL.md` says.

use serde::{Deserialize, Serialize};
use tokio_tungstenite::tungstenite::Message;

/// `?encoding=json|msgpack`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    Json,
    Msgpack,
}

impl Encoding {
    pub fn query(self) -> &'static str {
        match self {
            Encoding::Json => "json",
            Encoding::Msgpack => "msgpack",
        }
    }

    /// One frame: a JSON text frame or a MessagePack binary map.
    pub fn encode<T: Serialize>(self, msg: &T) -> anyhow::Result<Message> {
        Ok(match self {
            Encoding::Json => Message::Text(serde_json::to_string(msg)?.into()),
            Encoding::Msgpack => Message::Binary(rmp_serde::to_vec_named(msg)?.into()),
        })
    }
}

/// Gateway -> engine events. Every one carries `seq`.
#[derive(Debug, Serialize)]
#[serde(tag = "type")]
pub enum GwEvent<'a> {
    #[serde(rename = "call.inbound")]
    CallInbound { seq: u64, call_id: &'a str, to: &'a str, from: &'a str },
    #[serde(rename = "call.answered")]
    CallAnswered { seq: u64, call_id: &'a str, agent: &'a str },
    #[serde(rename = "call.bridge_failed")]
    CallBridgeFailed { seq: u64, call_id: &'a str, agent: &'a str, reason: &'a str },
    #[serde(rename = "call.ended")]
    CallEnded { seq: u64, call_id: &'a str, reason: &'a str },
    #[serde(rename = "callback.requested")]
    CallbackRequested { seq: u64, call_id: &'a str },
    #[serde(rename = "callback.result")]
    CallbackResult { seq: u64, callback_id: &'a str, outcome: &'a str },
}

impl GwEvent<'_> {
    pub fn kind(&self) -> EventKind {
        match self {
            GwEvent::CallInbound { .. } => EventKind::Inbound,
            GwEvent::CallAnswered { .. } => EventKind::Answered,
            GwEvent::CallBridgeFailed { .. } => EventKind::BridgeFailed,
            GwEvent::CallEnded { .. } => EventKind::Ended,
            GwEvent::CallbackRequested { .. } => EventKind::CallbackRequested,
            GwEvent::CallbackResult { .. } => EventKind::CallbackResult,
        }
    }
}

/// Which gateway event an ack or error answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventKind {
    Inbound,
    Answered,
    BridgeFailed,
    Ended,
    CallbackRequested,
    CallbackResult,
}

impl EventKind {
    pub fn name(self) -> &'static str {
        match self {
            EventKind::Inbound => "call.inbound",
            EventKind::Answered => "call.answered",
            EventKind::BridgeFailed => "call.bridge_failed",
            EventKind::Ended => "call.ended",
            EventKind::CallbackRequested => "callback.requested",
            EventKind::CallbackResult => "callback.result",
        }
    }
}

/// Softphone -> engine commands.
#[derive(Debug, Serialize)]
#[serde(tag = "type")]
pub enum AgentCmd<'a> {
    #[serde(rename = "status.set")]
    StatusSet { status: &'a str },
    #[serde(rename = "offer.accept")]
    OfferAccept { offer_id: &'a str },
    #[serde(rename = "offer.decline")]
    OfferDecline { offer_id: &'a str },
    #[serde(rename = "wrapup.done")]
    WrapupDone {},
}

/// An agent command with a `ref` naming it, so an `error` reply says
/// which command it refuses.
#[derive(Debug, Serialize)]
pub struct Tagged<'a> {
    #[serde(rename = "ref")]
    pub r: &'a str,
    #[serde(flatten)]
    pub cmd: &'a AgentCmd<'a>,
}

impl AgentCmd<'_> {
    pub fn name(&self) -> &'static str {
        match self {
            AgentCmd::StatusSet { .. } => "status.set",
            AgentCmd::OfferAccept { .. } => "offer.accept",
            AgentCmd::OfferDecline { .. } => "offer.decline",
            AgentCmd::WrapupDone {} => "wrapup.done",
        }
    }
}

/// The baseline's message: shaped like a `call.inbound` so both paths carry
/// frames of the same size.
#[derive(Debug, Serialize)]
pub struct Probe<'a> {
    #[serde(rename = "type")]
    pub ty: &'a str,
    pub seq: u64,
    pub call_id: &'a str,
    pub to: &'a str,
    pub from: &'a str,
}

/// Everything the harness receives, flattened: the fields it acts on, the
/// rest ignored. Gateway commands, agent messages and echoed probes alike.
#[derive(Debug, Default, Clone, Deserialize, PartialEq, Eq)]
pub struct Incoming {
    #[serde(rename = "type")]
    pub ty: String,
    #[serde(default)]
    pub seq: Option<u64>,
    #[serde(default)]
    pub call_id: Option<String>,
    #[serde(default)]
    pub callback_id: Option<String>,
    #[serde(default)]
    pub offer_id: Option<String>,
    #[serde(default)]
    pub agent: Option<String>,
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
    /// `ref`: which of our commands an agent-side `error` answers.
    #[serde(default, rename = "ref")]
    pub reference: Option<String>,
}

impl Incoming {
    /// Parses a data frame; `None` for control frames.
    pub fn parse(msg: &Message) -> Option<Result<Incoming, String>> {
        match msg {
            Message::Text(t) => Some(serde_json::from_str(t.as_str()).map_err(|e| e.to_string())),
            Message::Binary(b) => Some(rmp_serde::from_slice(b).map_err(|e| e.to_string())),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_carry_type_and_seq_in_both_encodings() {
        let ev = GwEvent::CallInbound { seq: 7, call_id: "c1", to: "+15550000001", from: "+16660000001" };
        let Message::Text(t) = Encoding::Json.encode(&ev).expect("json") else { panic!("text frame") };
        let v: serde_json::Value = serde_json::from_str(t.as_str()).expect("valid json");
        assert_eq!(v["type"], "call.inbound");
        assert_eq!(v["seq"], 7);
        assert_eq!(v["to"], "+15550000001");
        let Message::Binary(b) = Encoding::Msgpack.encode(&ev).expect("msgpack") else { panic!("binary frame") };
        let m: serde_json::Value = rmp_serde::from_slice(&b).expect("named map");
        assert_eq!(m, v);
        let cmd = AgentCmd::WrapupDone {};
        let Message::Text(t) = Encoding::Json.encode(&Tagged { r: cmd.name(), cmd: &cmd }).expect("json") else {
            panic!("text frame")
        };
        assert_eq!(t.as_str(), r#"{"ref":"wrapup.done","type":"wrapup.done"}"#);
        let cmd = AgentCmd::OfferAccept { offer_id: "o4" };
        let Message::Binary(b) = Encoding::Msgpack.encode(&Tagged { r: cmd.name(), cmd: &cmd }).expect("mp") else {
            panic!("binary frame")
        };
        let m: serde_json::Value = rmp_serde::from_slice(&b).expect("named map");
        assert_eq!(m, serde_json::json!({"ref": "offer.accept", "type": "offer.accept", "offer_id": "o4"}));
    }

    #[test]
    fn incoming_reads_what_it_needs_and_ignores_the_rest() {
        let raw = r#"{"type":"offer","offer_id":"o3","kind":"inbound","call_id":"c9","number":"+15550100",
            "from":"+1555","expires_in_ms":1500,"extra":{"nested":[1,2]}}"#;
        let m = Incoming::parse(&Message::Text(raw.into())).expect("data frame").expect("parses");
        assert_eq!(m.ty, "offer");
        assert_eq!(m.offer_id.as_deref(), Some("o3"));
        assert_eq!(m.call_id.as_deref(), Some("c9"));
        let v: serde_json::Value = serde_json::from_str(raw).expect("json");
        let bin = Message::Binary(rmp_serde::to_vec_named(&v).expect("encode").into());
        assert_eq!(Incoming::parse(&bin).expect("data frame").expect("parses"), m);
        assert!(Incoming::parse(&Message::Ping(Default::default())).is_none());
        assert!(Incoming::parse(&Message::Text("{not json".into())).expect("data frame").is_err());
    }
}
