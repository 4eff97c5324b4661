//! HTTP routes: the two WebSocket endpoints, health, readiness, metrics.

use super::directory::{AuthError, Identity};
use super::wire::Encoding;
use super::{App, admin_http, agent, gateway, history_http};
use crate::config::ServerSettings;
use crate::core::ids::{AccountId, UserId};
use crate::core::team::Role;
use axum::Router;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::de::DeserializeOwned;
use std::sync::Arc;
use std::sync::atomic::Ordering;

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/v1/agent", get(agent::upgrade))
        .route("/v1/gateway", get(gateway::upgrade))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(admin_http::routes())
        .merge(history_http::routes())
        // After the routes: axum gives the 405 fallback only to routes
        // that exist when it is set.
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .with_state(app)
}

/// Unknown paths get the API's JSON error body, not axum's empty 404.
async fn no_route() -> Response {
    error_response(crate::protocol::ErrorCode::NotFound, "no such route")
}

/// A known path with the wrong method: 405 (axum adds `Allow`) with the
/// JSON error body. The contract has no code of its own for it, so the
/// body says `bad_request`.
async fn wrong_method(method: axum::http::Method) -> Response {
    let mut r = error_response(
        crate::protocol::ErrorCode::BadRequest,
        format!("method {method} is not allowed on this route; see the Allow header"),
    );
    *r.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    r
}

/// The authenticated user behind an HTTP request (`Authorization: Bearer`).
/// Missing or unknown token: 401; a user who may not log in: 403; a
/// gateway token: 403.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub account: AccountId,
    pub user: UserId,
    pub role: Role,
    /// The hash of the token used, for re-authentication checks.
    pub token_hash: String,
}

/// A JSON error body: `{"error": {"code", "message"}}` with the matching
/// HTTP status.
pub fn error_response(code: crate::protocol::ErrorCode, message: impl Into<String>) -> Response {
    use crate::protocol::ErrorCode as C;
    let status = match code {
        C::BadRequest | C::UnknownType => StatusCode::BAD_REQUEST,
        C::Unauthorized => StatusCode::UNAUTHORIZED,
        C::Forbidden => StatusCode::FORBIDDEN,
        C::NotFound => StatusCode::NOT_FOUND,
        C::Conflict => StatusCode::CONFLICT,
        C::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        C::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
    };
    let body = serde_json::json!({ "error": { "code": code, "message": message.into() } });
    (status, axum::Json(body)).into_response()
}

/// An API error: becomes [`error_response`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError(pub crate::protocol::ErrorCode, pub String);

impl ApiError {
    pub fn new(code: crate::protocol::ErrorCode, message: impl Into<String>) -> Self {
        ApiError(code, message.into())
    }
}

impl From<crate::core::CoreError> for ApiError {
    fn from(e: crate::core::CoreError) -> Self {
        ApiError(e.code, e.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        error_response(self.0, self.1)
    }
}

/// [`Path`] whose rejection (e.g. `%FF` where a string is expected) is the
/// API's JSON error body, not axum's plain text, so clients parse every
/// error of the JSON API the same way.
#[derive(Debug)]
pub struct ApiPath<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        use crate::protocol::ErrorCode;
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(v)) => Ok(ApiPath(v)),
            Err(e) => {
                // Keep axum's status: a route that does not match its
                // handler's parameters is our fault (500), not the client's.
                let code = if e.status().is_client_error() { ErrorCode::BadRequest } else { ErrorCode::Unavailable };
                let mut r = error_response(code, format!("bad path: {}", e.body_text()));
                *r.status_mut() = e.status();
                Err(r)
            }
        }
    }
}

impl FromRequestParts<Arc<App>> for Caller {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, Self::Rejection> {
        use crate::protocol::ErrorCode;
        let token = bearer(&parts.headers).unwrap_or_default();
        match app.dir.authenticate(token) {
            Ok(Identity::User { account, user, role }) => {
                Ok(Caller { account, user, role, token_hash: super::directory::hash_token(token) })
            }
            Ok(Identity::Gateway { .. }) => {
                Err(error_response(ErrorCode::Forbidden, "gateway tokens cannot use the admin API"))
            }
            Err(AuthError::Unknown) => Err(error_response(ErrorCode::Unauthorized, "missing or unknown bearer token")),
            Err(AuthError::NotActive(l)) => {
                Err(error_response(ErrorCode::Forbidden, format!("user is {}", l.as_str())))
            }
        }
    }
}

/// The token of an `Authorization: Bearer <token>` header. The scheme is
/// matched in any case (RFC 7235 makes it case-insensitive, and some
/// clients send `bearer`); the one place every route reads it from.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim_start().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// `?token=` and `?encoding=` on WebSocket URLs.
#[derive(Debug, Default, serde::Deserialize)]
pub struct Credentials {
    token: Option<String>,
    encoding: Option<String>,
}

impl Credentials {
    /// The bearer token from the header, else from the query string.
    pub fn token<'a>(&'a self, headers: &'a HeaderMap) -> Option<&'a str> {
        bearer(headers).or(self.token.as_deref())
    }

    /// The requested encoding; a 400 message if it is neither.
    pub fn encoding(&self) -> Result<Encoding, String> {
        match self.encoding.as_deref() {
            None => Ok(Encoding::Json),
            Some(e) => Encoding::parse(e).ok_or_else(|| format!("encoding must be json or msgpack, not {e:?}")),
        }
    }
}

/// Buffers sized for many mostly idle connections: a 4 KiB read buffer
/// instead of tungstenite's 128 KiB default. Frames up to 16 times the soft
/// limit are read (and answered with an error); anything larger closes the
/// connection with 1009.
pub fn sized(ws: WebSocketUpgrade, s: &ServerSettings) -> WebSocketUpgrade {
    let hard = s.max_frame_bytes.saturating_mul(16);
    ws.read_buffer_size(4 * 1024)
        .write_buffer_size(4 * 1024)
        .max_write_buffer_size(hard.max(64 * 1024))
        .max_message_size(hard)
        .max_frame_size(hard)
}

async fn healthz() -> &'static str {
    "ok"
}

/// Ready once the journal is open, the state recovered and the config
/// applied; not ready while shutting down or if the journal failed.
async fn readyz(State(app): State<Arc<App>>) -> Response {
    if let Some(e) = app.journal.failed() {
        return (StatusCode::SERVICE_UNAVAILABLE, format!("journal failed: {e}")).into_response();
    }
    if app.ready.load(Ordering::Acquire) && !*app.shutdown.borrow() {
        "ready".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready").into_response()
    }
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    let durable = app.journal.durable();
    metrics::gauge!("ringline_journal_durable_seq").set(durable as f64);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], app.metrics.render()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token_of(value: &str) -> Option<String> {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, value.parse().unwrap());
        bearer(&h).map(str::to_string)
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        for value in ["Bearer tok-1", "bearer tok-1", "BEARER tok-1", "bEaReR  tok-1 "] {
            assert_eq!(token_of(value).as_deref(), Some("tok-1"), "{value}");
        }
        for value in ["Basic dG9rLTE=", "Bearertok-1", "tok-1", "Token tok-1"] {
            assert_eq!(token_of(value), None, "{value}");
        }
        assert_eq!(bearer(&HeaderMap::new()), None);
        let creds = Credentials { token: Some("from-query".into()), encoding: None };
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "bearer from-header".parse().unwrap());
        assert_eq!(creds.token(&h), Some("from-header"));
        assert_eq!(creds.token(&HeaderMap::new()), Some("from-query"));
    }
}
