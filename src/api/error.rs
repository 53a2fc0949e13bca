//! The API's errors (a JSON body naming what is wrong and, for bad input, the field) and its
//! query parameters, parsed by hand so that every refusal names the parameter.

use std::collections::HashMap;
use std::str::FromStr;

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// The body of every error response.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What is wrong.
    pub error: String,
    /// The field, parameter or header at fault, for bad input.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// An error answered with its status and an [`ErrorBody`].
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// The body.
    pub body: ErrorBody,
}

impl ApiError {
    /// Bad input (400) naming the field.
    pub fn bad(field: &str, error: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            body: ErrorBody {
                error: error.into(),
                field: Some(field.to_owned()),
            },
        }
    }

    /// Nothing there (404).
    pub fn not_found(error: impl Into<String>) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            body: ErrorBody {
                error: error.into(),
                field: None,
            },
        }
    }

    /// The archive failed (500): never for bad input.
    pub fn internal(error: impl std::fmt::Display) -> Self {
        tracing::error!(%error, "API request failed");
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            body: ErrorBody {
                error: error.to_string(),
                field: None,
            },
        }
    }

    /// A status of its own with a message.
    pub fn with_status(status: StatusCode, field: Option<&str>, error: impl Into<String>) -> Self {
        Self {
            status,
            body: ErrorBody {
                error: error.into(),
                field: field.map(str::to_owned),
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}

impl From<crate::archive::ArchiveError> for ApiError {
    fn from(e: crate::archive::ArchiveError) -> Self {
        Self::internal(e)
    }
}

/// The largest page a request may ask for.
pub const MAX_PAGE: u32 = 500;
/// The largest page of telemetry rows.
pub const MAX_ROWS: u32 = 100_000;

/// A request's query parameters, each read with a named refusal.
#[derive(Debug, Default)]
pub struct Params(HashMap<String, String>);

impl Params {
    /// Parses a query string (`None`: no parameters). A parameter given twice is refused.
    ///
    /// # Errors
    /// [`ApiError::bad`] naming a repeated parameter.
    pub fn parse(query: Option<&str>) -> Result<Self, ApiError> {
        let mut map = HashMap::new();
        for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            if map.insert(k.to_string(), v.to_string()).is_some() {
                return Err(ApiError::bad(&k, format!("{k} is given more than once")));
            }
        }
        Ok(Self(map))
    }

    /// A text parameter; an empty one is refused.
    ///
    /// # Errors
    /// [`ApiError::bad`] for an empty value or one over 200 bytes.
    pub fn text(&self, name: &str) -> Result<Option<String>, ApiError> {
        self.text_up_to(name, 200)
    }

    /// A text parameter of at most `max` bytes; an empty one is refused.
    ///
    /// # Errors
    /// [`ApiError::bad`] for an empty value or one over `max` bytes.
    pub fn text_up_to(&self, name: &str, max: usize) -> Result<Option<String>, ApiError> {
        match self.0.get(name) {
            None => Ok(None),
            Some(v) if v.is_empty() => Err(ApiError::bad(name, format!("{name} is empty"))),
            Some(v) if v.len() > max => Err(ApiError::bad(
                name,
                format!("{name} is {} bytes long; at most {max}", v.len()),
            )),
            Some(v) => Ok(Some(v.clone())),
        }
    }

    /// A number parameter within `min..=max`.
    ///
    /// # Errors
    /// [`ApiError::bad`] naming the parameter when it is not a number or out of range.
    pub fn number<T>(&self, name: &str, min: T, max: T) -> Result<Option<T>, ApiError>
    where
        T: FromStr + PartialOrd + std::fmt::Display + Copy,
    {
        let Some(v) = self.0.get(name) else {
            return Ok(None);
        };
        let n: T = v
            .parse()
            .map_err(|_| ApiError::bad(name, format!("{name} = {v:?} is not a whole number")))?;
        if n < min || n > max {
            return Err(ApiError::bad(
                name,
                format!("{name} = {n} is out of range {min}..={max}"),
            ));
        }
        Ok(Some(n))
    }

    /// A `true`/`false` parameter.
    ///
    /// # Errors
    /// [`ApiError::bad`] naming the parameter for anything else.
    pub fn flag(&self, name: &str) -> Result<Option<bool>, ApiError> {
        match self.0.get(name).map(String::as_str) {
            None => Ok(None),
            Some("true") => Ok(Some(true)),
            Some("false") => Ok(Some(false)),
            Some(v) => Err(ApiError::bad(
                name,
                format!("{name} = {v:?} is neither true nor false"),
            )),
        }
    }

    /// `limit` (1..=`max`, `default` when absent) and `offset` (0 when absent).
    ///
    /// # Errors
    /// [`ApiError::bad`] naming `limit` or `offset`.
    pub fn page(&self, default: u32, max: u32) -> Result<(u32, u64), ApiError> {
        let limit = self.number("limit", 1, max)?.unwrap_or(default);
        let offset = self
            .number("offset", 0, i64::MAX as u64)?
            .unwrap_or_default();
        Ok((limit, offset))
    }
}

/// A path segment parsed, the refusal naming it.
///
/// # Errors
/// [`ApiError::bad`] naming `field`.
pub fn path_part<T: FromStr>(field: &str, text: &str, what: &str) -> Result<T, ApiError> {
    text.parse()
        .map_err(|_| ApiError::bad(field, format!("{field} = {text:?} is not {what}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_refused_by_name() {
        let p = Params::parse(Some("limit=0&offset=x&track=&valid=maybe")).expect("accepted");
        assert_eq!(
            p.page(50, MAX_PAGE)
                .expect_err("refused")
                .body
                .field
                .as_deref(),
            Some("limit")
        );
        let p2 = Params::parse(Some("offset=x")).expect("accepted");
        let e = p2.page(50, MAX_PAGE).expect_err("refused");
        assert_eq!(e.body.field.as_deref(), Some("offset"));
        assert!(e.body.error.contains("\"x\""), "{}", e.body.error);
        assert_eq!(
            p.text("track").expect_err("refused").body.field.as_deref(),
            Some("track")
        );
        assert_eq!(
            p.flag("valid").expect_err("refused").status,
            StatusCode::BAD_REQUEST
        );
        let twice = Params::parse(Some("car=a&car=b")).expect_err("refused");
        assert_eq!(twice.body.field.as_deref(), Some("car"));
        let ok = Params::parse(Some("limit=20&offset=40&track=oval%20x")).expect("accepted");
        assert_eq!(ok.page(50, MAX_PAGE).expect("accepted"), (20, 40));
        assert_eq!(
            ok.text("track").expect("accepted").as_deref(),
            Some("oval x")
        );
        assert_eq!(
            Params::parse(None)
                .expect("accepted")
                .page(50, 500)
                .expect("accepted"),
            (50, 0)
        );
    }
}
