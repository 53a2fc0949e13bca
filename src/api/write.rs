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
use crate::ingest::posted::{
    Invalid, MAX_RECORDS, PostError, Posted, PostedTrack, TelemetryRecord,
};

/// The largest request body of `POST /api/v1/telemetry`.
pub const MAX_BODY: usize = 8 << 20;

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
        ("older_than" = String, Query, description = "Age, as `7d`, `36h` or `90m`", pattern = "^[0-9]{1,6}(s|m|h|d|w)$"),
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
    // The document's form only (`7d`, `36h`, `90m`), though the parser takes more.
    let simple = text.len() >= 2
        && text.len() <= 7
        && text[..text.len() - 1].bytes().all(|b| b.is_ascii_digit())
        && text.ends_with(['s', 'm', 'h', 'd', 'w']);
    let age = simple
        .then(|| parse_duration(&text))
        .flatten()
        .ok_or_else(|| {
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

/// The body of `POST /api/v1/telemetry`: one record, or an array of 1 to 10,000 (the
/// request body's schema; [`parse_telemetry`] reads the body, naming the field at fault).
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
#[expect(
    dead_code,
    reason = "the schema of the body only: the records are never read from it"
)]
pub enum TelemetryPost {
    /// One record.
    One(Box<TelemetryRecord>),
    /// A batch.
    Batch(Vec<TelemetryRecord>),
}

/// Where a record's field is, for the error body: `speed_kph` for one record, `[3].speed_kph`
/// for the fourth of a batch.
fn at(batch: bool, index: usize, field: &str) -> String {
    match (batch, field.is_empty()) {
        (false, _) => field.to_owned(),
        (true, true) => format!("[{index}]"),
        (true, false) => format!("[{index}].{field}"),
    }
}

/// The records of a `POST /api/v1/telemetry` body, and whether it was a batch: an object is
/// one record, an array a batch (1 to [`MAX_RECORDS`]).
///
/// # Errors
/// A 400 naming the field of a body that is not records (`[3].gear`, `boost` for an unknown
/// field, `body`), a 413 for too many.
pub fn parse_telemetry(body: &[u8]) -> Result<(Vec<TelemetryRecord>, bool), ApiError> {
    fn refused(e: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
        let mut field = e.path().to_string();
        let inner = e.into_inner();
        let message = inner.to_string();
        // serde names a missing field in its message, not in the path.
        for prefix in ["unknown field `", "missing field `"] {
            if let Some(rest) = message.strip_prefix(prefix)
                && let Some(name) = rest.split('`').next()
                && !field.ends_with(name)
            {
                field = match field.as_str() {
                    "." => name.to_owned(),
                    parent => format!("{parent}.{name}"),
                };
            }
        }
        if field == "." {
            field = "body".into();
        }
        ApiError::bad(&field, format!("{field}: {message}"))
    }
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    let mut de = serde_json::Deserializer::from_slice(body);
    let (records, batch) = match first {
        Some(b'[') => (
            serde_path_to_error::deserialize::<_, Vec<TelemetryRecord>>(&mut de)
                .map_err(refused)?,
            true,
        ),
        Some(b'{') => (
            vec![serde_path_to_error::deserialize::<_, TelemetryRecord>(&mut de).map_err(refused)?],
            false,
        ),
        _ => {
            return Err(ApiError::bad(
                "body",
                "the body must be a JSON telemetry record or an array of them",
            ));
        }
    };
    de.end()
        .map_err(|e| ApiError::bad("body", format!("after the records: {e}")))?;
    if records.is_empty() {
        return Err(ApiError::bad("body", "the batch holds no record"));
    }
    if records.len() > MAX_RECORDS {
        return Err(ApiError::with_status(
            StatusCode::PAYLOAD_TOO_LARGE,
            Some("body"),
            format!(
                "the batch holds {} records, over {MAX_RECORDS}",
                records.len()
            ),
        ));
    }
    Ok((records, batch))
}

fn unprocessable(field: String, invalid: &Invalid) -> ApiError {
    ApiError::with_status(
        StatusCode::UNPROCESSABLE_ENTITY,
        Some(&field),
        format!("{field}: {}", invalid.message),
    )
}

/// Takes telemetry records (seed 002's record: one, or a batch of up to 10,000) into the
/// archive: each driver's session is a live archive session (`source=api`) whose complete laps
/// are archived as they close. Answered once the records are in the sessions' write-ahead
/// files. A batch is taken whole or not at all.
#[utoipa::path(post, path = "/api/v1/telemetry", tag = "archive",
    request_body(content = TelemetryPost, description = "One record, or an array of up to 10,000", content_type = "application/json"),
    security(("bearer" = [])),
    responses(
        (status = 201, description = "The records were taken", body = Posted),
        (status = 400, description = "The body is not records; `field` names what is wrong", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 409, description = "A record does not fit its session (its clock goes back, another track or car; `field` names it), the session is finished, or another process writes it", body = ErrorBody),
        (status = 413, description = "The body is over 8 MiB, or over 10,000 records", body = ErrorBody),
        (status = 422, description = "A record's value is out of range, or its track is not the content's and has no `track_length_m`; `field` names it", body = ErrorBody),
        (status = 503, description = "The recorder is busy (retry) or stopping", body = ErrorBody),
    ))]
pub async fn post_telemetry(
    State(state): State<ApiState>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<(StatusCode, Json<Posted>), ApiError> {
    let operator = writer(&state, &headers)?;
    let recorder = state.posted.clone().ok_or_else(|| {
        ApiError::with_status(
            StatusCode::SERVICE_UNAVAILABLE,
            None,
            "this server takes no posted telemetry",
        )
    })?;
    let body = axum::body::to_bytes(body, MAX_BODY).await.map_err(|_| {
        ApiError::with_status(
            StatusCode::PAYLOAD_TOO_LARGE,
            Some("body"),
            format!(
                "the body is over {} MiB (or could not be read)",
                MAX_BODY >> 20
            ),
        )
    })?;
    let (records, batch) = parse_telemetry(&body)?;
    let content = (state.content)();
    let mut checked = Vec::with_capacity(records.len());
    for (i, r) in records.into_iter().enumerate() {
        r.check()
            .map_err(|e| unprocessable(at(batch, i, e.field), &e))?;
        let track =
            PostedTrack::of(&r, &content).map_err(|e| unprocessable(at(batch, i, e.field), &e))?;
        checked.push((r, track));
    }
    let posted = recorder.post(checked).await.map_err(|e| match e {
        // A record that does not fit its session's state (its clock, track or car) conflicts.
        PostError::Record { index, invalid } => {
            let field = at(batch, index, invalid.field);
            ApiError::with_status(
                StatusCode::CONFLICT,
                Some(&field),
                format!("{field}: {}", invalid.message),
            )
        }
        PostError::Finished { index, .. } | PostError::Busy { index, .. } => ApiError::with_status(
            StatusCode::CONFLICT,
            Some(&at(batch, index, "session")),
            e.to_string(),
        ),
        PostError::Full | PostError::Stopped => {
            ApiError::with_status(StatusCode::SERVICE_UNAVAILABLE, None, e.to_string())
        }
        e => ApiError::internal(e),
    })?;
    tracing::debug!(operator, records = posted.records, "telemetry posted");
    Ok((StatusCode::CREATED, Json(posted)))
}
