//! The API's read routes: everything here reads the index and the lap files, nothing writes.

use std::collections::BTreeMap;
use std::sync::Arc;

use apexsim_systems::record::LapColumns;
use arrow::array::{ArrayRef, Float32Array, RecordBatch, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema};
use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use uuid::Uuid;

use super::ApiState;
use super::error::{ApiError, ErrorBody, MAX_PAGE, MAX_ROWS, Params, path_part};
use crate::analysis::LapMetrics;
use crate::archive::index::{
    BestLap, DriverLap, DriverLapQuery, Index, IndexedLap, Page, ResultEntry, Seen, SessionQuery,
    SessionRow,
};

/// The media type of an Arrow IPC stream.
pub const ARROW_STREAM: &str = "application/vnd.apache.arrow.stream";

/// Runs `f` over the index on a blocking thread.
async fn with_index<T: Send + 'static>(
    state: &ApiState,
    f: impl FnOnce(&Index) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let data = state.data.clone();
    tokio::task::spawn_blocking(move || f(&Index::open(&data)?))
        .await
        .map_err(ApiError::internal)?
}

/// The service and its archive.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Health {
    /// `ok`.
    pub status: &'static str,
    /// This build's version.
    pub version: &'static str,
    /// Sessions in the archive.
    pub sessions: u64,
}

/// Health of the API and its archive.
#[utoipa::path(get, path = "/api/v1/health", tag = "service",
    responses((status = 200, description = "The API answers and its archive opens", body = Health)))]
pub async fn health(State(state): State<ApiState>) -> Result<Json<Health>, ApiError> {
    let sessions = with_index(&state, |i| {
        Ok(i.find_sessions(&SessionQuery {
            limit: 1,
            ..Default::default()
        })?
        .total)
    })
    .await?;
    Ok(Json(Health {
        status: "ok",
        version: env!("CARGO_PKG_VERSION"),
        sessions,
    }))
}

/// The host now: CPU use (since the previous reading) and frequency per core, load averages,
/// memory, temperatures (absent without sensors), this process.
#[utoipa::path(get, path = "/api/v1/host", tag = "service",
    responses((status = 200, description = "One reading of the host", body = crate::host::HostSample)))]
pub async fn host(
    State(state): State<ApiState>,
) -> Result<Json<crate::host::HostSample>, ApiError> {
    let host = state.host.clone();
    tokio::task::spawn_blocking(move || {
        host.lock()
            .map(|mut h| Json(h.sample()))
            .map_err(|_| ApiError::internal("the host monitor is poisoned"))
    })
    .await
    .map_err(ApiError::internal)?
}

/// Archived sessions, newest first, filtered, one page.
#[utoipa::path(get, path = "/api/v1/sessions", tag = "archive",
    params(
        ("track" = Option<String>, Query, description = "Track slug", min_length = 1, max_length = 200),
        ("car" = Option<String>, Query, description = "Car model", min_length = 1, max_length = 200),
        ("driver" = Option<String>, Query, description = "A driver with a lap or a result in the session", min_length = 1, max_length = 200),
        ("source" = Option<String>, Query, description = "`sim`, `iracing` or `api`", min_length = 1, max_length = 200),
        ("from" = Option<i64>, Query, description = "Started at or after (Unix seconds)"),
        ("to" = Option<i64>, Query, description = "Started before (Unix seconds)"),
        ("limit" = Option<u32>, Query, description = "Page size, 1 to 500 (50)", minimum = 1, maximum = 500),
        ("offset" = Option<u64>, Query, description = "Sessions skipped (0)", minimum = 0),
    ),
    responses(
        (status = 200, description = "One page of sessions", body = Page<SessionRow>),
        (status = 400, description = "A parameter is malformed; `field` names it", body = ErrorBody),
    ))]
pub async fn sessions(
    State(state): State<ApiState>,
    RawQuery(query): RawQuery,
) -> Result<Json<Page<SessionRow>>, ApiError> {
    let p = Params::parse(query.as_deref())?;
    let (limit, offset) = p.page(50, MAX_PAGE)?;
    let q = SessionQuery {
        track: p.text("track")?,
        car: p.text("car")?,
        driver: p.text("driver")?,
        source: p.text("source")?,
        from: p.number("from", i64::MIN, i64::MAX)?,
        to: p.number("to", i64::MIN, i64::MAX)?,
        limit,
        offset,
    };
    Ok(Json(
        with_index(&state, move |i| Ok(i.find_sessions(&q)?)).await?,
    ))
}

/// A session with its classification and laps.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SessionResults {
    /// The session.
    pub session: SessionRow,
    /// Its track's name, when the content has the track.
    pub track_name: Option<String>,
    /// Its classification, winner first.
    pub results: Vec<ResultEntry>,
    /// Every archived lap.
    pub laps: Vec<IndexedLap>,
}

/// A session with its results and laps from the index (`track_name` left for the caller, who
/// has the content).
///
/// # Errors
/// [`crate::archive::ArchiveError::Sqlite`].
pub fn load_session(
    index: &Index,
    id: Uuid,
) -> Result<Option<SessionResults>, crate::archive::ArchiveError> {
    let Some(session) = index.session(id)? else {
        return Ok(None);
    };
    Ok(Some(SessionResults {
        track_name: None,
        results: index.results(id)?,
        laps: index.laps(Some(id))?,
        session,
    }))
}

fn session_id(text: &str) -> Result<Uuid, ApiError> {
    path_part("id", text, "a session id (a UUID)")
}

/// One session with its results and laps.
#[utoipa::path(get, path = "/api/v1/sessions/{id}", tag = "archive",
    params(("id" = Uuid, Path, description = "Session id (UUID)")),
    responses(
        (status = 200, description = "The session", body = SessionResults),
        (status = 400, description = "The id is not a UUID", body = ErrorBody),
        (status = 404, description = "No such session", body = ErrorBody),
    ))]
pub async fn session(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<SessionResults>, ApiError> {
    let id = session_id(&id)?;
    let mut s = with_index(&state, move |i| Ok(load_session(i, id)?))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no session {id}")))?;
    s.track_name = (state.content)()
        .track(&s.session.track)
        .map(|t| t.name.clone());
    Ok(Json(s))
}

/// The lap a path names, and its file, or a 404 naming what is missing.
fn find_lap(
    state: &ApiState,
    index: &Index,
    id: Uuid,
    car: u8,
    lap: u16,
) -> Result<(IndexedLap, std::path::PathBuf), ApiError> {
    let found = index
        .lap(id, car, lap)?
        .ok_or_else(|| ApiError::not_found(format!("no lap {lap} of car {car} in session {id}")))?;
    let file = state.data.join(&found.file);
    if !file.exists() {
        return Err(ApiError::not_found(format!(
            "lap {lap} of car {car} in session {id} is indexed but its file is gone (pruned?)"
        )));
    }
    Ok((found, file))
}

fn lap_path(id: &str, car: &str, lap: &str) -> Result<(Uuid, u8, u16), ApiError> {
    Ok((
        session_id(id)?,
        path_part("car", car, "a car index (0 to 255)")?,
        path_part("lap", lap, "a lap number (0 to 65535)")?,
    ))
}

/// A lap's column: name and unit.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ColumnInfo {
    /// Column name.
    pub name: String,
    /// Unit (empty when it has none).
    pub unit: String,
}

/// One page of a lap's samples, column by column.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LapTelemetry {
    /// Session id.
    pub session: Uuid,
    /// Car index.
    pub car: u8,
    /// Lap number.
    pub lap: u16,
    /// Samples in the lap.
    pub total_rows: u64,
    /// Samples skipped before this page.
    pub offset: u64,
    /// Page size asked for.
    pub limit: u32,
    /// The next page's offset, when there is one.
    pub next_offset: Option<u64>,
    /// The columns in `values`, with units.
    pub columns: Vec<ColumnInfo>,
    /// Simulation tick of each sample.
    pub tick: Vec<u64>,
    /// Each column's values (`null` where not finite).
    pub values: BTreeMap<String, Vec<Option<f32>>>,
}

/// Which columns a request asks for: every one, or `columns=a,b`, each checked.
fn wanted_columns(p: &Params) -> Result<Vec<&'static str>, ApiError> {
    let Some(list) = p.text_up_to("columns", 2000)? else {
        return Ok(LapColumns::F32_NAMES.to_vec());
    };
    list.split(',')
        .map(|name| {
            LapColumns::F32_NAMES
                .iter()
                .find(|n| **n == name)
                .copied()
                .ok_or_else(|| {
                    ApiError::bad(
                        "columns",
                        format!(
                            "no column {name:?}; the columns are {}",
                            LapColumns::F32_NAMES.join(", ")
                        ),
                    )
                })
        })
        .collect()
}

fn wants_arrow(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|t| t.trim().starts_with(ARROW_STREAM)))
}

/// A lap's samples, one page (`offset`, `limit` up to 100,000 rows), every column or those
/// `columns` lists. JSON column by column, or an Arrow IPC stream (`tick` and the columns)
/// with `Accept: application/vnd.apache.arrow.stream`.
#[utoipa::path(get, path = "/api/v1/sessions/{id}/laps/{car}/{lap}/telemetry", tag = "archive",
    params(
        ("id" = Uuid, Path, description = "Session id (UUID)"),
        ("car" = u8, Path, description = "Car index in the session", minimum = 0, maximum = 255),
        ("lap" = u16, Path, description = "Lap number", minimum = 0, maximum = 65535),
        ("columns" = Option<String>, Query, description = "Comma-separated column names (all)", min_length = 1),
        ("limit" = Option<u32>, Query, description = "Rows, 1 to 100000 (10000)", minimum = 1, maximum = 100000),
        ("offset" = Option<u64>, Query, description = "Rows skipped (0)", minimum = 0),
    ),
    responses(
        (status = 200, description = "One page of the lap's samples", content(
            (LapTelemetry = "application/json"),
            (Vec<u8> = "application/vnd.apache.arrow.stream"),
        )),
        (status = 400, description = "A parameter is malformed; `field` names it", body = ErrorBody),
        (status = 404, description = "No such lap, or its file is gone", body = ErrorBody),
    ))]
pub async fn lap_telemetry(
    State(state): State<ApiState>,
    Path((id, car, lap)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (id, car, lap) = lap_path(&id, &car, &lap)?;
    let p = Params::parse(query.as_deref())?;
    let (limit, offset) = p.page(10_000, MAX_ROWS)?;
    let names = wanted_columns(&p)?;
    let arrow = wants_arrow(&headers);
    let st = state.clone();
    let (total, columns) = with_index(&state, move |i| {
        let (_, file) = find_lap(&st, i, id, car, lap)?;
        let (_, columns) = crate::archive::read::read_lap_columns(&file, Some(&names))?;
        Ok((
            columns.tick.len() as u64,
            slice(&columns, &names, offset, limit),
        ))
    })
    .await?;
    let (ticks, values) = columns;
    if arrow {
        return arrow_stream(ticks, values)
            .map(|bytes| ([(header::CONTENT_TYPE, ARROW_STREAM)], bytes).into_response());
    }
    let end = offset.saturating_add(ticks.len() as u64);
    let units: BTreeMap<&str, &str> = LapColumns::FIELDS
        .iter()
        .map(|f| (f.name, f.unit))
        .collect();
    Ok(Json(LapTelemetry {
        session: id,
        car,
        lap,
        total_rows: total,
        offset,
        limit,
        next_offset: (end < total).then_some(end),
        columns: values
            .iter()
            .map(|(name, _)| ColumnInfo {
                name: (*name).to_owned(),
                unit: units.get(name).copied().unwrap_or_default().to_owned(),
            })
            .collect(),
        tick: ticks,
        values: values
            .into_iter()
            .map(|(name, v)| {
                let v = v.into_iter().map(|x| x.is_finite().then_some(x)).collect();
                (name.to_owned(), v)
            })
            .collect(),
    })
    .into_response())
}

type Slice = (Vec<u64>, Vec<(&'static str, Vec<f32>)>);

/// Rows `offset..offset + limit` of the named columns.
fn slice(columns: &LapColumns, names: &[&'static str], offset: u64, limit: u32) -> Slice {
    let n = columns.tick.len();
    let start = usize::try_from(offset).unwrap_or(usize::MAX).min(n);
    let end = start.saturating_add(limit as usize).min(n);
    let all = columns.f32_columns();
    let values = names
        .iter()
        .filter_map(|name| {
            let at = LapColumns::F32_NAMES.iter().position(|n| n == name)?;
            Some((*name, all[at].get(start..end).unwrap_or_default().to_vec()))
        })
        .collect();
    (columns.tick[start..end].to_vec(), values)
}

fn arrow_stream(
    ticks: Vec<u64>,
    values: Vec<(&'static str, Vec<f32>)>,
) -> Result<Vec<u8>, ApiError> {
    let mut fields = vec![Field::new("tick", DataType::UInt64, false)];
    let mut arrays: Vec<ArrayRef> = vec![Arc::new(UInt64Array::from(ticks))];
    for (name, v) in values {
        fields.push(Field::new(name, DataType::Float32, false));
        arrays.push(Arc::new(Float32Array::from(v)));
    }
    let schema = Arc::new(Schema::new(fields));
    let batch = RecordBatch::try_new(schema.clone(), arrays).map_err(ApiError::internal)?;
    let mut out = Vec::new();
    {
        let mut w = arrow::ipc::writer::StreamWriter::try_new(&mut out, &schema)
            .map_err(ApiError::internal)?;
        w.write(&batch).map_err(ApiError::internal)?;
        w.finish().map_err(ApiError::internal)?;
    }
    Ok(out)
}

/// A lap's metrics: statistics, sector and minisector times, braking zones, corners (measured
/// from its file with the archive's thresholds).
#[utoipa::path(get, path = "/api/v1/sessions/{id}/laps/{car}/{lap}/metrics", tag = "archive",
    params(
        ("id" = Uuid, Path, description = "Session id (UUID)"),
        ("car" = u8, Path, description = "Car index in the session", minimum = 0, maximum = 255),
        ("lap" = u16, Path, description = "Lap number", minimum = 0, maximum = 65535),
    ),
    responses(
        (status = 200, description = "The lap's metrics", body = LapMetrics),
        (status = 400, description = "A path part is malformed; `field` names it", body = ErrorBody),
        (status = 404, description = "No such lap, or its file is gone", body = ErrorBody),
        (status = 422, description = "The lap cannot be measured (too short, not finite)", body = ErrorBody),
    ))]
pub async fn lap_metrics(
    State(state): State<ApiState>,
    Path((id, car, lap)): Path<(String, String, String)>,
) -> Result<Json<LapMetrics>, ApiError> {
    let (id, car, lap) = lap_path(&id, &car, &lap)?;
    let st = state.clone();
    with_index(&state, move |i| {
        let (found, file) = find_lap(&st, i, id, car, lap)?;
        let sectors = i.session_sectors(id)?;
        let th =
            crate::analysis::store::archive_thresholds(&st.data).map_err(ApiError::internal)?;
        let (meta, columns) = crate::archive::read::read_lap(&file)?;
        crate::analysis::lap::lap_metrics(
            &columns,
            meta.track_length_m,
            found.complete,
            &sectors,
            &th,
        )
        .map(Json)
        .map_err(|e| ApiError::with_status(StatusCode::UNPROCESSABLE_ENTITY, None, e.to_string()))
    })
    .await
}

pub(super) fn driver_name(text: String) -> Result<String, ApiError> {
    if text.is_empty() || text.len() > 200 {
        return Err(ApiError::bad("driver", "driver must be 1 to 200 bytes"));
    }
    Ok(text)
}

/// A driver's laps, newest session first, filtered, one page.
#[utoipa::path(get, path = "/api/v1/drivers/{driver}/laps", tag = "archive",
    params(
        ("driver" = String, Path, description = "Driver name", min_length = 1, max_length = 200),
        ("track" = Option<String>, Query, description = "Track slug", min_length = 1, max_length = 200),
        ("car" = Option<String>, Query, description = "Car model", min_length = 1, max_length = 200),
        ("valid" = Option<bool>, Query, description = "Only valid complete laps (false)"),
        ("limit" = Option<u32>, Query, description = "Page size, 1 to 500 (50)", minimum = 1, maximum = 500),
        ("offset" = Option<u64>, Query, description = "Laps skipped (0)", minimum = 0),
    ),
    responses(
        (status = 200, description = "One page of the driver's laps", body = Page<DriverLap>),
        (status = 400, description = "A parameter is malformed; `field` names it", body = ErrorBody),
    ))]
pub async fn driver_laps(
    State(state): State<ApiState>,
    Path(driver): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<Page<DriverLap>>, ApiError> {
    let driver = driver_name(driver)?;
    let p = Params::parse(query.as_deref())?;
    let (limit, offset) = p.page(50, MAX_PAGE)?;
    let q = DriverLapQuery {
        track: p.text("track")?,
        car: p.text("car")?,
        valid_only: p.flag("valid")?.unwrap_or(false),
        limit,
        offset,
    };
    Ok(Json(
        with_index(&state, move |i| Ok(i.driver_laps(&driver, &q)?)).await?,
    ))
}

/// A driver's best valid lap per track and car model.
#[utoipa::path(get, path = "/api/v1/drivers/{driver}/best", tag = "archive",
    params(("driver" = String, Path, description = "Driver name", min_length = 1, max_length = 200)),
    responses(
        (status = 200, description = "Best laps, by track then car", body = Vec<BestLap>),
        (status = 400, description = "The driver name is malformed", body = ErrorBody),
    ))]
pub async fn driver_best(
    State(state): State<ApiState>,
    Path(driver): Path<String>,
) -> Result<Json<Vec<BestLap>>, ApiError> {
    let driver = driver_name(driver)?;
    Ok(Json(
        with_index(&state, move |i| Ok(i.best_laps(&driver)?)).await?,
    ))
}

/// A track: from the content when it has it, and what the archive holds on it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TrackInfo {
    /// Slug (as sessions name it).
    pub slug: String,
    /// Content id, when the content has the track.
    pub id: Option<Uuid>,
    /// Display name, when the content has the track.
    pub name: Option<String>,
    /// Centerline length, m, when the content has the track.
    pub length_m: Option<f32>,
    /// Where the sectors start (fractions of the lap), when the content has the track.
    pub sectors: Option<Vec<f32>>,
    /// Archived sessions on it.
    pub sessions: u64,
    /// Archived laps on it.
    pub laps: u64,
}

/// A car model: from the content when it has it, and what the archive holds of it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CarInfo {
    /// Name as sessions record it (the content's slug when only the content has it).
    pub name: String,
    /// Content id, when the content has the car.
    pub id: Option<Uuid>,
    /// Content slug, when the content has the car.
    pub slug: Option<String>,
    /// Archived sessions in it.
    pub sessions: u64,
    /// Archived laps in it.
    pub laps: u64,
}

/// Tracks of the content and of the archive.
#[utoipa::path(get, path = "/api/v1/racing/tracks", tag = "racing",
    responses((status = 200, description = "Every track, by slug", body = Vec<TrackInfo>)))]
pub async fn tracks(State(state): State<ApiState>) -> Result<Json<Vec<TrackInfo>>, ApiError> {
    let seen = with_index(&state, |i| Ok(i.seen(false)?)).await?;
    let content = (state.content)();
    let mut out: BTreeMap<String, TrackInfo> = BTreeMap::new();
    for t in &content.tracks {
        out.insert(
            t.slug.clone(),
            TrackInfo {
                slug: t.slug.clone(),
                id: Some(t.id),
                name: Some(t.name.clone()),
                length_m: Some(t.geometry.length_m()),
                sectors: Some(t.sectors.clone()),
                sessions: 0,
                laps: 0,
            },
        );
    }
    for Seen {
        name,
        sessions,
        laps,
    } in seen
    {
        let key = content
            .track(&name)
            .map_or(name.clone(), |t| t.slug.clone());
        let e = out.entry(key.clone()).or_insert_with(|| TrackInfo {
            slug: key,
            id: None,
            name: None,
            length_m: None,
            sectors: None,
            sessions: 0,
            laps: 0,
        });
        e.sessions += sessions;
        e.laps += laps;
    }
    Ok(Json(out.into_values().collect()))
}

/// Car models of the content and of the archive.
#[utoipa::path(get, path = "/api/v1/racing/cars", tag = "racing",
    responses((status = 200, description = "Every car model, by name", body = Vec<CarInfo>)))]
pub async fn cars(State(state): State<ApiState>) -> Result<Json<Vec<CarInfo>>, ApiError> {
    let seen = with_index(&state, |i| Ok(i.seen(true)?)).await?;
    let content = (state.content)();
    let mut out: BTreeMap<String, CarInfo> = BTreeMap::new();
    for Seen {
        name,
        sessions,
        laps,
    } in seen
    {
        let car = content.car(&name);
        out.insert(
            name.clone(),
            CarInfo {
                name,
                id: car.map(|c| c.id),
                slug: car.map(|c| c.slug.clone()),
                sessions,
                laps,
            },
        );
    }
    for c in &content.cars {
        let known = out.values().any(|v| v.id == Some(c.id));
        if !known {
            out.insert(
                c.slug.clone(),
                CarInfo {
                    name: c.slug.clone(),
                    id: Some(c.id),
                    slug: Some(c.slug.clone()),
                    sessions: 0,
                    laps: 0,
                },
            );
        }
    }
    Ok(Json(out.into_values().collect()))
}

/// A race template of the content.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TemplateInfo {
    /// Stable id.
    pub id: Uuid,
    /// Slug.
    pub slug: String,
    /// Display name.
    pub name: String,
    /// Its track's content id.
    pub track_id: Uuid,
    /// Cars it allows (content ids; empty: every car).
    pub allowed_cars: Vec<Uuid>,
    /// Grid size.
    pub max_players: u8,
    /// Laps.
    pub lap_limit: u8,
    /// How its sessions start.
    pub start_mode: crate::content::StartMode,
    /// Whether the server runs it (enabled, and its track and cars are loaded).
    pub active: bool,
}

/// Race templates of the content.
#[utoipa::path(get, path = "/api/v1/racing/templates", tag = "racing",
    responses((status = 200, description = "Every template, by name", body = Vec<TemplateInfo>)))]
pub async fn templates(State(state): State<ApiState>) -> Json<Vec<TemplateInfo>> {
    let content = (state.content)();
    let mut out: Vec<TemplateInfo> = content
        .templates
        .iter()
        .map(|t| TemplateInfo {
            id: t.id,
            slug: t.slug.clone(),
            name: t.name.clone(),
            track_id: t.track_id,
            allowed_cars: t.allowed_cars.clone(),
            max_players: t.max_players,
            lap_limit: t.lap_limit,
            start_mode: t.start_mode,
            active: t.active,
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Json(out)
}
