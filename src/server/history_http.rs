//! History over HTTP: `GET /v1/calls`, `GET /v1/numbers/{number}/messages`,
//! `GET /v1/voicemails`. Visibility is the store's (applied in SQL); the
//! shell only says who is asking and which numbers it is assigned to now.
//!
//! Query parameters: `number`, `since` and `until` (RFC 3339 with an
//! offset; `since` inclusive, `until` exclusive), `outcome` (calls),
//! `cursor` (opaque, from the previous page's `next_cursor`), `limit`
//! (default 50, at most 500).
//! Answers are newest first: `{"items": [...], "next_cursor": "..."|null}`.

use super::App;
use super::http::{ApiError, ApiPath, Caller};
use crate::core::history::{CallRecord, MessageRecord, Outcome, VoicemailRecord};
use crate::core::ids::{NumberId, is_e164};
use crate::core::time::{Instant, Timestamp};
use crate::protocol::ErrorCode;
use crate::store::{CallQuery, MessageQuery, MessageView, Page, StoreError, Viewer, VoicemailQuery};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/v1/calls", get(calls))
        .route("/v1/numbers/{number}/messages", get(messages))
        .route("/v1/voicemails", get(voicemails))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryParams {
    number: Option<String>,
    since: Option<String>,
    until: Option<String>,
    outcome: Option<String>,
    cursor: Option<String>,
    limit: Option<u32>,
}

/// A full RFC 3339 time with `Z` or a numeric offset, in UTC. Not
/// humantime: it drops an offset that follows fractional seconds (a
/// silently shifted window) and refuses any other non-zero one.
fn time(s: &Option<String>, what: &str) -> Result<Option<Instant>, ApiError> {
    let Some(s) = s else { return Ok(None) };
    let t = OffsetDateTime::parse(s, &Rfc3339).map_err(|e| {
        ApiError::new(
            ErrorCode::BadRequest,
            format!(
                "{what} must be an RFC 3339 time with Z or a \u{b1}hh:mm offset, \
                 e.g. 2024-05-01T09:30:00Z or 2024-05-01T11:30:00+02:00, not {s:?} ({e}){}",
                plus_hint(s)
            ),
        )
    })?;
    // Rounded up to the engine's microseconds: rows are stored in whole
    // microseconds, so `>= since` and `< until` then hold exactly as asked.
    // Before the epoch there is no row, so it clamps to 0.
    let us = u128::try_from(t.unix_timestamp_nanos()).map_or(0, |ns| ns.div_ceil(1000));
    Ok(Some(Instant::from_micros(u64::try_from(us).unwrap_or(u64::MAX))))
}

/// In a query string an unencoded `+` arrives as a space: say so, since
/// the value the client typed looked right.
fn plus_hint(s: &str) -> &'static str {
    if s.contains(' ') { "; a + in a query string must be sent as %2B" } else { "" }
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::BadRequest, message)
}

/// The parameters, refusing any that `endpoint` does not take: a filter
/// that is silently ignored answers a question the client did not ask.
fn params(
    p: Result<Query<HistoryParams>, QueryRejection>,
    endpoint: &str,
    takes_number: bool,
    takes_outcome: bool,
) -> Result<HistoryParams, ApiError> {
    let p = p.map(|Query(p)| p).map_err(|e| bad(e.body_text()))?;
    let given = [("number", p.number.is_some(), takes_number), ("outcome", p.outcome.is_some(), takes_outcome)];
    if let Some((name, ..)) = given.iter().find(|(_, given, takes)| *given && !*takes) {
        let mut accepted: Vec<&str> = given.iter().filter(|(.., takes)| *takes).map(|(n, ..)| *n).collect();
        accepted.extend(["since", "until", "cursor", "limit"]);
        return Err(bad(format!("{endpoint} does not take the {name} parameter; it takes {}", accepted.join(", "))));
    }
    // Out of range is refused, not clamped: a client asking for 1,000 rows
    // would otherwise read 500 as all there is on the page.
    if let Some(l) = p.limit.filter(|l| !(1..=crate::store::MAX_LIMIT).contains(l)) {
        return Err(bad(format!("limit must be 1 to {}, not {l}", crate::store::MAX_LIMIT)));
    }
    Ok(p)
}

/// A phone number filter, which must be E.164.
fn number(n: String, what: &str) -> Result<NumberId, ApiError> {
    if is_e164(&n) {
        Ok(NumberId::from(n))
    } else {
        Err(bad(format!("{what} must be an E.164 number like +15551230001, not {n:?}{}", plus_hint(&n))))
    }
}

/// An outcome filter: one of the names the store records.
fn outcome(o: String) -> Result<String, ApiError> {
    if Outcome::NAMES.contains(&o.as_str()) {
        Ok(o)
    } else {
        Err(bad(format!("outcome must be one of {}, not {o:?}", Outcome::NAMES.join(", "))))
    }
}

async fn viewer(app: &Arc<App>, caller: &Caller) -> Result<Viewer, ApiError> {
    let shard = app.shard_for(&caller.account).ok_or_else(|| ApiError::new(ErrorCode::Unavailable, "no shard"))?;
    let (account, user) = (caller.account.clone(), caller.user.clone());
    let assigned = shard
        .query(move |e| e.inspect().assigned_numbers(&account, &user))
        .await
        .ok_or_else(|| ApiError::new(ErrorCode::Unavailable, "shutting down"))?;
    Ok(Viewer {
        account: caller.account.clone(),
        user: caller.user.clone(),
        manager: caller.role.is_manager(),
        assigned,
    })
}

fn store_error(e: StoreError) -> ApiError {
    match e {
        StoreError::BadCursor(m) => ApiError::new(ErrorCode::BadRequest, format!("bad cursor: {m}")),
        other => ApiError::new(ErrorCode::Unavailable, format!("history unavailable: {other}")),
    }
}

/// History queries block on SQLite: off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(store_error),
        Err(e) => Err(ApiError::new(ErrorCode::Unavailable, format!("query failed: {e}"))),
    }
}

#[derive(Serialize)]
struct PageView<T> {
    items: Vec<T>,
    next_cursor: Option<String>,
}

fn page<R, V>(p: Page<R>, f: impl Fn(R) -> V) -> Json<PageView<V>> {
    Json(PageView { items: p.items.into_iter().map(f).collect(), next_cursor: p.next_cursor })
}

async fn calls(
    State(app): State<Arc<App>>,
    caller: Caller,
    p: Result<Query<HistoryParams>, QueryRejection>,
) -> Result<Json<PageView<CallView>>, ApiError> {
    let p = params(p, "/v1/calls", true, true)?;
    let q = CallQuery {
        number: p.number.map(|n| number(n, "number")).transpose()?,
        since: time(&p.since, "since")?,
        until: time(&p.until, "until")?,
        outcome: p.outcome.map(outcome).transpose()?,
        cursor: p.cursor,
        limit: p.limit,
    };
    let viewer = viewer(&app, &caller).await?;
    let history = app.history.clone();
    Ok(page(blocking(move || history.calls(&viewer, &q)).await?, CallView::from))
}

async fn messages(
    State(app): State<Arc<App>>,
    caller: Caller,
    ApiPath(number): ApiPath<String>,
    p: Result<Query<HistoryParams>, QueryRejection>,
) -> Result<Json<PageView<MessageOut>>, ApiError> {
    let number = self::number(number, "the number in the path")?;
    let p = params(p, "/v1/numbers/{number}/messages", false, false)?;
    let q = MessageQuery {
        since: time(&p.since, "since")?,
        until: time(&p.until, "until")?,
        cursor: p.cursor,
        limit: p.limit,
    };
    let viewer = viewer(&app, &caller).await?;
    let history = app.history.clone();
    Ok(page(blocking(move || history.messages(&viewer, &number, &q)).await?, MessageOut::from))
}

async fn voicemails(
    State(app): State<Arc<App>>,
    caller: Caller,
    p: Result<Query<HistoryParams>, QueryRejection>,
) -> Result<Json<PageView<VoicemailOut>>, ApiError> {
    let p = params(p, "/v1/voicemails", true, false)?;
    let q = VoicemailQuery {
        number: p.number.map(|n| number(n, "number")).transpose()?,
        since: time(&p.since, "since")?,
        until: time(&p.until, "until")?,
        cursor: p.cursor,
        limit: p.limit,
    };
    let viewer = viewer(&app, &caller).await?;
    let history = app.history.clone();
    Ok(page(blocking(move || history.voicemails(&viewer, &q)).await?, VoicemailOut::from))
}

/// A call record as the API shows it: RFC 3339 times, `_ms` durations.
#[derive(Serialize)]
struct CallView {
    id: String,
    kind: crate::core::history::CallKind,
    number: NumberId,
    from: crate::core::ids::Phone,
    to: crate::core::ids::Phone,
    priority: u8,
    rung: Vec<crate::core::ids::UserId>,
    answered_by: Option<crate::core::ids::UserId>,
    placed_by: Option<crate::core::ids::UserId>,
    #[serde(flatten)]
    outcome: crate::core::history::Outcome,
    origin_call: Option<crate::core::ids::CallId>,
    dial_call: Option<crate::core::ids::CallId>,
    attempts: u32,
    started_at: Timestamp,
    answered_at: Option<Timestamp>,
    ended_at: Timestamp,
    wait_ms: u64,
    talk_ms: u64,
}

impl From<CallRecord> for CallView {
    fn from(c: CallRecord) -> Self {
        CallView {
            id: c.id,
            kind: c.kind,
            number: c.number,
            from: c.from,
            to: c.to,
            priority: c.priority,
            rung: c.rung,
            answered_by: c.answered_by,
            placed_by: c.placed_by,
            outcome: c.outcome,
            origin_call: c.origin_call,
            dial_call: c.dial_call,
            attempts: c.attempts,
            started_at: Timestamp(c.started_at),
            answered_at: c.answered_at.map(Timestamp),
            ended_at: Timestamp(c.ended_at),
            wait_ms: c.wait_ms,
            talk_ms: c.talk_ms,
        }
    }
}

#[derive(Serialize)]
struct MessageOut {
    message_id: crate::core::ids::MessageId,
    number: NumberId,
    direction: crate::protocol::agent::Direction,
    from: crate::core::ids::Phone,
    to: crate::core::ids::Phone,
    body: String,
    at: Timestamp,
    sent_by: Option<crate::core::ids::UserId>,
    status: Option<crate::protocol::gateway::DeliveryStatus>,
}

impl From<MessageView> for MessageOut {
    fn from(v: MessageView) -> Self {
        let m: MessageRecord = v.message;
        MessageOut {
            message_id: m.id,
            number: m.number,
            direction: m.direction,
            from: m.from,
            to: m.to,
            body: m.body,
            at: Timestamp(m.at),
            sent_by: m.sent_by,
            status: v.status,
        }
    }
}

#[derive(Serialize)]
struct VoicemailOut {
    call_id: crate::core::ids::CallId,
    number: NumberId,
    from: crate::core::ids::Phone,
    url: String,
    duration_ms: u64,
    at: Timestamp,
}

impl From<VoicemailRecord> for VoicemailOut {
    fn from(v: VoicemailRecord) -> Self {
        VoicemailOut {
            call_id: v.call_id,
            number: v.number,
            from: v.from,
            url: v.url,
            duration_ms: v.duration_ms,
            at: Timestamp(v.at),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(q: &str) -> Result<Query<HistoryParams>, QueryRejection> {
        let uri: axum::http::Uri = format!("/x?{q}").parse().unwrap();
        Query::try_from_uri(&uri)
    }

    #[test]
    fn outcome_must_be_a_known_one() {
        for o in Outcome::NAMES {
            assert_eq!(outcome(o.to_string()), Ok(o.to_string()));
        }
        let e = outcome("answerd".into()).unwrap_err();
        assert_eq!(e.0, ErrorCode::BadRequest);
        assert!(e.1.contains("\"answerd\""), "{}", e.1);
        assert!(e.1.contains("answered, abandoned, missed"), "{}", e.1);
        assert!(e.1.contains("no_answer, failed"), "{}", e.1);
    }

    #[test]
    fn number_filters_must_be_e164() {
        assert_eq!(number("+15550100".into(), "number"), Ok(NumberId::from("+15550100")));
        for bad in ["15550100", "+1555-0100", "", "+"] {
            let e = number(bad.into(), "number").unwrap_err();
            assert_eq!(e.0, ErrorCode::BadRequest, "{bad}");
            assert!(e.1.starts_with("number must be an E.164 number"), "{}", e.1);
            assert!(!e.1.contains("%2B"), "{}", e.1);
        }
        // `?number=+15550100` decodes to a leading space.
        let Query(p) = query("number=+15550100").unwrap();
        let e = number(p.number.unwrap(), "number").unwrap_err();
        assert!(e.1.contains("\" 15550100\""), "{}", e.1);
        assert!(e.1.ends_with("a + in a query string must be sent as %2B"), "{}", e.1);
    }

    #[test]
    fn parameters_an_endpoint_does_not_take_are_refused() {
        let calls = |q| params(query(q), "/v1/calls", true, true);
        let voicemails = |q| params(query(q), "/v1/voicemails", true, false);
        let messages = |q| params(query(q), "/v1/numbers/{number}/messages", false, false);
        assert!(calls("number=%2B15550100&outcome=missed&since=x&until=y&cursor=c&limit=5").is_ok());
        assert!(voicemails("number=%2B15550100&since=x&limit=5").is_ok());
        assert!(messages("since=x&until=y&cursor=c&limit=5").is_ok());
        let e = voicemails("outcome=missed").unwrap_err();
        assert_eq!(e.0, ErrorCode::BadRequest);
        assert_eq!(
            e.1,
            "/v1/voicemails does not take the outcome parameter; it takes number, since, until, cursor, limit"
        );
        let e = messages("number=%2B15550100").unwrap_err();
        assert!(e.1.starts_with("/v1/numbers/{number}/messages does not take the number parameter"), "{}", e.1);
        assert!(e.1.ends_with("it takes since, until, cursor, limit"), "{}", e.1);
        assert!(messages("outcome=missed").unwrap_err().1.contains("the outcome parameter"));
        assert!(calls("colour=red").unwrap_err().1.contains("unknown field `colour`"));
        assert!(calls("limit=1").is_ok() && calls("limit=500").is_ok());
        for (q, l) in [("limit=0", 0), ("limit=501", 501)] {
            let e = messages(q).unwrap_err();
            assert_eq!((e.0, e.1), (ErrorCode::BadRequest, format!("limit must be 1 to 500, not {l}")));
        }
    }

    fn at(s: &str) -> Result<Option<Instant>, ApiError> {
        time(&Some(s.to_string()), "since")
    }

    fn micros(s: &str) -> u64 {
        at(s).unwrap().unwrap().as_micros()
    }

    #[test]
    fn times_with_offsets_are_converted_to_utc() {
        let utc = micros("2024-05-01T05:00:00Z");
        assert_eq!(utc, 1_714_539_600_000_000);
        assert_eq!(micros("2024-05-01T10:00:00+05:00"), utc);
        assert_eq!(micros("2024-04-30T23:30:00-05:30"), utc);
        assert_eq!(micros("2024-05-01t05:00:00z"), utc, "RFC 3339 allows lower-case T and Z");
        assert_eq!(micros("2024-05-01 05:00:00Z"), utc, "and a space for the T");
        // humantime ignored an offset after fractional seconds.
        assert_eq!(micros("2024-05-01T10:00:00.5+05:00"), utc + 500_000);
        assert_eq!(micros("2024-05-01T05:00:00.123456Z"), utc + 123_456);
        assert_eq!(micros("2024-05-01T05:00:00.0000001Z"), utc + 1, "sub-microseconds round up");
        assert_eq!(micros("1960-01-01T00:00:00Z"), 0, "before the epoch clamps");
        assert_eq!(time(&None, "since"), Ok(None));
    }

    #[test]
    fn anything_but_rfc3339_with_an_offset_is_refused() {
        for bad in [
            "yesterday",
            "2024-05-01",
            "2024-05-01T05:00:00",
            "2024-05-01T05:00Z",
            "2024-05-01T05:00:00+0500",
            "2024-05-01T05:00:00 +05:00",
            "2024-13-01T05:00:00Z",
            "1714539600",
        ] {
            let e = at(bad).unwrap_err();
            assert_eq!(e.0, ErrorCode::BadRequest, "{bad}");
            assert!(e.1.starts_with("since must be an RFC 3339 time"), "{bad}: {}", e.1);
            assert!(e.1.contains(bad), "{bad}: {}", e.1);
        }
        let e = at("2024-05-01T10:00:00 05:00").unwrap_err();
        assert!(e.1.ends_with("a + in a query string must be sent as %2B"), "{}", e.1);
    }
}
