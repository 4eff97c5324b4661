//! Frames on the wire: JSON text or MessagePack binary, same field names.
//! Decoding is two-step so each kind of bad input gets its own error code:
//! first the envelope (`type`, `ref`, `seq`), then the full message.

use crate::protocol::agent::{AgentCommand, AgentFrame};
use crate::protocol::gateway::{FlatGatewayFrame, GatewayEvent, GatewayFrame};
use crate::protocol::{ErrorCode, Ref};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// `?encoding=json|msgpack`.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub enum Encoding {
    #[default]
    Json,
    MsgPack,
}

impl Encoding {
    pub fn parse(s: &str) -> Option<Encoding> {
        match s {
            "json" => Some(Encoding::Json),
            "msgpack" => Some(Encoding::MsgPack),
            _ => None,
        }
    }

    pub fn encode<T: Serialize>(self, msg: &T) -> Result<Vec<u8>, String> {
        match self {
            Encoding::Json => serde_json::to_vec(msg).map_err(|e| e.to_string()),
            Encoding::MsgPack => rmp_serde::to_vec_named(msg).map_err(|e| e.to_string()),
        }
    }
}

/// A frame that could not be turned into a message; answered with `error`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WireError {
    pub code: ErrorCode,
    pub message: String,
    pub ref_: Option<Ref>,
    pub seq: Option<u64>,
}

#[derive(serde::Deserialize)]
struct Envelope {
    #[serde(rename = "type")]
    ty: Option<String>,
    #[serde(rename = "ref", default)]
    ref_: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    seq: Option<serde::de::IgnoredAny>,
}

#[derive(serde::Deserialize)]
struct RefOnly {
    #[serde(rename = "ref", default)]
    ref_: Option<Ref>,
}

#[derive(serde::Deserialize)]
struct SeqOnly {
    #[serde(default)]
    seq: Option<u64>,
}

fn parse<T: DeserializeOwned>(bytes: &[u8], enc: Encoding) -> Result<T, String> {
    match enc {
        Encoding::Json => serde_json::from_slice(bytes).map_err(|e| e.to_string()),
        Encoding::MsgPack => rmp_serde::from_slice(bytes).map_err(|e| e.to_string()),
    }
}

/// The `ref` and `seq` of a frame refused before it was read (too large,
/// over the rate), so the client knows which one to send again; absent when
/// they cannot be read.
pub fn refused_ids(bytes: &[u8], enc: Encoding) -> (Option<Ref>, Option<u64>) {
    let ref_ = parse::<RefOnly>(bytes, enc).ok().and_then(|r| r.ref_);
    let seq = parse::<SeqOnly>(bytes, enc).ok().and_then(|s| s.seq);
    (ref_, seq)
}

/// Reads what can be read of the envelope, for error replies.
fn envelope(bytes: &[u8], enc: Encoding, known: &[&str]) -> Result<(Option<Ref>, Option<u64>), WireError> {
    let env: Envelope = parse(bytes, enc).map_err(|e| WireError {
        code: ErrorCode::BadRequest,
        message: format!("not a {} object: {e}", if enc == Encoding::Json { "JSON" } else { "MessagePack map" }),
        ref_: None,
        seq: None,
    })?;
    let ref_ = env.ref_.and_then(|_| parse::<RefOnly>(bytes, enc).ok()).and_then(|r| r.ref_);
    let seq = env.seq.and_then(|_| parse::<SeqOnly>(bytes, enc).ok()).and_then(|s| s.seq);
    match env.ty.as_deref() {
        None => Err(WireError { code: ErrorCode::BadRequest, message: "missing field `type`".into(), ref_, seq }),
        Some(t) if !known.contains(&t) => {
            Err(WireError { code: ErrorCode::UnknownType, message: format!("unknown type {t:?}"), ref_, seq })
        }
        Some(_) => Ok((ref_, seq)),
    }
}

// A well-formed frame is parsed once; only a refused one is parsed again,
// piece by piece, to say what is wrong with it and to echo its `ref` and
// `seq`.

pub fn decode_gateway(bytes: &[u8], enc: Encoding) -> Result<GatewayFrame, WireError> {
    if is_map(bytes, enc)
        && let Some(frame) = parse::<FlatGatewayFrame>(bytes, enc).ok().and_then(FlatGatewayFrame::into_frame)
    {
        return Ok(frame);
    }
    decode_gateway_general(bytes, enc)
}

/// Whether the frame is an object (JSON) or a map (MessagePack). A derived
/// struct also reads positional arrays, which the protocol refuses; the
/// fast path must not accept them.
fn is_map(bytes: &[u8], enc: Encoding) -> bool {
    match enc {
        Encoding::Json => bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{'),
        Encoding::MsgPack => matches!(bytes.first(), Some(0x80..=0x8f | 0xde | 0xdf)),
    }
}

/// The general decoder (and the error reporting); [`decode_gateway`] tries
/// a one-pass read first.
fn decode_gateway_general(bytes: &[u8], enc: Encoding) -> Result<GatewayFrame, WireError> {
    if let Ok(frame) = parse::<GatewayFrame>(bytes, enc) {
        return Ok(frame);
    }
    let (ref_, seq) = envelope(bytes, enc, &GatewayEvent::TYPES)?;
    let Some(_) = seq else {
        return Err(WireError { code: ErrorCode::BadRequest, message: "missing field `seq`".into(), ref_, seq });
    };
    parse::<GatewayFrame>(bytes, enc).map_err(|e| WireError { code: ErrorCode::BadRequest, message: e, ref_, seq })
}

pub fn decode_agent(bytes: &[u8], enc: Encoding) -> Result<(Option<Ref>, AgentCommand), WireError> {
    if let Ok(f) = parse::<AgentFrame>(bytes, enc) {
        return Ok((f.ref_, f.cmd));
    }
    let (ref_, _) = envelope(bytes, enc, &AgentCommand::TYPES)?;
    parse::<AgentFrame>(bytes, enc).map(|f| (f.ref_, f.cmd)).map_err(|e| WireError {
        code: ErrorCode::BadRequest,
        message: e,
        ref_,
        seq: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::agent::AgentMessage;

    #[test]
    fn each_kind_of_bad_frame_gets_its_code() {
        let j = Encoding::Json;
        let e = decode_agent(b"{not json", j).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
        let e = decode_agent(br#"{"type":"teleport","ref":"r9"}"#, j).unwrap_err();
        assert_eq!((e.code, e.ref_.as_deref()), (ErrorCode::UnknownType, Some("r9")));
        let e = decode_agent(br#"{"type":"offer.accept","ref":"r1"}"#, j).unwrap_err();
        assert_eq!((e.code, e.ref_.as_deref()), (ErrorCode::BadRequest, Some("r1")));
        assert!(e.message.contains("offer_id"), "{}", e.message);
        let e = decode_agent(br#"{"type":"status.set","status":"sleepy"}"#, j).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
        let e = decode_agent(br#"[1,2,3]"#, j).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
        let e =
            decode_gateway(br#"{"type":"call.inbound","call_id":"c1","to":"+15550100","from":"+1"}"#, j).unwrap_err();
        assert!(e.message.contains("seq"));
        let e = decode_gateway(br#"{"type":"call.inbound","seq":4,"to":"+15550100","from":"+1"}"#, j).unwrap_err();
        assert_eq!(e.seq, Some(4));
        let e = decode_gateway(br#"{"type":"call.inbound","seq":"four"}"#, j).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
    }

    /// Keys and values the generated frames are made of: every field of
    /// every event, a stranger, and values of each JSON kind, including the
    /// enums' valid names.
    const KEYS: &[&str] = &[
        "type",
        "seq",
        "ref",
        "call_id",
        "to",
        "from",
        "priority",
        "agent",
        "reason",
        "phone",
        "callback_id",
        "outcome",
        "message_id",
        "body",
        "status",
        "url",
        "duration_ms",
        "extra",
    ];

    fn value_strategy() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
        use proptest::prelude::*;
        use serde_json::json;
        let mut names: Vec<serde_json::Value> = GatewayEvent::TYPES.iter().map(|t| json!(t)).collect();
        for n in ["caller_hangup", "agent_hangup", "failed", "no_answer", "connected", "delivered", "sent", "nope"] {
            names.push(json!(n));
        }
        prop_oneof![
            proptest::sample::select(names),
            "[a-z+0-9]{0,6}".prop_map(|s| json!(s)),
            (0u64..400).prop_map(|n| json!(n)),
            Just(json!(-1)),
            Just(json!(1.5)),
            Just(json!(null)),
            Just(json!(true)),
            Just(json!([1])),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(4000))]
        /// The one-pass decoder accepts nothing the general one refuses and
        /// reads everything it accepts the same way, in both encodings.
        /// The same, starting from well-formed frames with a few fields
        /// overwritten, removed or added, so most of them are accepted.
        #[test]
        fn the_fast_gateway_decoder_agrees_on_nearly_valid_frames(
            which in 0usize..9,
            changes in proptest::collection::vec(
                (proptest::sample::select(KEYS.to_vec()), proptest::option::of(value_strategy())), 0..3),
        ) {
            let mut value = serde_json::to_value(GatewayFrame { seq: 3, ref_: None, event: sample_events().swap_remove(which) }).unwrap();
            let obj = value.as_object_mut().unwrap();
            for (k, v) in changes {
                match v {
                    Some(v) => obj.insert(k.to_string(), v),
                    None => obj.remove(k),
                };
            }
            let json = serde_json::to_vec(&value).unwrap();
            let mp = rmp_serde::to_vec_named(&value).unwrap();
            for (bytes, enc) in [(&json[..], Encoding::Json), (&mp[..], Encoding::MsgPack)] {
                proptest::prop_assert_eq!(decode_gateway(bytes, enc), decode_gateway_general(bytes, enc));
            }
        }

        #[test]
        fn the_fast_gateway_decoder_agrees_with_the_general_one(
            ty in proptest::sample::select(GatewayEvent::TYPES.to_vec()),
            fields in proptest::collection::vec((proptest::sample::select(KEYS.to_vec()), value_strategy()), 0..9),
            keep_type in proptest::bool::weighted(0.9),
        ) {
            let mut obj = serde_json::Map::new();
            if keep_type {
                obj.insert("type".into(), serde_json::json!(ty));
            }
            for (k, v) in fields {
                obj.insert(k.to_string(), v);
            }
            let value = serde_json::Value::Object(obj);
            let json = serde_json::to_vec(&value).unwrap();
            let mp = rmp_serde::to_vec_named(&value).unwrap();
            for (bytes, enc) in [(&json[..], Encoding::Json), (&mp[..], Encoding::MsgPack)] {
                let general = decode_gateway_general(bytes, enc);
                let fast = decode_gateway(bytes, enc);
                proptest::prop_assert_eq!(fast, general);
            }
        }
    }

    fn sample_events() -> Vec<GatewayEvent> {
        use crate::protocol::gateway::{DeliveryStatus, DialOutcome, EndReason};
        vec![
            GatewayEvent::CallInbound { call_id: "c".into(), to: "+1".into(), from: "+2".into(), priority: Some(2) },
            GatewayEvent::CallAnswered { call_id: "c".into(), agent: "a".into() },
            GatewayEvent::CallBridgeFailed { call_id: "c".into(), agent: "a".into(), reason: "busy".into() },
            GatewayEvent::CallEnded { call_id: "c".into(), reason: EndReason::AgentHangup },
            GatewayEvent::CallbackRequested { call_id: "c".into(), phone: Some("+3".into()) },
            GatewayEvent::CallbackResult { callback_id: "cb".into(), outcome: DialOutcome::NoAnswer },
            GatewayEvent::MessageInbound {
                message_id: "m".into(),
                to: "+1".into(),
                from: "+2".into(),
                body: "hi".into(),
            },
            GatewayEvent::MessageStatus { message_id: "m".into(), status: DeliveryStatus::Delivered },
            GatewayEvent::VoicemailRecorded { call_id: "c".into(), url: "u".into(), duration_ms: 9 },
        ]
    }

    #[test]
    fn every_event_round_trips_through_the_fast_decoder() {
        for event in sample_events() {
            let frame = GatewayFrame { seq: 5, ref_: Some("r".into()), event };
            for enc in [Encoding::Json, Encoding::MsgPack] {
                let bytes = enc.encode(&frame).unwrap();
                let flat = parse::<FlatGatewayFrame>(&bytes, enc).unwrap().into_frame();
                assert_eq!(flat.as_ref(), Some(&frame), "{enc:?}");
            }
        }
        // Positional arrays stay refused, whichever path reads them.
        let positional = rmp_serde::to_vec(&("call.answered", 1, "r", "c", "a")).unwrap();
        assert!(decode_gateway(&positional, Encoding::MsgPack).is_err());
        assert!(decode_gateway(br#"["call.answered",1,null,"c"]"#, Encoding::Json).is_err());
    }

    #[test]
    fn msgpack_and_json_carry_the_same_messages() {
        let json = br#"{"type":"call.inbound","seq":7,"ref":"x","call_id":"c1","to":"+15550100","from":"+15551230001","priority":3}"#;
        let value: serde_json::Value = serde_json::from_slice(json).unwrap();
        let mp = rmp_serde::to_vec_named(&value).unwrap();
        assert_eq!(decode_gateway(json, Encoding::Json).unwrap(), decode_gateway(&mp, Encoding::MsgPack).unwrap());
        let msg = AgentMessage::Pong { ref_: Some("p".into()) };
        let as_json: serde_json::Value = serde_json::from_slice(&Encoding::Json.encode(&msg).unwrap()).unwrap();
        let as_mp: serde_json::Value = rmp_serde::from_slice(&Encoding::MsgPack.encode(&msg).unwrap()).unwrap();
        assert_eq!(as_json, as_mp);
        // MessagePack positional arrays are refused: maps only.
        let positional = rmp_serde::to_vec(&("ping",)).unwrap();
        assert_eq!(decode_agent(&positional, Encoding::MsgPack).unwrap_err().code, ErrorCode::BadRequest);
    }
}
