//! The figures behind the daemon's gauges, read at each scrape.

use sqlx::PgPool;

use super::{StatusCount, StoreError};

/// What the gauges show, as the database has it now.
#[derive(Debug, Clone, Default)]
pub struct GaugeFigures {
    /// Seconds since the last successful pass of each resource that has one began.
    pub seconds_since_last_success: Vec<(String, f64)>,
    pub projects: Vec<StatusCount>,
    /// Requests per status.
    pub requests: Vec<(String, i64)>,
    /// Age of the oldest `pending` or `unknown` request; 0 when there is none.
    pub oldest_unsettled_request_age_seconds: f64,
}

/// Reads every gauge's figure in one transaction, so they describe one moment.
pub async fn gauge_figures(pool: &PgPool) -> Result<GaugeFigures, StoreError> {
    let mut tx = pool.begin().await?;
    let seconds_since_last_success = sqlx::query_as(
        // An idle audit-log poll writes no run, only its watermark row: it counts as a success too.
        "select resource, extract(epoch from now() - max(at))::float8 from ( \
            select resource, started_at as at from openai.sync_runs where status = 'succeeded' \
            union all \
            select 'audit_log', polled_at from openai.audit_log_state where polled_at is not null \
         ) s group by resource order by resource",
    )
    .fetch_all(&mut *tx)
    .await?;
    let projects = sqlx::query_as::<_, StatusCount>(
        "select coalesce(status, 'unknown') as status, count(*) as projects \
         from openai.project_current where missing_since is null group by 1 order by 1",
    )
    .fetch_all(&mut *tx)
    .await?;
    let requests = sqlx::query_as(
        "select status, count(*) from openai.project_requests group by 1 order by 1",
    )
    .fetch_all(&mut *tx)
    .await?;
    let (oldest,): (Option<f64>,) = sqlx::query_as(
        "select extract(epoch from now() - min(requested_at))::float8 \
         from openai.project_requests where status in ('pending', 'unknown')",
    )
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(GaugeFigures {
        seconds_since_last_success,
        projects,
        requests,
        oldest_unsettled_request_age_seconds: oldest.unwrap_or(0.0).max(0.0),
    })
}
