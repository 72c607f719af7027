//! The one error type of the API and its HTTP mapping. 5xx causes are logged under the request
//! id and never sent to the client.

use poem::{IntoResponse, Response, http::StatusCode};
use poem_openapi::{
    ApiResponse,
    payload::Json,
    registry::{MetaMediaType, MetaResponse, MetaResponses, Registry},
    types::Type,
};

use crate::envelope::{ErrorEnvelope, request_id};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    /// The request (its body, or the work for it) took longer than `http.request_timeout_secs`.
    #[error("{0}")]
    RequestTimeout(String),
    #[error("{message}")]
    TooManyRequests { message: String, retry_after: u64 },
    #[error("{0}")]
    Unavailable(String),
    /// Too much work queued (the password hasher); the client should retry after a moment.
    #[error("{message}")]
    Busy { message: String, retry_after: u64 },
    #[error("internal server error")]
    Internal(#[source] anyhow::Error),
}

pub type ApiResult<T> = Result<T, ApiError>;

/// Longest part of a client's value an error message quotes back, in characters.
pub const QUOTED_CHARS: usize = 64;

/// A client's value as error messages quote it: the first [`QUOTED_CHARS`] characters, then `…`.
/// (A 40 KB query parameter must not come back as a 40 KB error.)
pub fn quote(value: &str) -> String {
    match value.char_indices().nth(QUOTED_CHARS) {
        Some((cut, _)) => format!("{}…", &value[..cut]),
        None => value.to_string(),
    }
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable(_) | Self::Busy { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn internal(e: impl Into<anyhow::Error>) -> Self {
        Self::Internal(e.into())
    }

    pub fn forbidden() -> Self {
        Self::Forbidden("forbidden".into())
    }

    /// The body sent to the client; internal causes stay in the log.
    pub fn envelope(&self) -> ErrorEnvelope {
        match self {
            Self::Internal(cause) => {
                tracing::error!(request_id = %request_id(), error = ?cause, "internal error");
                ErrorEnvelope::new(
                    self.status(),
                    format!("internal server error (request {})", request_id()),
                )
            }
            Self::Unavailable(cause) => {
                tracing::warn!(request_id = %request_id(), %cause, "service unavailable");
                ErrorEnvelope::new(
                    self.status(),
                    "the database is not reachable; try again shortly",
                )
            }
            other => ErrorEnvelope::new(other.status(), other.to_string()),
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        let code = e
            .as_database_error()
            .and_then(|d| d.code())
            .map(|c| c.into_owned())
            .unwrap_or_default();
        match e {
            // Class 22, data exception: the input cannot be stored (a NUL byte in text, say).
            _ if code.starts_with("22") => Self::BadRequest(
                "the input contains characters or values that cannot be stored".into(),
            ),
            // Class 08 (connection), 57P01..57P03 (shutdown, crash recovery): PostgreSQL is away.
            _ if code.starts_with("08") || code.starts_with("57P") => {
                Self::Unavailable(e.to_string())
            }
            sqlx::Error::PoolTimedOut
            | sqlx::Error::Io(_)
            | sqlx::Error::PoolClosed
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_) => Self::Unavailable(e.to_string()),
            other => Self::Internal(other.into()),
        }
    }
}

impl poem::error::ResponseError for ApiError {
    fn status(&self) -> StatusCode {
        ApiError::status(self)
    }

    fn as_response(&self) -> Response {
        let mut resp = Json(self.envelope()).into_response();
        resp.set_status(self.status());
        if let Self::TooManyRequests { retry_after, .. } | Self::Busy { retry_after, .. } = self {
            resp.headers_mut()
                .insert("Retry-After", (*retry_after).into());
        }
        resp
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        poem::error::ResponseError::as_response(&self)
    }
}

const DOCUMENTED: &[(u16, &str)] = &[
    (400, "Invalid input; `error` names the field or argument."),
    (401, "Missing, invalid, expired or revoked credentials."),
    (
        403,
        "Authenticated, but the caller lacks the permission; or a state-changing request \
         authenticated by the `token` cookie alone came from a page of an untrusted origin.",
    ),
    (404, "No such item."),
    (
        409,
        "Conflict: a stale etag, a duplicate name or email, or the last active `cop`.",
    ),
    (
        429,
        "Too many failed logins or messages; see `Retry-After`.",
    ),
    (
        500,
        "A server bug; the cause is logged under the request id.",
    ),
    (
        503,
        "The database is not reachable, or too many logins wait for the password hasher (see `Retry-After`).",
    ),
];

/// The documented error replies of an operation: each status with its description, all with the
/// error envelope as their body.
pub fn error_responses(statuses: &[(u16, &'static str)]) -> MetaResponses {
    MetaResponses {
        responses: statuses
            .iter()
            .map(|(status, description)| MetaResponse {
                description,
                status: Some(*status),
                status_range: None,
                content: vec![MetaMediaType {
                    content_type: "application/json; charset=utf-8",
                    schema: ErrorEnvelope::schema_ref(),
                }],
                headers: vec![],
            })
            .collect(),
    }
}

impl ApiResponse for ApiError {
    fn meta() -> MetaResponses {
        error_responses(DOCUMENTED)
    }

    fn register(registry: &mut Registry) {
        ErrorEnvelope::register(registry);
    }
}

/// Turns any error that escaped the handlers (unknown route, wrong method, unparsable parameter or
/// body) into the envelope, keeping the status.
pub fn to_envelope_response(err: poem::Error) -> Response {
    if err.is::<ApiError>() {
        return err.into_response();
    }
    let status = err.status();
    let message = if status.is_server_error() {
        tracing::error!(request_id = %request_id(), error = %err, "unhandled error");
        format!("internal server error (request {})", request_id())
    } else if status == StatusCode::NOT_FOUND {
        "not found".to_string()
    } else if status == StatusCode::METHOD_NOT_ALLOWED {
        "method not allowed".to_string()
    } else {
        clean_parse_error(&err.to_string())
    };
    let mut resp = Json(ErrorEnvelope::new(status, message)).into_response();
    resp.set_status(status);
    resp
}

/// poem-openapi says e.g. "failed to parse parameter `per_page`: ..." — keep the part that names
/// the field (the envelope cuts what is too long).
fn clean_parse_error(msg: &str) -> String {
    let mut msg = msg.trim();
    if let Some(rest) = msg.strip_prefix("parse request payload error: ") {
        msg = rest;
        if let Some(idx) = msg.find("\": field [") {
            msg = &msg[idx + 3..];
        }
    }
    msg.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_values_are_cut_at_a_character_boundary() {
        assert_eq!(quote("name"), "name");
        assert_eq!(quote(&"x".repeat(QUOTED_CHARS)), "x".repeat(QUOTED_CHARS));
        let long = "é".repeat(40_000);
        assert_eq!(quote(&long), format!("{}…", "é".repeat(QUOTED_CHARS)));
    }
}
