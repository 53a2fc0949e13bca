//! The operator's REST API under `/api/v1` (seed 002 over the archive): sessions with
//! filters and pages, a session with its results and laps, a lap's telemetry (JSON, or Arrow
//! IPC when `Accept` asks for it) and metrics, a driver's laps and best laps, the tracks, cars
//! and templates. The archive's index and lap files are the store; nothing is kept in memory.
//!
//! `serve` merges these routes into its HTTP port; `apexsim api` serves them over an archive
//! alone. The OpenAPI 3.1 document is generated from the handlers ([`utoipa`]) and served at
//! `/api/v1/openapi.json`, with a documentation page that needs nothing from the network at
//! `/api/v1/docs`.
//!
//! Every error is a JSON [`ErrorBody`]; bad input is a 400 naming the parameter, never a 500.

mod error;
mod read;
mod write;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::response::Html;
use axum::routing::get;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use error::{ApiError, ErrorBody, MAX_PAGE, MAX_ROWS, Params};
pub use read::{SessionResults, load_session};
pub use write::{MAX_BODY, parse_telemetry};

use crate::content::Content;

/// Where the API reads the current content from (the server's, which reloads; or loaded once).
pub type ContentSource = Arc<dyn Fn() -> Arc<Content> + Send + Sync>;

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    /// The data directory (the archive).
    pub data: PathBuf,
    /// The content (tracks, cars, templates).
    pub content: ContentSource,
    /// Writer name to token, for the routes that write or delete (empty: they refuse
    /// everyone).
    pub tokens: BTreeMap<String, String>,
    /// The host's metrics (shared with the server's `/metrics`).
    pub host: Arc<std::sync::Mutex<crate::host::HostMonitor>>,
    /// The recorder of posted telemetry (`None`: `POST /api/v1/telemetry` answers 503).
    pub posted: Option<Arc<crate::ingest::posted::PostedTelemetry>>,
}

impl ApiState {
    /// A state over an archive and content loaded once.
    pub fn fixed(data: PathBuf, content: Content, tokens: BTreeMap<String, String>) -> Self {
        let content = Arc::new(content);
        Self {
            data,
            content: Arc::new(move || content.clone()),
            tokens,
            host: Arc::default(),
            posted: None,
        }
    }

    /// This state with a recorder for posted telemetry.
    pub fn with_posted(mut self, posted: Arc<crate::ingest::posted::PostedTelemetry>) -> Self {
        self.posted = Some(posted);
        self
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "ApexSim API",
        description = "Sessions, laps, telemetry and metrics of an ApexSim archive.",
        license(name = "MIT OR Apache-2.0")
    ),
    tags((name = "archive", description = "The archive: sessions, laps, telemetry, metrics"),
         (name = "racing", description = "Tracks, cars and race templates"),
         (name = "service", description = "Health and this document")),
    modifiers(&BearerAuth)
)]
struct ApiDoc;

/// The `bearer` security scheme the writing routes name.
struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        doc.components
            .get_or_insert_with(Default::default)
            .add_security_scheme(
                "bearer",
                SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
            );
    }
}

/// The API's routes with their OpenAPI document.
fn api_router() -> OpenApiRouter<ApiState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(read::health))
        .routes(routes!(read::host))
        .routes(routes!(read::sessions))
        .routes(routes!(read::session))
        .routes(routes!(read::lap_telemetry))
        .routes(routes!(read::lap_metrics))
        .routes(routes!(read::driver_laps))
        .routes(routes!(read::driver_best))
        .routes(routes!(read::tracks))
        .routes(routes!(read::cars))
        .routes(routes!(read::templates))
        .routes(routes!(write::delete_driver_telemetry))
        .routes(routes!(write::post_telemetry))
}

/// The OpenAPI document of every route.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut doc = api_router().split_for_parts().1;
    columns_pattern(&mut doc);
    batch_bounds(&mut doc);
    doc
}

/// The batch of `POST /api/v1/telemetry`: 1 to [`MAX_RECORDS`](crate::ingest::posted::MAX_RECORDS)
/// records (utoipa takes no bounds on an enum's variant).
fn batch_bounds(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::{RefOr, Schema};
    let Some(components) = doc.components.as_mut() else {
        return;
    };
    if let Some(RefOr::T(Schema::OneOf(one_of))) = components.schemas.get_mut("TelemetryPost") {
        for item in &mut one_of.items {
            if let RefOr::T(Schema::Array(array)) = item {
                array.min_items = Some(1);
                array.max_items = Some(crate::ingest::posted::MAX_RECORDS);
            }
        }
    }
}

/// The `columns` parameter's pattern, from the lap file's column names (named once, in
/// `LapColumns`).
fn columns_pattern(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::{RefOr, Schema};
    let names = apexsim_systems::record::LapColumns::F32_NAMES.join("|");
    let pattern = format!("^({names})(,({names}))*$");
    for item in doc.paths.paths.values_mut() {
        let Some(op) = item.get.as_mut() else {
            continue;
        };
        for p in op.parameters.iter_mut().flatten() {
            if p.name == "columns"
                && let Some(RefOr::T(Schema::Object(o))) = p.schema.as_mut()
            {
                o.pattern = Some(pattern.clone());
                o.max_length = None;
            }
        }
    }
}

const DOCS_PAGE: &str = include_str!("api/docs.html");

/// The API's routes, with `/api/v1/openapi.json` and `/api/v1/docs`, over `state`; merge into
/// any router.
pub fn routes<S: Clone + Send + Sync + 'static>(state: ApiState) -> Router<S> {
    let (router, _) = api_router().split_for_parts();
    let doc = Arc::new(openapi());
    router
        .route(
            "/api/v1/openapi.json",
            get(move || {
                let doc = doc.clone();
                async move { axum::Json((*doc).clone()) }
            }),
        )
        .route("/api/v1/docs", get(|| async { Html(DOCS_PAGE) }))
        .with_state(state)
}
