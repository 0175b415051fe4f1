//! What can go wrong talking to the API, with the API's own words kept for the operator.

use std::time::Duration;

use reqwest::StatusCode;
use serde::Deserialize;

/// A failed API call or walk.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    /// The API answered with an error status.
    #[error("the API answered {status}: {message}{}", describe_details(.kind, .code, .request_id))]
    Status {
        status: u16,
        message: String,
        kind: Option<String>,
        code: Option<String>,
        param: Option<String>,
        request_id: Option<String>,
        retry_after: Option<Duration>,
        should_retry: Option<bool>,
    },
    /// The request provably never reached the API (refused connection, DNS, TLS).
    #[error("could not connect to the API: {0}")]
    Connect(String),
    /// No answer arrived within the timeout; the request may have been processed.
    #[error("the API did not answer within {0:?}")]
    Timeout(Duration),
    /// The connection broke after the request may have been sent.
    #[error("the connection to the API broke: {0}")]
    Transport(String),
    /// A success status with a body that is not the documented shape.
    #[error("the API's answer could not be read: {message} (request id {request_id:?})")]
    Decode {
        message: String,
        request_id: Option<String>,
    },
    /// A retried call failed on every attempt.
    #[error("gave up after {attempts} attempts: {last}")]
    GaveUp { attempts: u32, last: Box<ApiError> },
    /// The list pagination contradicted itself; going on would loop or stop early.
    #[error("pagination broke on page {page}: {problem}")]
    Pagination { page: u64, problem: String },
}

fn describe_details(
    kind: &Option<String>,
    code: &Option<String>,
    request_id: &Option<String>,
) -> String {
    let parts: Vec<String> = [("type", kind), ("code", code), ("request id", request_id)]
        .into_iter()
        .filter_map(|(label, value)| value.as_ref().map(|v| format!("{label} {v}")))
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!(" ({})", parts.join(", "))
    }
}

#[derive(Deserialize)]
struct ErrorEnvelope {
    error: ErrorBody,
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    message: Option<String>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    param: Option<String>,
    #[serde(default)]
    code: Option<serde_json::Value>,
}

impl ApiError {
    /// Builds a `Status` error from a non-success answer's parts.
    pub(crate) fn from_response(
        status: StatusCode,
        body: &[u8],
        request_id: Option<String>,
        retry_after: Option<Duration>,
        should_retry: Option<bool>,
    ) -> ApiError {
        let parsed = serde_json::from_slice::<ErrorEnvelope>(body).ok();
        let (message, kind, param, code) = match parsed {
            Some(envelope) => (
                envelope.error.message.unwrap_or_default(),
                envelope.error.kind,
                envelope.error.param,
                envelope.error.code.and_then(|c| match c {
                    serde_json::Value::String(s) => Some(s),
                    serde_json::Value::Null => None,
                    other => Some(other.to_string()),
                }),
            ),
            None => (
                String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned(),
                None,
                None,
                None,
            ),
        };
        // The API echoes a refused key, masked, in its message: never keep even that.
        let message = if message.trim().is_empty() {
            status.canonical_reason().unwrap_or("no message").to_owned()
        } else {
            crate::secrets::redact_keys(&message)
        };
        ApiError::Status {
            status: status.as_u16(),
            message,
            kind,
            code,
            param,
            request_id,
            retry_after,
            should_retry,
        }
    }

    /// The HTTP status, looking through `GaveUp`.
    pub fn status(&self) -> Option<u16> {
        match self {
            ApiError::Status { status, .. } => Some(*status),
            ApiError::GaveUp { last, .. } => last.status(),
            _ => None,
        }
    }

    /// The error that ended a retried call, or this one.
    pub fn root(&self) -> &ApiError {
        match self {
            ApiError::GaveUp { last, .. } => last.root(),
            other => other,
        }
    }
}
