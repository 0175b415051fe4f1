//! The health and metrics listener: `/healthz`, `/readyz`, `/metrics`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use sqlx::PgPool;

use crate::store;

/// What the probes need to answer.
#[derive(Clone)]
pub struct HealthState {
    pub pool: PgPool,
    pub metrics: PrometheusHandle,
    /// When the last successful walk is overdue, which makes the daemon unready.
    pub sync_deadline: SyncDeadline,
    /// Whether the request worker is running; unready while it is not.
    pub worker_running: Arc<AtomicBool>,
}

/// When the last successful walk is overdue.
#[derive(Clone)]
pub enum SyncDeadline {
    /// Once the schedule has fired twice since the walk finished, and as long again as the walk
    /// took (the next one may be under way), and a minute more: a walk the schedule asked for
    /// has been missed, however unevenly its fire times are spaced and however long walks take.
    Schedule(Box<croner::Cron>),
    /// Past this age since the walk started.
    Age(Duration),
}

impl SyncDeadline {
    /// When a walk that started at `started` and finished at `finished` is overdue; `None`:
    /// never.
    fn overdue_after(
        &self,
        started: chrono::DateTime<chrono::Utc>,
        finished: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Option<chrono::DateTime<chrono::Utc>> {
        match self {
            SyncDeadline::Age(age) => {
                started.checked_add_signed(chrono::Duration::from_std(*age).ok()?)
            }
            SyncDeadline::Schedule(cron) => {
                let finished = finished.unwrap_or(started).max(started);
                let first = cron.find_next_occurrence(&finished, false).ok()?;
                let second = cron.find_next_occurrence(&first, false).ok()?;
                second
                    .checked_add_signed(finished - started)?
                    .checked_add_signed(chrono::Duration::seconds(60))
            }
        }
    }
}

/// The process-wide Prometheus recorder, installed on first use.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = crate::metric::recorder();
            let handle = recorder.handle();
            // Fails only when another recorder is installed already; the handle still renders ours.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

pub fn router(state: HealthState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
        .with_state(Arc::new(state))
}

async fn readyz(State(state): State<Arc<HealthState>>) -> Response {
    let unready = |why: String| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        )
            .into_response()
    };
    if !state.worker_running.load(Ordering::Relaxed) {
        return unready("the request worker is not running".into());
    }
    let database = tokio::time::timeout(Duration::from_secs(3), store::ping(&state.pool)).await;
    match database {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return unready(format!("database unreachable: {e}")),
        Err(_) => return unready("database did not answer within 3 s".into()),
    }
    match store::last_success_span(&state.pool, store::Resource::Projects).await {
        Ok(Some((at, finished))) => {
            let now = chrono::Utc::now();
            let age = (now - at).to_std().unwrap_or_default();
            if state
                .sync_deadline
                .overdue_after(at, finished)
                .is_some_and(|due| now > due)
            {
                unready(format!(
                    "the last successful sync started {}s ago",
                    age.as_secs()
                ))
            } else {
                (
                    StatusCode::OK,
                    format!(
                        "ready: last successful sync started {}s ago\n",
                        age.as_secs()
                    ),
                )
                    .into_response()
            }
        }
        Ok(None) => unready("no sync has succeeded yet".into()),
        Err(e) => unready(format!("could not read sync runs: {e}")),
    }
}

async fn render_metrics(State(state): State<Arc<HealthState>>) -> Response {
    let mut text = state.metrics.render();
    // Gauges come from the database; without it they are left out, and the counters still render.
    match tokio::time::timeout(
        Duration::from_secs(3),
        crate::metric::gauges_text(&state.pool),
    )
    .await
    {
        Ok(Ok(gauges)) => text.push_str(&gauges),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "could not read the gauges' figures for /metrics; serving the counters only")
        }
        Err(_) => tracing::warn!(
            "the database did not give the gauges' figures within 3 s; serving the counters only"
        ),
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        text,
    )
        .into_response()
}
