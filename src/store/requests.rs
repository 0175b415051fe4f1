//! Rows of `openai.project_requests`: claiming, fenced outcomes, and reconciliation bookkeeping.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgPool};

use super::StoreError;
use super::walk::insert_unknown_sql;

/// How a write of a request's outcome waits for the request's row when another session holds
/// it locked (an operator's client left in a transaction, say).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowWait {
    /// At most two seconds; past that `StoreError::RequestLocked`, nothing is written, and the
    /// request is left for a later pass. For writes a later pass makes again from what it
    /// finds, or the lease's end makes for it: reconciliation, a possibly sent create's
    /// `unknown`.
    Bounded,
    /// As long as the row is held: an attempt's writes before its create is sent (left
    /// unwritten, the request would later count as possibly sent) and the outcome of a create
    /// that was sent, which nothing else would record as surely.
    UntilFree,
}

/// Begins a write of request `request_id`'s row, which it locks first; with `RowWait::Bounded`
/// waiting at most two seconds for it. Nothing else in the write is bounded, whatever the role,
/// the database or the URL sets: a wait on another session's uncommitted link of the same
/// project must end as the project taken, and a write that timed out could lose the record that
/// a create was sent.
async fn begin_write(
    pool: &PgPool,
    request_id: i64,
    wait: RowWait,
) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, StoreError> {
    let mut tx = pool.begin().await?;
    let row_wait = if wait == RowWait::Bounded { "2s" } else { "0" };
    sqlx::query(
        "select set_config('lock_timeout', $1, true), set_config('statement_timeout', '0', true)",
    )
    .bind(row_wait)
    .execute(&mut *tx)
    .await?;
    // The row is locked before the write, so that the write's own clock (`clock_timestamp()`)
    // reads the time after any wait for it.
    let locked = sqlx::query("select 1 from openai.project_requests where id = $1 for update")
        .bind(request_id)
        .execute(&mut *tx)
        .await;
    if let Err(sqlx::Error::Database(e)) = &locked
        && e.code().as_deref() == Some("55P03")
    {
        return Err(StoreError::RequestLocked(request_id));
    }
    locked?;
    if wait == RowWait::Bounded {
        sqlx::query("select set_config('lock_timeout', '0', true)")
            .execute(&mut *tx)
            .await?;
    }
    Ok(tx)
}

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
    /// When the outcome became unknown; the grace period counts from here.
    pub unknown_since: Option<DateTime<Utc>>,
    /// Start of the earliest attempt that may have reached the API.
    pub candidates_since: Option<DateTime<Utc>>,
    /// When the first list walk that found no candidate started.
    pub first_fruitless_walk_at: Option<DateTime<Utc>>,
}

/// How recording a created project for an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Linked {
    /// The request is `created` and links the project.
    Done,
    /// The attempt no longer owns the request (its lease ran out); nothing was written.
    NotOwner,
    /// Another request links this project already; nothing was written.
    ProjectTaken,
}

const RETURNED: &str = "r.id, r.name, r.external_key_id, r.geography, r.residency, r.allow_duplicate_name, \
     r.requested_at, r.status, r.attempts, r.attempt_id::text as attempt_id, r.attempt_started_at, r.reconcile_walks, \
     r.unknown_since, r.candidates_since, r.first_fruitless_walk_at";

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

/// Names an active project or an earlier live request whose name compares equal to this
/// request's (`openai.comparable_name`: a server may answer a name in an equivalent form).
pub async fn find_same_name(
    pool: &PgPool,
    request: &ClaimedRequest,
) -> Result<Option<String>, StoreError> {
    let found: Option<(String,)> = sqlx::query_as(include_str!("requests/same_name.sql"))
        .bind(&request.name)
        .bind(request.id)
        .fetch_optional(pool)
        .await?;
    Ok(found.map(|(what,)| what))
}

/// Bounds how long recording a created project in the history may wait behind a walk writing
/// the same project (2 s); past that the link is recorded alone, and the walk records the history.
const HISTORY_LOCK_WAIT: &str = "set local lock_timeout = '2s'";

/// Records a created project for the attempt that still owns the request, and puts the project
/// into the history at once from the API's own JSON (`project_raw`), as a walk would.
pub async fn finish_created(
    pool: &PgPool,
    request_id: i64,
    attempt_id: &str,
    project_id: &str,
    project_raw: &str,
    wait: RowWait,
) -> Result<Linked, StoreError> {
    let mut tx = begin_write(pool, request_id, wait).await?;
    let linked: Result<Option<(DateTime<Utc>,)>, _> = sqlx::query_as(
        "update openai.project_requests set status = 'created', project_id = $3, error = null, \
            finished_at = now(), lease_until = null, updated_at = now() \
         where id = $1 and attempt_id = $2::uuid and status in ('creating', 'unknown') \
         returning now()",
    )
    .bind(request_id)
    .bind(attempt_id)
    .bind(project_id)
    .fetch_optional(&mut *tx)
    .await;
    let now = match linked {
        Ok(Some((now,))) => now,
        Ok(None) => {
            tx.rollback().await?;
            return Ok(Linked::NotOwner);
        }
        Err(sqlx::Error::Database(e))
            if e.constraint() == Some("project_requests_project_once") =>
        {
            tx.rollback().await?;
            return Ok(Linked::ProjectTaken);
        }
        Err(e) => return Err(e.into()),
    };
    // As a walk stores it: jsonb refuses `\u0000`, and the digest is of the API's own text.
    let storable = crate::json_text::jsonb_safe(project_raw);
    sqlx::query("savepoint history").execute(&mut *tx).await?;
    sqlx::query(HISTORY_LOCK_WAIT).execute(&mut *tx).await?;
    let recorded = sqlx::query(concat!(
        "with unknown as ( \
            select $3::text as project_id, $4::bigint as digest, $5::text::jsonb as raw \
         ), ",
        insert_unknown_sql!(),
        " select count(*) from fresh"
    ))
    .bind(now)
    .bind(None::<i64>)
    .bind(project_id)
    .bind(super::content_digest(project_raw))
    .bind(storable.as_deref().unwrap_or(project_raw))
    .execute(&mut *tx)
    .await;
    // No failure of the history takes the link with it; the next walk records the history.
    if let Err(error) = recorded {
        // A walk that listed the project and holds its row uncommitted is expected; anything
        // else (a deadlock, a refused gap) is worth a warning.
        let walk_holds_it =
            matches!(&error, sqlx::Error::Database(e) if e.code().as_deref() == Some("55P03"));
        if !walk_holds_it {
            tracing::warn!(%error, project_id, "could not put the created project into the history now; the next walk will");
        }
        sqlx::query("rollback to savepoint history")
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(Linked::Done)
}

/// Renews the attempt's lease just before its create is sent, if the attempt still owns its
/// request; `false` when it does not (its lease ran out and another worker took the request
/// over), and then the create must not be sent.
pub async fn renew_lease_before_sending(
    pool: &PgPool,
    request_id: i64,
    attempt_id: &str,
    lease: Duration,
) -> Result<bool, StoreError> {
    let mut tx = begin_write(pool, request_id, RowWait::UntilFree).await?;
    let done = sqlx::query(
        // The clock now, not the transaction's start: time spent waiting for the row must not
        // come off the lease of a create about to be sent.
        "update openai.project_requests set lease_until = clock_timestamp() + make_interval(secs => $3), \
            updated_at = now() \
         where id = $1 and attempt_id = $2::uuid and status = 'creating'",
    )
    .bind(request_id)
    .bind(attempt_id)
    .bind(lease.as_secs_f64())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(done.rows_affected() == 1)
}

/// Ends the attempt's request as failed with its reason; `false` when the attempt no longer owns it.
pub async fn fail_request(
    pool: &PgPool,
    request_id: i64,
    attempt_id: &str,
    error: &str,
    wait: RowWait,
) -> Result<bool, StoreError> {
    let mut tx = begin_write(pool, request_id, wait).await?;
    let done = sqlx::query(
        "update openai.project_requests set status = 'failed', error = $3, finished_at = now(), \
            lease_until = null, updated_at = now() \
         where id = $1 and attempt_id = $2::uuid and status in ('creating', 'unknown')",
    )
    .bind(request_id)
    .bind(attempt_id)
    .bind(crate::secrets::redact_keys(error))
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(done.rows_affected() == 1)
}

/// Puts the attempt's request back to `pending` for `delay` on the database's clock; nothing was created.
pub async fn defer_request(
    pool: &PgPool,
    request_id: i64,
    attempt_id: &str,
    delay: Duration,
    reason: &str,
    wait: RowWait,
) -> Result<bool, StoreError> {
    let mut tx = begin_write(pool, request_id, wait).await?;
    let done = sqlx::query(
        "update openai.project_requests set status = 'pending', \
            next_attempt_at = now() + make_interval(secs => $3), error = $4, \
            lease_until = null, reconcile_walks = 0, unknown_since = null, first_fruitless_walk_at = null, \
            updated_at = now() \
         where id = $1 and attempt_id = $2::uuid and status in ('creating', 'unknown')",
    )
    .bind(request_id)
    .bind(attempt_id)
    .bind(delay.as_secs_f64())
    .bind(crate::secrets::redact_keys(reason))
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(done.rows_affected() == 1)
}

/// Marks the attempt's outcome unknown: the project may exist, only the list can tell.
pub async fn mark_unknown(
    pool: &PgPool,
    request_id: i64,
    attempt_id: &str,
    reason: &str,
    wait: RowWait,
) -> Result<bool, StoreError> {
    mark_unknown_counting(pool, request_id, attempt_id, reason, true, wait).await
}

/// Sends a claimed request back to `unknown` before its create was sent, because a project of an
/// earlier attempt may have appeared; the claim does not count as an attempt.
pub async fn return_to_unknown_unsent(
    pool: &PgPool,
    request_id: i64,
    attempt_id: &str,
    reason: &str,
) -> Result<bool, StoreError> {
    mark_unknown_counting(
        pool,
        request_id,
        attempt_id,
        reason,
        false,
        RowWait::UntilFree,
    )
    .await
}

async fn mark_unknown_counting(
    pool: &PgPool,
    request_id: i64,
    attempt_id: &str,
    reason: &str,
    counts_as_attempt: bool,
    wait: RowWait,
) -> Result<bool, StoreError> {
    let mut tx = begin_write(pool, request_id, wait).await?;
    let done = sqlx::query(
        "update openai.project_requests set status = 'unknown', error = $3, lease_until = null, \
            attempts = attempts - case when $4 then 0 else 1 end, \
            unknown_since = now(), candidates_since = coalesce(candidates_since, attempt_started_at), \
            first_fruitless_walk_at = null, reconcile_walks = 0, updated_at = now() \
         where id = $1 and attempt_id = $2::uuid and status = 'creating'",
    )
    .bind(request_id)
    .bind(attempt_id)
    .bind(crate::secrets::redact_keys(reason))
    .bind(counts_as_attempt)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(done.rows_affected() == 1)
}

/// Turns `creating` rows whose lease ran out (their worker died) into `unknown`; a row someone
/// holds locked is left for a later tick, so that one lock never holds up the whole queue.
pub async fn expire_leases(pool: &PgPool) -> Result<u64, StoreError> {
    let done = sqlx::query(
        "with expired as ( \
            select id from openai.project_requests \
            where status = 'creating' and lease_until < now() \
            for update skip locked \
         ) \
         update openai.project_requests r set status = 'unknown', lease_until = null, updated_at = now(), \
            unknown_since = now(), candidates_since = coalesce(r.candidates_since, r.attempt_started_at), \
            first_fruitless_walk_at = null, reconcile_walks = 0, \
            error = 'the worker of attempt ' || r.attempts || ' stopped before recording its outcome; checking the project list' \
         from expired where r.id = expired.id",
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

/// Counts a list walk that started at `walk_started_at` and found no candidate for the attempt,
/// if the outcome was already unknown then; returns the count and the first such walk's start.
pub async fn note_fruitless_walk(
    pool: &PgPool,
    request_id: i64,
    attempt_id: &str,
    walk_started_at: DateTime<Utc>,
) -> Result<Option<(i32, DateTime<Utc>)>, StoreError> {
    let mut tx = begin_write(pool, request_id, RowWait::Bounded).await?;
    let noted = sqlx::query_as(
        "update openai.project_requests set reconcile_walks = reconcile_walks + 1, \
            first_fruitless_walk_at = coalesce(first_fruitless_walk_at, $3), updated_at = now() \
         where id = $1 and attempt_id = $2::uuid and status = 'unknown' and unknown_since <= $3 \
         returning reconcile_walks, first_fruitless_walk_at",
    )
    .bind(request_id)
    .bind(attempt_id)
    .bind(walk_started_at)
    .fetch_optional(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(noted)
}

/// Notes that a lone candidate for the attempt was found before the grace since the outcome
/// became unknown had passed, so that no walk is due for the request until it has.
pub async fn note_candidate_within_grace(
    pool: &PgPool,
    request_id: i64,
    attempt_id: &str,
) -> Result<(), StoreError> {
    let mut tx = begin_write(pool, request_id, RowWait::Bounded).await?;
    sqlx::query(
        "update openai.project_requests set candidate_seen_at = now() \
         where id = $1 and attempt_id = $2::uuid and status = 'unknown'",
    )
    .bind(request_id)
    .bind(attempt_id)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Whether some unknown request needs a list walk now: none has looked since it became unknown
/// (a lone candidate found within the grace counts as looked, until the grace has passed), or
/// its second walk is due `grace` after the first.
pub async fn reconcile_walk_due(pool: &PgPool, grace: Duration) -> Result<bool, StoreError> {
    let (due,): (bool,) = sqlx::query_as(
        "select exists (select 1 from openai.project_requests where status = 'unknown' and \
            ((first_fruitless_walk_at is null \
              and not coalesce(candidate_seen_at >= unknown_since \
                               and unknown_since + make_interval(secs => $1) > now(), false)) \
             or first_fruitless_walk_at + make_interval(secs => $1) <= now()))",
    )
    .bind(grace.as_secs_f64())
    .fetch_one(pool)
    .await?;
    Ok(due)
}

/// One project already in `project_current`, as a candidate for an unknown request.
#[derive(Debug, Clone, FromRow)]
pub struct StoredCandidate {
    pub project_id: String,
    /// The API's JSON for it, as last stored.
    pub raw: String,
}

/// Projects already stored whose comparable name is the request's (or that the API showed
/// without a name, or a blank one), created since `since` (or at
/// a time the API wrote that no calendar holds), stored no earlier than `attempt_began` (the
/// database's time), and linked to no request.
pub async fn stored_candidates(
    pool: &PgPool,
    name: &str,
    since: DateTime<Utc>,
    attempt_began: DateTime<Utc>,
) -> Result<Vec<StoredCandidate>, StoreError> {
    Ok(sqlx::query_as(
        "select c.project_id, c.raw::text as raw from openai.project_current c \
         where (c.created_at >= $2 or c.created_at is null) and c.stored_at >= $3 \
           and (coalesce(openai.comparable_name(c.name), '') in ('', openai.comparable_name($1))) \
           and not exists (select 1 from openai.project_requests r where r.project_id = c.project_id) \
         order by c.created_at, c.project_id",
    )
    .bind(name)
    .bind(since)
    .bind(attempt_began)
    .fetch_all(pool)
    .await?)
}

/// When each of `project_ids` that is stored was first stored (the database's time).
pub async fn stored_at(
    pool: &PgPool,
    project_ids: &[&str],
) -> Result<HashMap<String, DateTime<Utc>>, StoreError> {
    let stored: Vec<(String, DateTime<Utc>)> = sqlx::query_as(
        "select project_id, stored_at from openai.project_current where project_id = any($1::text[])",
    )
    .bind(project_ids)
    .fetch_all(pool)
    .await?;
    Ok(stored.into_iter().collect())
}

/// Whether another request under the same comparable name is being created right now, whose
/// project could be mistaken for this request's.
pub async fn same_name_in_flight(
    pool: &PgPool,
    request: &ClaimedRequest,
) -> Result<bool, StoreError> {
    let (in_flight,): (bool,) = sqlx::query_as(
        "select exists (select 1 from openai.project_requests \
            where status = 'creating' and id <> $2 \
              and openai.comparable_name(name) = openai.comparable_name($1))",
    )
    .bind(&request.name)
    .bind(request.id)
    .fetch_one(pool)
    .await?;
    Ok(in_flight)
}

/// Whether a request other than `request_id` is being created right now, whatever its name.
pub async fn another_request_in_flight(pool: &PgPool, request_id: i64) -> Result<bool, StoreError> {
    let (in_flight,): (bool,) = sqlx::query_as(
        "select exists (select 1 from openai.project_requests where status = 'creating' and id <> $1)",
    )
    .bind(request_id)
    .fetch_one(pool)
    .await?;
    Ok(in_flight)
}

/// The comparable form of `name`, as the database computes it.
pub async fn comparable_name(pool: &PgPool, name: &str) -> Result<Option<String>, StoreError> {
    let (comparable,): (Option<String>,) = sqlx::query_as("select openai.comparable_name($1)")
        .bind(name)
        .fetch_one(pool)
        .await?;
    Ok(comparable)
}

/// Which of `project_ids` some request links already.
pub async fn linked_projects(
    pool: &PgPool,
    project_ids: &[&str],
) -> Result<Vec<String>, StoreError> {
    let linked: Vec<(String,)> = sqlx::query_as(
        "select project_id from openai.project_requests where project_id = any($1::text[])",
    )
    .bind(project_ids)
    .fetch_all(pool)
    .await?;
    Ok(linked.into_iter().map(|(id,)| id).collect())
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
