//! One walk applied atomically: a dedicated connection holds the walk lock, stages each batch
//! of pages in a temporary table as it arrives, and applies a complete walk in one short
//! transaction.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, RandomState};

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection};

use super::{RunCounts, StoreError};

/// Advisory lock key shared by every process that walks ("ops_walk").
pub(super) const WALK_LOCK: i64 = 0x6f70_735f_7761_6c6b;

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

/// One listed project, as a walk hands it to the store.
#[derive(Debug, Clone, Copy)]
pub struct Listing<'a> {
    pub project_id: &'a str,
    /// The API's JSON for the project, exactly as received.
    pub raw: &'a str,
    /// `content_digest(raw)`, computed by the caller, off the writer's path.
    pub digest: i64,
}

/// The statement fragment that inserts the projects of a CTE `unknown (project_id, digest,
/// raw)` and opens their first versions; `$1` is the walk's observation time, `$2` its run.
/// An id that is already known is skipped (`on conflict`), never overwritten. A first version
/// starts at `created_at`, or when observed where the API's `created_at` is no storable time.
/// A created and an archived version take the author of the project's stored `project.created`
/// and `project.archived` events: an event read before the project showed keeps its author.
macro_rules! insert_unknown_sql {
    () => {
        "fresh as ( \
            insert into openai.project_current \
                (project_id, name, status, created_at, archived_at, external_key_id, residency, raw, \
                 raw_digest, first_seen_at, last_seen_at) \
            select u.project_id, f.name, f.status, f.created_at, f.archived_at, f.external_key_id, \
                   f.residency, u.raw, u.digest, $1, $1 \
            from unknown u cross join lateral openai.project_fields(u.raw) f \
            on conflict (project_id) do nothing \
            returning key, project_id, name, status, created_at, archived_at, external_key_id, residency, \
                      raw, coalesce(status = 'archived' and archived_at > created_at, false) as split \
         ), first_versions as ( \
            insert into openai.project_versions \
                (project_key, project_id, name, status, created_at, archived_at, external_key_id, residency, \
                 raw, change, valid_from, valid_to, opened_by_run, closed_by_run, changed_by) \
            select key, project_id, name, \
                   case when split then 'active' else status end, created_at, \
                   case when split then null else archived_at end, external_key_id, residency, \
                   case when split then raw || '{\"status\": \"active\", \"archived_at\": null}'::jsonb else raw end, \
                   'created', coalesce(created_at, $1), case when split then archived_at end, $2, case when split then $2 end, \
                   (select e.changed_by from openai.audit_events e \
                    where e.target_id = fresh.project_id and e.type = 'project.created' \
                    order by e.effective_at limit 1) \
            from fresh \
            union all \
            select key, project_id, name, status, created_at, archived_at, external_key_id, residency, \
                   raw, 'archived', archived_at, null, $2, null, \
                   (select e.changed_by from openai.audit_events e \
                    where e.target_id = fresh.project_id and e.type = 'project.archived' \
                    order by e.effective_at limit 1) \
            from fresh where split \
         )"
    };
}
pub(super) use insert_unknown_sql;

/// The last listing of each id in a batch, as the columns the staging statement takes.
struct LastListings<'a> {
    ids: Vec<&'a str>,
    digests: Vec<i64>,
    raws: Vec<&'a str>,
    /// Position of the listing in the whole walk, so the last of several listings wins.
    positions: Vec<i64>,
}

impl<'a> LastListings<'a> {
    /// The last listing of each id in `listings`, numbered from `first_position`.
    fn of(listings: &[Listing<'a>], first_position: i64) -> LastListings<'a> {
        let last_listing: HashMap<&str, usize> = listings
            .iter()
            .enumerate()
            .map(|(i, l)| (l.project_id, i))
            .collect();
        let mut batch = LastListings {
            ids: Vec::with_capacity(last_listing.len()),
            digests: Vec::with_capacity(last_listing.len()),
            raws: Vec::with_capacity(last_listing.len()),
            positions: Vec::with_capacity(last_listing.len()),
        };
        for (position, (i, listing)) in (first_position..).zip(listings.iter().enumerate()) {
            if last_listing.get(listing.project_id) == Some(&i) {
                batch.ids.push(listing.project_id);
                batch.digests.push(listing.digest);
                batch.raws.push(listing.raw);
                batch.positions.push(position);
            }
        }
        batch
    }
}

/// A digest of a project's JSON text: equal text, equal digest.
///
/// The same content written differently (another key order, say) gets another digest; that
/// costs a comparison of the content, never a wrong answer.
pub fn content_digest(raw: &str) -> i64 {
    let hash = Sha256::digest(raw.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&hash[..8]);
    i64::from_be_bytes(first)
}

/// Longest any one statement of a walk may run; the apply of a first sync of a large
/// organization takes seconds.
const WALK_STATEMENT_TIMEOUT: &str = "5min";

/// Longest the walk's connection may sit idle inside a transaction. Pages are staged outside
/// any transaction and the apply runs its statements back to back, so only a wedged process
/// is ever cut off by this, its locks and snapshot released.
const WALK_IDLE_IN_TRANSACTION_TIMEOUT: &str = "1min";

/// Longest the walk waits for Postgres to answer one call — opening, staging a batch, the
/// whole apply, abandoning — before it takes the connection as dead. The server's timeouts and
/// keepalives end the server's side of a broken connection; only this ends the walk's side,
/// which would otherwise wait for an answer forever and hold up every later walk.
pub const WALK_ANSWER_WAIT: std::time::Duration = std::time::Duration::from_secs(15 * 60);

/// `call`, or `NoAnswer` when it takes longer than `wait`.
async fn answered_within<T>(
    wait: std::time::Duration,
    call: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(wait, call)
        .await
        .unwrap_or(Err(StoreError::NoAnswer(wait)))
}

/// Memory the walk's connection may give its temporary tables, taken only as they fill.
const WALK_TEMP_BUFFERS: &str = "128MB";

/// The walk connection's options: `options` with statement and idle-in-transaction timeouts, no
/// idle-session timeout, and TCP keepalives so the server ends the walk of a client that vanished.
#[doc(hidden)]
pub fn walk_connect_options(options: &PgConnectOptions) -> PgConnectOptions {
    options.clone().options([
        ("statement_timeout", WALK_STATEMENT_TIMEOUT),
        (
            "idle_in_transaction_session_timeout",
            WALK_IDLE_IN_TRANSACTION_TIMEOUT,
        ),
        // Outside a transaction the connection waits for the next page, as long as the API takes
        // (a 429's retry-after, say); a database-wide idle_session_timeout would end the walk.
        ("idle_session_timeout", "0"),
        // The staging table holds every listing of the walk (some 35 MB for 100,000 projects);
        // kept in the session's memory it is never written out and read back.
        ("temp_buffers", WALK_TEMP_BUFFERS),
        ("tcp_keepalives_idle", "60"),
        ("tcp_keepalives_interval", "10"),
        ("tcp_keepalives_count", "6"),
    ])
}

/// A walk in progress: its own connection holding the walk lock, and the pages staged so far.
///
/// Staging writes only the connection's temporary table, outside any transaction: no lock on
/// a shared row and no snapshot is held while pages are fetched. `commit` applies everything
/// in one short transaction.
pub struct WalkSession {
    connection: PgConnection,
    run_id: i64,
    observed_at: DateTime<Utc>,
    /// Listings staged so far, counting repeats; the next listing's position.
    listed: i64,
    /// A hash of each id staged so far, to notice an id listed again in a later batch.
    staged_ids: HashSet<u64>,
    hasher: RandomState,
    /// Ids (possibly) staged in more than one batch: only their last listing is applied.
    relisted: Vec<String>,
    /// How long each call waits for an answer; `WALK_ANSWER_WAIT` unless a test shortens it.
    answer_wait: std::time::Duration,
    /// Whether the apply's transaction is open.
    applying: bool,
}

impl WalkSession {
    /// Connects and takes the walk lock; `None` when another walk holds it.
    ///
    /// The lock lives on this connection, not a pooled one, so it cannot outlive the walk
    /// inside a recycled connection, and dies with the process.
    pub async fn open(options: &PgConnectOptions) -> Result<Option<WalkSession>, StoreError> {
        answered_within(WALK_ANSWER_WAIT, Self::connect_and_lock(options)).await
    }

    async fn connect_and_lock(
        options: &PgConnectOptions,
    ) -> Result<Option<WalkSession>, StoreError> {
        let mut connection = PgConnection::connect_with(&walk_connect_options(options)).await?;
        let (locked,): (bool,) = sqlx::query_as("select pg_try_advisory_lock($1)")
            .bind(WALK_LOCK)
            .fetch_one(&mut connection)
            .await?;
        if !locked {
            let _ = connection.close().await;
            return Ok(None);
        }
        // Preparing can fail (a role without TEMPORARY on the database): the lock goes with it.
        if let Err(error) = prepare(&mut connection).await {
            release(connection).await;
            return Err(error);
        }
        Ok(Some(WalkSession {
            connection,
            run_id: 0,
            observed_at: Utc::now(),
            listed: 0,
            staged_ids: HashSet::new(),
            hasher: RandomState::new(),
            relisted: Vec::new(),
            answer_wait: WALK_ANSWER_WAIT,
            applying: false,
        }))
    }

    /// Shortens how long each later call waits for Postgres to answer.
    #[doc(hidden)]
    pub fn wait_for_answers_at_most(&mut self, wait: std::time::Duration) {
        self.answer_wait = wait;
    }

    /// Names the run this walk records, and when it started.
    ///
    /// `observed_at` is when the walk started: changes without a time of their own start then.
    pub fn record_as(&mut self, run_id: i64, observed_at: DateTime<Utc>) {
        self.run_id = run_id;
        self.observed_at = observed_at;
    }

    /// Stages listed projects; returns how many distinct ids the batch held.
    ///
    /// Within the batch the last listing of an id counts; a project listed again in a later
    /// batch replaces its earlier listing, so a change reverted during the walk is no change.
    pub async fn stage(&mut self, listings: &[Listing<'_>]) -> Result<usize, StoreError> {
        let batch = LastListings::of(listings, self.listed);
        for id in &batch.ids {
            // Two ids of one hash only cost the second a needless look at the apply.
            if !self.staged_ids.insert(self.hasher.hash_one(id)) {
                self.relisted.push((*id).to_owned());
            }
        }
        let staging = sqlx::query(include_str!("walk/stage_listings.sql"))
            .bind(&batch.ids)
            .bind(&batch.digests)
            .bind(&batch.raws)
            .bind(&batch.positions)
            .execute(&mut self.connection);
        answered_within(self.answer_wait, async { Ok(staging.await?) }).await?;
        self.listed += i64::try_from(listings.len()).unwrap_or(i64::MAX);
        Ok(batch.ids.len())
    }

    /// Applies the staged walk in one transaction: inserts what is new, records what changed,
    /// marks what the complete walk no longer lists, records the run, and commits.
    ///
    /// A project counts by its last listing, once. The sanity guard refuses (and rolls back
    /// everything) when the walk would mark more than `1 - min_seen_ratio` of the projects
    /// present before it as missing.
    ///
    /// Past `WALK_ANSWER_WAIT` without an answer the connection is dropped, which abandons the
    /// transaction, and the walk fails.
    pub async fn commit(self, pages: i32, min_seen_ratio: f64) -> Result<ApplyOutcome, StoreError> {
        answered_within(
            self.answer_wait,
            self.apply_and_commit(pages, min_seen_ratio),
        )
        .await
    }

    async fn apply_and_commit(
        mut self,
        pages: i32,
        min_seen_ratio: f64,
    ) -> Result<ApplyOutcome, StoreError> {
        if let Err(error) = self.settle_staging().await {
            // Released now, not when the dropped connection's backend exits: the next walk
            // could be told another one still runs.
            let _ = self.rollback().await;
            return Err(error);
        }
        let applied = self.apply(pages, min_seen_ratio).await;
        match applied {
            Ok(ApplyOutcome::Applied(counts)) => {
                // A commit can fail too (a deferred check); the lock is released either way.
                let committed = sqlx::query("commit").execute(&mut self.connection).await;
                release(self.connection).await;
                committed?;
                Ok(ApplyOutcome::Applied(counts))
            }
            Ok(refused) => {
                self.rollback().await?;
                Ok(refused)
            }
            Err(error) => {
                let _ = self.rollback().await;
                Err(error)
            }
        }
    }

    /// Leaves one staged row per id, its last listing, and gives the planner the staged ids'
    /// real number.
    async fn settle_staging(&mut self) -> Result<(), StoreError> {
        if !self.relisted.is_empty() {
            drop_earlier_listings(&mut self.connection, &self.relisted).await?;
        }
        // The classification joins the whole staging table on its ids (the parsed listings
        // need no statistics).
        sqlx::query("analyze walk_staged (project_id)")
            .execute(&mut self.connection)
            .await?;
        Ok(())
    }

    /// The apply transaction's statements, up to but not including its commit.
    async fn apply(&mut self, pages: i32, min_seen_ratio: f64) -> Result<ApplyOutcome, StoreError> {
        let tx = &mut self.connection;
        let started = std::time::Instant::now();
        let step = |name: &str| {
            tracing::debug!(
                step = name,
                elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
                "apply step done"
            )
        };
        sqlx::query("begin").execute(&mut *tx).await?;
        self.applying = true;
        let tx = &mut self.connection;
        // A walk lost to a crash right after its commit loses nothing the next walk does not
        // apply again (its run row, written before, is then marked failed): no need to wait for
        // the flush. Every later commit flushes the log up to its own point, this one's included.
        sqlx::query("set local synchronous_commit = off")
            .execute(&mut *tx)
            .await?;
        let (present,): (i64,) = sqlx::query_as(
            "select count(*) from openai.project_current where missing_since is null",
        )
        .fetch_one(&mut *tx)
        .await?;
        sqlx::query(include_str!("walk/classify.sql"))
            .execute(&mut *tx)
            .await?;
        step("classify");
        let inserted = insert_new(tx, self.run_id, self.observed_at).await?;
        step("insert new");
        let (seen,): (i64,) = sqlx::query_as("select count(*) from walk_staged")
            .fetch_one(&mut *tx)
            .await?;
        // When every listing was new there is nothing stored to compare it with.
        let (collected, changed, reappeared) = if inserted < seen {
            collect_changes(tx, self.observed_at).await?
        } else {
            (0, 0, 0)
        };
        step("collect changes");
        // Everything collected is applied, a project the request worker stored meanwhile
        // included, though it is not counted as changed.
        if collected > 0 {
            apply_changes(tx, self.run_id, self.observed_at).await?;
            step("apply changes");
        }
        // A walk that began with no project present has nothing to mark missing.
        let vanished = if present > 0 {
            find_vanished(tx, self.observed_at).await?
        } else {
            0
        };
        if vanished > 0 && ((present - vanished) as f64) < min_seen_ratio * present as f64 {
            return Ok(ApplyOutcome::Refused(GuardRefusal {
                present,
                would_vanish: vanished,
                min_seen_ratio,
            }));
        }
        if vanished > 0 {
            mark_vanished(tx, self.run_id, self.observed_at).await?;
        }
        step("vanished");
        let figure = |n: i64| i32::try_from(n).unwrap_or(i32::MAX);
        let counts = RunCounts {
            pages,
            seen: figure(seen),
            inserted: figure(inserted),
            changed: figure(changed),
            unchanged: figure((seen - inserted - changed - reappeared).max(0)),
            vanished: figure(vanished),
            reappeared: figure(reappeared),
        };
        record_success(tx, self.run_id, &counts).await?;
        Ok(ApplyOutcome::Applied(counts))
    }

    /// Abandons the walk: nothing it staged is applied, and the lock is released.
    ///
    /// Past `WALK_ANSWER_WAIT` without an answer the connection is dropped, which ends the
    /// server's side too once it notices.
    pub async fn rollback(self) -> Result<(), StoreError> {
        let wait = self.answer_wait;
        let mut connection = self.connection;
        let applying = self.applying;
        answered_within(wait, async move {
            let rolled_back = if applying {
                sqlx::query("rollback")
                    .execute(&mut connection)
                    .await
                    .map(|_| ())
            } else {
                Ok(())
            };
            release(connection).await;
            rolled_back?;
            Ok(())
        })
        .await
    }
}

/// Inserts the classified projects that were not stored, with their first versions; returns
/// how many. One the request worker stored meanwhile is classified as stored instead, so it is
/// compared like any other.
async fn insert_new(
    tx: &mut PgConnection,
    run_id: i64,
    observed_at: DateTime<Utc>,
) -> Result<i64, StoreError> {
    let (inserted, stored_since): (i64, Vec<String>) = sqlx::query_as(concat!(
        include_str!("walk/insert_new.sql"),
        insert_unknown_sql!(),
        " select (select count(*) from fresh), \
                 array(select u.project_id from unknown u \
                       where not exists (select 1 from fresh f where f.project_id = u.project_id))"
    ))
    .bind(observed_at)
    .bind(run_id)
    .fetch_one(&mut *tx)
    .await?;
    if !stored_since.is_empty() {
        sqlx::query(
            "update walk_classified x set key = c.key, first_seen_at = c.first_seen_at \
             from openai.project_current c \
             where x.project_id = any($1) and x.seq is not null and c.project_id = x.project_id",
        )
        .bind(&stored_since)
        .execute(&mut *tx)
        .await?;
    }
    Ok(inserted)
}

/// Removes every staged listing of `ids` but the last, so each id counts once, as last listed.
async fn drop_earlier_listings(
    connection: &mut PgConnection,
    ids: &[String],
) -> Result<(), StoreError> {
    sqlx::query(
        "delete from walk_staged s using ( \
            select project_id, max(seq) as last_seq from walk_staged \
            where project_id = any($1) group by project_id) l \
         where s.project_id = l.project_id and s.seq < l.last_seq",
    )
    .bind(ids)
    .execute(&mut *connection)
    .await?;
    Ok(())
}

/// Collects the staged projects that changed or reappeared into `walk_batch`; returns
/// (collected, changed, reappeared).
async fn collect_changes(
    tx: &mut PgConnection,
    observed_at: DateTime<Utc>,
) -> Result<(i64, i64, i64), StoreError> {
    sqlx::query(include_str!("walk/collect_changes.sql"))
        .execute(&mut *tx)
        .await?;
    // A project the request worker stored after this walk began counts as new, not changed.
    let counts = sqlx::query_as(
        "select count(*), count(*) filter (where b.missing_since is null and c.first_seen_at < $1), \
                count(*) filter (where b.missing_since is not null) \
         from walk_batch b cross join lateral ( \
            select first_seen_at from openai.project_current where key = b.key limit 1) c",
    )
    .bind(observed_at)
    .fetch_one(&mut *tx)
    .await?;
    Ok(counts)
}

/// Prepares a locked walk connection: its settings and its staging tables.
async fn prepare(connection: &mut PgConnection) -> Result<(), StoreError> {
    // The apply touches few rows of large tables by index; compiling such a statement
    // costs more than running it.
    sqlx::query("set jit = off")
        .execute(&mut *connection)
        .await?;
    // The classification hashes the stored projects' ids and digests (some 10 MB for 100,000
    // projects): in memory, in one batch.
    sqlx::query("set work_mem = '64MB'")
        .execute(&mut *connection)
        .await?;
    sqlx::query(include_str!("walk/create_staging.sql"))
        .execute(&mut *connection)
        .await?;
    sqlx::query(
        "create temp table walk_batch (\
            seq bigint, project_id text, raw jsonb, raw_digest bigint, key bigint, old_name text, \
            old_status text, missing_since timestamptz, name text, status text, created_at timestamptz, \
            archived_at timestamptz, external_key_id text, residency text)",
    )
    .execute(&mut *connection)
    .await?;
    Ok(())
}

/// Releases the walk lock, then closes the connection.
///
/// Unlocking first matters: the server drops a closed connection's locks only when its backend
/// has exited, which can be after the next walk asks for the lock.
async fn release(mut connection: PgConnection) {
    let _ = sqlx::query("select pg_advisory_unlock($1)")
        .bind(WALK_LOCK)
        .execute(&mut connection)
        .await;
    let _ = connection.close().await;
}

/// Closes the open version of each changed or reappeared project in the batch and opens its new one.
///
/// An archive starts at `archived_at`; other changes at the walk's observation time; neither
/// before the version it replaces, so versions never overlap and leave no gap. A project that
/// comes back archived is recorded as `archived`, not hidden in `reappeared`. A rename seen
/// together with an archive is two versions: the rename, as late as it can have been (when
/// observed, but before the archive, since an archived project cannot be renamed), then the
/// archive. The new versions are inserted from the rows the close returns, so each close
/// happens before its insert.
/// Changes are few next to the tables, so every row is reached directly: open versions by the
/// exclusion constraint's index and then by row address (`ctid`), current rows by key (`limit 1`
/// lookups and `= any(array(...))`); left to its estimates, the planner hashes whole tables.
async fn apply_changes(
    tx: &mut PgConnection,
    run_id: i64,
    observed_at: DateTime<Utc>,
) -> Result<(), StoreError> {
    sqlx::query(
        "with changes as materialized ( \
            select b.*, v.ctid as open_version, v.status as open_status, v.archived_at as open_archived_at, \
                   v.raw -> 'archived_at' as open_archived_at_raw, k.change, k.renamed_too, k.starts, \
                   greatest(v.valid_from + interval '1 microsecond', \
                            least($1, k.starts - interval '1 microsecond')) as renamed_at \
            from walk_batch b \
            cross join lateral ( \
                select ctid, valid_from, status, archived_at, raw from openai.project_versions \
                where openai.spread_key(project_key) = openai.spread_key(b.key) \
                  and project_key = b.key and valid_to is null limit 1 \
            ) v \
            cross join lateral ( \
                select b.status = 'archived' and b.old_status is distinct from 'archived' as archiving \
            ) a \
            cross join lateral ( \
                select case when a.archiving then 'archived' \
                            when b.missing_since is not null then 'reappeared' \
                            when b.old_status = 'archived' and b.status is distinct from 'archived' then 'unarchived' \
                            when b.name is distinct from b.old_name then 'renamed' \
                            else 'updated' end as change, \
                       a.archiving and b.name is distinct from b.old_name as renamed_too, \
                       greatest( \
                           case when a.archiving and b.archived_at is not null then b.archived_at else $1 end, \
                           v.valid_from + case when a.archiving and b.name is distinct from b.old_name \
                                               then interval '2 microseconds' \
                                               else interval '1 microsecond' end) as starts \
            ) k \
         ), closed as ( \
            update openai.project_versions v \
            set valid_to = case when c.renamed_too then c.renamed_at else c.starts end, closed_by_run = $2 \
            from changes c \
            where v.ctid = c.open_version \
              and v.ctid = any(array(select open_version from changes)) \
            returning c.open_version \
         ), opened as ( \
            insert into openai.project_versions \
                (project_key, project_id, name, status, created_at, archived_at, external_key_id, residency, \
                 raw, change, valid_from, valid_to, opened_by_run, closed_by_run) \
            select c.key, c.project_id, c.name, c.status, c.created_at, c.archived_at, c.external_key_id, \
                   c.residency, c.raw, c.change, c.starts, null::timestamptz, $2, null::bigint \
            from changes c join closed on closed.open_version = c.open_version \
            union all \
            select c.key, c.project_id, c.name, c.open_status, c.created_at, c.open_archived_at, \
                   c.external_key_id, c.residency, \
                   c.raw || jsonb_build_object('status', c.open_status, \
                                               'archived_at', coalesce(c.open_archived_at_raw, 'null'::jsonb)), \
                   'renamed', c.renamed_at, c.starts, $2, $2 \
            from changes c join closed on closed.open_version = c.open_version \
            where c.renamed_too \
         ) \
         update openai.project_current p set \
            name = c.name, status = c.status, created_at = c.created_at, archived_at = c.archived_at, \
            external_key_id = c.external_key_id, residency = c.residency, raw = c.raw, \
            raw_digest = c.raw_digest, last_seen_at = greatest(p.last_seen_at, $1), missing_since = null \
         from changes c where p.key = c.key and p.key = any(array(select key from changes))",
    )
    .bind(observed_at)
    .bind(run_id)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Collects into `walk_vanished` the present projects this complete walk did not list (as
/// classified), and counts them.
async fn find_vanished(
    tx: &mut PgConnection,
    observed_at: DateTime<Utc>,
) -> Result<i64, StoreError> {
    // The classification holds every present project the walk did not list. A project the
    // request queue created in the last hour may not be listed yet (lists can lag a create):
    // not seeing it is no sign that it vanished.
    sqlx::query(
        "create temp table walk_vanished on commit drop as \
         select x.key from walk_classified x \
         where x.seq is null and x.first_seen_at < $1 \
           and not exists (select 1 from openai.project_requests r \
                           where r.project_id = x.project_id and r.finished_at > $1 - interval '1 hour')",
    )
    .bind(observed_at)
    .execute(&mut *tx)
    .await?;
    let (vanished,): (i64,) = sqlx::query_as("select count(*) from walk_vanished")
        .fetch_one(&mut *tx)
        .await?;
    Ok(vanished)
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
            from walk_vanished x \
            where openai.spread_key(v.project_key) = openai.spread_key(x.key) \
              and v.project_key = x.key and v.valid_to is null \
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
                (select max(started_at) from openai.sync_runs where status = 'succeeded' and resource = 'projects'), c.last_seen_at)) \
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
