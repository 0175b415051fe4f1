//! What can go wrong talking to the API, with the API's own words kept for the operator.

use std::time::Duration;

use reqwest::StatusCode;
use serde::Deserialize;

/// A failed API call or walk.
///
/// Its text never holds a key: the server's words (message, type, code, request id, a body
/// that could not be read) may echo one, so the whole text is redacted as it is written.
#[derive(Debug, Clone)]
pub enum ApiError {
    /// The API answered with an error status.
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
    Connect(String),
    /// No answer arrived within the timeout; the request may have been processed.
    Timeout(Duration),
    /// The connection broke after the request may have been sent.
    Transport(String),
    /// A success status with a body that is not the documented shape.
    Decode {
        message: String,
        request_id: Option<String>,
    },
    /// A retried call failed on every attempt.
    GaveUp { attempts: u32, last: Box<ApiError> },
    /// The list pagination contradicted itself; going on would loop or stop early.
    Pagination { page: u64, problem: String },
}

impl std::error::Error for ApiError {}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = match self {
            ApiError::Status {
                status,
                message,
                kind,
                code,
                request_id,
                ..
            } => format!(
                "the API answered {status}: {message}{}",
                describe_details(kind, code, request_id)
            ),
            ApiError::Connect(detail) => format!("could not connect to the API: {detail}"),
            ApiError::Timeout(after) => format!("the API did not answer within {after:?}"),
            ApiError::Transport(detail) => format!("the connection to the API broke: {detail}"),
            ApiError::Decode {
                message,
                request_id,
            } => {
                format!("the API's answer could not be read: {message} (request id {request_id:?})")
            }
            ApiError::GaveUp { attempts, last } => {
                format!("gave up after {attempts} attempts: {last}")
            }
            ApiError::Pagination { page, problem } => {
                format!("pagination broke on page {page}: {problem}")
            }
        };
        f.write_str(&crate::secrets::redact_keys(&text))
    }
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

#[cfg(test)]
mod tests {
    use reqwest::StatusCode;

    use super::ApiError;

    #[test]
    fn no_key_the_server_echoes_anywhere_reaches_the_text() {
        let body =
            br#"{"error":{"message":"Incorrect API key provided: %22sk-admin-%2A%2A%2A%2Awxyz%22",
            "type":"sk-admin-type","code":"sk-admin-code","param":"sk-admin-param"}}"#;
        let refused = ApiError::from_response(
            StatusCode::UNAUTHORIZED,
            body,
            Some("req_sk-x sk-admin-in-the-request-id".into()),
            None,
            None,
        );
        let unparsable = ApiError::from_response(
            StatusCode::BAD_GATEWAY,
            b"<html>Bearer\nsk-admin-abcdefgh</html>",
            None,
            None,
            None,
        );
        let serde_echo = serde_json::from_str::<bool>(r#""sk-admin-abcdefgh""#)
            .expect_err("a string is no bool");
        let decode = ApiError::Decode {
            message: serde_echo.to_string(),
            request_id: Some("sk-admin-id".into()),
        };
        let gave_up = ApiError::GaveUp {
            attempts: 2,
            last: Box::new(ApiError::Transport("url http://x/?k=sk-admin-q".into())),
        };
        for error in [refused, unparsable, decode, gave_up] {
            let text = error.to_string();
            assert!(!text.contains("sk-admin"), "{text}");
            assert!(!text.contains("wxyz"), "{text}");
            assert!(text.contains("[redacted key]"), "{text}");
        }
    }
}
