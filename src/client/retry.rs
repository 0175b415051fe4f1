//! When a read is worth another try, and how long to wait before it.

use std::time::Duration;

use reqwest::header::HeaderMap;

use super::ApiError;

/// Longest wait a server's `retry-after` may impose on one retry.
pub(super) const RETRY_AFTER_CAP: Duration = Duration::from_secs(120);

/// Exponential backoff with jitter for idempotent calls.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts after the first.
    pub max_retries: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 6,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// The wait before retry number `retry` (0-based) of `error`, or `None` when it must not be retried.
    pub fn delay_for(&self, retry: u32, error: &ApiError) -> Option<Duration> {
        if retry >= self.max_retries || !is_retryable(error) {
            return None;
        }
        let exponential = self
            .base_delay
            .saturating_mul(2u32.saturating_pow(retry.min(16)))
            .min(self.max_delay);
        // Jitter in [50%, 100%] keeps replicas from retrying in lockstep.
        let jittered = exponential.mul_f64(0.5 + fastrand::f64() * 0.5);
        let asked = match error {
            ApiError::Status { retry_after, .. } => retry_after.map(|d| d.min(RETRY_AFTER_CAP)),
            _ => None,
        };
        Some(match asked {
            Some(asked) => asked.max(jittered.min(self.base_delay)),
            None => jittered,
        })
    }
}

/// Whether a failed idempotent call may be tried again.
pub fn is_retryable(error: &ApiError) -> bool {
    match error {
        ApiError::Status {
            status,
            should_retry,
            ..
        } => match should_retry {
            Some(explicit) => *explicit,
            None => matches!(status, 408 | 409 | 429) || *status >= 500,
        },
        ApiError::Connect(_) | ApiError::Timeout(_) | ApiError::Transport(_) => true,
        ApiError::Decode { .. } | ApiError::GaveUp { .. } | ApiError::Pagination { .. } => false,
    }
}

/// Reads `retry-after-ms`, then `retry-after` (seconds or an HTTP date).
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(ms) = text("retry-after-ms").and_then(|v| v.trim().parse::<f64>().ok())
        && ms.is_finite()
        && ms >= 0.0
    {
        return Some(Duration::from_secs_f64(ms / 1000.0));
    }
    let value = text("retry-after")?.trim();
    if let Ok(seconds) = value.parse::<f64>() {
        return (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds));
    }
    let date = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let wait = date.with_timezone(&chrono::Utc) - chrono::Utc::now();
    Some(wait.to_std().unwrap_or(Duration::ZERO))
}

/// Reads `x-should-retry`, the server's explicit verdict on retrying.
pub fn should_retry(headers: &HeaderMap) -> Option<bool> {
    match headers.get("x-should-retry")?.to_str().ok()? {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}
