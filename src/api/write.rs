//! The API's writes, each needing `Authorization: Bearer <token>` with a token of
//! [`ApiState::tokens`](super::ApiState) (compared in constant time with every one); without
//! one the answer is 401 and nothing is done.

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};

use super::ApiState;
use super::error::{ApiError, ErrorBody, Params};
use crate::archive::index::Index;
use crate::archive::retention::{PruneReport, parse_duration, prune_driver};

/// The writer whose token the request carries, or a 401.
fn writer(state: &ApiState, headers: &HeaderMap) -> Result<String, ApiError> {
    use subtle::ConstantTimeEq as _;
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("")
        .trim();
    let mut found = None;
    for (name, token) in &state.tokens {
        if bool::from(token.as_bytes().ct_eq(bearer.as_bytes())) {
            found = Some(name.clone());
        }
    }
    found.ok_or_else(|| {
        tracing::warn!("API write refused: no valid token");
        ApiError::with_status(
            StatusCode::UNAUTHORIZED,
            Some("authorization"),
            "a valid API token is needed: Authorization: Bearer <token>",
        )
    })
}

/// What a delete removed.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Deleted {
    /// The driver.
    pub driver: String,
    /// Laps of sessions that started at or before this (Unix seconds) were removed.
    pub cutoff: i64,
    /// Sessions the driver lost laps of.
    pub sessions: usize,
    /// Lap files removed.
    pub laps: usize,
    /// Bytes freed (lap files and the sessions' derived files).
    pub bytes: u64,
    /// Sessions old enough but left alone because a live process is writing them.
    pub live_sessions: usize,
}

/// Removes a driver's laps of sessions older than `older_than` (`7d`, `36h`, `0s` for all):
/// lap files, their rows and the sessions' derived metric files. Sessions and results stay.
#[utoipa::path(delete, path = "/api/v1/drivers/{driver}/telemetry", tag = "archive",
    params(
        ("driver" = String, Path, description = "Driver name", min_length = 1, max_length = 200),
        ("older_than" = String, Query, description = "Age, as `7d`, `36h` or `90m`", min_length = 1, max_length = 200),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "What was removed", body = Deleted),
        (status = 400, description = "A parameter is malformed; `field` names it", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
    ))]
pub async fn delete_driver_telemetry(
    State(state): State<ApiState>,
    Path(driver): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Json<Deleted>, ApiError> {
    let operator = writer(&state, &headers)?;
    let driver = super::read::driver_name(driver)?;
    let p = Params::parse(query.as_deref())?;
    let text = p
        .text("older_than")?
        .ok_or_else(|| ApiError::bad("older_than", "older_than is required (7d, 36h, 90m)"))?;
    let age = parse_duration(&text).ok_or_else(|| {
        ApiError::bad(
            "older_than",
            format!("older_than = {text:?} is not a duration like 7d, 36h or 90m"),
        )
    })?;
    let now = jiff::Timestamp::now().as_second();
    let cutoff = now.saturating_sub(i64::try_from(age.as_secs()).unwrap_or(i64::MAX));
    let data = state.data.clone();
    let who = driver.clone();
    let report: PruneReport = tokio::task::spawn_blocking(move || {
        let index = Index::open(&data)?;
        prune_driver(&data, &index, &who, cutoff)
    })
    .await
    .map_err(ApiError::internal)??;
    tracing::info!(
        operator,
        driver,
        cutoff,
        laps = report.laps,
        sessions = report.sessions,
        "deleted a driver's telemetry"
    );
    Ok(Json(Deleted {
        driver,
        cutoff,
        sessions: report.sessions,
        laps: report.laps,
        bytes: report.bytes,
        live_sessions: report.live_sessions,
    }))
}
