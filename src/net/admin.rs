//! The admin routes on the HTTP port. Every request carries `Authorization: Bearer <token>`
//! with a token of `[admin.tokens]` (compared in constant time); without one the answer is 401
//! and nothing is done. Each action goes to the simulation thread's lobby
//! ([`super::lobby::admin`]) and is logged there with the operator's name.
//!
//! | Route | Does |
//! |---|---|
//! | `GET /admin/sessions` | sessions and players |
//! | `POST /admin/sessions/{id}/end` | ends a session (classified and archived) |
//! | `POST /admin/players/{id}/kick` `{"reason": "…"}` | disconnects a player |
//! | `POST /admin/announce` `{"message": "…", "session": "…"?}` | a message to all or a session |

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use uuid::Uuid;

use super::connection::Shared;
use super::lobby::admin::{AdminError, AdminRequest};
use super::sim::ToSim;

/// How long a request waits for the simulation thread.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// The admin routes, to merge into the HTTP router.
pub fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/admin/sessions", get(sessions))
        .route("/admin/sessions/{id}/end", post(end))
        .route("/admin/players/{id}/kick", post(kick))
        .route("/admin/announce", post(announce))
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": message.into() }))).into_response()
}

/// The operator the request's bearer token names; `None` (logged) when it names nobody, to be
/// answered with [`unauthorized`].
fn operator(shared: &Shared, headers: &HeaderMap, route: &str) -> Option<String> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let name = shared.config.admin_operator(bearer.trim());
    if name.is_none() {
        tracing::warn!(route, "admin: refused a request without a valid token");
    }
    name.map(str::to_owned)
}

fn unauthorized() -> Response {
    error(
        StatusCode::UNAUTHORIZED,
        "a valid admin token is needed: Authorization: Bearer <token>",
    )
}

async fn ask(shared: &Shared, request: AdminRequest) -> Response {
    let (reply, answer) = tokio::sync::oneshot::channel();
    if shared
        .to_sim
        .send(ToSim::Admin { request, reply })
        .await
        .is_err()
    {
        return error(StatusCode::SERVICE_UNAVAILABLE, "the server is stopping");
    }
    match tokio::time::timeout(ANSWER_TIMEOUT, answer).await {
        Ok(Ok(Ok(reply))) => Json(reply).into_response(),
        Ok(Ok(Err(e))) => {
            let status = match e {
                AdminError::NoSession(_) | AdminError::NoPlayer(_) => StatusCode::NOT_FOUND,
                AdminError::Over(_) => StatusCode::CONFLICT,
                _ => StatusCode::BAD_REQUEST,
            };
            error(status, e.to_string())
        }
        Ok(Err(_)) | Err(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the simulation did not answer",
        ),
    }
}

async fn sessions(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if operator(&shared, &headers, "sessions").is_none() {
        return unauthorized();
    }
    ask(&shared, AdminRequest::Overview).await
}

async fn end(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(session): Path<Uuid>,
) -> Response {
    match operator(&shared, &headers, "end") {
        Some(by) => ask(&shared, AdminRequest::End { session, by }).await,
        None => unauthorized(),
    }
}

/// The body of a kick.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct KickBody {
    reason: String,
}

async fn kick(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(player): Path<Uuid>,
    body: Result<Json<KickBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let by = match operator(&shared, &headers, "kick") {
        Some(by) => by,
        None => return unauthorized(),
    };
    let Json(KickBody { reason }) = match body {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("body: {e}")),
    };
    ask(&shared, AdminRequest::Kick { player, reason, by }).await
}

/// The body of an announcement.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AnnounceBody {
    message: String,
    #[serde(default)]
    session: Option<Uuid>,
}

async fn announce(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Result<Json<AnnounceBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let by = match operator(&shared, &headers, "announce") {
        Some(by) => by,
        None => return unauthorized(),
    };
    let Json(AnnounceBody { message, session }) = match body {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("body: {e}")),
    };
    ask(
        &shared,
        AdminRequest::Announce {
            session,
            message,
            by,
        },
    )
    .await
}
