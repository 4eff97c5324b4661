//! The write side of history: idempotent upserts, run by the writer thread
//! inside its batch transaction.
//!
//! Every write is keyed by the record's id and start time within its
//! account: the same call written again updates its row, while a gateway
//! id used again after the engine forgot it (a new call or message) gets a
//! row of its own and leaves the earlier one as it was.

use super::codec::{at, enum_name, int, to_json};
use super::error::StoreError;
use crate::core::history::{CallRecord, MessageRecord, Record, VoicemailRecord};
use crate::core::ids::{AccountId, MessageId};
use crate::core::time::Instant;
use crate::protocol::gateway::DeliveryStatus;
use rusqlite::{Connection, params};

pub fn write(conn: &Connection, account: &AccountId, record: &Record) -> Result<(), StoreError> {
    match record {
        Record::Call(c) => call(conn, account, c),
        Record::Message(m) => message(conn, account, m),
        Record::MessageStatus { id, status, at } => message_status(conn, account, id, *status, *at),
        Record::Voicemail(v) => voicemail(conn, account, v),
    }
}

fn call(conn: &Connection, account: &AccountId, c: &CallRecord) -> Result<(), StoreError> {
    let kind = enum_name(&c.kind)?;
    let rung = to_json(&c.rung)?;
    let detail = to_json(&c.outcome)?;
    conn.prepare_cached(
        "INSERT INTO calls (account, id, kind, number, from_phone, to_phone, priority, rung, answered_by,
             placed_by, outcome, outcome_detail, origin_call, dial_call, attempts, started_at, answered_at,
             ended_at, wait_ms, talk_ms, restricted)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21)
         ON CONFLICT (account, id, started_at) DO UPDATE SET
             kind = excluded.kind, number = excluded.number, from_phone = excluded.from_phone,
             to_phone = excluded.to_phone, priority = excluded.priority, rung = excluded.rung,
             answered_by = excluded.answered_by, placed_by = excluded.placed_by, outcome = excluded.outcome,
             outcome_detail = excluded.outcome_detail, origin_call = excluded.origin_call,
             dial_call = excluded.dial_call, attempts = excluded.attempts,
             answered_at = excluded.answered_at, ended_at = excluded.ended_at, wait_ms = excluded.wait_ms,
             talk_ms = excluded.talk_ms, restricted = excluded.restricted",
    )?
    .execute(params![
        account.as_str(),
        c.id,
        kind,
        c.number.as_str(),
        c.from.as_str(),
        c.to.as_str(),
        c.priority,
        rung,
        c.answered_by.as_ref().map(|u| u.as_str()),
        c.placed_by.as_ref().map(|u| u.as_str()),
        c.outcome.name(),
        detail,
        c.origin_call.as_ref().map(|x| x.as_str()),
        c.dial_call.as_ref().map(|x| x.as_str()),
        c.attempts,
        at(c.started_at),
        c.answered_at.map(at),
        at(c.ended_at),
        int(c.wait_ms),
        int(c.talk_ms),
        c.restricted,
    ])?;
    Ok(())
}

fn message(conn: &Connection, account: &AccountId, m: &MessageRecord) -> Result<(), StoreError> {
    let direction = enum_name(&m.direction)?;
    // The delivery status is left alone on conflict: a replayed message
    // record must not erase a status that arrived after it.
    conn.prepare_cached(
        "INSERT INTO messages (account, id, number, direction, from_phone, to_phone, body, at, sent_by, restricted)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
         ON CONFLICT (account, id, at) DO UPDATE SET
             number = excluded.number, direction = excluded.direction, from_phone = excluded.from_phone,
             to_phone = excluded.to_phone, body = excluded.body, sent_by = excluded.sent_by,
             restricted = excluded.restricted",
    )?
    .execute(params![
        account.as_str(),
        m.id.as_str(),
        m.number.as_str(),
        direction,
        m.from.as_str(),
        m.to.as_str(),
        m.body,
        at(m.at),
        m.sent_by.as_ref().map(|u| u.as_str()),
        m.restricted,
    ])?;
    Ok(())
}

fn message_status(
    conn: &Connection,
    account: &AccountId,
    id: &MessageId,
    status: DeliveryStatus,
    when: Instant,
) -> Result<(), StoreError> {
    // Statuses of an unknown message are dropped (the UPDATE matches
    // nothing); an older status never overwrites a newer one. A status
    // belongs to the latest message with its id (an id used again names
    // the new message).
    conn.prepare_cached(
        "UPDATE messages SET status = ?3, status_at = ?4
         WHERE account = ?1 AND id = ?2 AND (status_at IS NULL OR status_at <= ?4)
           AND at = (SELECT max(at) FROM messages WHERE account = ?1 AND id = ?2)",
    )?
    .execute(params![account.as_str(), id.as_str(), enum_name(&status)?, at(when)])?;
    Ok(())
}

fn voicemail(conn: &Connection, account: &AccountId, v: &VoicemailRecord) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO voicemails (account, call_id, number, from_phone, url, duration_ms, at, restricted)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
         ON CONFLICT (account, call_id, at) DO UPDATE SET
             number = excluded.number, from_phone = excluded.from_phone, url = excluded.url,
             duration_ms = excluded.duration_ms, restricted = excluded.restricted",
    )?
    .execute(params![
        account.as_str(),
        v.call_id.as_str(),
        v.number.as_str(),
        v.from.as_str(),
        v.url,
        int(v.duration_ms),
        at(v.at),
        v.restricted,
    ])?;
    Ok(())
}

/// Deletes history older than `cutoff` (calls by `ended_at`, messages and
/// voicemails by `at`); returns how many records went.
pub fn purge_before(conn: &Connection, cutoff: Instant) -> Result<u64, StoreError> {
    let cutoff = at(cutoff);
    let mut n = conn.prepare_cached("DELETE FROM calls WHERE ended_at < ?1")?.execute([cutoff])?;
    n += conn.prepare_cached("DELETE FROM messages WHERE at < ?1")?.execute([cutoff])?;
    n += conn.prepare_cached("DELETE FROM voicemails WHERE at < ?1")?.execute([cutoff])?;
    Ok(n as u64)
}
