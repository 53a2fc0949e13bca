//! The coaching pipeline end to end: `apexsim ingest --upload`, `outbox ls|retry` and `coach
//! login` against an in-process Racing Coach server (axum on loopback) that implements the
//! upload and device endpoints and checks every request body against the schemas of the
//! server's OpenAPI file.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use apexsim::coach::api;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

const TSUKUBA: &str = "iracing_formulavee_tsukuba-1k-outer_2025-01-30_2laps.ibt";

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/ibt")
        .join(name)
}

// ---------------------------------------------------------------------------------------------
// The OpenAPI file and a validator of its schema subset (object, array, string, number,
// integer, boolean, null, $ref, anyOf, required, additionalProperties, min/maxLength, formats
// uuid and date-time). Stricter than the server: a property the schema does not list is an
// error, so a misspelt field cannot pass.

struct Spec(Value);

impl Spec {
    fn load() -> Self {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/openapi/racing-coach-openapi.json");
        let text = std::fs::read_to_string(path).expect("openapi file");
        Self(serde_json::from_str(&text).expect("openapi json"))
    }

    fn schema(&self, name: &str) -> &Value {
        &self.0["components"]["schemas"][name]
    }

    fn resolve<'a>(&'a self, s: &'a Value) -> &'a Value {
        match s.get("$ref").and_then(Value::as_str) {
            Some(r) => self.schema(r.trim_start_matches("#/components/schemas/")),
            None => s,
        }
    }

    fn validate(&self, name: &str, v: &Value) -> Vec<String> {
        let mut errors = Vec::new();
        self.check(self.schema(name), v, name, &mut errors);
        errors
    }

    fn check(&self, s: &Value, v: &Value, at: &str, errors: &mut Vec<String>) {
        if errors.len() > 20 {
            return;
        }
        let s = self.resolve(s);
        if let Some(any) = s.get("anyOf").and_then(Value::as_array) {
            if !any.iter().any(|alt| {
                let mut e = Vec::new();
                self.check(alt, v, at, &mut e);
                e.is_empty()
            }) {
                errors.push(format!("{at}: matches no alternative"));
            }
            return;
        }
        let Some(ty) = s.get("type").and_then(Value::as_str) else {
            return;
        };
        let ok = match ty {
            "object" => v.is_object(),
            "array" => v.is_array(),
            "string" => v.is_string(),
            "number" => v.is_number(),
            "integer" => v.is_i64() || v.is_u64(),
            "boolean" => v.is_boolean(),
            "null" => v.is_null(),
            _ => true,
        };
        if !ok {
            errors.push(format!("{at}: expected {ty}, got {v}"));
            return;
        }
        match ty {
            "object" => {
                let obj = v.as_object().expect("object");
                let props = s.get("properties").and_then(Value::as_object);
                for r in s
                    .get("required")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let r = r.as_str().expect("name");
                    if !obj.contains_key(r) {
                        errors.push(format!("{at}.{r}: required"));
                    }
                }
                for (k, val) in obj {
                    match props.and_then(|p| p.get(k)) {
                        Some(ps) => self.check(ps, val, &format!("{at}.{k}"), errors),
                        None => match s.get("additionalProperties") {
                            Some(ap) if ap.is_object() => {
                                self.check(ap, val, &format!("{at}.{k}"), errors)
                            }
                            Some(Value::Bool(true)) => {}
                            _ => errors.push(format!("{at}.{k}: not in the schema")),
                        },
                    }
                }
            }
            "array" => {
                if let Some(items) = s.get("items") {
                    for (i, item) in v.as_array().expect("array").iter().enumerate() {
                        self.check(items, item, &format!("{at}.{i}"), errors);
                    }
                }
            }
            "string" => {
                let text = v.as_str().expect("string");
                let n = text.chars().count() as u64;
                if s.get("maxLength")
                    .and_then(Value::as_u64)
                    .is_some_and(|m| n > m)
                    || s.get("minLength")
                        .and_then(Value::as_u64)
                        .is_some_and(|m| n < m)
                {
                    errors.push(format!("{at}: length {n} out of bounds"));
                }
                match s.get("format").and_then(Value::as_str) {
                    Some("uuid") if uuid::Uuid::parse_str(text).is_err() => {
                        errors.push(format!("{at}: {text:?} is not a uuid"));
                    }
                    Some("date-time") if text.parse::<jiff::Timestamp>().is_err() => {
                        errors.push(format!("{at}: {text:?} is not a date-time"));
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }

    /// The request body schema of an operation.
    fn body_schema(&self, path: &str) -> String {
        let r = self.0["paths"][path]["post"]["requestBody"]["content"]["application/json"]
            ["schema"]["$ref"]
            .as_str()
            .expect("body ref");
        r.trim_start_matches("#/components/schemas/").to_owned()
    }
}

// ---------------------------------------------------------------------------------------------
// The fake Racing Coach server.

#[derive(Debug, Clone, PartialEq)]
enum Req {
    Lap { lap_id: String, lap: i64 },
    Metrics { lap_id: String },
    Lookup { lap_id: String, found: bool },
    Authorize,
    Token,
}

#[derive(Default)]
struct Fake {
    /// Every request, in order, with its `X-Device-Token`.
    log: Vec<(Req, Option<String>)>,
    /// Laps stored, by id: lap number, frames, lap time, session id.
    laps: BTreeMap<String, (i64, usize, Option<f64>, String)>,
    /// The session of each lap stored, by lap id.
    sessions: BTreeMap<String, Value>,
    /// Metrics stored, by lap id: how many times.
    metrics: BTreeMap<String, u32>,
    /// Bodies that broke the schema, metrics for unknown laps.
    invalid: Vec<String>,
    /// Lap numbers answered with a 422.
    reject_laps: BTreeSet<i64>,
    /// Store the next lap, then answer only after the client gave up.
    lose_next_response: bool,
    /// Store every lap, then answer after this long.
    slow_laps: Option<Duration>,
    /// Token polls so far.
    polls: u32,
}

struct Server {
    state: Arc<Mutex<Fake>>,
    url: String,
    _runtime: tokio::runtime::Runtime,
}

impl Server {
    fn start() -> Self {
        Self::start_on(std::net::TcpListener::bind("127.0.0.1:0").expect("bind"))
    }

    fn start_on(listener: std::net::TcpListener) -> Self {
        listener.set_nonblocking(true).expect("nonblocking");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let state = Arc::new(Mutex::new(Fake::default()));
        let spec = Arc::new(Spec::load());
        let app = Router::new()
            .route(api::UPLOAD_LAP, post(upload_lap))
            .route(api::UPLOAD_METRICS, post(upload_metrics))
            .route(api::DEVICE_AUTHORIZE, post(authorize))
            .route(api::DEVICE_TOKEN, post(token))
            .route(
                "/api/v1/sessions/{session_id}/laps/{lap_id}",
                get(session_lap),
            )
            .route(api::HEALTH, get(health))
            // Laps are megabytes of JSON; FastAPI sets no limit.
            .layer(axum::extract::DefaultBodyLimit::max(256 << 20))
            .with_state((state.clone(), spec, url.clone()));
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            axum::serve(listener, app).await.expect("serve");
        });
        Self {
            state,
            url,
            _runtime: runtime,
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Fake) -> T) -> T {
        f(&mut self.state.lock().expect("state"))
    }
}

type AppState = (Arc<Mutex<Fake>>, Arc<Spec>, String);

fn token_of(h: &HeaderMap) -> Option<String> {
    h.get(api::DEVICE_TOKEN_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Parses and validates a body; a 422 like FastAPI's when it breaks the schema.
fn checked(
    spec: &Spec,
    state: &Mutex<Fake>,
    path: &str,
    body: &Bytes,
) -> Result<Value, Box<Response>> {
    let schema = spec.body_schema(path);
    let errors = match serde_json::from_slice::<Value>(body) {
        Ok(v) => {
            let e = spec.validate(&schema, &v);
            if e.is_empty() {
                return Ok(v);
            }
            e
        }
        Err(e) => vec![format!("not JSON: {e}")],
    };
    state
        .lock()
        .expect("state")
        .invalid
        .extend(errors.iter().map(|e| format!("{path}: {e}")));
    let detail: Vec<Value> = errors
        .iter()
        .map(|e| json!({"loc": ["body"], "msg": e, "type": "value_error"}))
        .collect();
    Err(Box::new(
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            axum::Json(json!({ "detail": detail })),
        )
            .into_response(),
    ))
}

async fn upload_lap(
    State((state, spec, _)): State<AppState>,
    Query(q): Query<BTreeMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let v = match checked(&spec, &state, api::UPLOAD_LAP, &body) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let frames = v["lap"]["frames"].as_array().map_or(0, Vec::len);
    let lap = v["lap"]["frames"][0]["lap_number"].as_i64().unwrap_or(-1);
    let lap_time = v["lap"]["lap_time"].as_f64();
    let lap_id = q
        .get("lap_id")
        .cloned()
        .unwrap_or_else(|| "server-made".into());
    let lose = {
        let mut s = state.lock().expect("state");
        s.log.push((
            Req::Lap {
                lap_id: lap_id.clone(),
                lap,
            },
            token_of(&headers),
        ));
        if s.reject_laps.contains(&lap) {
            drop(s);
            return (
                StatusCode::UNPROCESSABLE_ENTITY,
                axum::Json(json!({"detail": [{"loc": ["body", "lap", "lap_time"], "msg": "lap time out of range", "type": "value_error"}]})),
            )
                .into_response();
        }
        // Idempotent by the client's lap id: a second upload replaces the first.
        let session = v["session"]["session_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        s.laps
            .insert(lap_id.clone(), (lap, frames, lap_time, session));
        s.sessions.insert(lap_id.clone(), v["session"].clone());
        if std::mem::take(&mut s.lose_next_response) {
            // Stored, but the answer comes after the client gave up.
            Some(Duration::from_secs(3))
        } else {
            s.slow_laps
        }
    };
    if let Some(wait) = lose {
        tokio::time::sleep(wait).await;
    }
    axum::Json(api::LapUploadResponse {
        status: "success".into(),
        message: format!("{frames} frames"),
        lap_id,
    })
    .into_response()
}

async fn upload_metrics(
    State((state, spec, _)): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let v = match checked(&spec, &state, api::UPLOAD_METRICS, &body) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let lap_id = v["lap_id"].as_str().unwrap_or_default().to_owned();
    let mut s = state.lock().expect("state");
    s.log.push((
        Req::Metrics {
            lap_id: lap_id.clone(),
        },
        token_of(&headers),
    ));
    if !s.laps.contains_key(&lap_id) {
        s.invalid.push(format!("metrics for unknown lap {lap_id}"));
        return (
            StatusCode::NOT_FOUND,
            axum::Json(json!({"detail": "lap not found"})),
        )
            .into_response();
    }
    *s.metrics.entry(lap_id.clone()).or_default() += 1;
    axum::Json(api::MetricsUploadResponse {
        status: "success".into(),
        message: "stored".into(),
        lap_metrics_id: format!("m-{lap_id}"),
    })
    .into_response()
}

async fn authorize(
    State((state, spec, url)): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = checked(&spec, &state, api::DEVICE_AUTHORIZE, &body) {
        return *r;
    }
    state
        .lock()
        .expect("state")
        .log
        .push((Req::Authorize, token_of(&headers)));
    axum::Json(api::DeviceAuthorizationResponse {
        device_code: "device-code-1".into(),
        user_code: "WXYZ2345".into(),
        verification_uri: format!("{url}/device"),
        expires_in: 60,
        interval: 1,
    })
    .into_response()
}

async fn token(
    State((state, spec, _)): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let v = match checked(&spec, &state, api::DEVICE_TOKEN, &body) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let mut s = state.lock().expect("state");
    s.log.push((Req::Token, token_of(&headers)));
    if v["device_code"] != "device-code-1" {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"detail": "invalid_grant"})),
        )
            .into_response();
    }
    s.polls += 1;
    // The user confirms in the browser between the first and the second poll.
    if s.polls < 2 {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"detail": "authorization_pending"})),
        )
            .into_response();
    }
    axum::Json(api::DeviceTokenResponse {
        access_token: "device-token-7f3a".into(),
        token_type: Some("Bearer".into()),
        device_name: "test rig".into(),
    })
    .into_response()
}

async fn session_lap(
    State((state, _, _)): State<AppState>,
    axum::extract::Path((session_id, lap_id)): axum::extract::Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let mut s = state.lock().expect("state");
    let found = s
        .laps
        .get(&lap_id)
        .filter(|l| l.3 == session_id)
        .map(|l| l.0);
    s.log.push((
        Req::Lookup {
            lap_id: lap_id.clone(),
            found: found.is_some(),
        },
        token_of(&headers),
    ));
    match found {
        Some(lap) => {
            axum::Json(json!({"lap_id": lap_id, "session_id": session_id, "lap_number": lap}))
                .into_response()
        }
        None => (
            StatusCode::NOT_FOUND,
            axum::Json(json!({"detail": "Lap not found"})),
        )
            .into_response(),
    }
}

async fn health() -> Response {
    axum::Json(api::HealthCheckResponse {
        status: "healthy".into(),
        message: "ok".into(),
        database_status: "connected".into(),
        database_message: "ok".into(),
    })
    .into_response()
}

// ---------------------------------------------------------------------------------------------
// Helpers.

/// Runs `apexsim` with a data directory and a private configuration directory.
fn run(data: &Path, config: &Path, args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["--data", data.to_str().expect("utf-8")];
    all.extend_from_slice(args);
    crate::common::apexsim_env(
        &all,
        &[("APEXSIM_CONFIG_DIR", config.to_str().expect("utf-8"))],
    )
}

/// `apexsim ingest` of the Tsukuba recording with `--upload URL` (and `--upload-wait WAIT`).
fn ingest_upload(
    data: &Path,
    config: &Path,
    url: &str,
    wait: Option<&str>,
) -> (i32, String, String) {
    let file = fixture(TSUKUBA);
    let mut args = vec!["ingest", file.to_str().expect("utf-8"), "--upload", url];
    if let Some(w) = wait {
        args.extend(["--upload-wait", w]);
    }
    run(data, config, &args)
}

fn outbox(data: &Path, config: &Path) -> Value {
    let (code, out, err) = run(data, config, &["outbox", "ls", "--all", "--format", "json"]);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(out.trim()).expect("outbox json")
}

/// Complete laps in the archive: (session, car, lap, rows, lap time).
fn complete_laps(data: &Path) -> Vec<(uuid::Uuid, u8, u16, u64, Option<f64>)> {
    let index = apexsim::archive::index::Index::open(data).expect("index");
    index
        .laps(None)
        .expect("laps")
        .into_iter()
        .filter(|l| l.complete)
        .map(|l| (l.session, l.car, l.lap, l.rows, l.lap_time_s))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Tests.

#[test]
fn the_models_match_the_openapi_file_field_by_field() {
    let spec = Spec::load();
    let frame = api::TelemetryFrame {
        timestamp: Some("2025-01-30T17:09:29Z".into()),
        session_time: 1.0,
        lap_number: 1,
        lap_distance_pct: 0.5,
        lap_distance: 500.0,
        current_lap_time: 10.0,
        last_lap_time: 0.0,
        best_lap_time: 0.0,
        speed: 30.0,
        rpm: 5000.0,
        gear: 3,
        throttle: 1.0,
        brake: 0.0,
        clutch: 0.0,
        steering_angle: 0.1,
        lateral_acceleration: 1.0,
        longitudinal_acceleration: 0.5,
        vertical_acceleration: 0.0,
        yaw_rate: 0.0,
        roll_rate: 0.0,
        pitch_rate: 0.0,
        velocity_x: 30.0,
        velocity_y: 0.0,
        velocity_z: 0.0,
        yaw: 0.0,
        pitch: 0.0,
        roll: 0.0,
        latitude: 0.0,
        longitude: 0.0,
        altitude: 0.0,
        tire_temps: BTreeMap::from([("LF".into(), BTreeMap::from([("left".into(), 80.0)]))]),
        tire_wear: BTreeMap::new(),
        brake_line_pressure: BTreeMap::from([("LF".into(), 10.0)]),
        track_temp: 30.0,
        track_wetness: 0,
        air_temp: 20.0,
        session_flags: 0,
        track_surface: 3,
        on_pit_road: false,
    };
    let session = api::SessionFrame {
        timestamp: Some("2025-01-30T17:09:29Z".into()),
        session_id: Some(uuid::Uuid::nil()),
        track_id: 1,
        track_name: "t".into(),
        track_config_name: None,
        track_type: Some("road course".into()),
        car_id: 2,
        car_name: "c".into(),
        car_class_id: 3,
        series_id: 0,
        session_type: "Race".into(),
    };
    let zone = api::BrakingMetrics {
        braking_point_distance: 1.0,
        braking_point_speed: 2.0,
        end_distance: 3.0,
        max_brake_pressure: 1.0,
        braking_duration: 1.0,
        minimum_speed: 1.0,
        initial_deceleration: 1.0,
        average_deceleration: 1.0,
        braking_efficiency: 1.0,
        has_trail_braking: true,
        trail_brake_distance: 1.0,
        trail_brake_percentage: 0.5,
    };
    let corner = api::CornerMetrics {
        turn_in_distance: 1.0,
        apex_distance: 2.0,
        exit_distance: 3.0,
        throttle_application_distance: 2.5,
        turn_in_speed: 1.0,
        apex_speed: 1.0,
        exit_speed: 1.0,
        throttle_application_speed: 1.0,
        max_lateral_g: 1.0,
        time_in_corner: 1.0,
        corner_distance: 2.0,
        max_steering_angle: 1.0,
        speed_loss: 0.0,
        speed_gain: 0.0,
    };
    let metrics = api::LapMetrics {
        lap_number: 1,
        lap_time: Some(60.0),
        braking_zones: vec![zone.clone()],
        corners: vec![corner.clone()],
        total_corners: 1,
        total_braking_zones: 1,
        average_corner_speed: 1.0,
        max_speed: 2.0,
        min_speed: 1.0,
    };
    let samples: Vec<(&str, Value)> = vec![
        (
            "TelemetryFrame",
            serde_json::to_value(&frame).expect("json"),
        ),
        (
            "SessionFrame",
            serde_json::to_value(&session).expect("json"),
        ),
        (
            "Body_uploadLap",
            serde_json::to_value(api::UploadLapBody {
                lap: api::LapTelemetry {
                    frames: vec![frame.clone()],
                    lap_time: None,
                },
                session: session.clone(),
            })
            .expect("json"),
        ),
        ("BrakingMetrics", serde_json::to_value(&zone).expect("json")),
        (
            "CornerMetrics",
            serde_json::to_value(&corner).expect("json"),
        ),
        ("LapMetrics", serde_json::to_value(&metrics).expect("json")),
        (
            "MetricsUploadRequest",
            serde_json::to_value(api::MetricsUploadRequest {
                lap_metrics: metrics.clone(),
                lap_id: "x".into(),
            })
            .expect("json"),
        ),
        (
            "LapUploadResponse",
            serde_json::to_value(api::LapUploadResponse {
                status: "s".into(),
                message: "m".into(),
                lap_id: "l".into(),
            })
            .expect("json"),
        ),
        (
            "DeviceAuthorizationRequest",
            serde_json::to_value(api::DeviceAuthorizationRequest {
                device_name: "d".into(),
            })
            .expect("json"),
        ),
        (
            "DeviceTokenRequest",
            serde_json::to_value(api::DeviceTokenRequest {
                device_code: "c".into(),
            })
            .expect("json"),
        ),
        (
            "DeviceTokenResponse",
            serde_json::to_value(api::DeviceTokenResponse {
                access_token: "a".into(),
                token_type: Some("Bearer".into()),
                device_name: "d".into(),
            })
            .expect("json"),
        ),
        (
            "DeviceAuthorizationResponse",
            serde_json::to_value(api::DeviceAuthorizationResponse {
                device_code: "c".into(),
                user_code: "u".into(),
                verification_uri: "v".into(),
                expires_in: 1,
                interval: 1,
            })
            .expect("json"),
        ),
        (
            "MetricsUploadResponse",
            serde_json::to_value(api::MetricsUploadResponse {
                status: "s".into(),
                message: "m".into(),
                lap_metrics_id: "i".into(),
            })
            .expect("json"),
        ),
        (
            "HealthCheckResponse",
            serde_json::to_value(api::HealthCheckResponse {
                status: "s".into(),
                message: "m".into(),
                database_status: "d".into(),
                database_message: "m".into(),
            })
            .expect("json"),
        ),
    ];
    for (name, value) in &samples {
        // Field by field: the model's fields are exactly the schema's properties.
        let props: BTreeSet<&str> = spec.schema(name)["properties"]
            .as_object()
            .unwrap_or_else(|| panic!("{name} has properties"))
            .keys()
            .map(String::as_str)
            .collect();
        let fields: BTreeSet<&str> = value
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(fields, props, "{name}: model fields against the schema");
        let errors = spec.validate(name, value);
        assert!(errors.is_empty(), "{name}: {errors:?}");
    }
    // The optional fields the models leave out when unset are the schema's optional ones.
    let bare = serde_json::to_value(api::SessionFrame {
        timestamp: None,
        session_id: None,
        track_type: None,
        ..session
    })
    .expect("json");
    assert!(spec.validate("SessionFrame", &bare).is_empty());
    // A field of the wrong type is caught: the validator is not a rubber stamp.
    let mut broken = serde_json::to_value(&frame).expect("json");
    broken["gear"] = json!(2.5);
    assert_eq!(spec.validate("TelemetryFrame", &broken).len(), 1);
}

#[test]
fn an_ingest_uploads_every_lap_then_its_metrics_in_order() {
    let server = Server::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let (data, config) = (dir.path().join("data"), dir.path().join("config"));
    let (code, out, err) = ingest_upload(&data, &config, &server.url, None);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("upload: 2 delivered, 0 waiting"), "{out}");
    let laps = complete_laps(&data);
    assert_eq!(laps.len(), 2, "Tsukuba has two complete laps");
    server.with(|s| {
        assert!(s.invalid.is_empty(), "{:?}", s.invalid);
        // Lap, then its metrics, lap after lap, in the recording's order.
        let expected: Vec<Req> = laps
            .iter()
            .flat_map(|&(session, car, lap, _, _)| {
                let id = apexsim::archive::outbox::lap_id(session, car, lap).to_string();
                [
                    Req::Lap {
                        lap_id: id.clone(),
                        lap: i64::from(lap),
                    },
                    Req::Metrics { lap_id: id },
                ]
            })
            .collect();
        let got: Vec<Req> = s.log.iter().map(|(r, _)| r.clone()).collect();
        assert_eq!(got, expected);
        // Every row of each lap is a frame; the lap time is the archive's.
        for &(session, car, lap, rows, time) in &laps {
            let id = apexsim::archive::outbox::lap_id(session, car, lap).to_string();
            let (_, frames, lap_time, _) = s.laps[&id];
            assert_eq!(frames as u64, rows);
            // serde_json parses floats to within an ulp.
            assert!((lap_time.expect("timed") - time.expect("timed")).abs() < 1e-9);
            assert_eq!(s.metrics[&id], 1);
        }
        // No login: no token.
        assert!(s.log.iter().all(|(_, t)| t.is_none()));
    });
    let ob = outbox(&data, &config);
    assert_eq!(ob["counts"]["done"], 2);
    assert_eq!(ob["counts"]["pending"], 0);
}

/// A key's value in a recording's session info (the YAML is plain text inside the file): the
/// first line `key: value`, as a person reading the file would find it.
fn session_info_value(file: &Path, key: &str) -> Option<String> {
    let bytes = std::fs::read(file).expect("fixture");
    let text = String::from_utf8_lossy(&bytes);
    text.lines().find_map(|l| {
        let v = l.trim_start().strip_prefix(key)?.strip_prefix(':')?.trim();
        Some(v.to_owned())
    })
}

#[test]
fn uploads_name_the_track_car_and_session_as_the_recording_does() {
    for (name, track_id, car_id) in [
        (TSUKUBA, 328, 142),
        (
            "iracing_skmodified_langley_2015-05-28_144739_1lap.ibt",
            201,
            2,
        ),
    ] {
        let server = Server::start();
        let dir = tempfile::tempdir().expect("tempdir");
        let (data, config) = (dir.path().join("data"), dir.path().join("config"));
        let path = fixture(name);
        let file = path.to_str().expect("utf-8");
        let (code, out, err) = run(&data, &config, &["ingest", file, "--upload", &server.url]);
        assert_eq!(code, 0, "{out}\n{err}");
        let info = |key| session_info_value(&path, key).unwrap_or_default();
        let number = |key| info(key).parse::<i64>().expect("a number");
        assert_eq!((number("TrackID"), number("CarID")), (track_id, car_id));
        server.with(|s| {
            assert!(!s.sessions.is_empty(), "{name}: laps uploaded");
            for session in s.sessions.values() {
                assert_eq!(session["track_id"], number("TrackID"), "{name}");
                assert_eq!(session["track_name"], info("TrackDisplayName"), "{name}");
                let config = info("TrackConfigName");
                let expected_config = (!config.is_empty()).then_some(config);
                assert_eq!(
                    session["track_config_name"].as_str().map(str::to_owned),
                    expected_config,
                    "{name}"
                );
                assert_eq!(session["track_type"], info("TrackType"), "{name}");
                assert_eq!(session["series_id"], number("SeriesID"), "{name}");
                assert_eq!(session["car_id"], number("CarID"), "{name}");
                assert_eq!(session["car_name"], info("CarScreenName"), "{name}");
                assert_eq!(session["car_class_id"], number("CarClassID"), "{name}");
                assert_eq!(session["session_type"], info("SessionType"), "{name}");
            }
        });
    }
}

/// The Langley recording with a reset: one complete valid lap and one complete invalid one
/// (towed to the pits mid-lap).
const LANGLEY_RESET: &str = "iracing_skmodified_langley_2015-05-28_145046_2laps_reset.ibt";

#[test]
fn an_invalid_lap_is_not_sent_by_default_and_is_with_upload_invalid() {
    let file = fixture(LANGLEY_RESET);
    let file = file.to_str().expect("utf-8");
    for invalid_too in [false, true] {
        let server = Server::start();
        let dir = tempfile::tempdir().expect("tempdir");
        let (data, config) = (dir.path().join("data"), dir.path().join("config"));
        let mut args = vec!["ingest", file, "--upload", &server.url];
        if invalid_too {
            args.push("--upload-invalid");
        }
        let (code, out, err) = run(&data, &config, &args);
        assert_eq!(code, 0, "{out}\n{err}");
        let index = apexsim::archive::index::Index::open(&data).expect("index");
        let laps: Vec<_> = index
            .laps(None)
            .expect("laps")
            .into_iter()
            .filter(|l| l.complete)
            .collect();
        let id = |l: &apexsim::archive::index::IndexedLap| {
            apexsim::archive::outbox::lap_id(l.session, l.car, l.lap).to_string()
        };
        let (valid, invalid): (Vec<_>, Vec<_>) = laps.iter().partition(|l| l.valid);
        assert!(
            !valid.is_empty() && !invalid.is_empty(),
            "the recording has valid and invalid complete laps: {laps:?}"
        );
        server.with(|s| {
            for l in &valid {
                assert!(s.laps.contains_key(&id(l)), "valid lap {} sent", l.lap);
            }
            for l in &invalid {
                assert_eq!(
                    s.laps.contains_key(&id(l)),
                    invalid_too,
                    "invalid lap {} sent only with --upload-invalid",
                    l.lap
                );
            }
        });
        let ob = outbox(&data, &config);
        let skipped: Vec<&Value> = ob["entries"]
            .as_array()
            .expect("entries")
            .iter()
            .filter(|e| e["state"] == "skipped")
            .collect();
        if invalid_too {
            assert!(skipped.is_empty(), "{ob}");
        } else {
            // `outbox ls` says why the lap was not sent.
            assert_eq!(skipped.len(), invalid.len(), "{ob}");
            assert!(
                skipped[0]["last_error"]
                    .as_str()
                    .is_some_and(|e| e.contains("invalid lap")),
                "{ob}"
            );
            assert_eq!(ob["counts"]["skipped"], invalid.len() as u64);
            // A bulk retry leaves it; a retry by its id sends it.
            let (code, _, err) = run(&data, &config, &["outbox", "retry", "--wait", "5s"]);
            assert_eq!(code, 0, "{err}");
            server.with(|s| assert!(!s.laps.contains_key(&id(invalid[0]))));
            let row = skipped[0]["id"].as_i64().expect("id").to_string();
            let (code, _, err) = run(&data, &config, &["outbox", "retry", &row, "--wait", "5s"]);
            assert_eq!(code, 0, "{err}");
            server.with(|s| assert!(s.laps.contains_key(&id(invalid[0]))));
        }
    }
}

#[test]
fn laps_wait_while_the_server_is_down_and_arrive_exactly_once_after() {
    // A port nobody listens on, for now.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let url = format!("http://{addr}");
    let dir = tempfile::tempdir().expect("tempdir");
    let (data, config) = (dir.path().join("data"), dir.path().join("config"));
    let (code, out, err) = ingest_upload(&data, &config, &url, Some("0s"));
    // The archive is complete; the uploads wait.
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("0 delivered, 2 waiting"), "{out}");
    let ob = outbox(&data, &config);
    assert_eq!(ob["counts"]["pending"], 2);
    for e in ob["entries"].as_array().expect("entries") {
        assert!(e["attempts"].as_u64() >= Some(1), "{e}");
        assert!(
            e["last_error"]
                .as_str()
                .is_some_and(|m| m.contains(&addr.to_string())),
            "{e}"
        );
    }
    // `outbox retry` while still down: nothing delivered, the command says so.
    let (code, out, _) = run(&data, &config, &["outbox", "retry", "--wait", "0s"]);
    assert_eq!(code, 1, "{out}");

    // The server comes up on that port; the laps are delivered once, with their metrics.
    let server = Server::start_on(std::net::TcpListener::bind(addr).expect("rebind"));
    let (code, out, err) = run(&data, &config, &["outbox", "retry"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("upload: 2 delivered"), "{out}");
    let uploads = |s: &Fake| {
        s.log
            .iter()
            .filter(|(r, _)| matches!(r, Req::Lap { .. } | Req::Metrics { .. }))
            .count()
    };
    server.with(|s| {
        assert!(s.invalid.is_empty(), "{:?}", s.invalid);
        assert_eq!(s.laps.len(), 2);
        assert!(s.metrics.values().all(|&n| n == 1), "{:?}", s.metrics);
        // The attempts that failed may have reached a server: each lap was looked up first.
        let lookups: Vec<&Req> = s
            .log
            .iter()
            .map(|(r, _)| r)
            .filter(|r| matches!(r, Req::Lookup { .. }))
            .collect();
        assert_eq!(lookups.len(), 2, "{lookups:?}");
        assert!(
            lookups
                .iter()
                .all(|r| matches!(r, Req::Lookup { found: false, .. }))
        );
        assert_eq!(uploads(s), 4);
    });
    // Again, and a second ingest of the same recording: nothing more is sent.
    let (code, _, _) = run(&data, &config, &["outbox", "retry"]);
    assert_eq!(code, 0);
    let (code, out, err) = ingest_upload(&data, &config, &url, None);
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(server.with(|s| uploads(s)), 4);
    assert_eq!(outbox(&data, &config)["counts"]["done"], 2);
}

#[test]
fn a_lost_response_does_not_make_a_second_lap() {
    let server = Server::start();
    server.with(|s| s.lose_next_response = true);
    let dir = tempfile::tempdir().expect("tempdir");
    let (data, config) = (dir.path().join("data"), dir.path().join("config"));
    // Archive and queue the laps without delivering them (the server is not asked yet).
    let dead = "http://127.0.0.1:9";
    let (code, out, err) = ingest_upload(&data, &config, dead, Some("0s"));
    assert_eq!(code, 0, "{out}\n{err}");
    // Point the queued laps at the real server and deliver them with a 1 s request timeout.
    {
        let index = apexsim::archive::index::Index::open(&data).expect("index");
        drop(index);
        let conn = rusqlite::Connection::open(data.join("apexsim.db")).expect("db");
        conn.execute("UPDATE outbox SET url = ?1, next_at_ms = 0", [&server.url])
            .expect("update");
    }
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let opts = apexsim::coach::UploadOptions {
        timeout: Duration::from_secs(1),
        retry: apexsim::coach::RetryPolicy {
            first: Duration::from_millis(50),
            max: Duration::from_millis(200),
        },
        ..Default::default()
    };
    let report = runtime
        .block_on(apexsim::coach::upload::drain(
            &data,
            opts,
            tokio_util::sync::CancellationToken::new(),
            Duration::from_secs(10),
        ))
        .expect("drain");
    assert_eq!(report.delivered, 2, "{report:?}");
    assert!(report.retried >= 1, "{report:?}");
    server.with(|s| {
        // The first lap's answer was lost; it was stored once.
        let posts: Vec<&str> = s
            .log
            .iter()
            .filter_map(|(r, _)| match r {
                Req::Lap { lap_id, .. } => Some(lap_id.as_str()),
                _ => None,
            })
            .collect();
        // Before sending the first lap again, the uploader asked and found it stored: each lap
        // was posted once.
        assert_eq!(posts.len(), 2, "{posts:?}");
        assert_ne!(posts[0], posts[1]);
        assert!(
            s.log.iter().any(
                |(r, _)| matches!(r, Req::Lookup { lap_id, found: true } if lap_id == posts[0])
            ),
            "{:?}",
            s.log
        );
        assert_eq!(s.laps.len(), 2);
        assert!(s.metrics.values().all(|&n| n == 1), "{:?}", s.metrics);
        assert!(s.invalid.is_empty(), "{:?}", s.invalid);
    });
}

#[test]
fn a_refused_lap_is_reported_and_not_retried_by_itself() {
    let server = Server::start();
    server.with(|s| {
        s.reject_laps.insert(2);
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let (data, config) = (dir.path().join("data"), dir.path().join("config"));
    let (code, out, err) = ingest_upload(&data, &config, &server.url, Some("3s"));
    assert_eq!(code, 1, "a refused lap fails the command\n{out}\n{err}");
    assert!(err.contains("refused by the server"), "{err}");
    assert!(out.contains("1 delivered"), "{out}");
    let ob = outbox(&data, &config);
    let failed: Vec<&Value> = ob["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| e["state"] == "failed")
        .collect();
    assert_eq!(failed.len(), 1);
    let msg = failed[0]["last_error"].as_str().expect("error");
    assert!(
        msg.contains("422") && msg.contains("body.lap.lap_time: lap time out of range"),
        "{msg}"
    );
    // Once, not again: the 3 s drain and another `outbox ls` later, still one attempt.
    let posts_of_2 = |s: &Fake| {
        s.log
            .iter()
            .filter(|(r, _)| matches!(r, Req::Lap { lap: 2, .. }))
            .count()
    };
    assert_eq!(server.with(|s| posts_of_2(s)), 1);
    // The server is fixed; retrying that one lap by id delivers it.
    server.with(|s| s.reject_laps.clear());
    let id = failed[0]["id"].as_i64().expect("id").to_string();
    let (code, out, err) = run(&data, &config, &["outbox", "retry", &id]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(server.with(|s| posts_of_2(s)), 2);
    assert_eq!(outbox(&data, &config)["counts"]["done"], 2);
    // An unknown id is the user's mistake.
    let (code, _, err) = run(&data, &config, &["outbox", "retry", "999"]);
    assert_eq!(code, 2, "{err}");
}

#[test]
fn the_device_login_stores_a_private_token_that_uploads_send() {
    let server = Server::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let (data, config) = (dir.path().join("data"), dir.path().join("config"));
    let (code, out, err) = run(&data, &config, &["coach", "login", "--server", &server.url]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains("WXYZ2345") && out.contains(&format!("{}/device", server.url)),
        "{out}"
    );
    let file = config.join("credentials.toml");
    let text = std::fs::read_to_string(&file).expect("credentials");
    assert!(text.contains("device-token-7f3a"), "{text}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&file).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    assert_eq!(server.with(|s| s.polls), 2, "pending once, then granted");
    let (code, out, _) = run(&data, &config, &["coach", "status", "--format", "json"]);
    assert_eq!(code, 0);
    let status: Value = serde_json::from_str(out.trim()).expect("json");
    assert_eq!(status["servers"][0]["url"], server.url.as_str());
    assert_eq!(status["servers"][0]["health"], "healthy");
    assert!(
        !out.contains("device-token-7f3a"),
        "status must not show the token"
    );

    // A trailing slash names the same server.
    let (code, out, err) = ingest_upload(&data, &config, &format!("{}/", server.url), None);
    assert_eq!(code, 0, "{out}\n{err}");
    server.with(|s| {
        let uploads: Vec<&Option<String>> = s
            .log
            .iter()
            .filter(|(r, _)| matches!(r, Req::Lap { .. } | Req::Metrics { .. }))
            .map(|(_, t)| t)
            .collect();
        assert_eq!(uploads.len(), 4);
        assert!(
            uploads
                .iter()
                .all(|t| t.as_deref() == Some("device-token-7f3a"))
        );
    });
    let (code, out, _) = run(&data, &config, &["coach", "logout"]);
    assert_eq!(code, 0);
    assert!(out.contains("Removed 1"), "{out}");
    assert!(
        !std::fs::read_to_string(&file)
            .expect("file")
            .contains("device-token")
    );
}

/// A coach server answering laps after `delay`, and an archive of Tsukuba's two laps queued
/// for it (not delivered): the server, the directory, its data and configuration.
fn slow_server_and_queue(delay: Duration) -> (Server, tempfile::TempDir, PathBuf, PathBuf) {
    let server = Server::start();
    server.with(|s| s.slow_laps = Some(delay));
    let dir = tempfile::tempdir().expect("tempdir");
    let (data, config) = (dir.path().join("data"), dir.path().join("config"));
    queued_archive(&data, &config, &server.url);
    (server, dir, data, config)
}

/// Archives Tsukuba's two laps with their uploads queued for `url` (not delivered).
fn queued_archive(data: &Path, config: &Path, url: &str) {
    let (code, out, err) = ingest_upload(data, config, "http://127.0.0.1:9", Some("0s"));
    assert_eq!(code, 0, "{out}\n{err}");
    let conn = rusqlite::Connection::open(data.join("apexsim.db")).expect("db");
    conn.execute("UPDATE outbox SET url = ?1, next_at_ms = 0", [url])
        .expect("update");
}

/// `apexsim outbox retry --wait WAIT` as a running process.
fn retry_process(data: &Path, config: &Path, wait: &str) -> crate::common::Child {
    crate::common::Child::spawn_env(
        &[
            "--data",
            data.to_str().expect("utf-8"),
            "outbox",
            "retry",
            "--wait",
            wait,
        ],
        &[("APEXSIM_CONFIG_DIR", config.to_str().expect("utf-8"))],
    )
}

#[test]
fn ctrl_c_finishes_the_upload_in_flight_and_leaves_the_rest_queued() {
    let (server, _dir, data, config) = slow_server_and_queue(Duration::from_secs(2));
    let child = retry_process(&data, &config, "60s");
    // The first lap is on its way: interrupt.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while server.with(|s| s.log.is_empty()) {
        assert!(std::time::Instant::now() < deadline, "no upload started");
        std::thread::sleep(Duration::from_millis(20));
    }
    let interrupted = std::time::Instant::now();
    child.interrupt();
    let (code, out, log) = child.finish();
    let took = interrupted.elapsed();
    assert!(took < Duration::from_secs(8), "stopped after {took:?}");
    // The lap in flight was delivered with its metrics; the other still waits, untouched.
    assert_eq!(
        code, 1,
        "laps still waiting fail `outbox retry`\n{out}\n{log}"
    );
    assert!(out.contains("1 delivered, 1 waiting"), "{out}");
    let ob = outbox(&data, &config);
    assert_eq!(ob["counts"]["done"], 1);
    assert_eq!(ob["counts"]["pending"], 1);
    let pending: Vec<&Value> = ob["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| e["state"] == "pending")
        .collect();
    assert_eq!(pending[0]["attempts"], 0, "{}", pending[0]);
    assert_eq!(server.with(|s| (s.laps.len(), s.metrics.len())), (1, 1));
}

#[test]
fn two_processes_sharing_an_outbox_send_each_lap_once() {
    let (server, _dir, data, config) = slow_server_and_queue(Duration::from_millis(400));
    let (a, b) = (
        retry_process(&data, &config, "5s"),
        retry_process(&data, &config, "5s"),
    );
    let (code_a, out_a, log_a) = a.finish();
    let (code_b, out_b, log_b) = b.finish();
    assert_eq!(
        (code_a, code_b),
        (0, 0),
        "{out_a}\n{log_a}\n{out_b}\n{log_b}"
    );
    server.with(|s| {
        let posts = s
            .log
            .iter()
            .filter(|(r, _)| matches!(r, Req::Lap { .. }))
            .count();
        assert_eq!(posts, 2, "{:?}", s.log);
        assert_eq!(s.laps.len(), 2);
        assert!(s.metrics.values().all(|&n| n == 1), "{:?}", s.metrics);
    });
    assert_eq!(outbox(&data, &config)["counts"]["done"], 2);
}

#[test]
fn the_race_server_uploads_its_races_laps() {
    let coach = Server::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let (content, data, config) = (
        dir.path().join("content"),
        dir.path().join("data"),
        dir.path().join("config"),
    );
    crate::common::content_with_mini_oval(&content);
    let served = crate::common::Served::start(
        &content,
        &data,
        &[
            ("APEXSIM_SERVER_UPLOAD_URL", coach.url.as_str()),
            ("APEXSIM_CONFIG_DIR", config.to_str().expect("utf-8")),
        ],
    );
    let (mut server, quic, http) = (served.child, served.quic, served.http);
    let (code, out, log) = crate::common::drive(
        &content,
        quic,
        &data.join("certs/server.crt"),
        &[
            "--bots",
            "1",
            "--ai",
            "1",
            "--laps",
            "1",
            "--track",
            "mini_oval",
        ],
    )
    .finish();
    assert_eq!(code, 0, "{out}\n{log}");
    // The two cars' complete laps reach the coach while the server runs.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while coach.with(|s| s.metrics.len()) < 2 {
        if std::time::Instant::now() > deadline {
            let log = server.poll_log().join("\n");
            panic!("not uploaded: {:?}\n{log}", coach.with(|s| s.log.clone()));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // The server's metrics count from the event bus.
    let metric = |name: &str| {
        let text = crate::common::http_get(http, "/metrics").1;
        apexsim::net::metrics::scrape_value(&text, name).unwrap_or(0.0)
    };
    // (The uploader publishes its outcome just after the server answered.)
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while metric("apexsim_lap_uploads_total{outcome=\"delivered\"}") < 2.0 {
        assert!(std::time::Instant::now() < deadline, "uploads not counted");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        metric("apexsim_laps_archived_total") >= 4.0,
        "out-laps and lap 1 of both cars"
    );
    server.terminate();
    let (code, out, log) = server.finish();
    assert_eq!(code, 0, "{log}");
    assert!(out.contains("upload: 2 delivered"), "{out}");
    coach.with(|s| {
        assert!(s.invalid.is_empty(), "{:?}", s.invalid);
        let laps: Vec<i64> = s.laps.values().map(|l| l.0).collect();
        assert_eq!(
            laps,
            vec![1, 1],
            "lap 1 of each car; the out-laps are not complete"
        );
    });
}

#[test]
fn pruning_a_session_sets_its_waiting_uploads_aside() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (data, config) = (dir.path().join("data"), dir.path().join("config"));
    queued_archive(&data, &config, "http://127.0.0.1:9");
    // The recording is from 2025: older than a day.
    let (code, out, err) = run(&data, &config, &["archive", "prune", "--older-than", "24h"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let ob = outbox(&data, &config);
    assert_eq!(ob["counts"]["failed"], 2, "{ob}");
    for e in ob["entries"].as_array().expect("entries") {
        assert_eq!(
            e["last_error"], "pruned from the archive before it was uploaded",
            "{e}"
        );
    }
}
