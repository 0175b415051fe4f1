//! Rows of `openai.project_requests`: claiming, fenced outcomes, and reconciliation bookkeeping.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgPool};

use super::StoreError;

/// A request as the worker handles it; `attempt_id` fences every write of an attempt's outcome.
#[derive(Debug, Clone, PartialEq, FromRow)]
pub struct ClaimedRequest {
    pub id: i64,
    pub name: String,
    pub external_key_id: Option<String>,
    pub geography: Option<String>,
    pub residency: Option<String>,
    pub allow_duplicate_name: bool,
    pub requested_at: DateTime<Utc>,
    pub status: String,
    pub attempts: i32,
    pub attempt_id: Option<String>,
    pub attempt_started_at: Option<DateTime<Utc>>,
    pub reconcile_walks: i32,
}

const RETURNED: &str = "r.id, r.name, r.external_key_id, r.geography, r.residency, r.allow_duplicate_name, \
     r.requested_at, r.status, r.attempts, r.attempt_id::text as attempt_id, r.attempt_started_at, r.reconcile_walks";

/// The database's clock, which every due time is measured against.
pub async fn database_now(pool: &PgPool) -> Result<DateTime<Utc>, StoreError> {
    let (now,): (DateTime<Utc>,) = sqlx::query_as("select now()").fetch_one(pool).await?;
    Ok(now)
}

/// Moves the oldest pending request due by `due_by` to `creating` with a fresh attempt id and
/// lease, committed before any API call.
pub async fn claim_next_request(
    pool: &PgPool,
    lease: Duration,
    due_by: DateTime<Utc>,
) -> Result<Option<ClaimedRequest>, StoreError> {
    let sql = format!(
        "with next as ( \
            select id from openai.project_requests \
            where status = 'pending' and next_attempt_at <= $2 \
            order by next_attempt_at, id \
            for update skip locked limit 1 \
         ) \
         update openai.project_requests r set status = 'creating', attempts = r.attempts + 1, \
            attempt_id = gen_random_uuid(), attempt_started_at = now(), \
            lease_until = now() + make_interval(secs => $1), reconcile_walks = 0, updated_at = now() \
         from next where r.id = next.id \
         returning {RETURNED}"
    );
    let claimed = sqlx::query_as::<_, ClaimedRequest>(&sql)
        .bind(lease.as_secs_f64())
        .bind(due_by)
        .fetch_optional(pool)
        .await?;
    Ok(claimed)
}

/// Names an active project or an earlier live request that already has this request's exact name.
pub async fn find_same_name(
    pool: &PgPool,
    request: &ClaimedRequest,
) -> Result<Option<String>, StoreError> {
    let found: Option<(String,)> = sqlx::query_as(
        "select 'project ' || project_id || ' is active with this name' from openai.project_current \
         where name = $1 and status is distinct from 'archived' and missing_since is null \
         union all \
         select 'request ' || id || ' (' || status || ') asks for the same name' from openai.project_requests \
         where name = $1 and id < $2 and status in ('pending', 'creating', 'unknown') \
         limit 1",
    )
    .bind(&request.name)
    .bind(request.id)
    .fetch_optional(pool)
    .await?;
    Ok(found.map(|(what,)| what))
}

/// Records a created project for the attempt that still owns the request, and puts the project
/// into the history at once; `false` when the attempt no longer owns it.
pub async fn finish_created(
    pool: &PgPool,
    request_id: i64,
    attempt_id: &str,
    project_raw: &serde_json::Value,
) -> Result<bool, StoreError> {
    let project_id = project_raw
        .get("id")
        .and_then(|v| v.as_str())
        .unwrap_or_default();
    let mut tx = pool.begin().await?;
    let done = sqlx::query(
        "update openai.project_requests set status = 'created', project_id = $3, error = null, \
            finished_at = now(), lease_until = null, updated_at = now() \
         where id = $1 and attempt_id = $2::uuid and status in ('creating', 'unknown')",
    )
    .bind(request_id)
    .bind(attempt_id)
    .bind(project_id)
    .execute(&mut *tx)
    .await?;
    if done.rows_affected() == 0 {
        tx.rollback().await?;
        return Ok(false);
    }
    sqlx::query(
        "with inserted as ( \
            insert into openai.project_current \
                (project_id, name, status, created_at, archived_at, external_key_id, residency, raw, \
                 first_seen_at, last_seen_at) \
            select $1::jsonb ->> 'id', f.name, f.status, f.created_at, f.archived_at, f.external_key_id, \
                   f.residency, $1::jsonb, now(), now() \
            from openai.project_fields($1::jsonb) f \
            on conflict (project_id) do nothing \
            returning key, project_id, name, status, created_at, archived_at, external_key_id, residency, raw \
         ) \
         insert into openai.project_versions \
            (project_key, project_id, name, status, created_at, archived_at, external_key_id, residency, \
             raw, change, valid_from) \
         select key, project_id, name, status, created_at, archived_at, external_key_id, residency, raw, \
                'created', created_at \
         from inserted",
    )
    .bind(project_raw.to_string())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(true)
}

/// Ends the attempt's request as failed with its reason; `false` when the attempt no longer owns it.
pub async fn fail_request(
    pool: &PgPool,
    request_id: i64,
    attempt_id: &str,
    error: &str,
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "update openai.project_requests set status = 'failed', error = $3, finished_at = now(), \
            lease_until = null, updated_at = now() \
         where id = $1 and attempt_id = $2::uuid and status in ('creating', 'unknown')",
    )
    .bind(request_id)
    .bind(attempt_id)
    .bind(error)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Puts the attempt's request back to `pending` for `delay` on the database's clock; nothing was created.
pub async fn defer_request(
    pool: &PgPool,
    request_id: i64,
    attempt_id: &str,
    delay: Duration,
    reason: &str,
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "update openai.project_requests set status = 'pending', \
            next_attempt_at = now() + make_interval(secs => $3), error = $4, \
            lease_until = null, reconcile_walks = 0, updated_at = now() \
         where id = $1 and attempt_id = $2::uuid and status in ('creating', 'unknown')",
    )
    .bind(request_id)
    .bind(attempt_id)
    .bind(delay.as_secs_f64())
    .bind(reason)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Marks the attempt's outcome unknown: the project may exist, only the list can tell.
pub async fn mark_unknown(
    pool: &PgPool,
    request_id: i64,
    attempt_id: &str,
    reason: &str,
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "update openai.project_requests set status = 'unknown', error = $3, lease_until = null, updated_at = now() \
         where id = $1 and attempt_id = $2::uuid and status = 'creating'",
    )
    .bind(request_id)
    .bind(attempt_id)
    .bind(reason)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Turns `creating` rows whose lease ran out (their worker died) into `unknown`.
pub async fn expire_leases(pool: &PgPool) -> Result<u64, StoreError> {
    let done = sqlx::query(
        "update openai.project_requests set status = 'unknown', lease_until = null, updated_at = now(), \
            error = 'the worker of attempt ' || attempts || ' stopped before recording its outcome; checking the project list' \
         where status = 'creating' and lease_until < now()",
    )
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

/// Every request whose outcome is unknown.
pub async fn unknown_requests(pool: &PgPool) -> Result<Vec<ClaimedRequest>, StoreError> {
    let sql = format!(
        "select {RETURNED} from openai.project_requests r where r.status = 'unknown' order by r.id"
    );
    Ok(sqlx::query_as::<_, ClaimedRequest>(&sql)
        .fetch_all(pool)
        .await?)
}

/// Counts one more walk that found no project for the attempt; returns the new count.
pub async fn note_fruitless_walk(
    pool: &PgPool,
    request_id: i64,
    attempt_id: &str,
) -> Result<Option<i32>, StoreError> {
    let walks: Option<(i32,)> = sqlx::query_as(
        "update openai.project_requests set reconcile_walks = reconcile_walks + 1, updated_at = now() \
         where id = $1 and attempt_id = $2::uuid and status = 'unknown' returning reconcile_walks",
    )
    .bind(request_id)
    .bind(attempt_id)
    .fetch_optional(pool)
    .await?;
    Ok(walks.map(|(n,)| n))
}

/// Whether some request already links this project.
pub async fn is_project_linked(pool: &PgPool, project_id: &str) -> Result<bool, StoreError> {
    let (linked,): (bool,) = sqlx::query_as(
        "select exists (select 1 from openai.project_requests where project_id = $1)",
    )
    .bind(project_id)
    .fetch_one(pool)
    .await?;
    Ok(linked)
}

/// Whether anything is due now: a pending request, an expired lease, or an unknown outcome.
pub async fn work_is_due(pool: &PgPool) -> Result<bool, StoreError> {
    let (due,): (bool,) = sqlx::query_as(
        "select exists (select 1 from openai.project_requests where \
            (status = 'pending' and next_attempt_at <= now()) \
            or (status = 'creating' and lease_until < now()) \
            or status = 'unknown')",
    )
    .fetch_one(pool)
    .await?;
    Ok(due)
}

/// Requests per status, for metrics.
pub async fn count_requests_by_status(pool: &PgPool) -> Result<Vec<(String, i64)>, StoreError> {
    Ok(
        sqlx::query_as("select status, count(*) from openai.project_requests group by 1")
            .fetch_all(pool)
            .await?,
    )
}
