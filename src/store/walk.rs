//! One walk's staging and its atomic apply, on a dedicated connection that holds the walk lock.

use chrono::{DateTime, Utc};
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, FromRow, PgConnection};

use super::{RunCounts, StoreError};

/// Advisory lock key shared by every process that walks ("ops_walk").
const WALK_LOCK: i64 = 0x6f70_735f_7761_6c6b;

/// What applying a complete walk did.
#[derive(Debug, Clone, PartialEq)]
pub enum ApplyOutcome {
    Applied(RunCounts),
    /// The sanity guard refused the walk; nothing was written.
    Refused(GuardRefusal),
}

/// Why the sanity guard refused to mark projects missing.
#[derive(Debug, Clone, PartialEq)]
pub struct GuardRefusal {
    pub present: i64,
    pub would_vanish: i64,
    pub min_seen_ratio: f64,
}

impl std::fmt::Display for GuardRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the walk saw only {} of the {} projects currently present ({} would be marked missing); \
             below the sanity guard of {:.0}%, so nothing was marked or applied. If projects really \
             disappeared, lower sync.min_seen_ratio for one run",
            self.present - self.would_vanish,
            self.present,
            self.would_vanish,
            self.min_seen_ratio * 100.0
        )
    }
}

#[derive(FromRow)]
struct Tally {
    seen: i64,
    inserted: i64,
    changed: i64,
    reappeared: i64,
    vanished: i64,
    present: i64,
}

/// A walk in progress: its own connection, the walk lock, and a temporary stage.
pub struct WalkSession {
    connection: PgConnection,
}

impl WalkSession {
    /// Connects and takes the walk lock; `None` when another walk holds it.
    ///
    /// The lock lives on this connection, not a pooled one, so it cannot outlive the walk
    /// inside a recycled connection, and dies with the process.
    pub async fn open(options: &PgConnectOptions) -> Result<Option<WalkSession>, StoreError> {
        let mut connection = PgConnection::connect_with(options).await?;
        let (locked,): (bool,) = sqlx::query_as("select pg_try_advisory_lock($1)")
            .bind(WALK_LOCK)
            .fetch_one(&mut connection)
            .await?;
        if !locked {
            let _ = connection.close().await;
            return Ok(None);
        }
        sqlx::query(
            "create temp table walk_stage (\
                seq bigint generated always as identity, \
                project_id text not null, \
                raw jsonb not null)",
        )
        .execute(&mut connection)
        .await?;
        Ok(Some(WalkSession { connection }))
    }

    /// Appends listed projects, given as one JSON array, to the stage.
    pub async fn stage(&mut self, projects_json: &str) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "insert into walk_stage (project_id, raw) \
             select e ->> 'id', e from jsonb_array_elements($1::jsonb) e",
        )
        .bind(projects_json)
        .execute(&mut self.connection)
        .await?;
        Ok(done.rows_affected())
    }

    /// Applies the staged walk in one transaction and records the run as succeeded.
    ///
    /// `observed_at` is when the walk started: changes without a time of their own start then.
    pub async fn apply(
        &mut self,
        run_id: i64,
        observed_at: DateTime<Utc>,
        pages: i32,
        min_seen_ratio: f64,
    ) -> Result<ApplyOutcome, StoreError> {
        let mut tx = self.connection.begin().await?;
        collapse_duplicates(&mut tx).await?;
        let tally = classify(&mut tx, observed_at).await?;
        let would_vanish_share = tally.vanished as f64 / tally.present.max(1) as f64;
        if tally.vanished > 0 && 1.0 - would_vanish_share < min_seen_ratio {
            tx.rollback().await?;
            return Ok(ApplyOutcome::Refused(GuardRefusal {
                present: tally.present,
                would_vanish: tally.vanished,
                min_seen_ratio,
            }));
        }
        insert_new_projects(&mut tx, run_id, observed_at).await?;
        apply_changes(&mut tx, run_id, observed_at).await?;
        mark_vanished(&mut tx, run_id, observed_at).await?;
        let counts = RunCounts {
            pages,
            seen: tally.seen as i32,
            inserted: tally.inserted as i32,
            changed: tally.changed as i32,
            unchanged: (tally.seen - tally.inserted - tally.changed - tally.reappeared) as i32,
            vanished: tally.vanished as i32,
            reappeared: tally.reappeared as i32,
        };
        record_success(&mut tx, run_id, &counts).await?;
        tx.commit().await?;
        Ok(ApplyOutcome::Applied(counts))
    }

    /// Ends the session, releasing the walk lock with the connection.
    pub async fn close(self) {
        let _ = self.connection.close().await;
    }
}

/// Keeps only the last listing of a project listed twice in one walk.
async fn collapse_duplicates(tx: &mut PgConnection) -> Result<(), StoreError> {
    sqlx::query(
        "delete from walk_stage s using walk_stage t \
         where s.project_id = t.project_id and s.seq < t.seq",
    )
    .execute(&mut *tx)
    .await?;
    // Temporary tables get no automatic statistics; the joins below need them.
    sqlx::query("analyze walk_stage").execute(&mut *tx).await?;
    Ok(())
}

/// Sorts the stage into new, changed and reappeared projects, finds the vanished, and counts all.
///
/// The typed columns are a function of `raw`, so comparing `raw` compares the whole object,
/// including fields the product does not model yet.
async fn classify(tx: &mut PgConnection, observed_at: DateTime<Utc>) -> Result<Tally, StoreError> {
    sqlx::query(
        "create temp table walk_diff on commit drop as \
         select s.project_id, s.raw, c.key, c.name as old_name, c.status as old_status, \
                c.missing_since, f.* \
         from walk_stage s \
         left join openai.project_current c on c.project_id = s.project_id \
         cross join lateral openai.project_fields(s.raw) f \
         where c.key is null or c.missing_since is not null or c.raw is distinct from s.raw",
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "create temp table walk_vanished on commit drop as \
         select c.key from openai.project_current c \
         where c.missing_since is null and c.first_seen_at < $1 \
           and not exists (select 1 from walk_stage s where s.project_id = c.project_id)",
    )
    .bind(observed_at)
    .execute(&mut *tx)
    .await?;
    let tally = sqlx::query_as::<_, Tally>(
        "select (select count(*) from walk_stage) as seen, \
                (select count(*) from walk_diff where key is null) as inserted, \
                (select count(*) from walk_diff where key is not null and missing_since is null) as changed, \
                (select count(*) from walk_diff where missing_since is not null) as reappeared, \
                (select count(*) from walk_vanished) as vanished, \
                (select count(*) from openai.project_current where missing_since is null) as present",
    )
    .fetch_one(&mut *tx)
    .await?;
    Ok(tally)
}

/// Inserts projects never seen before, with a first version from `created_at`, split at
/// `archived_at` when the project is already archived so its active life is on record too.
async fn insert_new_projects(
    tx: &mut PgConnection,
    run_id: i64,
    observed_at: DateTime<Utc>,
) -> Result<(), StoreError> {
    sqlx::query(
        "with inserted as ( \
            insert into openai.project_current \
                (project_id, name, status, created_at, archived_at, external_key_id, residency, raw, \
                 first_seen_at, last_seen_at) \
            select project_id, name, status, created_at, archived_at, external_key_id, residency, raw, $1, $1 \
            from walk_diff where key is null \
            on conflict (project_id) do nothing \
            returning key, project_id \
         ), observed as ( \
            select i.key as new_key, d.*, (d.status = 'archived' and d.archived_at > d.created_at) as split \
            from inserted i join walk_diff d on d.project_id = i.project_id and d.key is null \
         ) \
         insert into openai.project_versions \
            (project_key, project_id, name, status, created_at, archived_at, external_key_id, residency, \
             raw, change, valid_from, valid_to, opened_by_run, closed_by_run) \
         select new_key, project_id, name, \
                case when split then 'active' else status end, created_at, \
                case when split then null else archived_at end, external_key_id, residency, \
                case when split then raw || '{\"status\": \"active\", \"archived_at\": null}'::jsonb else raw end, \
                'created', created_at, case when split then archived_at end, $2, case when split then $2 end \
         from observed \
         union all \
         select new_key, project_id, name, status, created_at, archived_at, external_key_id, residency, \
                raw, 'archived', archived_at, null, $2, null \
         from observed where split",
    )
    .bind(observed_at)
    .bind(run_id)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Closes the open version of each changed or reappeared project and opens its new one.
///
/// An archive starts at `archived_at`; other changes at the walk's observation time; neither
/// before the version it replaces, so versions never overlap and leave no gap.
async fn apply_changes(
    tx: &mut PgConnection,
    run_id: i64,
    observed_at: DateTime<Utc>,
) -> Result<(), StoreError> {
    sqlx::query(
        "create temp table walk_changes on commit drop as \
         select d.*, v.version_id as open_version, \
                case when d.missing_since is not null then 'reappeared' \
                     when d.status = 'archived' and d.old_status is distinct from 'archived' then 'archived' \
                     when d.old_status = 'archived' and d.status is distinct from 'archived' then 'unarchived' \
                     when d.name is distinct from d.old_name then 'renamed' \
                     else 'updated' end as change, \
                greatest( \
                    case when d.missing_since is null and d.status = 'archived' \
                              and d.old_status is distinct from 'archived' and d.archived_at is not null \
                         then d.archived_at else $1 end, \
                    v.valid_from + interval '1 microsecond') as starts \
         from walk_diff d \
         join openai.project_versions v on v.project_key = d.key and v.valid_to is null",
    )
    .bind(observed_at)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "update openai.project_versions v set valid_to = w.starts, closed_by_run = $1 \
         from walk_changes w where v.version_id = w.open_version",
    )
    .bind(run_id)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "insert into openai.project_versions \
            (project_key, project_id, name, status, created_at, archived_at, external_key_id, residency, \
             raw, change, valid_from, opened_by_run) \
         select key, project_id, name, status, created_at, archived_at, external_key_id, residency, \
                raw, change, starts, $1 \
         from walk_changes",
    )
    .bind(run_id)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "update openai.project_current c set \
            name = w.name, status = w.status, created_at = w.created_at, archived_at = w.archived_at, \
            external_key_id = w.external_key_id, residency = w.residency, raw = w.raw, \
            last_seen_at = greatest(c.last_seen_at, $1), missing_since = null \
         from walk_changes w where c.key = w.key",
    )
    .bind(observed_at)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Gives each project missing from this complete walk a `vanished` version and `missing_since`.
async fn mark_vanished(
    tx: &mut PgConnection,
    run_id: i64,
    observed_at: DateTime<Utc>,
) -> Result<(), StoreError> {
    sqlx::query(
        "with closed as ( \
            update openai.project_versions v \
            set valid_to = greatest($1, v.valid_from + interval '1 microsecond'), closed_by_run = $2 \
            from walk_vanished x where v.project_key = x.key and v.valid_to is null \
            returning v.* \
         ) \
         insert into openai.project_versions \
            (project_key, project_id, name, status, created_at, archived_at, external_key_id, residency, \
             raw, missing, change, valid_from, opened_by_run) \
         select project_key, project_id, name, status, created_at, archived_at, external_key_id, residency, \
                raw, true, 'vanished', valid_to, $2 \
         from closed",
    )
    .bind(observed_at)
    .bind(run_id)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "update openai.project_current c set missing_since = $1, \
            last_seen_at = greatest(c.last_seen_at, coalesce( \
                (select max(started_at) from openai.sync_runs where status = 'succeeded'), c.last_seen_at)) \
         from walk_vanished x where c.key = x.key",
    )
    .bind(observed_at)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Records the run as succeeded with its figures, inside the apply transaction.
async fn record_success(
    tx: &mut PgConnection,
    run_id: i64,
    counts: &RunCounts,
) -> Result<(), StoreError> {
    sqlx::query(
        "update openai.sync_runs set status = 'succeeded', finished_at = now(), pages = $2, seen = $3, \
            inserted = $4, changed = $5, unchanged = $6, vanished = $7, reappeared = $8 \
         where id = $1",
    )
    .bind(run_id)
    .bind(counts.pages)
    .bind(counts.seen)
    .bind(counts.inserted)
    .bind(counts.changed)
    .bind(counts.unchanged)
    .bind(counts.vanished)
    .bind(counts.reappeared)
    .execute(&mut *tx)
    .await?;
    Ok(())
}
