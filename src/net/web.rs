//! The web side of the HTTP port: the live timing page (`/`, pushed over server-sent events
//! from `/live`), the results pages (`/results/{id}`) and their exports, read from the index,
//! and the browser client (`/drive`), which races over WebTransport on the QUIC port. The pages
//! are embedded in the binary; nothing comes from elsewhere.
//!
//! | Route | What |
//! |---|---|
//! | `GET /` | live timing: every session, a track map with the cars, the timing table |
//! | `GET /live` | the live view as server-sent events, 20 a second (the newest only) |
//! | `GET /api/live` | the live view now, JSON |
//! | `GET /api/tracks/{id}` | a track's centerline, width and sectors, JSON |
//! | `GET /results/{id}` | a finished session: classification, fastest laps, laps, lap chart |
//! | `GET /api/sessions` | the archived sessions, newest first, JSON |
//! | `GET /api/sessions/{id}` | a session with its results and laps, JSON |
//! | `GET /api/sessions/{id}/simresults.json` | the Assetto Corsa results JSON Simresults reads |
//! | `GET /protocol.js` | the wire protocol's codec for browsers (an ES module) |
//! | `GET /drive` | the browser client: sessions, cars, driving, results |
//! | `GET /api/webtransport` | where to open a WebTransport session, and the certificate's hash |

use std::convert::Infallible;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;
use uuid::Uuid;

use super::connection::Shared;
use crate::archive::index::{Index, IndexedLap};

const LIVE_PAGE: &str = include_str!("web/live.html");
const RESULTS_PAGE: &str = include_str!("web/results.html");
const DRIVE_PAGE: &str = include_str!("web/drive.html");
/// The protocol's codec for browsers (the same frames and datagrams as `protocol.rs`).
pub const PROTOCOL_JS: &str = include_str!("web/protocol.js");

/// The web routes, to merge into the HTTP router.
pub fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/", get(|| async { Html(LIVE_PAGE) }))
        .route("/results/{id}", get(|| async { Html(RESULTS_PAGE) }))
        .route("/drive", get(|| async { Html(DRIVE_PAGE) }))
        .route("/api/webtransport", get(web_transport))
        .route(
            "/protocol.js",
            get(|| async { ([(header::CONTENT_TYPE, "text/javascript")], PROTOCOL_JS) }),
        )
        .route("/live", get(live_events))
        .route("/api/live", get(live_now))
        .route("/api/tracks/{id}", get(track))
        .route("/api/sessions", get(sessions))
        .route("/api/sessions/{id}", get(session))
        .route("/api/sessions/{id}/simresults.json", get(simresults))
}

fn json_text(text: Arc<str>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        text.to_string(),
    )
        .into_response()
}

fn not_found(what: String) -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(serde_json::json!({ "error": what })),
    )
        .into_response()
}

/// Where a page opens its WebTransport session.
#[derive(Debug, Serialize)]
struct WebTransportInfo {
    /// The QUIC endpoint's UDP port (on the page's host).
    port: u16,
    /// The session's path.
    path: &'static str,
    /// SHA-256 of the certificate the server makes for browsers, hex, for
    /// `serverCertificateHashes`; empty with a configured certificate (trusted as usual).
    certificate_hashes: Vec<String>,
    /// Whether `Authenticate` needs a token.
    token_required: bool,
    /// The protocol version the server speaks.
    protocol_version: u32,
}

async fn web_transport(State(shared): State<Arc<Shared>>) -> Json<WebTransportInfo> {
    let wt = &shared.web_transport;
    Json(WebTransportInfo {
        port: wt.port,
        path: super::link::WEBTRANSPORT_PATH,
        certificate_hashes: wt
            .certs
            .browser()
            .map(|c| super::tls::fingerprint_hex(&c.hash))
            .into_iter()
            .collect(),
        token_required: shared.config.auth.require_token,
        protocol_version: super::protocol::PROTOCOL_VERSION,
    })
}

async fn live_now(State(shared): State<Arc<Shared>>) -> Response {
    let now = shared.live.borrow().clone();
    json_text(now)
}

/// The newest live view each time one is published; a viewer that falls behind skips to the
/// newest (a `watch` channel holds one value), so it never holds anything back.
async fn live_events(
    State(shared): State<Arc<Shared>>,
) -> Sse<impl futures::Stream<Item = Result<Event, Infallible>>> {
    let mut rx = shared.live.clone();
    rx.mark_changed();
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.changed().await.ok()?;
        let data = rx.borrow_and_update().clone();
        Some((Ok(Event::default().data(&*data)), rx))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// A track's map.
#[derive(Debug, Serialize)]
struct TrackMap {
    id: Uuid,
    slug: String,
    name: String,
    width_m: f32,
    length_m: f32,
    sectors: Vec<f32>,
    centerline: Vec<[f32; 2]>,
}

async fn track(State(shared): State<Arc<Shared>>, Path(id): Path<Uuid>) -> Response {
    let content = match shared.content.lock() {
        Ok(l) => l.content.clone(),
        Err(_) => return not_found("content unavailable".into()),
    };
    match content.track_by_id(id) {
        Some(t) => Json(TrackMap {
            id: t.id,
            slug: t.slug.clone(),
            name: t.name.clone(),
            width_m: t.geometry.width_m(),
            length_m: t.geometry.length_m(),
            sectors: t.sectors.clone(),
            centerline: t.geometry.points().to_vec(),
        })
        .into_response(),
        None => not_found(format!("no track {id}")),
    }
}

pub use crate::api::SessionResults;
use crate::api::load_session;

async fn read_index<T: Send + 'static>(
    shared: &Shared,
    f: impl FnOnce(&Index) -> Result<T, crate::archive::ArchiveError> + Send + 'static,
) -> Result<T, Response> {
    let data = shared.data.clone();
    let done = tokio::task::spawn_blocking(move || Index::open(&data).and_then(|i| f(&i))).await;
    let failed = |e: String| {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(serde_json::json!({ "error": e })),
        )
            .into_response()
    };
    match done {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(failed(e.to_string())),
        Err(e) => Err(failed(e.to_string())),
    }
}

async fn sessions(State(shared): State<Arc<Shared>>) -> Response {
    match read_index(&shared, |i| i.sessions()).await {
        Ok(rows) => Json(rows.into_iter().take(200).collect::<Vec<_>>()).into_response(),
        Err(r) => r,
    }
}

async fn session(State(shared): State<Arc<Shared>>, Path(id): Path<Uuid>) -> Response {
    match read_index(&shared, move |i| load_session(i, id)).await {
        Ok(Some(mut s)) => {
            if let Ok(loaded) = shared.content.lock() {
                s.track_name = loaded
                    .content
                    .track(&s.session.track)
                    .map(|t| t.name.clone());
            }
            Json(s).into_response()
        }
        Ok(None) => not_found(format!("no session {id}")),
        Err(r) => r,
    }
}

/// Each archived lap's sector times (from the lap metrics the archive stores beside the laps),
/// by car and lap; empty when the metrics cannot be read.
async fn sector_times(shared: &Shared, id: Uuid) -> Sectors {
    let data = shared.data.clone();
    let filter = crate::analysis::query::LapFilter {
        session: Some(id.to_string()),
        ..Default::default()
    };
    let rows =
        tokio::task::spawn_blocking(move || crate::analysis::query::query_laps(&data, &filter))
            .await;
    match rows {
        Ok(Ok(rows)) => rows
            .into_iter()
            .filter_map(|r| {
                let key = (u8::try_from(r.car).ok()?, u16::try_from(r.lap).ok()?);
                Some((key, r.sector_times_s))
            })
            .collect(),
        Ok(Err(e)) => {
            tracing::warn!(session = %id, error = %e, "no sector times for the export");
            Sectors::new()
        }
        Err(_) => Sectors::new(),
    }
}

/// Sector times in seconds by (car, lap).
pub type Sectors = std::collections::HashMap<(u8, u16), Vec<f32>>;

async fn simresults(State(shared): State<Arc<Shared>>, Path(id): Path<Uuid>) -> Response {
    let sectors = sector_times(&shared, id).await;
    match read_index(&shared, move |i| load_session(i, id)).await {
        Ok(Some(s)) => (
            [(
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{id}.json\""),
            )],
            Json(simresults_json(&s, &sectors)),
        )
            .into_response(),
        Ok(None) => not_found(format!("no session {id}")),
        Err(r) => r,
    }
}

fn ms(seconds: Option<f64>) -> i64 {
    seconds.map_or(0, |s| (s * 1000.0).round() as i64)
}

/// The Assetto Corsa server's results JSON, as Simresults reads it: `TrackName`, `Type`,
/// `Cars[]` with `Driver{Name, Guid}`, `Result[]` with `TotalTime` and `BestLap` in ms, `Laps[]`
/// with `LapTime` and `Sectors` in ms and `Events[]`. A driver's `Guid` is stable per session
/// and name (a UUID v5). `Sectors` are the lap's measured sector times (the lap time as one
/// sector when it has no metrics); contacts are not archived one by one, so `Events` is empty.
pub fn simresults_json(s: &SessionResults, sectors: &Sectors) -> serde_json::Value {
    let guid = |driver: &str| {
        Uuid::new_v5(&s.session.id, driver.as_bytes())
            .simple()
            .to_string()
    };
    let model = &s.session.car_model;
    let cars: Vec<serde_json::Value> = s
        .results
        .iter()
        .map(|r| {
            serde_json::json!({
                "CarId": r.car,
                "Driver": { "Name": r.driver, "Team": "", "Nation": "", "Guid": guid(&r.driver) },
                "Model": model,
                "Skin": "",
                "BallastKG": 0,
                "Restrictor": 0,
            })
        })
        .collect();
    let result: Vec<serde_json::Value> = s
        .results
        .iter()
        .map(|r| {
            serde_json::json!({
                "DriverName": r.driver,
                "DriverGuid": guid(&r.driver),
                "CarId": r.car,
                "CarModel": model,
                "BestLap": ms(r.best_lap_s),
                "TotalTime": ms(r.total_time_s),
                "NumLaps": r.laps,
                "BallastKG": 0,
                "Restrictor": 0,
            })
        })
        .collect();
    let mut laps: Vec<&IndexedLap> = s.laps.iter().filter(|l| l.complete && l.lap >= 1).collect();
    let mut elapsed: std::collections::HashMap<u8, i64> = std::collections::HashMap::new();
    laps.sort_by_key(|l| (l.lap, l.car));
    let laps: Vec<serde_json::Value> = laps
        .iter()
        .map(|l| {
            let lap_ms = ms(l.lap_time_s);
            let at = elapsed.entry(l.car).or_insert(0);
            *at += lap_ms;
            serde_json::json!({
                "DriverName": l.driver,
                "DriverGuid": guid(&l.driver),
                "CarId": l.car,
                "CarModel": model,
                "Timestamp": *at,
                "LapTime": lap_ms,
                "Sectors": sectors
                    .get(&(l.car, l.lap))
                    .filter(|s| !s.is_empty() && s.iter().all(|x| x.is_finite()))
                    .map_or_else(
                        || vec![lap_ms],
                        |s| s.iter().map(|x| (f64::from(*x) * 1000.0).round() as i64).collect(),
                    ),
                "Cuts": if l.valid { 0 } else { 1 },
                "BallastKG": 0,
                "Tyre": "",
                "Restrictor": 0,
            })
        })
        .collect();
    serde_json::json!({
        "TrackName": s.session.track,
        "TrackConfig": "",
        "Type": "RACE",
        "DurationSecs": 0,
        "RaceLaps": s.session.lap_limit.unwrap_or(0),
        "Cars": cars,
        "Result": result,
        "Laps": laps,
        "Events": [],
    })
}
