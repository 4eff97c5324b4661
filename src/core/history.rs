//! What the core asks the store to keep: one record per finished call or
//! callback with exactly one outcome, plus messages and voicemails.

use super::ids::{CallId, CallbackId, MessageId, NumberId, Phone, UserId};
use super::time::Instant;
use crate::protocol::agent::Direction;
use crate::protocol::gateway::{DeliveryStatus, OverflowReason};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize, Hash)]
#[serde(rename_all = "snake_case")]
pub enum CallKind {
    Inbound,
    Outbound,
    Callback,
}

/// How a call or callback ended. Exactly one per record.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize, Hash)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum Outcome {
    /// Talked to `answered_by` (inbound or outbound).
    Answered,
    /// The caller hung up while waiting, before any agent was rung.
    Abandoned,
    /// The caller hung up after agents were rung but before anyone answered.
    Missed,
    Voicemail {
        reason: OverflowReason,
    },
    Forwarded {
        to: NumberId,
        reason: OverflowReason,
    },
    /// The engine hung up (overflow set to `hangup`).
    HungUp {
        reason: OverflowReason,
    },
    /// The caller asked to be called back; the callback record continues it.
    CallbackRequested {
        callback_id: CallbackId,
    },
    CallbackCompleted,
    CallbackFailed,
    /// An outbound call nobody answered.
    NoAnswer,
    /// The gateway reported the call failed.
    Failed,
}

impl Outcome {
    /// Every [`Outcome::name`], in declaration order: what a filter on the
    /// outcome may ask for.
    pub const NAMES: [&'static str; 11] = [
        "answered",
        "abandoned",
        "missed",
        "voicemail",
        "forwarded",
        "hung_up",
        "callback_requested",
        "callback_completed",
        "callback_failed",
        "no_answer",
        "failed",
    ];

    pub fn name(&self) -> &'static str {
        match self {
            Outcome::Answered => "answered",
            Outcome::Abandoned => "abandoned",
            Outcome::Missed => "missed",
            Outcome::Voicemail { .. } => "voicemail",
            Outcome::Forwarded { .. } => "forwarded",
            Outcome::HungUp { .. } => "hung_up",
            Outcome::CallbackRequested { .. } => "callback_requested",
            Outcome::CallbackCompleted => "callback_completed",
            Outcome::CallbackFailed => "callback_failed",
            Outcome::NoAnswer => "no_answer",
            Outcome::Failed => "failed",
        }
    }

    /// An unanswered inbound call the team should hear about (`missed_call`).
    pub fn is_missed(&self) -> bool {
        matches!(self, Outcome::Abandoned | Outcome::Missed | Outcome::HungUp { .. } | Outcome::Failed)
    }
}

#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct CallRecord {
    /// The call id, or the callback id for a callback record.
    pub id: String,
    pub kind: CallKind,
    pub number: NumberId,
    pub from: Phone,
    pub to: Phone,
    pub priority: u8,
    /// Everyone offered it, in order.
    pub rung: Vec<UserId>,
    pub answered_by: Option<UserId>,
    /// Who placed it (outbound).
    pub placed_by: Option<UserId>,
    #[serde(flatten)]
    pub outcome: Outcome,
    /// For a callback: the original inbound call. For an inbound call that
    /// became a callback: see the outcome.
    pub origin_call: Option<CallId>,
    /// For a callback: the engine-issued id of the last dial attempt.
    pub dial_call: Option<CallId>,
    pub attempts: u32,
    pub started_at: Instant,
    pub answered_at: Option<Instant>,
    pub ended_at: Instant,
    /// Time from arrival until answered or ended.
    pub wait_ms: u64,
    pub talk_ms: u64,
    /// True when assigned users must not see it: a routing target who is not
    /// assigned to the number was involved, or an outbound-only user placed
    /// it. Owners, admins and the users involved still see it.
    pub restricted: bool,
}

#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct MessageRecord {
    pub id: MessageId,
    pub number: NumberId,
    pub direction: Direction,
    pub from: Phone,
    pub to: Phone,
    pub body: String,
    pub at: Instant,
    pub sent_by: Option<UserId>,
    /// Sent by an outbound-only user: hidden from assigned users.
    pub restricted: bool,
}

#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct VoicemailRecord {
    pub call_id: CallId,
    pub number: NumberId,
    pub from: Phone,
    pub url: String,
    pub duration_ms: u64,
    pub at: Instant,
    pub restricted: bool,
}

#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum Record {
    Call(CallRecord),
    Message(MessageRecord),
    MessageStatus { id: MessageId, status: DeliveryStatus, at: Instant },
    Voicemail(VoicemailRecord),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_lists_every_outcome_once() {
        let r = OverflowReason::QueueFull;
        let all = [
            Outcome::Answered,
            Outcome::Abandoned,
            Outcome::Missed,
            Outcome::Voicemail { reason: r },
            Outcome::Forwarded { to: NumberId::from("+15550199"), reason: r },
            Outcome::HungUp { reason: r },
            Outcome::CallbackRequested { callback_id: CallbackId::from("cb-1") },
            Outcome::CallbackCompleted,
            Outcome::CallbackFailed,
            Outcome::NoAnswer,
            Outcome::Failed,
        ];
        // A new variant breaks this match, and so this list, until it is added.
        for o in &all {
            match o {
                Outcome::Answered
                | Outcome::Abandoned
                | Outcome::Missed
                | Outcome::Voicemail { .. }
                | Outcome::Forwarded { .. }
                | Outcome::HungUp { .. }
                | Outcome::CallbackRequested { .. }
                | Outcome::CallbackCompleted
                | Outcome::CallbackFailed
                | Outcome::NoAnswer
                | Outcome::Failed => {}
            }
        }
        assert_eq!(all.map(|o| o.name()), Outcome::NAMES);
    }
}
