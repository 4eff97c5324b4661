//! `/v1/...` team, number and billing administration (HTTP, JSON).

use super::App;
use axum::Router;
use std::sync::Arc;

pub fn routes() -> Router<Arc<App>> {
    Router::new()
}
