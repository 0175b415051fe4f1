//! The audit log in Postgres: stored events, the poll's watermark, and project events applied to
//! history by the walk's rules with the exact time and author the events give.

use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgPool};

use super::StoreError;
use super::walk::{WALK_LOCK, insert_unknown_sql};

/// Where the audit-log poll stands.
#[derive(Debug, Clone, PartialEq, Eq, FromRow)]
pub struct AuditLogState {
    /// The newest `effective_at` of a window stored whole.
    pub watermark: Option<DateTime<Utc>>,
    /// When the last poll finished.
    pub polled_at: Option<DateTime<Utc>>,
    /// What the last check found: `on`, `off` or `unknown`.
    pub logging: String,
    /// When logging was last checked.
    pub logging_checked_at: Option<DateTime<Utc>>,
}

/// One event to store, as the client read it.
#[derive(Debug, Clone)]
pub struct NewAuditEvent<'a> {
    pub id: &'a str,
    pub kind: &'a str,
    pub effective_at: DateTime<Utc>,
    pub target_id: Option<&'a str>,
    pub actor_type: Option<&'a str>,
    pub actor_email: Option<&'a str>,
    pub actor_id: Option<&'a str>,
    pub changed_by: Option<&'a str>,
    pub raw: &'a str,
    /// Whether history needs it applied (a project event), or it is only kept.
    pub to_apply: bool,
}

/// A project with project events to apply, and what its events say.
#[derive(Debug, Clone, PartialEq, FromRow)]
pub struct PendingTarget {
    pub target_id: String,
    /// The events of this project to mark applied.
    pub ids: Vec<String>,
    /// The project's latest project event of all stored: its time, type, title and author.
    pub effective_at: DateTime<Utc>,
    #[sqlx(rename = "type")]
    pub kind: String,
    pub title: Option<String>,
    pub changed_by: Option<String>,
    /// Who created it, by its `project.created` event.
    pub created_by: Option<String>,
    /// Who archived it, by its `project.archived` event.
    pub archived_by: Option<String>,
    /// Every project event of the latest event's second: type, title and author of each.
    pub same_second_types: Vec<String>,
    pub same_second_titles: Vec<Option<String>>,
    pub same_second_by: Vec<Option<String>>,
    /// The stored project's row version when its events were read (`None`: not stored yet);
    /// any write of the project since, a walk's above all, gives it another.
    pub row_version: Option<i64>,
}

/// A pending project's state as the API returned it just now.
#[derive(Debug, Clone)]
pub struct RetrievedState<'a> {
    pub target: &'a PendingTarget,
    /// The API's JSON, or `None` when the API no longer shows the project.
    pub raw: Option<&'a str>,
    pub digest: i64,
}

/// What applying one batch of events did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AppliedCounts {
    /// Projects inserted because no walk had seen them yet.
    pub inserted: i64,
    /// Projects whose state changed, with a new version.
    pub changed: i64,
    /// Versions a walk had opened whose start or author the events corrected.
    pub corrected: i64,
    /// Projects written (by a walk) while their states were retrieved: what was retrieved may be
    /// older than what is stored, so their events wait for the next pass to retrieve them again.
    pub superseded: i64,
}

/// The outcome of applying a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyEvents {
    Applied(AppliedCounts),
    /// A walk holds the walk lock; the events stay pending for the next poll.
    WalkRunning,
}

/// Reads where the audit-log poll stands.
pub async fn audit_log_state(pool: &PgPool) -> Result<AuditLogState, StoreError> {
    let state = sqlx::query_as::<_, AuditLogState>(
        "select watermark, polled_at, logging, logging_checked_at from openai.audit_log_state",
    )
    .fetch_one(pool)
    .await?;
    Ok(state)
}

/// Records what a check of audit logging found (`on` or `off`) and when.
pub async fn set_audit_logging(pool: &PgPool, logging: &str) -> Result<(), StoreError> {
    sqlx::query("update openai.audit_log_state set logging = $1, logging_checked_at = now()")
        .bind(logging)
        .execute(pool)
        .await?;
    Ok(())
}

/// Whether any event was ever stored: once on, audit logging cannot be turned off.
pub async fn any_audit_event_stored(pool: &PgPool) -> Result<bool, StoreError> {
    let (any,): (bool,) = sqlx::query_as("select exists (select 1 from openai.audit_events)")
        .fetch_one(pool)
        .await?;
    Ok(any)
}

/// Of `ids`, the events not stored yet.
pub async fn unstored_audit_events(pool: &PgPool, ids: &[&str]) -> Result<Vec<String>, StoreError> {
    let rows: Vec<(String,)> = sqlx::query_as(
        "select id from unnest($1::text[]) as i(id) \
         where not exists (select 1 from openai.audit_events e where e.id = i.id)",
    )
    .bind(ids)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|(id,)| id).collect())
}

/// Stores a whole window's new events (known ids are skipped) and advances the watermark to
/// `newest`, in one transaction; returns how many events were new.
pub async fn store_audit_window<'a>(
    pool: &PgPool,
    events: &[NewAuditEvent<'a>],
    newest: Option<DateTime<Utc>>,
) -> Result<u64, StoreError> {
    let column = |f: fn(&NewAuditEvent<'a>) -> Option<&'a str>| -> Vec<Option<&'a str>> {
        events.iter().map(f).collect()
    };
    let mut tx = pool.begin().await?;
    let stored = sqlx::query(
        "insert into openai.audit_events \
            (id, type, effective_at, target_id, actor_type, actor_email, actor_id, changed_by, raw, applied_at) \
         select e.id, e.type, e.effective_at, e.target_id, e.actor_type, e.actor_email, e.actor_id, \
                e.changed_by, e.raw::jsonb, case when e.to_apply then null else now() end \
         from unnest($1::text[], $2::text[], $3::timestamptz[], $4::text[], $5::text[], $6::text[], \
                     $7::text[], $8::text[], $9::text[], $10::bool[]) \
              as e(id, type, effective_at, target_id, actor_type, actor_email, actor_id, changed_by, raw, to_apply) \
         on conflict (id) do nothing",
    )
    .bind(events.iter().map(|e| e.id).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.kind).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.effective_at).collect::<Vec<_>>())
    .bind(column(|e| e.target_id))
    .bind(column(|e| e.actor_type))
    .bind(column(|e| e.actor_email))
    .bind(column(|e| e.actor_id))
    .bind(column(|e| e.changed_by))
    .bind(events.iter().map(|e| e.raw).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.to_apply).collect::<Vec<_>>())
    .execute(&mut *tx)
    .await?;
    advance_watermark(&mut tx, newest).await?;
    tx.commit().await?;
    Ok(stored.rows_affected())
}

/// Records a poll that found nothing new: only the watermark row is written.
pub async fn note_idle_poll(
    pool: &PgPool,
    newest: Option<DateTime<Utc>>,
) -> Result<(), StoreError> {
    let mut connection = pool.acquire().await?;
    advance_watermark(&mut connection, newest).await
}

async fn advance_watermark(
    connection: &mut sqlx::PgConnection,
    newest: Option<DateTime<Utc>>,
) -> Result<(), StoreError> {
    sqlx::query(
        "update openai.audit_log_state set \
            watermark = greatest(watermark, $1), polled_at = now(), logging = 'on', \
            logging_checked_at = coalesce(logging_checked_at, now())",
    )
    .bind(newest)
    .execute(connection)
    .await?;
    Ok(())
}

/// Every project with project events not applied yet, oldest latest event first.
pub async fn pending_targets(pool: &PgPool) -> Result<Vec<PendingTarget>, StoreError> {
    let rows = sqlx::query_as::<_, PendingTarget>(include_str!("audit_log/pending_targets.sql"))
        .fetch_all(pool)
        .await?;
    Ok(rows)
}

/// Applies the retrieved states of pending projects in one short transaction, under the walk
/// lock so that no walk's older listing is applied over them; `WalkRunning` when a walk holds it.
///
/// Unknown projects are inserted as a walk would; changed ones get a version starting at the
/// event's time where the event describes the change; every observed change an event describes
/// gets the event's time and author, an earlier one too; creates and archives get their author. Every event of the
/// batch is marked applied, those of projects the API no longer shows too, except those of
/// projects written since their events were read: these stay pending (`superseded`).
pub async fn apply_retrieved_states(
    pool: &PgPool,
    run_id: i64,
    states: &[RetrievedState<'_>],
) -> Result<ApplyEvents, StoreError> {
    let mut tx = pool.begin().await?;
    let (locked,): (bool,) = sqlx::query_as("select pg_try_advisory_xact_lock($1)")
        .bind(WALK_LOCK)
        .fetch_one(&mut *tx)
        .await?;
    if !locked {
        tx.rollback().await?;
        return Ok(ApplyEvents::WalkRunning);
    }
    // A walk that wrote a project while its state was on its way may hold a newer state than
    // the one retrieved: applying the retrieved one would put an older state back as current.
    let written = written_since_read(&mut tx, states).await?;
    let superseded = i64::try_from(written.len()).unwrap_or(i64::MAX);
    let states: Vec<&RetrievedState<'_>> = states
        .iter()
        .filter(|s| !written.contains(&s.target.target_id))
        .collect();
    let shown: Vec<&RetrievedState<'_>> =
        states.iter().copied().filter(|s| s.raw.is_some()).collect();
    let ids: Vec<&str> = shown.iter().map(|s| s.target.target_id.as_str()).collect();
    let raws: Vec<&str> = shown.iter().filter_map(|s| s.raw).collect();
    let digests: Vec<i64> = shown.iter().map(|s| s.digest).collect();
    let times: Vec<DateTime<Utc>> = shown.iter().map(|s| s.target.effective_at).collect();
    let kinds: Vec<&str> = shown.iter().map(|s| s.target.kind.as_str()).collect();
    let titles: Vec<Option<&str>> = shown.iter().map(|s| s.target.title.as_deref()).collect();
    let authors: Vec<Option<&str>> = shown
        .iter()
        .map(|s| s.target.changed_by.as_deref())
        .collect();
    let now = Utc::now();

    let (inserted,): (i64,) = sqlx::query_as(concat!(
        "with unknown as materialized ( \
            select p.project_id, p.digest, p.raw_text::jsonb as raw \
            from unnest($3::text[], $4::bigint[], $5::text[]) as p(project_id, digest, raw_text) \
            where not exists (select 1 from openai.project_current c where c.project_id = p.project_id) \
         ), ",
        insert_unknown_sql!(),
        " select count(*) from fresh"
    ))
    .bind(now)
    .bind(run_id)
    .bind(&ids)
    .bind(&digests)
    .bind(&raws)
    .fetch_one(&mut *tx)
    .await?;

    let (changed,): (i64,) = sqlx::query_as(include_str!("audit_log/apply_changes.sql"))
        .bind(now)
        .bind(run_id)
        .bind(&ids)
        .bind(&raws)
        .bind(&digests)
        .bind(&times)
        .bind(&kinds)
        .bind(&titles)
        .bind(&authors)
        .fetch_one(&mut *tx)
        .await?;

    let corrected = correct_observed_starts(&mut tx, &ids, &raws).await?;

    // Creates and archives start at the API's own times; the events add who made them.
    let created_by: Vec<Option<&str>> = shown
        .iter()
        .map(|s| s.target.created_by.as_deref())
        .collect();
    let archived_by: Vec<Option<&str>> = shown
        .iter()
        .map(|s| s.target.archived_by.as_deref())
        .collect();
    let authored = sqlx::query(
        "update openai.project_versions v set changed_by = x.author \
         from ( \
            select a.project_id, 'created' as change, a.created_by as author \
            from unnest($1::text[], $2::text[]) as a(project_id, created_by) where a.created_by is not null \
            union all \
            select a.project_id, 'archived', a.archived_by \
            from unnest($1::text[], $3::text[]) as a(project_id, archived_by) where a.archived_by is not null \
         ) x \
         where v.project_id = x.project_id and v.change = x.change and v.changed_by is null",
    )
    .bind(&ids)
    .bind(&created_by)
    .bind(&archived_by)
    .execute(&mut *tx)
    .await?;

    let event_ids: Vec<&str> = states
        .iter()
        .flat_map(|s| s.target.ids.iter().map(String::as_str))
        .collect();
    sqlx::query("update openai.audit_events set applied_at = now() where id = any($1::text[])")
        .bind(&event_ids)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    let authored = i64::try_from(authored.rows_affected()).unwrap_or(i64::MAX);
    Ok(ApplyEvents::Applied(AppliedCounts {
        inserted,
        changed,
        corrected: corrected.saturating_add(authored),
        superseded,
    }))
}

/// Moves every observed start of the projects `ids` (stored as `raws`) that one of their events
/// dates exactly to that event's time, with its author; returns how many moved.
async fn correct_observed_starts(
    tx: &mut sqlx::PgConnection,
    ids: &[&str],
    raws: &[&str],
) -> Result<i64, StoreError> {
    // Each statement moves one version per project, the earliest, so that it writes only that
    // version and the one before. A version it moves is no longer observed, so the repeats end,
    // after as many rounds as one project has observed versions to move.
    let mut corrected: i64 = 0;
    loop {
        let (moved,): (i64,) = sqlx::query_as(include_str!("audit_log/correct_starts.sql"))
            .bind(ids)
            .bind(raws)
            .fetch_one(&mut *tx)
            .await?;
        if moved == 0 {
            return Ok(corrected);
        }
        corrected = corrected.saturating_add(moved);
    }
}

/// Of the retrieved states, the projects whose stored row was written since their events were
/// read (or stored since, when they were not yet).
async fn written_since_read(
    tx: &mut sqlx::PgConnection,
    states: &[RetrievedState<'_>],
) -> Result<Vec<String>, StoreError> {
    let ids: Vec<&str> = states.iter().map(|s| s.target.target_id.as_str()).collect();
    let versions: Vec<Option<i64>> = states.iter().map(|s| s.target.row_version).collect();
    let rows: Vec<(String,)> = sqlx::query_as(
        "select x.project_id from unnest($1::text[], $2::bigint[]) as x(project_id, row_version) \
         left join openai.project_current c on c.project_id = x.project_id \
         where c.xmin::text::bigint is distinct from x.row_version",
    )
    .bind(&ids)
    .bind(&versions)
    .fetch_all(&mut *tx)
    .await?;
    Ok(rows.into_iter().map(|(id,)| id).collect())
}

/// Records a successful audit-log pass with its figures: pages read, events in the window,
/// events new, projects inserted and changed (corrections count as changes).
pub async fn finish_audit_run(
    pool: &PgPool,
    run_id: i64,
    pages: i32,
    seen: i32,
    inserted: i32,
    changed: i32,
) -> Result<(), StoreError> {
    sqlx::query(
        "update openai.sync_runs set status = 'succeeded', finished_at = now(), pages = $2, seen = $3, \
            inserted = $4, changed = $5, unchanged = greatest($3 - $4, 0) \
         where id = $1 and status = 'running'",
    )
    .bind(run_id)
    .bind(pages)
    .bind(seen)
    .bind(inserted)
    .bind(changed)
    .execute(pool)
    .await?;
    Ok(())
}

/// The tracking ids of the keys that made the projects this product's requests created: the
/// actors of the `project.created` events of projects linked to a created request.
pub async fn own_key_ids(pool: &PgPool) -> Result<Vec<String>, StoreError> {
    let rows: Vec<(String,)> = sqlx::query_as(
        "select distinct e.actor_id from openai.audit_events e \
         join openai.project_requests r on r.project_id = e.target_id and r.status = 'created' \
         where e.type = 'project.created' and e.actor_type = 'api_key' and e.actor_id is not null",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|(id,)| id).collect())
}

/// Projects one of `key_ids` created under a name comparing equal to `name` at or after
/// `since`, by their `project.created` events, that no request is linked to.
pub async fn created_by_keys(
    pool: &PgPool,
    name: &str,
    since: DateTime<Utc>,
    key_ids: &[String],
) -> Result<Vec<String>, StoreError> {
    let rows: Vec<(String,)> = sqlx::query_as(
        "select distinct e.target_id from openai.audit_events e \
         where e.type = 'project.created' \
           and openai.comparable_name(e.raw -> 'project.created' -> 'data' ->> 'name') = openai.comparable_name($1) \
           and e.effective_at >= $2 and e.actor_id = any($3::text[]) and e.target_id is not null \
           and not exists (select 1 from openai.project_requests r where r.project_id = e.target_id)",
    )
    .bind(name)
    .bind(since)
    .bind(key_ids)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|(id,)| id).collect())
}
