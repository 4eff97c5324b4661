//! `/v1/...` team, number and billing administration (HTTP, JSON).
//!
//! The shell's part only: authenticate the caller ([`Caller`]), parse JSON
//! or CSV, turn the request into an [`Input::Admin`] for the caller's own
//! account, wait until the engine accepted it and it is durable, then answer
//! with a read-only view of the engine. Permissions, validation, invitation
//! expiry, ownership and billing are all decided in the core; an error the
//! core returns becomes the JSON error body with the matching status.
//!
//! `docs/admin-api.md` is the reference; `docs/permissions.md` the matrix.

use super::App;
use super::http::{ApiPath, Caller, error_response};
use super::shard::ShardHandle;
use super::tokens::{INVITE_TOKEN_PREFIX, USER_TOKEN_PREFIX, new_token};
use crate::config::hash_token;
use crate::core::admin::{Actor, AdminCommand, NumberPatch, NumberSpec};
use crate::core::ids::{AccountId, NumberId, UserId};
use crate::core::invite::{InviteSpec, MAX_BATCH};
use crate::core::settings::{QueueSettings, RoutingSettings};
use crate::core::team::{Action, Lifecycle, Plan, Role};
use crate::core::views::UserView;
use crate::core::{CoreError, Engine, Input};
use crate::protocol::ErrorCode;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/v1/account", get(get_account))
        .route("/v1/account/transfer", post(transfer))
        .route("/v1/users", get(list_users))
        .route("/v1/users/{id}", get(get_user).patch(patch_user).delete(remove_user))
        .route("/v1/users/{id}/deactivate", post(deactivate))
        .route("/v1/users/{id}/reactivate", post(reactivate))
        .route("/v1/users/{id}/invite", post(resend_invite))
        .route("/v1/invites", post(invite))
        .route("/v1/invites/bulk", post(bulk_invite))
        .route("/v1/invites/accept", post(accept_invite))
        .route("/v1/numbers", get(list_numbers).post(create_number))
        .route("/v1/numbers/{number}", get(get_number).patch(patch_number))
        .route("/v1/billing", get(get_billing).patch(patch_billing))
}

/// An error answer (the JSON error body and its status), boxed because a
/// response is large and travels through every `?`.
#[derive(Debug)]
pub struct Refusal(Box<Response>);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        *self.0
    }
}

fn refuse(code: ErrorCode, message: impl Into<String>) -> Refusal {
    Refusal(Box::new(error_response(code, message)))
}

type Answer = Result<Response, Refusal>;

fn fail(e: CoreError) -> Refusal {
    refuse(e.code, e.message)
}

fn unavailable() -> Refusal {
    refuse(ErrorCode::Unavailable, "shutting down")
}

/// A JSON body, or a `bad_request` error body saying what is wrong with it.
fn body<T>(b: Result<Json<T>, JsonRejection>) -> Result<T, Refusal> {
    b.map(|Json(v)| v).map_err(|r| refuse(ErrorCode::BadRequest, r.body_text()))
}

fn shard<'a>(app: &'a App, account: &AccountId) -> Result<&'a ShardHandle, Refusal> {
    app.shard_for(account).ok_or_else(unavailable)
}

fn actor(caller: &Caller) -> Actor {
    Actor::User(caller.user.clone())
}

/// Sends a change on the caller's behalf and waits until it is durable.
async fn run(app: &App, caller: &Caller, cmd: AdminCommand) -> Result<(), Refusal> {
    let input = Input::Admin { account: caller.account.clone(), actor: actor(caller), cmd: Box::new(cmd) };
    shard(app, &caller.account)?.call(app, input).await.map(|_| ()).map_err(fail)
}

/// Reads the caller's account through `f` (a core view).
async fn view<T: Send + 'static>(
    app: &App,
    caller: &Caller,
    f: impl FnOnce(&Engine, &AccountId, &Actor) -> Result<T, CoreError> + Send + 'static,
) -> Result<T, Refusal> {
    let (account, who) = (caller.account.clone(), actor(caller));
    shard(app, &caller.account)?.query(move |e| f(e, &account, &who)).await.ok_or_else(unavailable)?.map_err(fail)
}

/// The core's verdict on whether the caller may do `action`.
async fn authorize(app: &App, caller: &Caller, action: Action) -> Result<(), Refusal> {
    view(app, caller, move |e, a, who| e.authorize(a, who, action)).await
}

/// A user as it is now, after a change the caller was allowed to make.
async fn user_now(app: &App, account: &AccountId, user: UserId) -> Result<UserView, Refusal> {
    let account = account.clone();
    let shard = shard(app, &account)?;
    shard
        .query(move |e| e.user_view_unchecked(&account, &user))
        .await
        .ok_or_else(unavailable)?
        .ok_or_else(|| refuse(ErrorCode::NotFound, "the user is gone"))
}

fn ok(v: impl serde::Serialize) -> Response {
    Json(v).into_response()
}

fn created(v: impl serde::Serialize) -> Response {
    (StatusCode::CREATED, Json(v)).into_response()
}

/// What the invitee needs: the token (shown once; an operator delivers
/// it, there is no mail server) and until when it works.
fn invite_json(token: &str, user: &UserView) -> Value {
    json!({
        "token": token,
        "expires_at": user.invite.as_ref().map(|i| i.expires_at.clone()),
        "accept": "POST /v1/invites/accept",
    })
}

// ---- account ---------------------------------------------------------------

async fn get_account(State(app): State<Arc<App>>, caller: Caller) -> Answer {
    Ok(ok(view(&app, &caller, |e, a, who| e.view_account(a, who)).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TransferBody {
    /// The new owner.
    to: UserId,
    /// The owner's own token again (re-authentication).
    token: String,
}

async fn transfer(State(app): State<Arc<App>>, caller: Caller, b: Result<Json<TransferBody>, JsonRejection>) -> Answer {
    let b = body(b)?;
    run(&app, &caller, AdminCommand::TransferOwnership { to: b.to, confirm_hash: hash_token(b.token.trim()) }).await?;
    Ok(ok(view(&app, &caller, |e, a, who| e.view_account(a, who)).await?))
}

// ---- users -----------------------------------------------------------------

async fn list_users(State(app): State<Arc<App>>, caller: Caller) -> Answer {
    let users = view(&app, &caller, |e, a, who| e.view_users(a, who)).await?;
    Ok(ok(json!({ "users": users })))
}

async fn get_user(State(app): State<Arc<App>>, caller: Caller, ApiPath(id): ApiPath<String>) -> Answer {
    let id = UserId::from(id);
    Ok(ok(view(&app, &caller, move |e, a, who| e.view_user(a, who, &id)).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchUser {
    role: Role,
}

async fn patch_user(
    State(app): State<Arc<App>>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    b: Result<Json<PatchUser>, JsonRejection>,
) -> Answer {
    let b = body(b)?;
    let id = UserId::from(id);
    run(&app, &caller, AdminCommand::SetRole { user: id.clone(), role: b.role }).await?;
    Ok(ok(user_now(&app, &caller.account, id).await?))
}

async fn lifecycle(app: &App, caller: &Caller, id: String, lifecycle: Lifecycle) -> Answer {
    let id = UserId::from(id);
    run(app, caller, AdminCommand::SetLifecycle { user: id.clone(), lifecycle }).await?;
    Ok(ok(user_now(app, &caller.account, id).await?))
}

async fn deactivate(State(app): State<Arc<App>>, caller: Caller, ApiPath(id): ApiPath<String>) -> Answer {
    lifecycle(&app, &caller, id, Lifecycle::Deactivated).await
}

async fn reactivate(State(app): State<Arc<App>>, caller: Caller, ApiPath(id): ApiPath<String>) -> Answer {
    lifecycle(&app, &caller, id, Lifecycle::Active).await
}

async fn remove_user(State(app): State<Arc<App>>, caller: Caller, ApiPath(id): ApiPath<String>) -> Answer {
    lifecycle(&app, &caller, id, Lifecycle::Removed).await
}

async fn resend_invite(State(app): State<Arc<App>>, caller: Caller, ApiPath(id): ApiPath<String>) -> Answer {
    let id = UserId::from(id);
    let token = new_token(INVITE_TOKEN_PREFIX);
    run(&app, &caller, AdminCommand::ResendInvite { user: id.clone(), invite_hash: hash_token(&token) }).await?;
    let user = user_now(&app, &caller.account, id).await?;
    Ok(ok(json!({ "invite": invite_json(&token, &user), "user": user })))
}

// ---- invitations -----------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InviteBody {
    email: String,
    role: Role,
    /// A number to assign the new user to.
    #[serde(default)]
    number: Option<NumberId>,
    /// The new user's id; derived from the email when absent.
    #[serde(default)]
    id: Option<UserId>,
}

async fn invite(State(app): State<Arc<App>>, caller: Caller, b: Result<Json<InviteBody>, JsonRejection>) -> Answer {
    let b = body(b)?;
    let token = new_token(INVITE_TOKEN_PREFIX);
    let hash = hash_token(&token);
    let spec = InviteSpec { user: b.id, email: b.email, role: b.role, number: b.number, invite_hash: hash.clone() };
    run(&app, &caller, AdminCommand::Invite { invites: vec![spec] }).await?;
    let user = invited_user(&app, &hash).await?;
    Ok(created(json!({ "invite": invite_json(&token, &user), "user": user })))
}

/// The user an invitation (by hash) was just created for.
async fn invited_user(app: &App, hash: &str) -> Result<UserView, Refusal> {
    let (account, user) =
        find_invite(app, hash).await?.ok_or_else(|| refuse(ErrorCode::NotFound, "the invitation is gone"))?;
    user_now(app, &account, user).await
}

/// Which account holds an invitation: every shard is asked (invitations
/// are rare, and the token does not name its account).
async fn find_invite(app: &App, hash: &str) -> Result<Option<(AccountId, UserId)>, Refusal> {
    let shards = app.shards.get().ok_or_else(unavailable)?;
    for s in shards {
        let h = hash.to_string();
        if let Some(found) = s.query(move |e| e.find_invite(&h)).await.ok_or_else(unavailable)? {
            return Ok(Some(found));
        }
    }
    Ok(None)
}

/// One data row of a bulk upload, as parsed.
#[derive(Debug)]
struct Row {
    line: u64,
    email: String,
    parsed: Result<(Role, Option<NumberId>), String>,
}

/// The 1-based line of the record starting at byte `at`. (The csv crate
/// reports a record that follows blank lines at the first blank one; the
/// user's editor numbers it where its text starts.)
fn line_at(text: &str, at: u64) -> u64 {
    let bytes = text.as_bytes();
    let mut i = usize::try_from(at).unwrap_or(usize::MAX).min(bytes.len());
    while i < bytes.len() && matches!(bytes[i], b'\n' | b'\r') {
        i += 1;
    }
    1 + bytes[..i].iter().filter(|&&b| b == b'\n').count() as u64
}

/// Reads `email,role[,phone_number]` CSV. A bad header refuses the whole
/// upload; a bad row is reported with its line.
fn parse_csv(text: &str) -> Result<Vec<Row>, String> {
    // Flexible: a row may leave out the optional trailing phone_number
    // even under a header that names it (spreadsheets drop empty trailing
    // cells). Field counts are then checked per row below.
    let mut rdr =
        csv::ReaderBuilder::new().has_headers(true).flexible(true).trim(csv::Trim::All).from_reader(text.as_bytes());
    let headers = rdr.headers().map_err(|e| format!("cannot read the CSV header: {e}"))?.clone();
    let names: Vec<String> = headers.iter().map(str::to_ascii_lowercase).collect();
    let with_number = match names.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["email", "role"] => false,
        ["email", "role", "phone_number"] => true,
        _ => {
            return Err(format!(
                "the header must be email,role,phone_number (phone_number optional), not {:?}",
                headers.iter().collect::<Vec<_>>().join(",")
            ));
        }
    };
    let mut rows = Vec::new();
    for rec in rdr.records() {
        if rows.len() == MAX_BATCH {
            return Err(format!("at most {MAX_BATCH} rows per upload"));
        }
        let row = match rec {
            Ok(r) => {
                let line = r.position().map_or(0, |p| line_at(text, p.byte()));
                let email = r.get(0).unwrap_or_default().to_string();
                let parsed = match r.len() {
                    n if n > headers.len() => Err(format!("expected at most {} fields, found {n}", headers.len())),
                    n if n < 2 => Err(format!("expected at least 2 fields (email,role), found {n}")),
                    _ => parse_role(r.get(1).unwrap_or_default()).map(|role| {
                        let number =
                            if with_number { r.get(2).filter(|n| !n.is_empty()).map(NumberId::from) } else { None };
                        (role, number)
                    }),
                };
                Row { line, email, parsed }
            }
            Err(e) => {
                let line = e.position().map_or(0, |p| line_at(text, p.byte()));
                let why = match e.kind() {
                    csv::ErrorKind::UnequalLengths { expected_len, len, .. } => {
                        format!("expected {expected_len} fields, found {len}")
                    }
                    _ => e.to_string(),
                };
                Row { line, email: String::new(), parsed: Err(why) }
            }
        };
        rows.push(row);
    }
    if rows.is_empty() {
        return Err("no rows to invite".into());
    }
    Ok(rows)
}

fn parse_role(s: &str) -> Result<Role, String> {
    Role::ALL
        .into_iter()
        .find(|r| r.as_str().eq_ignore_ascii_case(s))
        .ok_or_else(|| format!("role must be owner, admin, supervisor or agent, not {s:?}"))
}

/// Rows checked by the core but not yet sent can lose a race with another
/// change (the same email invited meanwhile); the check is then done again.
const BULK_ATTEMPTS: usize = 3;

async fn bulk_invite(
    State(app): State<Arc<App>>,
    caller: Caller,
    text: Result<String, axum::extract::rejection::StringRejection>,
) -> Answer {
    authorize(&app, &caller, Action::ManageTeam).await?;
    let text = text.map_err(|r| refuse(ErrorCode::BadRequest, r.body_text()))?;
    let rows = parse_csv(&text).map_err(|m| refuse(ErrorCode::BadRequest, m))?;
    for attempt in 1..=BULK_ATTEMPTS {
        // Parsed rows get a token each and go to the core for checking.
        let mut tokens: Vec<Option<String>> = Vec::with_capacity(rows.len());
        let mut specs = Vec::new();
        for row in &rows {
            match &row.parsed {
                Ok((role, number)) => {
                    let token = new_token(INVITE_TOKEN_PREFIX);
                    specs.push(InviteSpec {
                        user: None,
                        email: row.email.clone(),
                        role: *role,
                        number: number.clone(),
                        invite_hash: hash_token(&token),
                    });
                    tokens.push(Some(token));
                }
                Err(_) => tokens.push(None),
            }
        }
        let batch = specs.clone();
        let checks = view(&app, &caller, move |e, a, who| e.check_invites(a, who, &batch)).await?;
        let good: Vec<InviteSpec> =
            specs.iter().zip(&checks).filter(|(_, c)| c.is_ok()).map(|(s, _)| s.clone()).collect();
        if !good.is_empty() {
            match run(&app, &caller, AdminCommand::Invite { invites: good }).await {
                Ok(()) => {}
                Err(_) if attempt < BULK_ATTEMPTS => continue,
                Err(e) => return Err(e),
            }
        }
        let mut results = Vec::with_capacity(rows.len());
        let mut checks = checks.into_iter();
        let (mut invited, mut failed) = (0u32, 0u32);
        for (row, token) in rows.iter().zip(&tokens) {
            let outcome = match (&row.parsed, token) {
                (Err(why), _) => Err((ErrorCode::BadRequest, why.clone())),
                (Ok(_), Some(token)) => match checks.next() {
                    Some(Ok(user)) => Ok((user, token)),
                    Some(Err(e)) => Err((e.code, e.message)),
                    None => Err((ErrorCode::Unavailable, "not checked".to_string())),
                },
                (Ok(_), None) => Err((ErrorCode::Unavailable, "not checked".to_string())),
            };
            results.push(match outcome {
                Ok((user, token)) => {
                    invited += 1;
                    let view = user_now(&app, &caller.account, user).await?;
                    json!({ "line": row.line, "email": row.email, "ok": true,
                            "invite": invite_json(token, &view), "user": view })
                }
                Err((code, message)) => {
                    failed += 1;
                    json!({ "line": row.line, "email": row.email, "ok": false,
                            "error": { "code": code, "message": message } })
                }
            });
        }
        return Ok(ok(json!({ "invited": invited, "failed": failed, "rows": results })));
    }
    Err(refuse(ErrorCode::Conflict, "the team kept changing; try the upload again"))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AcceptBody {
    invite: String,
}

/// Unauthenticated: the invitation token is the credential. Answers the
/// user's API token, once; only its hash is kept.
async fn accept_invite(State(app): State<Arc<App>>, b: Result<Json<AcceptBody>, JsonRejection>) -> Answer {
    let b = body(b)?;
    let hash = hash_token(b.invite.trim());
    let (account, user) = find_invite(&app, &hash)
        .await?
        .ok_or_else(|| refuse(ErrorCode::NotFound, "unknown or already used invitation"))?;
    let token = new_token(USER_TOKEN_PREFIX);
    let cmd = AdminCommand::AcceptInvite { invite_hash: hash, token_hash: hash_token(&token) };
    let input = Input::Admin { account: account.clone(), actor: Actor::Invitee, cmd: Box::new(cmd) };
    shard(&app, &account)?.call(&app, input).await.map_err(fail)?;
    let view = user_now(&app, &account, user).await?;
    Ok(ok(json!({ "account": account, "user": view, "token": token })))
}

// ---- numbers ---------------------------------------------------------------

async fn list_numbers(State(app): State<Arc<App>>, caller: Caller) -> Answer {
    let numbers = view(&app, &caller, |e, a, who| e.view_numbers(a, who)).await?;
    Ok(ok(json!({ "numbers": numbers })))
}

async fn get_number(State(app): State<Arc<App>>, caller: Caller, ApiPath(n): ApiPath<String>) -> Answer {
    let n = NumberId::from(n);
    Ok(ok(view(&app, &caller, move |e, a, who| e.view_number(a, who, &n)).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateNumber {
    number: NumberId,
    name: String,
    #[serde(default)]
    assigned: Vec<UserId>,
    #[serde(default)]
    caller_id: Vec<UserId>,
    #[serde(default)]
    routing: RoutingSettings,
    #[serde(default)]
    queue: QueueSettings,
}

async fn create_number(
    State(app): State<Arc<App>>,
    caller: Caller,
    b: Result<Json<CreateNumber>, JsonRejection>,
) -> Answer {
    let b = body(b)?;
    authorize(&app, &caller, Action::ManageNumbers).await?;
    // Numbers are unique across accounts, and accounts live on different
    // shards: the directory (which every shard feeds) is the one place
    // that sees them all.
    // The claim is atomic, so two accounts creating the same number at
    // once cannot both succeed.
    let claimed = match app.dir.reserve_number(&b.number, &caller.account) {
        Ok(claimed) => claimed,
        Err(_) => return Err(refuse(ErrorCode::Conflict, format!("number {} belongs to another account", b.number))),
    };
    let spec =
        NumberSpec { name: b.name, assigned: b.assigned, caller_id: b.caller_id, routing: b.routing, queue: b.queue };
    let number = b.number;
    let created_now =
        run(&app, &caller, AdminCommand::CreateNumber { number: number.clone(), spec: Box::new(spec) }).await;
    if let Err(e) = created_now {
        if claimed {
            app.dir.release_number(&number, &caller.account);
        }
        return Err(e);
    }
    Ok(created(view(&app, &caller, move |e, a, who| e.view_number(a, who, &number)).await?))
}

async fn patch_number(
    State(app): State<Arc<App>>,
    caller: Caller,
    ApiPath(n): ApiPath<String>,
    b: Result<Json<NumberPatch>, JsonRejection>,
) -> Answer {
    let patch = body(b)?;
    let number = NumberId::from(n);
    run(&app, &caller, AdminCommand::UpdateNumber { number: number.clone(), patch: Box::new(patch) }).await?;
    Ok(ok(view(&app, &caller, move |e, a, who| e.view_number(a, who, &number)).await?))
}

// ---- billing ---------------------------------------------------------------

async fn get_billing(State(app): State<Arc<App>>, caller: Caller) -> Answer {
    Ok(ok(view(&app, &caller, |e, a, who| e.view_billing(a, who)).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchBilling {
    plan: Plan,
}

async fn patch_billing(
    State(app): State<Arc<App>>,
    caller: Caller,
    b: Result<Json<PatchBilling>, JsonRejection>,
) -> Answer {
    let b = body(b)?;
    run(&app, &caller, AdminCommand::SetPlan { plan: b.plan }).await?;
    Ok(ok(view(&app, &caller, |e, a, who| e.view_billing(a, who)).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_rows_keep_their_lines_and_reasons() {
        let rows = parse_csv(
            "email,role,phone_number\na@x.io,agent,+15550100\nb@x.io,boss,\n\nc@x.io,admin\nd@x.io,Agent,,extra\ne@x.io\n",
        )
        .unwrap();
        type Parsed<'a> = Result<(Role, Option<&'a str>), &'a str>;
        let got: Vec<(u64, &str, Parsed<'_>)> = rows
            .iter()
            .map(|r| {
                let p = match &r.parsed {
                    Ok((role, n)) => Ok((*role, n.as_ref().map(NumberId::as_str))),
                    Err(e) => Err(e.as_str()),
                };
                (r.line, r.email.as_str(), p)
            })
            .collect();
        assert_eq!(got[0], (2, "a@x.io", Ok((Role::Agent, Some("+15550100")))));
        assert_eq!(got[1].0, 3);
        assert!(got[1].2.as_ref().unwrap_err().contains("boss"));
        assert_eq!(got[2], (5, "c@x.io", Ok((Role::Admin, None))), "blank lines are skipped but counted");
        assert_eq!(got[3], (6, "d@x.io", Err("expected at most 3 fields, found 4")));
        assert_eq!(got[4], (7, "e@x.io", Err("expected at least 2 fields (email,role), found 1")));
        assert_eq!(rows.len(), 5);
    }

    #[test]
    fn csv_rows_may_omit_only_the_trailing_phone_number() {
        let rows = parse_csv("email,role,phone_number\nc@x.io,admin\nd@x.io,agent,\ne@x.io,agent,+15550100\n").unwrap();
        let numbers: Vec<_> = rows.iter().map(|r| r.parsed.as_ref().map(|(_, n)| n.clone())).collect();
        assert_eq!(numbers, [Ok(None), Ok(None), Ok(Some(NumberId::from("+15550100")))]);
        // Without the column, a third field is one too many.
        let rows = parse_csv("email,role\nc@x.io,admin,+15550100\n").unwrap();
        assert_eq!(rows[0].parsed, Err("expected at most 2 fields, found 3".to_string()));
    }

    #[test]
    fn csv_header_is_checked_and_phone_number_is_optional() {
        let rows = parse_csv("Email,Role\nx@y.io,supervisor\n").unwrap();
        assert!(matches!(rows[0].parsed, Ok((Role::Supervisor, None))));
        assert!(parse_csv("mail,role\nx@y.io,agent\n").unwrap_err().contains("header"));
        assert!(parse_csv("email,role\n").unwrap_err().contains("no rows"));
        let many = format!("email,role\n{}", "a@b.co,agent\n".repeat(MAX_BATCH + 1));
        assert!(parse_csv(&many).unwrap_err().contains("at most"));
    }
}
