//! The HTTP client of the Racing Coach API: typed requests over `reqwest` (rustls with the
//! `ring` provider), the device token in `X-Device-Token`, and errors that say whether trying
//! again can help (network errors, timeouts, 5xx, 408 and 429) or not (any other 4xx).

use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use thiserror::Error;
use uuid::Uuid;

use super::api;

/// How long one request may take, connection to last byte, unless told otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a request failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum CoachError {
    /// The server URL is not an http(s) URL.
    #[error("{url:?} is not an http:// or https:// URL")]
    BadUrl {
        /// The URL given.
        url: String,
    },
    /// The request did not complete: connection refused, reset, timed out.
    #[error("{url}: {source}")]
    Network {
        /// The request's URL.
        url: String,
        /// The error.
        source: reqwest::Error,
    },
    /// The server answered with an error status.
    #[error("{url}: HTTP {status}: {detail}")]
    Status {
        /// The request's URL.
        url: String,
        /// The status code.
        status: u16,
        /// What the server said (a 422's fields, or the body's start).
        detail: String,
    },
    /// The server answered 2xx with a body that is not the API's.
    #[error("{url}: unexpected response: {problem}")]
    Decode {
        /// The request's URL.
        url: String,
        /// What is wrong.
        problem: String,
    },
    /// The HTTP client could not be built.
    #[error("http client: {0}")]
    Client(reqwest::Error),
}

impl CoachError {
    /// Whether the same request may succeed later: network errors, 5xx, 408 and 429.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Network { .. } => true,
            Self::Status { status, .. } => *status >= 500 || *status == 408 || *status == 429,
            Self::BadUrl { .. } | Self::Decode { .. } | Self::Client(_) => false,
        }
    }
}

/// A client of one Racing Coach server.
#[derive(Debug, Clone)]
pub struct CoachClient {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

/// What a poll of the device token found.
#[derive(Debug, Clone, PartialEq)]
pub enum TokenPoll {
    /// The user confirmed: the token.
    Granted(api::DeviceTokenResponse),
    /// Not yet confirmed: poll again after the interval.
    Pending,
    /// Polling too fast: add 5 s to the interval.
    SlowDown,
}

impl CoachClient {
    /// A client of the server at `base` (for example `https://coach.example.com`), sending
    /// `token` as `X-Device-Token` when there is one.
    ///
    /// # Errors
    /// [`CoachError::BadUrl`] for anything but an http(s) URL; [`CoachError::Client`] when
    /// the TLS setup fails.
    pub fn new(base: &str, token: Option<String>, timeout: Duration) -> Result<Self, CoachError> {
        let trimmed = base.trim().trim_end_matches('/');
        let lower = trimmed.to_ascii_lowercase();
        let rest = lower
            .strip_prefix("http://")
            .or_else(|| lower.strip_prefix("https://"));
        if rest.is_none_or(|r| r.is_empty() || r.contains(char::is_whitespace)) {
            return Err(CoachError::BadUrl { url: base.into() });
        }
        // reqwest's rustls backend is built without a provider: use ring's (aws-lc-rs needs
        // cmake). Installing twice is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("apexsim/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(CoachError::Client)?;
        Ok(Self {
            http,
            base: trimmed.to_owned(),
            token,
        })
    }

    /// The server's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    async fn post<B: Serialize, R: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
        body: &B,
    ) -> Result<R, CoachError> {
        let json = serde_json::to_vec(body).map_err(|e| CoachError::Decode {
            url: format!("{}{path}", self.base),
            problem: format!("request body: {e}"),
        })?;
        self.post_json(path, query, json).await
    }

    async fn post_json<R: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
        json: Vec<u8>,
    ) -> Result<R, CoachError> {
        let url = format!("{}{path}", self.base);
        let mut req = self
            .http
            .post(&url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(json);
        if !query.is_empty() {
            req = req.query(query);
        }
        self.call(url, req).await
    }

    /// Sends a request with the device token, and reads the answer as `R`.
    async fn call<R: DeserializeOwned>(
        &self,
        url: String,
        mut req: reqwest::RequestBuilder,
    ) -> Result<R, CoachError> {
        if let Some(token) = &self.token {
            req = req.header(api::DEVICE_TOKEN_HEADER, token);
        }
        let resp = req.send().await.map_err(|source| CoachError::Network {
            url: url.clone(),
            source,
        })?;
        read(url, resp).await
    }

    /// `POST /api/v1/telemetry/lap?lap_id=...`: the lap's frames and its session, an
    /// [`api::UploadLapBody`] already encoded as JSON (the uploader encodes it on a blocking
    /// thread: a lap is megabytes).
    ///
    /// # Errors
    /// [`CoachError`]; see [`CoachError::is_retryable`].
    pub async fn upload_lap_json(
        &self,
        lap_id: Uuid,
        json: Vec<u8>,
    ) -> Result<api::LapUploadResponse, CoachError> {
        self.post_json(api::UPLOAD_LAP, &[("lap_id", lap_id.to_string())], json)
            .await
    }

    /// `POST /api/v1/metrics/lap`: the metrics of a lap the server accepted.
    ///
    /// # Errors
    /// [`CoachError`].
    pub async fn upload_metrics(
        &self,
        body: &api::MetricsUploadRequest,
    ) -> Result<api::MetricsUploadResponse, CoachError> {
        self.post(api::UPLOAD_METRICS, &[], body).await
    }

    /// `POST /api/v1/auth/device/authorize`.
    ///
    /// # Errors
    /// [`CoachError`].
    pub async fn authorize_device(
        &self,
        device_name: &str,
    ) -> Result<api::DeviceAuthorizationResponse, CoachError> {
        let name: String = device_name.chars().take(100).collect();
        self.post(
            api::DEVICE_AUTHORIZE,
            &[],
            &api::DeviceAuthorizationRequest { device_name: name },
        )
        .await
    }

    /// `POST /api/v1/auth/device/token`: one poll. The OAuth device-flow answers
    /// `authorization_pending` and `slow_down` (as `error` or `detail`) mean "poll again".
    ///
    /// # Errors
    /// [`CoachError`] for anything else (denied, expired, unknown code).
    pub async fn poll_device_token(&self, device_code: &str) -> Result<TokenPoll, CoachError> {
        let body = api::DeviceTokenRequest {
            device_code: device_code.to_owned(),
        };
        match self.post(api::DEVICE_TOKEN, &[], &body).await {
            Ok(token) => Ok(TokenPoll::Granted(token)),
            Err(CoachError::Status { status, detail, .. })
                if status < 500 && detail.contains("authorization_pending") =>
            {
                Ok(TokenPoll::Pending)
            }
            Err(CoachError::Status { status, detail, .. })
                if status < 500 && detail.contains("slow_down") =>
            {
                Ok(TokenPoll::SlowDown)
            }
            Err(e) => Err(e),
        }
    }

    /// `GET /api/v1/sessions/{session_id}/laps/{lap_id}`: whether the server has the lap
    /// (200) or not (404).
    ///
    /// # Errors
    /// [`CoachError`] for any other answer.
    pub async fn has_lap(&self, session_id: Uuid, lap_id: Uuid) -> Result<bool, CoachError> {
        let url = format!("{}{}", self.base, api::session_lap(session_id, lap_id));
        let req = self.http.get(&url);
        match self.call::<serde_json::Value>(url, req).await {
            Ok(_) => Ok(true),
            Err(CoachError::Status { status: 404, .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// `GET /api/v1/health`.
    ///
    /// # Errors
    /// [`CoachError`].
    pub async fn health(&self) -> Result<api::HealthCheckResponse, CoachError> {
        let url = format!("{}{}", self.base, api::HEALTH);
        let req = self.http.get(&url);
        self.call(url, req).await
    }
}

/// Most bytes of an error body kept in an error message.
const DETAIL_MAX: usize = 400;

/// Largest response body read: the API's answers are a few hundred bytes; more is not the API.
pub const MAX_RESPONSE_BYTES: usize = 1 << 20;

async fn read<R: DeserializeOwned>(
    url: String,
    mut resp: reqwest::Response,
) -> Result<R, CoachError> {
    let status = resp.status().as_u16();
    let mut body = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                    return Err(CoachError::Decode {
                        url,
                        problem: format!(
                            "HTTP {status}: response longer than {MAX_RESPONSE_BYTES} bytes"
                        ),
                    });
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(source) => return Err(CoachError::Network { url, source }),
        }
    }
    decode(url, status, &body)
}

/// A response as the API's type: a 2xx body decoded as `R`, any other status as
/// [`CoachError::Status`] with what the body says.
///
/// # Errors
/// [`CoachError::Decode`] for a 2xx body that is not `R`; [`CoachError::Status`].
pub fn decode<R: DeserializeOwned>(url: String, status: u16, body: &[u8]) -> Result<R, CoachError> {
    if (200..300).contains(&status) {
        return serde_json::from_slice(body).map_err(|e| CoachError::Decode {
            url,
            problem: e.to_string(),
        });
    }
    Err(CoachError::Status {
        url,
        status,
        detail: error_detail(body),
    })
}

/// What an error body says: a 422's fields (`body.lap.frames.0.speed: field required`), an
/// OAuth `error`, FastAPI's `detail` string, or the body's start.
pub fn error_detail(body: &[u8]) -> String {
    if let Ok(v) = serde_json::from_slice::<api::HttpValidationError>(body)
        && !v.detail.is_empty()
    {
        return v
            .detail
            .iter()
            .map(api::ValidationError::describe)
            .collect::<Vec<_>>()
            .join("; ");
    }
    if let Ok(serde_json::Value::Object(map)) = serde_json::from_slice(body) {
        for key in ["error", "detail", "message"] {
            if let Some(serde_json::Value::String(s)) = map.get(key) {
                return s.clone();
            }
        }
    }
    let text = String::from_utf8_lossy(body);
    let mut s: String = text.chars().take(DETAIL_MAX).collect();
    if text.chars().count() > DETAIL_MAX {
        s.push('…');
    }
    if s.is_empty() {
        "(empty body)".into()
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_must_be_http() {
        for bad in ["", "ftp://x", "localhost:8000", "http://", "http://a b"] {
            assert!(
                matches!(
                    CoachClient::new(bad, None, DEFAULT_TIMEOUT),
                    Err(CoachError::BadUrl { .. })
                ),
                "{bad:?}"
            );
        }
        let c = CoachClient::new("http://127.0.0.1:8000/", None, DEFAULT_TIMEOUT);
        assert_eq!(
            c.map(|c| c.base().to_owned()).ok().as_deref(),
            Some("http://127.0.0.1:8000")
        );
    }

    #[test]
    fn error_bodies_are_summarised() {
        let v = br#"{"detail":[{"loc":["body","lap","frames",0,"speed"],"msg":"field required","type":"missing"}]}"#;
        assert_eq!(error_detail(v), "body.lap.frames.0.speed: field required");
        assert_eq!(
            error_detail(br#"{"detail":"authorization_pending"}"#),
            "authorization_pending"
        );
        assert_eq!(error_detail(br#"{"error":"slow_down"}"#), "slow_down");
        assert_eq!(error_detail(b""), "(empty body)");
        assert_eq!(error_detail(&[b'x'; 1000]).chars().count(), DETAIL_MAX + 1);
    }

    #[test]
    fn only_transient_failures_are_retried() {
        let s = |status| CoachError::Status {
            url: String::new(),
            status,
            detail: String::new(),
        };
        assert!(s(500).is_retryable() && s(503).is_retryable() && s(429).is_retryable());
        assert!(!s(422).is_retryable() && !s(401).is_retryable() && !s(404).is_retryable());
    }
}
