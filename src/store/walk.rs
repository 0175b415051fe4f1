//! One walk applied atomically: a dedicated connection holds the walk lock and one transaction,
//! each batch of pages is applied inside it as it arrives, and only a complete walk commits.

use std::collections::HashMap;

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

/// What one batch of listed projects changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchCounts {
    pub listed: i64,
    pub inserted: i64,
    pub changed: i64,
    pub reappeared: i64,
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
/// An id that is already known is skipped (`on conflict`), never overwritten.
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
                      raw, (status = 'archived' and archived_at > created_at) as split \
         ), first_versions as ( \
            insert into openai.project_versions \
                (project_key, project_id, name, status, created_at, archived_at, external_key_id, residency, \
                 raw, change, valid_from, valid_to, opened_by_run, closed_by_run) \
            select key, project_id, name, \
                   case when split then 'active' else status end, created_at, \
                   case when split then null else archived_at end, external_key_id, residency, \
                   case when split then raw || '{\"status\": \"active\", \"archived_at\": null}'::jsonb else raw end, \
                   'created', created_at, case when split then archived_at end, $2, case when split then $2 end \
            from fresh \
            union all \
            select key, project_id, name, status, created_at, archived_at, external_key_id, residency, \
                   raw, 'archived', archived_at, null, $2, null \
            from fresh where split \
         )"
    };
}
pub(super) use insert_unknown_sql;

/// The last listing of each id in a batch, as the columns the statements take.
struct LastListings<'a> {
    ids: Vec<&'a str>,
    digests: Vec<i64>,
    raws: Vec<&'a str>,
    /// Position of the listing in the whole walk, so the last of several listings wins.
    positions: Vec<i64>,
}

impl<'a> LastListings<'a> {
    fn with_capacity(n: usize) -> LastListings<'a> {
        LastListings {
            ids: Vec::with_capacity(n),
            digests: Vec::with_capacity(n),
            raws: Vec::with_capacity(n),
            positions: Vec::with_capacity(n),
        }
    }

    fn push(&mut self, listing: &Listing<'a>, position: i64) {
        self.ids.push(listing.project_id);
        self.digests.push(listing.digest);
        self.raws.push(listing.raw);
        self.positions.push(position);
    }

    /// The listings at `indexes`, in their order.
    fn only(&self, indexes: &[i32]) -> LastListings<'a> {
        let mut kept = LastListings::with_capacity(indexes.len());
        for &i in indexes {
            let i = i as usize;
            kept.ids.push(self.ids[i]);
            kept.digests.push(self.digests[i]);
            kept.raws.push(self.raws[i]);
            kept.positions.push(self.positions[i]);
        }
        kept
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

/// The JSON text with each escape Postgres `jsonb` refuses — `\u0000`, and a UTF-16 surrogate
/// without its pair (JSON allows both) — replaced by `\ufffd`, or `None` when it has none.
///
/// One such project would otherwise fail every walk. Only real escapes are replaced: an escaped
/// backslash followed by `u0000` is left alone.
pub fn jsonb_safe(raw: &str) -> Option<String> {
    if !raw.contains("\\u") {
        return None;
    }
    let bytes = raw.as_bytes();
    let unit_at = |at: usize| -> Option<u16> {
        let hex = raw.get(at..at + 4)?;
        if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        u16::from_str_radix(hex, 16).ok()
    };
    let escape_at = |at: usize| -> Option<u16> {
        (bytes.get(at) == Some(&b'\\') && bytes.get(at + 1) == Some(&b'u'))
            .then(|| unit_at(at + 2))
            .flatten()
    };
    let mut safe = String::with_capacity(raw.len());
    let (mut i, mut copied, mut replaced) = (0, 0, false);
    while i < bytes.len() {
        if bytes[i] != b'\\' {
            i += 1;
            continue;
        }
        let Some(unit) = escape_at(i) else {
            // Any other escape is two characters as far as finding the next one goes.
            i += 2;
            continue;
        };
        let refused = match unit {
            0 => true,
            0xD800..=0xDBFF if matches!(escape_at(i + 6), Some(0xDC00..=0xDFFF)) => {
                i += 12;
                continue;
            }
            0xD800..=0xDFFF => true,
            _ => false,
        };
        if refused {
            safe.push_str(&raw[copied..i]);
            safe.push_str("\\ufffd");
            copied = i + 6;
            replaced = true;
        }
        i += 6;
    }
    if !replaced {
        return None;
    }
    safe.push_str(&raw[copied..]);
    Some(safe)
}

/// Longest any one statement of a walk may run; the largest commit takes seconds.
const WALK_STATEMENT_TIMEOUT: &str = "10min";

/// Longest the walk's transaction may wait for the next page: longer than a page's whole
/// retry budget, so only a wedged process is cut off, its lock and snapshot released.
const WALK_IDLE_IN_TRANSACTION_TIMEOUT: &str = "30min";

/// The walk connection's options: `options` with statement and idle-in-transaction timeouts,
/// and TCP keepalives so the server ends the walk of a client that vanished.
#[doc(hidden)]
pub fn walk_connect_options(options: &PgConnectOptions) -> PgConnectOptions {
    options.clone().options([
        ("statement_timeout", WALK_STATEMENT_TIMEOUT),
        (
            "idle_in_transaction_session_timeout",
            WALK_IDLE_IN_TRANSACTION_TIMEOUT,
        ),
        ("tcp_keepalives_idle", "60"),
        ("tcp_keepalives_interval", "10"),
        ("tcp_keepalives_count", "6"),
    ])
}

/// A walk in progress: its own connection, the walk lock, and an open transaction.
pub struct WalkSession {
    connection: PgConnection,
    run_id: i64,
    observed_at: DateTime<Utc>,
    /// Projects present before the walk, for the sanity guard.
    present_before: i64,
    listed: i64,
    totals: BatchCounts,
    /// Whether the last batch was (almost) all new projects, or the walk began on an empty
    /// table: then the next batch is inserted first and only what is known is compared.
    mostly_new: bool,
}

impl WalkSession {
    /// Connects and takes the walk lock; `None` when another walk holds it.
    ///
    /// The lock lives on this connection, not a pooled one, so it cannot outlive the walk
    /// inside a recycled connection, and dies with the process.
    pub async fn open(options: &PgConnectOptions) -> Result<Option<WalkSession>, StoreError> {
        let mut connection = PgConnection::connect_with(&walk_connect_options(options)).await?;
        let (locked,): (bool,) = sqlx::query_as("select pg_try_advisory_lock($1)")
            .bind(WALK_LOCK)
            .fetch_one(&mut connection)
            .await?;
        if !locked {
            let _ = connection.close().await;
            return Ok(None);
        }
        // Estimates inside the walk's long transaction are stale and can look huge; compiling
        // a statement that then touches a thousand rows would cost more than running it.
        sqlx::query("set jit = off")
            .execute(&mut connection)
            .await?;
        // `seq` is the listing's position in the walk, where a change could have been held.
        sqlx::query("create temp table walk_seen (key bigint not null, seq bigint)")
            .execute(&mut connection)
            .await?;
        sqlx::query(
            "create temp table walk_batch (\
                seq bigint, project_id text, raw jsonb, raw_digest bigint, key bigint, old_name text, \
                old_status text, missing_since timestamptz, name text, status text, created_at timestamptz, \
                archived_at timestamptz, external_key_id text, residency text)",
        )
        .execute(&mut connection)
        .await?;
        Ok(Some(WalkSession {
            connection,
            run_id: 0,
            observed_at: Utc::now(),
            present_before: 0,
            listed: 0,
            totals: BatchCounts::default(),
            mostly_new: false,
        }))
    }

    /// Opens the walk's transaction for run `run_id`.
    ///
    /// `observed_at` is when the walk started: changes without a time of their own start then.
    pub async fn begin(
        &mut self,
        run_id: i64,
        observed_at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        sqlx::query("create temp table walk_held (like walk_batch)")
            .execute(&mut self.connection)
            .await?;
        sqlx::query("begin").execute(&mut self.connection).await?;
        let (present_before, empty): (i64, bool) = sqlx::query_as(
            "select count(*) filter (where missing_since is null), count(*) = 0 from openai.project_current",
        )
        .fetch_one(&mut self.connection)
        .await?;
        self.run_id = run_id;
        self.observed_at = observed_at;
        self.present_before = present_before;
        self.mostly_new = empty;
        Ok(())
    }

    /// Applies listed projects inside the walk's transaction.
    ///
    /// Within the batch the last listing of an id counts; a project listed again in a later
    /// batch is compared with what its first listing wrote, so an identical repeat changes
    /// nothing. A known project whose digest is unchanged is not parsed or compared at all.
    /// While listings are almost all new (a first sync, a large influx), the batch is inserted
    /// first and only the ids that turn out to be known are looked up and compared.
    pub async fn apply_batch(
        &mut self,
        listings: &[Listing<'_>],
    ) -> Result<BatchCounts, StoreError> {
        let listed = listings.len() as i64;
        let last_listing: HashMap<&str, usize> = listings
            .iter()
            .enumerate()
            .map(|(i, l)| (l.project_id, i))
            .collect();
        let mut batch = LastListings::with_capacity(last_listing.len());
        for (i, listing) in listings.iter().enumerate() {
            if last_listing.get(listing.project_id) == Some(&i) {
                batch.push(listing, self.listed + i as i64);
            }
        }
        let mut counts = BatchCounts {
            listed,
            ..BatchCounts::default()
        };
        if self.mostly_new {
            let (inserted, known) = self.insert_unknown(&batch).await?;
            counts.inserted = inserted;
            batch = batch.only(&known);
        }
        if !batch.ids.is_empty() {
            let (inserted, changed, reappeared) = self.compare_known(&batch).await?;
            counts.inserted += inserted;
            counts.changed = changed;
            counts.reappeared = reappeared;
        }
        self.mostly_new = counts.inserted * 10 >= listed * 9;
        self.listed += listed;
        self.totals.listed += counts.listed;
        self.totals.inserted += counts.inserted;
        self.totals.changed += counts.changed;
        self.totals.reappeared += counts.reappeared;
        Ok(counts)
    }

    /// Inserts the batch's projects that are not known yet; returns how many, and the
    /// positions in `batch` of those that were known.
    async fn insert_unknown(
        &mut self,
        batch: &LastListings<'_>,
    ) -> Result<(i64, Vec<i32>), StoreError> {
        let (inserted, known): (i64, Vec<i32>) = sqlx::query_as(concat!(
            "with unknown as materialized ( \
                select project_id, digest, raw_text::jsonb as raw \
                from unnest($3::text[], $4::bigint[], $5::text[]) as p(project_id, digest, raw_text) \
             ), ",
            insert_unknown_sql!(),
            ", seen as ( \
                insert into walk_seen (key) select key from fresh \
             ) \
             select (select count(*) from fresh), \
                    array(select (l.i - 1)::int from unnest($3::text[]) with ordinality as l(project_id, i) \
                          where l.project_id not in (select project_id from fresh))"
        ))
        .bind(self.observed_at)
        .bind(self.run_id)
        .bind(&batch.ids)
        .bind(&batch.digests)
        .bind(&batch.raws)
        .fetch_one(&mut self.connection)
        .await?;
        Ok((inserted, known))
    }

    /// Looks up each of the batch's projects, inserts the unknown ones, and holds the changes
    /// of known ones for the end of the walk; returns (inserted, changed, reappeared).
    ///
    /// Current state is looked up one project at a time by index: inside the walk's long
    /// transaction the planner's statistics still describe the table as it was, and would pick
    /// a full scan per batch.
    async fn compare_known(
        &mut self,
        batch: &LastListings<'_>,
    ) -> Result<(i64, i64, i64), StoreError> {
        let counts = sqlx::query_as(concat!(
            "with looked as materialized ( \
                select p.seq, p.project_id, p.digest, p.raw_text, c.key, c.name as old_name, \
                       c.status as old_status, c.missing_since, c.raw as old_raw, \
                       c.raw_digest is not distinct from p.digest as same_digest \
                from unnest($3::text[], $4::bigint[], $5::text[], $6::bigint[]) as p(project_id, digest, raw_text, seq) \
                left join lateral ( \
                   select key, name, status, missing_since, raw, raw_digest from openai.project_current \
                   where project_id = p.project_id limit 1 \
                ) c on true \
             ), unknown as materialized ( \
                select seq, project_id, digest, raw_text::jsonb as raw from looked where key is null \
             ), ",
            insert_unknown_sql!(),
            ", suspect as materialized ( \
                select l.*, l.raw_text::jsonb as raw from looked l \
                where l.key is not null and (l.missing_since is not null or not l.same_digest) \
             ), held as ( \
                insert into walk_held \
                select s.seq, s.project_id, s.raw, s.digest, s.key, s.old_name, s.old_status, s.missing_since, f.* \
                from suspect s cross join lateral openai.project_fields(s.raw) f \
                where s.missing_since is not null or s.raw is distinct from s.old_raw \
                returning missing_since is not null as back \
             ), seen as ( \
                insert into walk_seen (key, seq) \
                select key, seq from looked where key is not null \
                union all \
                select key, null from fresh \
             ) \
             select (select count(*) from fresh), \
                    (select count(*) from held where not back), \
                    (select count(*) from held where back)"
        ))
        .bind(self.observed_at)
        .bind(self.run_id)
        .bind(&batch.ids)
        .bind(&batch.digests)
        .bind(&batch.raws)
        .bind(&batch.positions)
        .fetch_one(&mut self.connection)
        .await?;
        Ok(counts)
    }

    /// Marks what the complete walk no longer lists, records the run, and commits.
    ///
    /// A project counts by its last listing: a change held from an earlier listing is dropped
    /// when a later one matched the stored state, and a project changed twice counts once.
    /// The sanity guard refuses (and rolls back everything) when the walk would mark more
    /// than `1 - min_seen_ratio` of the projects present before it as missing.
    pub async fn commit(
        mut self,
        pages: i32,
        min_seen_ratio: f64,
    ) -> Result<ApplyOutcome, StoreError> {
        let tx = &mut self.connection;
        let held = self.totals.changed + self.totals.reappeared > 0;
        if held || self.present_before > 0 {
            // The statements below join whole temp tables: give the planner real sizes.
            sqlx::query("analyze walk_seen").execute(&mut *tx).await?;
        }
        let (mut changed, mut reappeared) = (0, 0);
        if held {
            sqlx::query(
                "insert into walk_batch \
                 select distinct on (h.project_id) h.* from walk_held h \
                 where not exists (select 1 from walk_seen s where s.key = h.key and s.seq > h.seq) \
                 order by h.project_id, h.seq desc",
            )
            .execute(&mut *tx)
            .await?;
            // A project first seen in this walk and changed later in it counts as new.
            (changed, reappeared) = sqlx::query_as(
                "select count(*) filter (where b.missing_since is null and c.first_seen_at < $1), \
                        count(*) filter (where b.missing_since is not null) \
                 from walk_batch b cross join lateral ( \
                    select first_seen_at from openai.project_current where key = b.key limit 1) c",
            )
            .bind(self.observed_at)
            .fetch_one(&mut *tx)
            .await?;
            apply_changes(tx, self.run_id, self.observed_at).await?;
        }
        // A walk that began with no project present has nothing to mark missing.
        let vanished = if self.present_before > 0 {
            find_vanished(tx, self.observed_at).await?
        } else {
            0
        };
        let (seen,): (i64,) = sqlx::query_as("select count(distinct key) from walk_seen")
            .fetch_one(&mut *tx)
            .await?;
        let present = self.present_before;
        if vanished > 0 && ((present - vanished) as f64) < min_seen_ratio * present as f64 {
            self.rollback().await?;
            return Ok(ApplyOutcome::Refused(GuardRefusal {
                present,
                would_vanish: vanished,
                min_seen_ratio,
            }));
        }
        if vanished > 0 {
            mark_vanished(tx, self.run_id, self.observed_at).await?;
        }
        let t = self.totals;
        let counts = RunCounts {
            pages,
            seen: seen as i32,
            inserted: t.inserted as i32,
            changed: changed as i32,
            unchanged: (seen - t.inserted - changed - reappeared).max(0) as i32,
            vanished: vanished as i32,
            reappeared: reappeared as i32,
        };
        record_success(tx, self.run_id, &counts).await?;
        sqlx::query("commit").execute(&mut *tx).await?;
        release(self.connection).await;
        Ok(ApplyOutcome::Applied(counts))
    }

    /// Abandons the walk: nothing it applied is kept, and the lock is released.
    pub async fn rollback(self) -> Result<(), StoreError> {
        let mut connection = self.connection;
        // Outside a transaction this only warns; the point is that none is left open.
        let rolled_back = sqlx::query("rollback").execute(&mut connection).await;
        release(connection).await;
        rolled_back?;
        Ok(())
    }
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

/// Collects into `walk_vanished` the present projects this complete walk did not list, and
/// counts them.
async fn find_vanished(
    tx: &mut PgConnection,
    observed_at: DateTime<Utc>,
) -> Result<i64, StoreError> {
    // `commit` analyzed walk_seen: this joins it with the whole table. A project the request
    // queue created in the last hour may not be listed yet (lists can lag a create): not seeing
    // it is no sign that it vanished.
    sqlx::query(
        "create temp table walk_vanished on commit drop as \
         select c.key from openai.project_current c \
         where c.missing_since is null and c.first_seen_at < $1 \
           and not exists (select 1 from walk_seen s where s.key = c.key) \
           and not exists (select 1 from openai.project_requests r \
                           where r.project_id = c.project_id and r.finished_at > $1 - interval '1 hour')",
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

#[cfg(test)]
mod tests {
    use super::jsonb_safe;

    #[test]
    fn unpaired_surrogate_escapes_become_replacement_characters_and_pairs_stay() {
        assert_eq!(
            jsonb_safe(r#"{"name":"cut \ud83d","b":"\udc00x","ok":"\ud83d\ude80"}"#).as_deref(),
            Some(r#"{"name":"cut \ufffd","b":"\ufffdx","ok":"\ud83d\ude80"}"#)
        );
        assert_eq!(jsonb_safe(r#"{"ok":"\ud83d\ude80 \u00e9"}"#), None);
        assert_eq!(
            jsonb_safe(r#"{"high then high":"\ud83d\ud83d\ude80"}"#).as_deref(),
            Some(r#"{"high then high":"\ufffd\ud83d\ude80"}"#)
        );
    }

    #[test]
    fn nul_escapes_become_replacement_characters_and_nothing_else_changes() {
        assert_eq!(jsonb_safe(r#"{"name":"plain"}"#), None);
        assert_eq!(
            jsonb_safe(r#"{"name":"a\u0000b\u0000","x":1}"#).as_deref(),
            Some(r#"{"name":"a\ufffdb\ufffd","x":1}"#)
        );
        assert_eq!(
            jsonb_safe(r#"{"name":"a\\u0000b"}"#),
            None,
            "an escaped backslash before u0000 is text, not a NUL"
        );
        assert_eq!(
            jsonb_safe(r#"{"name":"\\\u0000"}"#).as_deref(),
            Some(r#"{"name":"\\\ufffd"}"#)
        );
        let fixed = jsonb_safe(r#"{"k\u0000":"\u00001"}"#).expect("replaced");
        let value: serde_json::Value = serde_json::from_str(&fixed).expect("still JSON");
        assert_eq!(value["k\u{fffd}"], "\u{fffd}1");
    }
}
