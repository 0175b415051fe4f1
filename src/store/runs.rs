//! Rows of `openai.sync_runs`: one per walk, from start to outcome.

use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgPool};

use super::StoreError;

/// The figures a finished walk records.
#[derive(Debug, Clone, Default, PartialEq, Eq, FromRow)]
pub struct RunCounts {
    pub pages: i32,
    pub seen: i32,
    pub inserted: i32,
    pub changed: i32,
    pub unchanged: i32,
    pub vanished: i32,
    pub reappeared: i32,
}

/// A resource the product syncs, as `openai.sync_runs.resource` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Resource {
    Projects,
    Costs,
    AuditLog,
}

impl Resource {
    /// The name stored in `sync_runs.resource` and used as a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Resource::Projects => "projects",
            Resource::Costs => "costs",
            Resource::AuditLog => "audit_log",
        }
    }
}

/// Projects currently listed, per status.
#[derive(Debug, Clone, PartialEq, Eq, FromRow)]
pub struct StatusCount {
    pub status: String,
    pub projects: i64,
}

/// Records a pass of `resource` as running and returns its id and start time.
pub async fn start_run(
    pool: &PgPool,
    resource: Resource,
    trigger: &str,
) -> Result<(i64, DateTime<Utc>), StoreError> {
    let row: (i64, DateTime<Utc>) = sqlx::query_as(
        "insert into openai.sync_runs (resource, trigger) values ($1, $2) returning id, started_at",
    )
    .bind(resource.as_str())
    .bind(trigger)
    .fetch_one(pool)
    .await?;
    Ok(row)
}

/// Marks a running walk failed with its reason and the pages it had fetched.
pub async fn fail_run(
    pool: &PgPool,
    run_id: i64,
    pages: i32,
    error: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "update openai.sync_runs set status = 'failed', finished_at = now(), pages = $2, error = $3 \
         where id = $1 and status = 'running'",
    )
    .bind(run_id)
    .bind(pages)
    .bind(crate::secrets::redact_keys(error))
    .execute(pool)
    .await?;
    Ok(())
}

/// Fails passes of `resource` left `running` by a process that died; only call while holding
/// that resource's lock.
pub async fn abandon_stale_runs(pool: &PgPool, resource: Resource) -> Result<u64, StoreError> {
    let done = sqlx::query(
        "update openai.sync_runs set status = 'failed', finished_at = now(), \
         error = 'abandoned: the process running this pass stopped before finishing; nothing was applied' \
         where status = 'running' and resource = $1",
    )
    .bind(resource.as_str())
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

/// Start time of the most recent successful pass of `resource`, if any.
pub async fn last_success_started_at(
    pool: &PgPool,
    resource: Resource,
) -> Result<Option<DateTime<Utc>>, StoreError> {
    let row: Option<(DateTime<Utc>,)> = sqlx::query_as(
        "select started_at from openai.sync_runs where status = 'succeeded' and resource = $1 \
         order by started_at desc limit 1",
    )
    .bind(resource.as_str())
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|(at,)| at))
}

/// When the newest successful run of `resource` started and finished.
pub async fn last_success_span(
    pool: &PgPool,
    resource: Resource,
) -> Result<Option<(DateTime<Utc>, Option<DateTime<Utc>>)>, StoreError> {
    Ok(sqlx::query_as(
        "select started_at, finished_at from openai.sync_runs \
         where status = 'succeeded' and resource = $1 order by started_at desc limit 1",
    )
    .bind(resource.as_str())
    .fetch_optional(pool)
    .await?)
}

/// Counts projects the last walks still list, per status.
pub async fn count_projects_by_status(pool: &PgPool) -> Result<Vec<StatusCount>, StoreError> {
    let rows = sqlx::query_as::<_, StatusCount>(
        "select coalesce(status, 'unknown') as status, count(*) as projects \
         from openai.project_current where missing_since is null group by 1 order by 1",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows)
}
