//! The daemon's Prometheus metrics: every name in one place, under one product prefix.
//!
//! Counters and histograms are recorded where things happen. Gauges are read from the database
//! at each scrape and rendered beside them (`gauges_text`), so every replica reports the shared
//! truth and a status that disappeared is gone from the next scrape, not left at its last value.

use std::time::Duration;

use std::fmt::Write;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusRecorder};
use sqlx::PgPool;

use crate::store;

/// Passes of a resource by outcome: `resource`, `status` (`succeeded`, `failed`).
pub const RUNS_TOTAL: &str = "openai_project_sync_runs_total";
/// How long passes took: `resource`, `status`.
pub const RUN_DURATION_SECONDS: &str = "openai_project_sync_run_duration_seconds";
/// List pages a pass fetched: `resource`.
pub const PAGES_TOTAL: &str = "openai_project_sync_pages_total";
/// Seconds since the last successful pass began: `resource`; absent before the first one.
pub const SECONDS_SINCE_LAST_SUCCESS: &str = "openai_project_sync_seconds_since_last_success";
/// Projects the last walks list, per `status`.
pub const PROJECTS: &str = "openai_project_sync_projects";
/// Requests in the queue, per `status`.
pub const REQUESTS: &str = "openai_project_sync_requests";
/// Age of the oldest request not yet settled (`pending` or `unknown`); 0 when there is none.
pub const OLDEST_UNSETTLED_REQUEST_AGE_SECONDS: &str =
    "openai_project_sync_oldest_unsettled_request_age_seconds";
/// Create attempts by `outcome`.
pub const REQUEST_ATTEMPTS_TOTAL: &str = "openai_project_sync_request_attempts_total";
/// Unknown outcomes settled by reconciliation, by `outcome`.
pub const REQUEST_RECONCILIATIONS_TOTAL: &str = "openai_project_sync_request_reconciliations_total";
/// From a request's insert to its first create call.
pub const REQUEST_INSERT_TO_API_SECONDS: &str = "openai_project_sync_request_insert_to_api_seconds";
/// API calls: `endpoint`, `status` (the HTTP status, or `none` without an answer) and `error`
/// (`none`, `rate_limited`, `server`, `client`, `timeout`, `connect`, `transport`, `decode`).
pub const API_REQUESTS_TOTAL: &str = "openai_project_sync_api_requests_total";
/// API calls retried: `endpoint`.
pub const API_RETRIES_TOTAL: &str = "openai_project_sync_api_retries_total";

/// Every metric the daemon exports, for the checks that alerts and dashboards use only these.
pub const ALL: &[&str] = &[
    RUNS_TOTAL,
    RUN_DURATION_SECONDS,
    PAGES_TOTAL,
    SECONDS_SINCE_LAST_SUCCESS,
    PROJECTS,
    REQUESTS,
    OLDEST_UNSETTLED_REQUEST_AGE_SECONDS,
    REQUEST_ATTEMPTS_TOTAL,
    REQUEST_RECONCILIATIONS_TOTAL,
    REQUEST_INSERT_TO_API_SECONDS,
    API_REQUESTS_TOTAL,
    API_RETRIES_TOTAL,
];

/// Histogram buckets in seconds: from a fast API call to a long first sync.
const SECONDS_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
    1800.0,
];

/// The recorder: histograms rendered as Prometheus histograms (buckets, so replicas aggregate).
pub fn recorder() -> PrometheusRecorder {
    let builder = PrometheusBuilder::new().set_buckets(SECONDS_BUCKETS);
    match builder {
        Ok(builder) => builder.build_recorder(),
        // Only an empty bucket list is refused.
        Err(_) => PrometheusBuilder::new().build_recorder(),
    }
}

/// Records a finished pass of `resource`.
pub fn record_pass(resource: store::Resource, status: &'static str, pages: u64, took: Duration) {
    let resource = resource.as_str();
    metrics::counter!(RUNS_TOTAL, "resource" => resource, "status" => status).increment(1);
    metrics::counter!(PAGES_TOTAL, "resource" => resource).increment(pages);
    metrics::histogram!(RUN_DURATION_SECONDS, "resource" => resource, "status" => status)
        .record(took.as_secs_f64());
}

/// Every gauge, read from the database now, in the Prometheus text format.
pub async fn gauges_text(pool: &PgPool) -> Result<String, store::StoreError> {
    let figures = store::gauge_figures(pool).await?;
    let mut text = String::new();
    gauge(
        &mut text,
        SECONDS_SINCE_LAST_SUCCESS,
        "Seconds since the last successful pass of the resource began.",
        figures
            .seconds_since_last_success
            .iter()
            .map(|(resource, seconds)| (Some(("resource", resource.as_str())), *seconds)),
    );
    gauge(
        &mut text,
        PROJECTS,
        "Projects the last walks list, per status.",
        figures
            .projects
            .iter()
            .map(|c| (Some(("status", c.status.as_str())), c.projects as f64)),
    );
    gauge(
        &mut text,
        REQUESTS,
        "Requests in the queue, per status.",
        figures
            .requests
            .iter()
            .map(|(status, n)| (Some(("status", status.as_str())), *n as f64)),
    );
    gauge(
        &mut text,
        OLDEST_UNSETTLED_REQUEST_AGE_SECONDS,
        "Age of the oldest request not yet settled (pending or unknown); 0 when there is none.",
        [(None, figures.oldest_unsettled_request_age_seconds)],
    );
    Ok(text)
}

/// Appends one gauge family: its help, its type and a sample per label value.
fn gauge<'a>(
    text: &mut String,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (Option<(&'a str, &'a str)>, f64)>,
) {
    let _ = writeln!(text, "# HELP {name} {help}\n# TYPE {name} gauge");
    for (label, value) in samples {
        match label {
            Some((key, value_of_label)) => {
                let _ = writeln!(
                    text,
                    "{name}{{{key}=\"{}\"}} {value}",
                    escape(value_of_label)
                );
            }
            None => {
                let _ = writeln!(text, "{name} {value}");
            }
        }
    }
}

/// A label value as the text format writes it: backslash, quote and line feed escaped.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    #[test]
    fn label_values_from_the_api_cannot_break_the_text_format() {
        assert_eq!(super::escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
