//! Builders shared by the store's tests.

use super::{Recovered, Store, StoreConfig};
use crate::core::history::{CallKind, CallRecord, MessageRecord, Outcome, VoicemailRecord};
use crate::core::ids::UserId;
use crate::core::time::Instant;
use crate::protocol::agent::Direction;
use std::path::Path;

pub fn open(dir: &Path) -> (Store, Recovered) {
    Store::open(StoreConfig::new(dir)).expect("open store")
}

pub fn t(secs: u64) -> Instant {
    Instant::from_millis(1_700_000_000_000 + secs * 1000)
}

pub fn users(names: &[&str]) -> Vec<UserId> {
    names.iter().map(|&n| UserId::from(n)).collect()
}

pub fn call(id: &str, number: &str, ended: u64) -> CallRecord {
    CallRecord {
        id: id.into(),
        kind: CallKind::Inbound,
        number: number.into(),
        from: "+15557770001".into(),
        to: number.into(),
        priority: 0,
        rung: Vec::new(),
        answered_by: None,
        placed_by: None,
        outcome: Outcome::Missed,
        origin_call: None,
        dial_call: None,
        attempts: 0,
        started_at: t(ended.saturating_sub(30)),
        answered_at: None,
        ended_at: t(ended),
        wait_ms: 30_000,
        talk_ms: 0,
        restricted: false,
    }
}

pub fn message(id: &str, number: &str, at: u64) -> MessageRecord {
    MessageRecord {
        id: id.into(),
        number: number.into(),
        direction: Direction::Inbound,
        from: "+15557770001".into(),
        to: number.into(),
        body: format!("hello {id}"),
        at: t(at),
        sent_by: None,
        restricted: false,
    }
}

pub fn voicemail(call_id: &str, number: &str, at: u64) -> VoicemailRecord {
    VoicemailRecord {
        call_id: call_id.into(),
        number: number.into(),
        from: "+15557770001".into(),
        url: format!("https://vm.test/{call_id}.wav"),
        duration_ms: 12_345,
        at: t(at),
        restricted: false,
    }
}

/// A recognisable payload for entry `i`, so replay can check each entry
/// came back with its own bytes.
pub fn payload(i: u64) -> Vec<u8> {
    format!("input-{i:08}-").into_bytes().into_iter().cycle().take(40 + (i % 60) as usize).collect()
}
