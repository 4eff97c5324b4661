//! The read side of history: visibility-filtered, cursor-paginated queries.
//!
//! Visibility is enforced in the SQL itself, never by filtering rows after
//! the fact, so a page is always full and a cursor never skips a row the
//! viewer may see:
//!
//! - no row of another account is ever selected;
//! - managers (owner, admin) see every row of their account;
//! - a call is visible to a user involved in it (rung, answered, placed),
//!   or when its number is assigned to the user and it is not restricted;
//! - a message is visible to its sender, or when its number is assigned to
//!   the user and it is not restricted;
//! - a voicemail is visible when its number is assigned and not restricted.
//!
//! Pagination is newest first, ordered by `(time DESC, id DESC)`. A cursor
//! is the base-10 engine time in microseconds of the last item, a colon and
//! that item's id (`"1700000000123456:call-42"`); the next page starts
//! strictly after it. The id is everything after the first colon, so ids
//! containing colons round-trip. Callers should treat it as opaque (and
//! URL-encode it in query strings).

use super::codec::{at, from_json, instant, parse_enum, uint};
use super::error::StoreError;
use super::journal::JournalHandle;
use super::schema;
use crate::core::history::{CallRecord, MessageRecord, Outcome, VoicemailRecord};
use crate::core::ids::{AccountId, NumberId, UserId};
use crate::core::time::Instant;
use crate::protocol::gateway::DeliveryStatus;
use rusqlite::types::Value;
use rusqlite::{Connection, Row, params_from_iter};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

pub const DEFAULT_LIMIT: u32 = 50;
pub const MAX_LIMIT: u32 = 500;

/// Who is asking, as the shell knows it now.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Viewer {
    pub account: AccountId,
    pub user: UserId,
    /// Owner or admin: sees every row of the account.
    pub manager: bool,
    /// Numbers the user is assigned to now (not caller-id-only access).
    pub assigned: Vec<NumberId>,
}

/// Filters for [`History::calls`]. `since` is inclusive, `until` exclusive,
/// both on `ended_at`.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct CallQuery {
    pub number: Option<NumberId>,
    pub since: Option<Instant>,
    pub until: Option<Instant>,
    /// An [`Outcome::name`], e.g. `"missed"`.
    pub outcome: Option<String>,
    pub cursor: Option<String>,
    /// Default [`DEFAULT_LIMIT`], capped at [`MAX_LIMIT`].
    pub limit: Option<u32>,
}

/// Filters for [`History::messages`], on the message's `at`.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct MessageQuery {
    pub since: Option<Instant>,
    pub until: Option<Instant>,
    pub cursor: Option<String>,
    pub limit: Option<u32>,
}

/// Filters for [`History::voicemails`], on the voicemail's `at`.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct VoicemailQuery {
    pub number: Option<NumberId>,
    pub since: Option<Instant>,
    pub until: Option<Instant>,
    pub cursor: Option<String>,
    pub limit: Option<u32>,
}

#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Present when more items follow; pass it back as `cursor`.
    pub next_cursor: Option<String>,
}

/// A message with its latest delivery status (outbound messages).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct MessageView {
    pub message: MessageRecord,
    pub status: Option<DeliveryStatus>,
    pub status_at: Option<Instant>,
}

/// History queries. Cheap to clone. Queries block on SQLite: call them
/// from `spawn_blocking`, not on an async worker.
#[derive(Clone, Debug)]
pub struct History {
    readers: Arc<Readers>,
    journal: JournalHandle,
}

#[derive(Debug)]
struct Readers {
    conns: Vec<Mutex<Connection>>,
    next: AtomicUsize,
}

impl History {
    pub(super) fn open(path: &Path, connections: usize, journal: JournalHandle) -> Result<Self, StoreError> {
        let conns =
            (0..connections.max(1)).map(|_| schema::open_reader(path).map(Mutex::new)).collect::<Result<_, _>>()?;
        Ok(History { readers: Arc::new(Readers { conns, next: AtomicUsize::new(0) }), journal })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        let conns = &self.readers.conns;
        if let Some(free) = conns.iter().find_map(|c| c.try_lock().ok()) {
            return free;
        }
        let i = self.readers.next.fetch_add(1, Ordering::Relaxed) % conns.len();
        // A connection is usable whatever a panicking query was doing.
        conns[i].lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn calls(&self, viewer: &Viewer, q: &CallQuery) -> Result<Page<CallRecord>, StoreError> {
        let mut s = Sql::new(&format!("SELECT {CALL_COLUMNS} FROM calls c WHERE c.account = ?"), &viewer.account);
        if !viewer.manager {
            // Involved: answered, placed, or was rung for it.
            s.push(
                " AND (c.answered_by = ? OR c.placed_by = ? \
                 OR EXISTS (SELECT 1 FROM json_each(c.rung) r WHERE r.value = ?)",
            );
            for _ in 0..3 {
                s.text(viewer.user.as_str());
            }
            if !viewer.assigned.is_empty() {
                s.push(" OR (c.restricted = 0 AND ");
                s.number_in("c.number", &viewer.assigned);
                s.push(")");
            }
            s.push(")");
        }
        if let Some(n) = &q.number {
            s.push(" AND c.number = ?");
            s.text(n.as_str());
        }
        if let Some(o) = &q.outcome {
            s.push(" AND c.outcome = ?");
            s.text(o.as_str());
        }
        s.range("c.ended_at", "c.id", q.since, q.until, q.cursor.as_deref())?;
        let limit = s.order_limit("c.ended_at", "c.id", q.limit);
        let rows = s.query(&self.conn(), call_from_row)?;
        Ok(page(rows, limit, |c| cursor(c.ended_at, &c.id)))
    }

    /// Messages on one number.
    pub fn messages(
        &self,
        viewer: &Viewer,
        number: &NumberId,
        q: &MessageQuery,
    ) -> Result<Page<MessageView>, StoreError> {
        let mut s = Sql::new(&format!("SELECT {MESSAGE_COLUMNS} FROM messages m WHERE m.account = ?"), &viewer.account);
        s.push(" AND m.number = ?");
        s.text(number.as_str());
        if !viewer.manager {
            s.push(" AND (m.sent_by = ?");
            s.text(viewer.user.as_str());
            if !viewer.assigned.is_empty() {
                s.push(" OR (m.restricted = 0 AND ");
                s.number_in("m.number", &viewer.assigned);
                s.push(")");
            }
            s.push(")");
        }
        s.range("m.at", "m.id", q.since, q.until, q.cursor.as_deref())?;
        let limit = s.order_limit("m.at", "m.id", q.limit);
        let rows = s.query(&self.conn(), message_from_row)?;
        Ok(page(rows, limit, |m| cursor(m.message.at, m.message.id.as_str())))
    }

    pub fn voicemails(&self, viewer: &Viewer, q: &VoicemailQuery) -> Result<Page<VoicemailRecord>, StoreError> {
        let mut s =
            Sql::new(&format!("SELECT {VOICEMAIL_COLUMNS} FROM voicemails v WHERE v.account = ?"), &viewer.account);
        if !viewer.manager {
            if viewer.assigned.is_empty() {
                s.push(" AND 0");
            } else {
                s.push(" AND v.restricted = 0 AND ");
                s.number_in("v.number", &viewer.assigned);
            }
        }
        if let Some(n) = &q.number {
            s.push(" AND v.number = ?");
            s.text(n.as_str());
        }
        s.range("v.at", "v.call_id", q.since, q.until, q.cursor.as_deref())?;
        let limit = s.order_limit("v.at", "v.call_id", q.limit);
        let rows = s.query(&self.conn(), voicemail_from_row)?;
        Ok(page(rows, limit, |v| cursor(v.at, v.call_id.as_str())))
    }

    /// Deletes calls that ended, and messages and voicemails dated, before
    /// `cutoff`; returns how many went. Runs on the writer thread (between
    /// two group commits) so it never contends with it for the write lock.
    pub fn purge_history_before(&self, cutoff: Instant) -> Result<u64, StoreError> {
        self.journal.purge(cutoff)
    }
}

/// A statement under construction with its positional parameters.
struct Sql {
    text: String,
    params: Vec<Value>,
}

impl Sql {
    fn new(head: &str, account: &AccountId) -> Self {
        Sql { text: head.to_owned(), params: vec![Value::Text(account.as_str().to_owned())] }
    }

    fn push(&mut self, s: &str) {
        self.text.push_str(s);
    }

    fn bind(&mut self, v: impl Into<Value>) {
        self.params.push(v.into());
    }

    fn text(&mut self, s: &str) {
        self.params.push(Value::Text(s.to_owned()));
    }

    fn number_in(&mut self, column: &str, numbers: &[NumberId]) {
        self.push(column);
        self.push(" IN (");
        for (i, n) in numbers.iter().enumerate() {
            self.push(if i == 0 { "?" } else { ", ?" });
            self.text(n.as_str());
        }
        self.push(")");
    }

    fn range(
        &mut self,
        time: &str,
        id: &str,
        since: Option<Instant>,
        until: Option<Instant>,
        cursor: Option<&str>,
    ) -> Result<(), StoreError> {
        if let Some(t) = since {
            self.push(&format!(" AND {time} >= ?"));
            self.bind(at(t));
        }
        if let Some(t) = until {
            self.push(&format!(" AND {time} < ?"));
            self.bind(at(t));
        }
        if let Some(c) = cursor {
            let (t, last_id) = parse_cursor(c)?;
            self.push(&format!(" AND ({time} < ? OR ({time} = ? AND {id} < ?))"));
            self.bind(at(t));
            self.bind(at(t));
            self.bind(last_id);
        }
        Ok(())
    }

    /// Appends the order and a limit one past the page size, so the query
    /// itself tells whether another page follows. Returns the page size.
    fn order_limit(&mut self, time: &str, id: &str, limit: Option<u32>) -> usize {
        let limit = limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT);
        self.push(&format!(" ORDER BY {time} DESC, {id} DESC LIMIT ?"));
        self.bind(i64::from(limit) + 1);
        limit as usize
    }

    fn query<T>(
        &self,
        conn: &Connection,
        decode: impl Fn(&Row<'_>) -> Result<T, StoreError>,
    ) -> Result<Vec<T>, StoreError> {
        let mut stmt = conn.prepare_cached(&self.text)?;
        let mut rows = stmt.query(params_from_iter(self.params.iter()))?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            out.push(decode(row)?);
        }
        Ok(out)
    }
}

fn page<T>(mut rows: Vec<T>, limit: usize, key: impl Fn(&T) -> String) -> Page<T> {
    let more = rows.len() > limit;
    rows.truncate(limit);
    let next_cursor = if more { rows.last().map(key) } else { None };
    Page { items: rows, next_cursor }
}

fn cursor(t: Instant, id: &str) -> String {
    format!("{}:{id}", t.as_micros())
}

fn parse_cursor(c: &str) -> Result<(Instant, String), StoreError> {
    let bad = || StoreError::BadCursor(c.to_owned());
    let (t, id) = c.split_once(':').ok_or_else(bad)?;
    if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let t: u64 = t.parse().map_err(|_| bad())?;
    Ok((Instant::from_micros(t), id.to_owned()))
}

const CALL_COLUMNS: &str = "c.id, c.kind, c.number, c.from_phone, c.to_phone, c.priority, c.rung, c.answered_by, \
     c.placed_by, c.outcome_detail, c.origin_call, c.dial_call, c.attempts, c.started_at, c.answered_at, \
     c.ended_at, c.wait_ms, c.talk_ms, c.restricted";

fn call_from_row(r: &Row<'_>) -> Result<CallRecord, StoreError> {
    let kind: String = r.get(1)?;
    let rung: String = r.get(6)?;
    let outcome: String = r.get(9)?;
    Ok(CallRecord {
        id: r.get(0)?,
        kind: parse_enum(&kind)?,
        number: NumberId::from(r.get::<_, String>(2)?),
        from: r.get::<_, String>(3)?.into(),
        to: r.get::<_, String>(4)?.into(),
        priority: r.get(5)?,
        rung: from_json(&rung)?,
        answered_by: r.get::<_, Option<String>>(7)?.map(Into::into),
        placed_by: r.get::<_, Option<String>>(8)?.map(Into::into),
        outcome: from_json::<Outcome>(&outcome)?,
        origin_call: r.get::<_, Option<String>>(10)?.map(Into::into),
        dial_call: r.get::<_, Option<String>>(11)?.map(Into::into),
        attempts: r.get(12)?,
        started_at: instant(r.get(13)?),
        answered_at: r.get::<_, Option<i64>>(14)?.map(instant),
        ended_at: instant(r.get(15)?),
        wait_ms: uint(r.get(16)?),
        talk_ms: uint(r.get(17)?),
        restricted: r.get(18)?,
    })
}

const MESSAGE_COLUMNS: &str = "m.id, m.number, m.direction, m.from_phone, m.to_phone, m.body, m.at, m.sent_by, \
     m.restricted, m.status, m.status_at";

fn message_from_row(r: &Row<'_>) -> Result<MessageView, StoreError> {
    let direction: String = r.get(2)?;
    let status: Option<String> = r.get(9)?;
    Ok(MessageView {
        message: MessageRecord {
            id: r.get::<_, String>(0)?.into(),
            number: r.get::<_, String>(1)?.into(),
            direction: parse_enum(&direction)?,
            from: r.get::<_, String>(3)?.into(),
            to: r.get::<_, String>(4)?.into(),
            body: r.get(5)?,
            at: instant(r.get(6)?),
            sent_by: r.get::<_, Option<String>>(7)?.map(Into::into),
            restricted: r.get(8)?,
        },
        status: status.as_deref().map(parse_enum).transpose()?,
        status_at: r.get::<_, Option<i64>>(10)?.map(instant),
    })
}

const VOICEMAIL_COLUMNS: &str = "v.call_id, v.number, v.from_phone, v.url, v.duration_ms, v.at, v.restricted";

fn voicemail_from_row(r: &Row<'_>) -> Result<VoicemailRecord, StoreError> {
    Ok(VoicemailRecord {
        call_id: r.get::<_, String>(0)?.into(),
        number: r.get::<_, String>(1)?.into(),
        from: r.get::<_, String>(2)?.into(),
        url: r.get(3)?,
        duration_ms: uint(r.get(4)?),
        at: instant(r.get(5)?),
        restricted: r.get(6)?,
    })
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{call, message, open, t, users, voicemail};
    use super::*;
    use crate::core::history::{CallKind, Record};
    use crate::core::ids::{CallbackId, Phone};
    use crate::protocol::agent::Direction;
    use crate::protocol::gateway::OverflowReason;
    use std::collections::BTreeSet;

    const N1: &str = "+15550100";
    const N2: &str = "+15550200";

    fn viewer(account: &str, user: &str, manager: bool, assigned: &[&str]) -> Viewer {
        Viewer {
            account: account.into(),
            user: user.into(),
            manager,
            assigned: assigned.iter().map(|&n| NumberId::from(n)).collect(),
        }
    }

    fn acme(r: Record) -> (AccountId, Record) {
        ("acme".into(), r)
    }

    /// The visibility fixture: number N1 is assigned to bob and dan; tara is
    /// a routing target of N1 who is not assigned to it; carol has only
    /// caller-id (outbound) access to N1; olivia owns the account and adam
    /// administers it. globex is another account, reusing a call id and
    /// the number string.
    fn visibility_fixture(j: &JournalHandle) {
        let mut c1 = call("c1", N1, 100);
        c1.rung = users(&["bob", "dan"]);
        c1.answered_by = Some("bob".into());
        c1.outcome = Outcome::Answered;
        let mut c2 = call("c2", N1, 200);
        c2.rung = users(&["dan"]);
        let mut c3 = call("c3", N1, 300);
        c3.rung = users(&["tara"]);
        c3.answered_by = Some("tara".into());
        c3.outcome = Outcome::Answered;
        c3.restricted = true;
        let mut c4 = call("c4", N1, 400);
        c4.kind = CallKind::Outbound;
        c4.placed_by = Some("carol".into());
        c4.outcome = Outcome::NoAnswer;
        c4.restricted = true;
        let mut c5 = call("c5", N2, 500);
        c5.rung = users(&["tara"]);
        let mut g1 = call("c1", N1, 150);
        g1.rung = users(&["gus"]);
        g1.answered_by = Some("gus".into());

        let m1 = message("m1", N1, 100);
        let mut m2 = message("m2", N1, 200);
        m2.direction = Direction::Outbound;
        m2.sent_by = Some("bob".into());
        let mut m3 = message("m3", N1, 300);
        m3.direction = Direction::Outbound;
        m3.sent_by = Some("carol".into());
        m3.restricted = true;
        let mut g2 = message("g2", N1, 250);
        g2.sent_by = Some("gus".into());

        let v1 = voicemail("c2", N1, 210);
        let mut v2 = voicemail("c9", N1, 220);
        v2.restricted = true;
        let g3 = voicemail("c1", N1, 160);

        j.records(vec![
            acme(Record::Call(c1)),
            acme(Record::Call(c2)),
            acme(Record::Call(c3)),
            acme(Record::Call(c4)),
            acme(Record::Call(c5)),
            ("globex".into(), Record::Call(g1)),
            acme(Record::Message(m1)),
            acme(Record::Message(m2)),
            acme(Record::Message(m3)),
            ("globex".into(), Record::Message(g2)),
            acme(Record::Voicemail(v1)),
            acme(Record::Voicemail(v2)),
            ("globex".into(), Record::Voicemail(g3)),
        ]);
        j.flush().unwrap();
    }

    fn call_ids(h: &History, v: &Viewer) -> Vec<String> {
        h.calls(v, &CallQuery::default()).unwrap().items.into_iter().map(|c| c.id).collect()
    }

    fn message_ids(h: &History, v: &Viewer) -> Vec<String> {
        let page = h.messages(v, &N1.into(), &MessageQuery::default()).unwrap();
        page.items.into_iter().map(|m| m.message.id.to_string()).collect()
    }

    fn voicemail_ids(h: &History, v: &Viewer) -> Vec<String> {
        h.voicemails(v, &VoicemailQuery::default()).unwrap().items.into_iter().map(|v| v.call_id.to_string()).collect()
    }

    #[test]
    fn visibility_table() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = open(dir.path());
        visibility_fixture(&store.journal());
        let h = store.history();

        struct Case {
            who: &'static str,
            viewer: Viewer,
            calls: &'static [&'static str],
            messages: &'static [&'static str],
            voicemails: &'static [&'static str],
        }
        let cases = [
            Case {
                who: "assigned agent who answered",
                viewer: viewer("acme", "bob", false, &[N1]),
                calls: &["c2", "c1"],
                messages: &["m2", "m1"],
                voicemails: &["c2"],
            },
            Case {
                who: "assigned agent, handled by another",
                viewer: viewer("acme", "dan", false, &[N1]),
                calls: &["c2", "c1"],
                messages: &["m2", "m1"],
                voicemails: &["c2"],
            },
            Case {
                who: "non-assigned routing target",
                viewer: viewer("acme", "tara", false, &[]),
                calls: &["c5", "c3"],
                messages: &[],
                voicemails: &[],
            },
            Case {
                who: "outbound-only user",
                viewer: viewer("acme", "carol", false, &[]),
                calls: &["c4"],
                messages: &["m3"],
                voicemails: &[],
            },
            Case {
                who: "admin",
                viewer: viewer("acme", "adam", true, &[]),
                calls: &["c5", "c4", "c3", "c2", "c1"],
                messages: &["m3", "m2", "m1"],
                voicemails: &["c9", "c2"],
            },
            Case {
                who: "owner",
                viewer: viewer("acme", "olivia", true, &[N2]),
                calls: &["c5", "c4", "c3", "c2", "c1"],
                messages: &["m3", "m2", "m1"],
                voicemails: &["c9", "c2"],
            },
            Case {
                who: "another account's user, assigned to the same number string",
                viewer: viewer("initech", "bob", false, &[N1]),
                calls: &[],
                messages: &[],
                voicemails: &[],
            },
            Case {
                who: "another account's admin",
                viewer: viewer("initech", "root", true, &[]),
                calls: &[],
                messages: &[],
                voicemails: &[],
            },
            Case {
                who: "globex manager sees only globex",
                viewer: viewer("globex", "gus", true, &[]),
                calls: &["c1"],
                messages: &["g2"],
                voicemails: &["c1"],
            },
        ];
        for c in cases {
            assert_eq!(call_ids(&h, &c.viewer), c.calls, "calls: {}", c.who);
            assert_eq!(message_ids(&h, &c.viewer), c.messages, "messages: {}", c.who);
            assert_eq!(voicemail_ids(&h, &c.viewer), c.voicemails, "voicemails: {}", c.who);
        }
        // The globex row with the same id is its own row, not acme's c1.
        let gus = h.calls(&viewer("globex", "gus", true, &[]), &CallQuery::default()).unwrap();
        assert_eq!(gus.items[0].answered_by, Some("gus".into()));
    }

    #[test]
    fn records_round_trip_every_field() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = open(dir.path());
        let mut cb = call("cb-7", N1, 50);
        cb.kind = CallKind::Callback;
        cb.priority = 7;
        cb.from = Phone::from("+15557770009");
        cb.rung = users(&["dan", "bob", "dan"]);
        cb.answered_by = Some("bob".into());
        cb.outcome = Outcome::CallbackRequested { callback_id: CallbackId::from("cb-8") };
        cb.origin_call = Some("orig-1".into());
        cb.dial_call = Some("dial-3".into());
        cb.attempts = 3;
        cb.answered_at = Some(t(45));
        cb.wait_ms = u64::MAX;
        cb.talk_ms = 5_000;
        let mut fwd = call("fw", N1, 60);
        fwd.outcome = Outcome::Forwarded { to: N2.into(), reason: OverflowReason::MaxWait };
        let mut m = message("m", N1, 70);
        m.direction = Direction::Outbound;
        m.sent_by = Some("bob".into());
        let v = voicemail("vm", N1, 80);
        let j = store.journal();
        j.append(
            t(80),
            &"acme".into(),
            b"input".to_vec(),
            vec![
                acme(Record::Call(cb.clone())),
                acme(Record::Call(fwd.clone())),
                acme(Record::Message(m.clone())),
                acme(Record::Voicemail(v.clone())),
            ],
        );
        j.flush().unwrap();
        let h = store.history();
        let admin = viewer("acme", "adam", true, &[]);
        let calls = h.calls(&admin, &CallQuery::default()).unwrap().items;
        // wait_ms saturates at i64::MAX in SQLite.
        cb.wait_ms = i64::MAX as u64;
        assert_eq!(calls, vec![fwd, cb]);
        let msgs = h.messages(&admin, &N1.into(), &MessageQuery::default()).unwrap().items;
        assert_eq!(msgs, vec![MessageView { message: m, status: None, status_at: None }]);
        assert_eq!(h.voicemails(&admin, &VoicemailQuery::default()).unwrap().items, vec![v]);
    }

    #[test]
    fn upserts_are_idempotent_and_statuses_ordered() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = open(dir.path());
        let j = store.journal();
        let h = store.history();
        let mut c = call("c1", N1, 100);
        c.rung = users(&["tara"]);
        c.answered_by = Some("tara".into());
        c.restricted = true;
        let m = message("m1", N1, 100);
        // A status for a message not stored yet is dropped.
        j.records(vec![acme(Record::MessageStatus { id: "m1".into(), status: DeliveryStatus::Sent, at: t(99) })]);
        for _ in 0..3 {
            j.records(vec![acme(Record::Call(c.clone())), acme(Record::Message(m.clone()))]);
        }
        j.flush().unwrap();
        let admin = viewer("acme", "adam", true, &[]);
        let tara = viewer("acme", "tara", false, &[]);
        assert_eq!(h.calls(&admin, &CallQuery::default()).unwrap().items, vec![c.clone()]);
        assert_eq!(call_ids(&h, &tara), ["c1"]);
        let status = |h: &History| {
            let v = &h.messages(&admin, &N1.into(), &MessageQuery::default()).unwrap().items;
            assert_eq!(v.len(), 1);
            (v[0].status, v[0].status_at)
        };
        assert_eq!(status(&h), (None, None));

        // The same call re-recorded with another answerer: one row, and the
        // previous answerer's involvement is gone with it.
        c.rung = users(&["bob"]);
        c.answered_by = Some("bob".into());
        c.restricted = false;
        j.records(vec![
            acme(Record::Call(c.clone())),
            acme(Record::MessageStatus { id: "m1".into(), status: DeliveryStatus::Delivered, at: t(120) }),
            // Arrives late but is older: must not win.
            acme(Record::MessageStatus { id: "m1".into(), status: DeliveryStatus::Sent, at: t(110) }),
            // A replayed message record keeps the status.
            acme(Record::Message(m.clone())),
        ]);
        j.flush().unwrap();
        assert_eq!(h.calls(&admin, &CallQuery::default()).unwrap().items, vec![c]);
        assert!(call_ids(&h, &tara).is_empty());
        assert_eq!(call_ids(&h, &viewer("acme", "dan", false, &[N1])), ["c1"]);
        assert_eq!(status(&h), (Some(DeliveryStatus::Delivered), Some(t(120))));
    }

    #[test]
    fn an_id_used_again_later_keeps_both_records() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = open(dir.path());
        let j = store.journal();
        let h = store.history();
        // The gateway used c1, m1 and c1's voicemail id again an hour later,
        // after the engine had forgotten them: new calls, new records.
        let first = call("c1", N1, 100);
        let mut again = call("c1", N1, 3_700);
        again.from = "+15557770002".into();
        let (m_first, mut m_again) = (message("m1", N1, 100), message("m1", N1, 3_700));
        m_again.body = "the second one".into();
        let (v_first, mut v_again) = (voicemail("c1", N1, 100), voicemail("c1", N1, 3_700));
        v_again.url = "https://vm.test/second".into();
        j.records(vec![
            acme(Record::Call(first.clone())),
            acme(Record::Message(m_first.clone())),
            acme(Record::Voicemail(v_first.clone())),
            acme(Record::Call(again.clone())),
            acme(Record::Message(m_again.clone())),
            acme(Record::Voicemail(v_again.clone())),
            // A status names the latest message with its id.
            acme(Record::MessageStatus { id: "m1".into(), status: DeliveryStatus::Delivered, at: t(3_710) }),
        ]);
        j.flush().unwrap();
        let admin = viewer("acme", "adam", true, &[]);
        assert_eq!(h.calls(&admin, &CallQuery::default()).unwrap().items, vec![again, first]);
        let msgs = h.messages(&admin, &N1.into(), &MessageQuery::default()).unwrap().items;
        assert_eq!(
            msgs,
            vec![
                MessageView { message: m_again, status: Some(DeliveryStatus::Delivered), status_at: Some(t(3_710)) },
                MessageView { message: m_first, status: None, status_at: None },
            ]
        );
        assert_eq!(h.voicemails(&admin, &VoicemailQuery::default()).unwrap().items, vec![v_again, v_first]);
    }

    #[test]
    fn filters_by_number_time_and_outcome() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = open(dir.path());
        let j = store.journal();
        let mut recs = Vec::new();
        for i in 0..10u64 {
            let mut c = call(&format!("c{i}"), if i % 2 == 0 { N1 } else { N2 }, 100 + i * 10);
            if i % 3 == 0 {
                c.outcome = Outcome::Answered;
            }
            recs.push(acme(Record::Call(c)));
            recs.push(acme(Record::Message(message(&format!("m{i}"), N1, 100 + i * 10))));
            recs.push(acme(Record::Voicemail(voicemail(&format!("v{i}"), if i < 5 { N1 } else { N2 }, 100 + i))));
        }
        j.records(recs);
        j.flush().unwrap();
        let h = store.history();
        let admin = viewer("acme", "adam", true, &[]);
        let ids =
            |q: CallQuery| -> Vec<String> { h.calls(&admin, &q).unwrap().items.into_iter().map(|c| c.id).collect() };
        assert_eq!(ids(CallQuery { number: Some(N2.into()), ..Default::default() }), ["c9", "c7", "c5", "c3", "c1"]);
        // since inclusive, until exclusive.
        assert_eq!(
            ids(CallQuery { since: Some(t(130)), until: Some(t(160)), ..Default::default() }),
            ["c5", "c4", "c3"]
        );
        assert_eq!(ids(CallQuery { outcome: Some("answered".into()), ..Default::default() }), ["c9", "c6", "c3", "c0"]);
        assert_eq!(
            ids(CallQuery { outcome: Some("missed".into()), number: Some(N1.into()), ..Default::default() }),
            ["c8", "c4", "c2"]
        );
        assert!(ids(CallQuery { outcome: Some("no_such_outcome".into()), ..Default::default() }).is_empty());

        let q = MessageQuery { since: Some(t(180)), ..Default::default() };
        let m: Vec<String> =
            h.messages(&admin, &N1.into(), &q).unwrap().items.into_iter().map(|m| m.message.id.to_string()).collect();
        assert_eq!(m, ["m9", "m8"]);
        assert!(h.messages(&admin, &N2.into(), &MessageQuery::default()).unwrap().items.is_empty());

        let q = VoicemailQuery { number: Some(N1.into()), until: Some(t(103)), ..Default::default() };
        let v: Vec<String> =
            h.voicemails(&admin, &q).unwrap().items.into_iter().map(|v| v.call_id.to_string()).collect();
        assert_eq!(v, ["v2", "v1", "v0"]);
    }

    #[test]
    fn pagination_has_no_gaps_or_duplicates() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = open(dir.path());
        let j = store.journal();
        // Many rows share a timestamp, and ids contain the cursor separator,
        // so only the (time, id) ordering keeps pages apart.
        let mut recs = Vec::new();
        let mut want = Vec::new();
        for i in 0..47u64 {
            let id = format!("call:{:02}", (i * 17) % 47);
            let ended = 100 + i / 5;
            want.push((t(ended), id.clone()));
            recs.push(acme(Record::Call(call(&id, N1, ended))));
            recs.push(acme(Record::Message(message(&id, N1, ended))));
            recs.push(acme(Record::Voicemail(voicemail(&id, N1, ended))));
        }
        j.records(recs);
        j.flush().unwrap();
        want.sort_by(|a, b| b.cmp(a));
        let want: Vec<String> = want.into_iter().map(|(_, id)| id).collect();
        let h = store.history();
        let bob = viewer("acme", "bob", false, &[N1]);

        for limit in [1, 5, 46, 47, 48] {
            let (mut calls, mut msgs, mut vms) = (Vec::new(), Vec::new(), Vec::new());
            let mut cursor = None;
            loop {
                let q = CallQuery { cursor: cursor.clone(), limit: Some(limit), ..Default::default() };
                let p = h.calls(&bob, &q).unwrap();
                assert!(p.items.len() <= limit as usize);
                calls.extend(p.items.into_iter().map(|c| c.id));
                cursor = p.next_cursor;
                if cursor.is_none() {
                    break;
                }
            }
            loop {
                let q = MessageQuery { cursor: cursor.clone(), limit: Some(limit), ..Default::default() };
                let p = h.messages(&bob, &N1.into(), &q).unwrap();
                msgs.extend(p.items.into_iter().map(|m| m.message.id.to_string()));
                cursor = p.next_cursor;
                if cursor.is_none() {
                    break;
                }
            }
            loop {
                let q = VoicemailQuery { cursor: cursor.clone(), limit: Some(limit), ..Default::default() };
                let p = h.voicemails(&bob, &q).unwrap();
                vms.extend(p.items.into_iter().map(|v| v.call_id.to_string()));
                cursor = p.next_cursor;
                if cursor.is_none() {
                    break;
                }
            }
            assert_eq!(calls, want, "calls, limit {limit}");
            assert_eq!(msgs, want, "messages, limit {limit}");
            assert_eq!(vms, want, "voicemails, limit {limit}");
            assert_eq!(calls.iter().collect::<BTreeSet<_>>().len(), 47);
        }

        // Default and maximum page sizes.
        assert_eq!(h.calls(&bob, &CallQuery::default()).unwrap().items.len(), 47);
        let p = h.calls(&bob, &CallQuery { limit: Some(0), ..Default::default() }).unwrap();
        assert_eq!(p.items.len(), 1);
        assert!(p.next_cursor.is_some());

        for bad in ["", "abc", "12", "-5:x", "1e3:x", ":x", "99999999999999999999999:x"] {
            let q = CallQuery { cursor: Some(bad.into()), ..Default::default() };
            assert!(matches!(h.calls(&bob, &q), Err(StoreError::BadCursor(_))), "{bad:?}");
        }
    }

    #[test]
    fn limits_default_and_cap() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = open(dir.path());
        let recs = (0..600u64).map(|i| acme(Record::Call(call(&format!("c{i:03}"), N1, i)))).collect();
        store.journal().records(recs);
        store.journal().flush().unwrap();
        let h = store.history();
        let admin = viewer("acme", "adam", true, &[]);
        let p = h.calls(&admin, &CallQuery::default()).unwrap();
        assert_eq!(p.items.len(), DEFAULT_LIMIT as usize);
        assert_eq!(p.next_cursor, Some(format!("{}:c550", t(550).as_micros())));
        let p = h.calls(&admin, &CallQuery { limit: Some(10_000), ..Default::default() }).unwrap();
        assert_eq!(p.items.len(), MAX_LIMIT as usize);
    }

    #[test]
    fn purge_removes_old_history_only() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = open(dir.path());
        let j = store.journal();
        let mut old = call("old", N1, 10);
        old.rung = users(&["bob"]);
        j.records(vec![
            acme(Record::Call(old)),
            acme(Record::Call(call("new", N1, 200))),
            acme(Record::Message(message("m-old", N1, 10))),
            acme(Record::Message(message("m-new", N1, 200))),
            acme(Record::Voicemail(voicemail("v-old", N1, 10))),
            acme(Record::Voicemail(voicemail("v-new", N1, 200))),
        ]);
        let seq = j.append(t(200), &"acme".into(), b"x".to_vec(), Vec::new());
        let h = store.history();
        assert_eq!(h.purge_history_before(t(100)).unwrap(), 3);
        assert_eq!(h.purge_history_before(t(100)).unwrap(), 0);
        let admin = viewer("acme", "adam", true, &[]);
        assert_eq!(call_ids(&h, &admin), ["new"]);
        assert_eq!(message_ids(&h, &admin), ["m-new"]);
        assert_eq!(voicemail_ids(&h, &admin), ["v-new"]);
        assert!(call_ids(&h, &viewer("acme", "bob", false, &[])).is_empty());
        // The writer carries on after a purge.
        assert!(j.durable() >= seq);
        let seq = j.append(t(201), &"acme".into(), b"y".to_vec(), Vec::new());
        assert_eq!(j.flush().unwrap(), seq);
    }
}
