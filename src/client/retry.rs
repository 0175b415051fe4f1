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

/// Reads `retry-after-ms`, then `retry-after` (seconds or an HTTP date), capped at two minutes.
///
/// A value that is no wait at all (negative, NaN, infinite, or beyond any representable
/// duration) is ignored as garbled, like one that does not parse; nothing here can panic.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(wait) = text("retry-after-ms")
        .and_then(|v| v.trim().parse::<f64>().ok())
        .and_then(|ms| seconds_to_wait(ms / 1000.0))
    {
        return Some(wait);
    }
    let value = text("retry-after")?.trim();
    if let Ok(seconds) = value.parse::<f64>() {
        return seconds_to_wait(seconds);
    }
    let date = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let wait = date.with_timezone(&chrono::Utc) - chrono::Utc::now();
    // A date in the past means now; one far in the future is capped like any long wait.
    Some(wait.to_std().unwrap_or(Duration::ZERO).min(RETRY_AFTER_CAP))
}

/// A server's wait in seconds as a duration no longer than the cap; `None` when it is no wait.
fn seconds_to_wait(seconds: f64) -> Option<Duration> {
    if seconds.is_sign_negative() {
        return None;
    }
    Duration::try_from_secs_f64(seconds)
        .ok()
        .map(|wait| wait.min(RETRY_AFTER_CAP))
}

/// Reads `x-should-retry`, the server's explicit verdict on retrying.
pub fn should_retry(headers: &HeaderMap) -> Option<bool> {
    match headers.get("x-should-retry")?.to_str().ok()? {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use reqwest::header::{HeaderMap, HeaderValue};

    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).expect("header value"));
        }
        map
    }

    #[test]
    fn absurd_retry_after_values_are_ignored_or_capped_never_a_panic() {
        for garbled in ["-5", "NaN", "inf", "-inf", "1e400", "-0.001", "", "soon"] {
            assert_eq!(
                retry_after(&headers(&[("retry-after", garbled)])),
                None,
                "retry-after: {garbled}"
            );
            assert_eq!(
                retry_after(&headers(&[("retry-after-ms", garbled)])),
                None,
                "retry-after-ms: {garbled}"
            );
        }
        // Beyond the longest duration there is: no wait the server can mean.
        assert_eq!(retry_after(&headers(&[("retry-after", "1e20")])), None);
        assert_eq!(retry_after(&headers(&[("retry-after-ms", "1e30")])), None);
        for long in ["1e10", "1e18", "86400", "121"] {
            assert_eq!(
                retry_after(&headers(&[("retry-after", long)])),
                Some(RETRY_AFTER_CAP),
                "retry-after: {long}"
            );
        }
        assert_eq!(
            retry_after(&headers(&[
                ("retry-after-ms", "1e30"),
                ("retry-after", "2")
            ])),
            Some(Duration::from_secs(2)),
            "a garbled retry-after-ms falls back to retry-after"
        );
        assert_eq!(
            retry_after(&headers(&[("retry-after-ms", "1e15")])),
            Some(RETRY_AFTER_CAP)
        );
        assert_eq!(
            retry_after(&headers(&[("retry-after-ms", "1500")])),
            Some(Duration::from_millis(1_500))
        );
    }

    #[test]
    fn http_dates_in_the_far_future_are_capped_and_past_ones_mean_now() {
        let far = retry_after(&headers(&[(
            "retry-after",
            "Fri, 31 Dec 9999 23:59:59 GMT",
        )]));
        let past = retry_after(&headers(&[(
            "retry-after",
            "Wed, 21 Oct 2015 07:28:00 GMT",
        )]));

        assert_eq!(far, Some(RETRY_AFTER_CAP));
        assert_eq!(past, Some(Duration::ZERO));
    }
}
