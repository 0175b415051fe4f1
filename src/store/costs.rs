//! Cost passes: a dedicated connection holds the cost lock; pages are staged in temporary tables
//! and each set of days is made equal to what the API said, in the caller's transaction.

use chrono::{DateTime, Utc};
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection, PgPool};

use super::StoreError;
use super::walk::walk_connect_options;

mod binary;

/// Advisory lock key shared by every process that runs cost passes ("ops_cost"); not the walk's.
const COST_LOCK: i64 = 0x6f70_735f_636f_7374;

/// Most rows staged by one statement: some 90 KiB of parameters, the size the connection's
/// write buffer grows to.
const STAGE_ROWS_PER_STATEMENT: usize = 250;

/// One staged cost result, borrowed from the page it came in.
#[derive(Debug, Clone, Copy)]
pub struct CostRow<'a> {
    pub bucket_start: DateTime<Utc>,
    pub bucket_end: DateTime<Utc>,
    pub project_id: Option<&'a str>,
    pub line_item: Option<&'a str>,
    pub currency: Option<&'a str>,
    /// A decimal number's text, checked by the client; Postgres parses it into `numeric`.
    pub amount: &'a str,
    pub quantity: Option<&'a str>,
    pub quantity_unit: Option<&'a str>,
    /// The result object's JSON as received.
    pub raw: &'a str,
}

/// What making a set of days equal to the API's answer did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CostApplied {
    pub inserted: i64,
    pub updated: i64,
    pub unchanged: i64,
    pub removed: i64,
    pub revisions: i64,
    /// Days answered without results whose stored spend was kept.
    pub kept_days: Vec<DateTime<Utc>>,
}

/// The figures a finished cost pass records in `openai.sync_runs`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CostCounts {
    pub pages: i64,
    pub days_read: i64,
    pub inserted: i64,
    pub updated: i64,
    pub unchanged: i64,
    pub removed: i64,
    pub revisions: i64,
    pub days_kept: i64,
}

impl CostCounts {
    /// Adds what one apply did.
    pub fn add(&mut self, applied: &CostApplied) {
        self.inserted += applied.inserted;
        self.updated += applied.updated;
        self.unchanged += applied.unchanged;
        self.removed += applied.removed;
        self.revisions += applied.revisions;
        self.days_kept += i64::try_from(applied.kept_days.len()).unwrap_or(i64::MAX);
    }
}

/// A key the API listed twice on one day.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the Costs API listed day {bucket_start}, project {project_id:?}, line item {line_item:?}, currency {currency:?} twice; nothing of these days was applied"
)]
pub struct DuplicateCost {
    pub bucket_start: DateTime<Utc>,
    pub project_id: Option<String>,
    pub line_item: Option<String>,
    pub currency: Option<String>,
}

/// How a page of days never read goes in.
#[must_use = "a COPY under way must be finished"]
pub enum Backfilled<'s> {
    /// Every row was sent and the days recorded as read; `UnreadCopy::finish` completes it.
    Sent(UnreadCopy<'s>),
    /// Rows are stored for some of these days already, or a figure is longer than a binary
    /// `numeric` carries: nothing was written; stage the page and apply it instead.
    Compare,
}

/// A backfill `COPY` whose rows are all sent, on the session's connection.
#[must_use = "a COPY under way must be finished"]
pub struct UnreadCopy<'s> {
    copy: sqlx::postgres::PgCopyIn<&'s mut PgConnection>,
}

impl UnreadCopy<'_> {
    /// Waits for Postgres to insert the rows; returns how many it did.
    pub async fn finish(self) -> Result<i64, StoreError> {
        let inserted = self.copy.finish().await?;
        Ok(i64::try_from(inserted).unwrap_or(i64::MAX))
    }
}

/// Columns of `openai.costs` a backfill writes, in the order of `copy_unread.sql`.
const COPY_COLUMNS: i16 = 13;

/// Bytes of `COPY` data gathered before they are sent.
const COPY_CHUNK: usize = 64 * 1024;

/// Why applying staged days failed.
#[derive(Debug, thiserror::Error)]
pub enum CostApplyError {
    #[error(transparent)]
    Duplicate(DuplicateCost),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for CostApplyError {
    fn from(error: sqlx::Error) -> Self {
        CostApplyError::Store(StoreError::Sql(error))
    }
}

/// A cost pass in progress: its own connection holding the cost lock.
pub struct CostSession {
    connection: PgConnection,
    in_transaction: bool,
    staged_rows: i64,
    /// The earliest and the day after the latest staged day.
    staged_span: Option<(DateTime<Utc>, DateTime<Utc>)>,
    /// Backfill rows gathered for `COPY` before they are sent.
    copy_buffer: Vec<u8>,
    /// The hashes of a backfill page's keys, to find one listed twice.
    keys_seen: KeyHashes,
}

/// A hasher and the hashes seen with it.
type KeyHashes = (
    std::collections::hash_map::RandomState,
    std::collections::HashSet<u64>,
);

impl CostSession {
    /// Connects and takes the cost lock; `None` when another cost pass holds it.
    pub async fn open(options: &PgConnectOptions) -> Result<Option<CostSession>, StoreError> {
        let mut connection = PgConnection::connect_with(&walk_connect_options(options)).await?;
        let (locked,): (bool,) = sqlx::query_as("select pg_try_advisory_lock($1)")
            .bind(COST_LOCK)
            .fetch_one(&mut connection)
            .await?;
        if !locked {
            let _ = connection.close().await;
            return Ok(None);
        }
        sqlx::query("set jit = off")
            .execute(&mut connection)
            .await?;
        // A commit lost to a crash loses days that are not recorded as read either: the next
        // pass reads them again. No need to wait for each page's flush.
        sqlx::query("set synchronous_commit = off")
            .execute(&mut connection)
            .await?;
        // Sorting staged rows by their text keys under the database's collation costs several
        // times what hashing them does; the applies join by hash, in memory.
        sqlx::query("set enable_mergejoin = off")
            .execute(&mut connection)
            .await?;
        sqlx::query("set work_mem = '64MB'")
            .execute(&mut connection)
            .await?;
        sqlx::query(
            "create temp table cost_stage (bucket_start timestamptz not null, bucket_end timestamptz not null, \
             project_id text, line_item text, currency text, amount numeric not null, quantity numeric, \
             quantity_unit text, raw jsonb not null) on commit delete rows",
        )
        .execute(&mut connection)
        .await?;
        sqlx::query(
            "create temp table cost_stage_days (bucket_start timestamptz primary key, results integer not null, \
             incomplete boolean not null) on commit delete rows",
        )
        .execute(&mut connection)
        .await?;
        Ok(Some(CostSession {
            connection,
            in_transaction: false,
            staged_rows: 0,
            staged_span: None,
            copy_buffer: Vec::new(),
            keys_seen: KeyHashes::default(),
        }))
    }

    /// The UTC midnight starting the day of the oldest project's `created_at`, if any project is known.
    pub async fn oldest_project_created_at(&mut self) -> Result<Option<DateTime<Utc>>, StoreError> {
        let (oldest,): (Option<DateTime<Utc>>,) =
            sqlx::query_as("select min(created_at) from openai.project_current")
                .fetch_one(&mut self.connection)
                .await?;
        Ok(oldest)
    }

    /// The days in `[from, until)` not read from the Costs API after they ended (never read,
    /// or read only while still in progress, holding their figures so far), oldest first.
    pub async fn unread_days(
        &mut self,
        from: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<Vec<DateTime<Utc>>, StoreError> {
        if from >= until {
            return Ok(Vec::new());
        }
        let rows: Vec<(DateTime<Utc>,)> = sqlx::query_as(include_str!("costs/unread.sql"))
            .bind(from)
            .bind(until)
            .fetch_all(&mut self.connection)
            .await?;
        Ok(rows.into_iter().map(|(day,)| day).collect())
    }

    /// The most cost rows stored for one day among the days since `since`.
    pub async fn most_rows_per_day(
        &mut self,
        since: DateTime<Utc>,
    ) -> Result<Option<i64>, StoreError> {
        let (most,): (Option<i64>,) = sqlx::query_as(
            "select max(n) from (select count(*) as n from openai.costs where bucket_start >= $1 \
             group by bucket_start) per_day",
        )
        .bind(since)
        .fetch_one(&mut self.connection)
        .await?;
        Ok(most)
    }

    /// Opens a transaction on the session's connection.
    pub async fn begin(&mut self) -> Result<(), StoreError> {
        sqlx::query("begin").execute(&mut self.connection).await?;
        self.in_transaction = true;
        self.staged_rows = 0;
        self.staged_span = None;
        Ok(())
    }

    /// Commits the open transaction (which also empties the staging tables).
    pub async fn commit(&mut self) -> Result<(), StoreError> {
        self.in_transaction = false;
        sqlx::query("commit").execute(&mut self.connection).await?;
        Ok(())
    }

    /// Rolls the open transaction back, if one is open.
    pub async fn rollback(&mut self) -> Result<(), StoreError> {
        if self.in_transaction {
            self.in_transaction = false;
            sqlx::query("rollback")
                .execute(&mut self.connection)
                .await?;
        }
        Ok(())
    }

    /// Stages a page's rows and the days it answered for, with each day's result count and
    /// whether it listed results left out, without an amount or with a figure `numeric`
    /// cannot hold (then no stored row of it is removed).
    pub async fn stage<'r>(
        &mut self,
        rows: impl Iterator<Item = CostRow<'r>>,
        days: &[(DateTime<Utc>, i32, bool)],
    ) -> Result<(), StoreError> {
        // In statements of a bounded size, so the connection's buffers stay small.
        let mut rows = rows.peekable();
        while rows.peek().is_some() {
            let n = STAGE_ROWS_PER_STATEMENT;
            let mut starts = Vec::with_capacity(n);
            let mut ends = Vec::with_capacity(n);
            let mut projects = Vec::with_capacity(n);
            let mut items = Vec::with_capacity(n);
            let mut currencies = Vec::with_capacity(n);
            let mut amounts = Vec::with_capacity(n);
            let mut quantities = Vec::with_capacity(n);
            let mut units = Vec::with_capacity(n);
            let mut raws = Vec::with_capacity(n);
            for row in rows.by_ref().take(n) {
                starts.push(row.bucket_start);
                ends.push(row.bucket_end);
                projects.push(row.project_id);
                items.push(row.line_item);
                currencies.push(row.currency);
                amounts.push(row.amount);
                quantities.push(row.quantity);
                units.push(row.quantity_unit);
                raws.push(row.raw);
            }
            let staged = i64::try_from(starts.len()).unwrap_or(i64::MAX);
            sqlx::query(include_str!("costs/stage.sql"))
                .bind(starts)
                .bind(ends)
                .bind(projects)
                .bind(items)
                .bind(currencies)
                .bind(amounts)
                .bind(quantities)
                .bind(units)
                .bind(raws)
                .execute(&mut self.connection)
                .await?;
            self.staged_rows += staged;
        }
        if !days.is_empty() {
            let starts: Vec<DateTime<Utc>> = days.iter().map(|d| d.0).collect();
            let counts: Vec<i32> = days.iter().map(|d| d.1).collect();
            let incomplete: Vec<bool> = days.iter().map(|d| d.2).collect();
            for &day in &starts {
                let next = day + chrono::TimeDelta::days(1);
                self.staged_span = Some(match self.staged_span {
                    None => (day, next),
                    Some((from, until)) => (from.min(day), until.max(next)),
                });
            }
            sqlx::query(include_str!("costs/stage_days.sql"))
                .bind(starts)
                .bind(counts)
                .bind(incomplete)
                .execute(&mut self.connection)
                .await?;
        }
        Ok(())
    }

    /// Starts inserting a page of days never read (`days`, each a UTC midnight) straight into
    /// `openai.costs` with a binary `COPY`, inside the open transaction, and records the days
    /// as read. Nothing to compare, revise or remove: unless one of these days was read before
    /// (while it was in progress) or has rows stored after all, then nothing is written and the page is to be staged and applied
    /// (`Backfilled::Compare`), as it is when a figure is too long for a binary `numeric`.
    ///
    /// Once this returns `Sent`, every row is on its way and the page may be let go of while
    /// Postgres inserts them; `UnreadCopy::finish` waits for that. A key listed twice is
    /// refused with its key before anything is written; the table's unique constraint refuses
    /// any other.
    pub async fn insert_unread<'s, 'r, I>(
        &'s mut self,
        rows: I,
        days: &[DateTime<Utc>],
        run_id: i64,
        observed_at: DateTime<Utc>,
    ) -> Result<Backfilled<'s>, CostApplyError>
    where
        I: Iterator<Item = CostRow<'r>> + Clone,
    {
        let (Some(&from), Some(&last)) = (days.iter().min(), days.iter().max()) else {
            return Ok(Backfilled::Compare);
        };
        if let Some(duplicate) = first_duplicate(rows.clone(), &mut self.keys_seen) {
            return Err(CostApplyError::Duplicate(duplicate));
        }
        let fits = rows.clone().all(|row| {
            binary::numeric_fits(row.amount) && row.quantity.is_none_or(binary::numeric_fits)
        });
        let until = last + chrono::TimeDelta::days(1);
        let CostSession {
            connection,
            copy_buffer,
            ..
        } = self;
        let (touched,): (bool,) = sqlx::query_as(include_str!("costs/touched.sql"))
            .bind(from)
            .bind(until)
            .fetch_one(&mut *connection)
            .await?;
        if touched || !fits {
            return Ok(Backfilled::Compare);
        }
        sqlx::query(include_str!("costs/read_days.sql"))
            .bind(days)
            .bind(observed_at)
            .bind(run_id)
            .execute(&mut *connection)
            .await?;
        let mut copy = connection
            .copy_in_raw(include_str!("costs/copy_unread.sql"))
            .await?;
        // Kept from page to page: a pass allocates it once.
        let buffer = copy_buffer;
        buffer.clear();
        buffer.reserve(COPY_CHUNK + 4096);
        buffer.extend_from_slice(binary::HEADER);
        for row in rows {
            let mut out = binary::Row::start(buffer, COPY_COLUMNS);
            out.time(row.bucket_start);
            out.time(row.bucket_end);
            out.text(row.project_id);
            out.text(row.line_item);
            out.text(row.currency);
            if !(out.numeric(row.amount) && out.numeric_or_null(row.quantity)) {
                // Checked above, so this cannot happen; never send a row cut short.
                let _ = copy.abort("a cost figure could not be written").await;
                return Err(StoreError::Sql(sqlx::Error::Protocol(
                    "a cost figure checked for COPY could not be written".into(),
                ))
                .into());
            }
            out.text(row.quantity_unit);
            out.jsonb(row.raw);
            out.time(observed_at);
            out.time(observed_at);
            out.bigint(run_id);
            out.bigint(run_id);
            if buffer.len() >= COPY_CHUNK {
                if let Err(e) = copy.send(buffer.as_slice()).await {
                    let _ = copy.abort("sending the rows failed").await;
                    return Err(e.into());
                }
                buffer.clear();
            }
        }
        buffer.extend_from_slice(binary::TRAILER);
        if let Err(e) = copy.send(buffer.as_slice()).await {
            let _ = copy.abort("sending the rows failed").await;
            return Err(e.into());
        }
        buffer.clear();
        Ok(Backfilled::Sent(UnreadCopy { copy }))
    }

    /// Makes every staged day equal to what the API said, inside the open transaction; commit
    /// next (which empties the staging tables) before staging more.
    ///
    /// New rows are inserted, differing ones rewritten (a changed amount with a revision), rows
    /// no longer listed removed (with a revision) only from days that came back with results;
    /// identical rows are not written at all. Staged days are recorded as read.
    pub async fn apply_staged(
        &mut self,
        run_id: i64,
        observed_at: DateTime<Utc>,
    ) -> Result<CostApplied, CostApplyError> {
        let Some((from, until)) = self.staged_span else {
            return Ok(CostApplied::default());
        };
        let c = &mut self.connection;
        let (touched,): (bool,) = sqlx::query_as(include_str!("costs/touched.sql"))
            .bind(from)
            .bind(until)
            .fetch_one(&mut *c)
            .await?;
        if !touched {
            // Days never read: nothing to compare, revise or remove; only a key listed twice.
            refuse_duplicate(c).await?;
            let inserted = sqlx::query(include_str!("costs/insert_all.sql"))
                .bind(observed_at)
                .bind(run_id)
                .execute(&mut *c)
                .await?;
            self.record_days(run_id, observed_at).await?;
            let inserted = i64::try_from(inserted.rows_affected()).unwrap_or(i64::MAX);
            let applied = CostApplied {
                inserted,
                unchanged: self.staged_rows.saturating_sub(inserted),
                ..CostApplied::default()
            };
            self.staged_rows = 0;
            self.staged_span = None;
            return Ok(applied);
        }
        // Without statistics the planner takes the staged days for a handful of rows and
        // probes every stored row of a day for each staged one.
        sqlx::query("analyze cost_stage, cost_stage_days")
            .execute(&mut *c)
            .await?;
        // Even so it takes a join on a day's text keys for a few index probes each, where each
        // probe reads every stored row of that day; until the commit, every join hashes.
        sqlx::query("set local enable_nestloop = off")
            .execute(&mut *c)
            .await?;
        refuse_duplicate(c).await?;
        let run = |sql: &'static str| {
            sqlx::query(sql)
                .bind(observed_at)
                .bind(run_id)
                .bind(from)
                .bind(until)
        };
        let revised = run(include_str!("costs/revise.sql"))
            .execute(&mut *c)
            .await?;
        let updated = run(include_str!("costs/update.sql"))
            .execute(&mut *c)
            .await?;
        let removed = run(include_str!("costs/remove.sql"))
            .execute(&mut *c)
            .await?;
        let inserted = run(include_str!("costs/insert.sql"))
            .execute(&mut *c)
            .await?;
        self.record_days(run_id, observed_at).await?;
        let c = &mut self.connection;
        let kept: Vec<(DateTime<Utc>,)> = sqlx::query_as(include_str!("costs/kept.sql"))
            .bind(from)
            .bind(until)
            .fetch_all(&mut *c)
            .await?;
        let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        let (inserted, updated, removed) = (
            count(inserted.rows_affected()),
            count(updated.rows_affected()),
            count(removed.rows_affected()),
        );
        let applied = CostApplied {
            inserted,
            updated,
            unchanged: self
                .staged_rows
                .saturating_sub(inserted)
                .saturating_sub(updated),
            removed,
            revisions: count(revised.rows_affected()).saturating_add(removed),
            kept_days: kept.into_iter().map(|(day,)| day).collect(),
        };
        self.staged_rows = 0;
        self.staged_span = None;
        Ok(applied)
    }

    /// Records the staged days as read, and once as read after they ended where they had.
    async fn record_days(
        &mut self,
        run_id: i64,
        observed_at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        sqlx::query(include_str!("costs/record_days.sql"))
            .bind(observed_at)
            .bind(run_id)
            .execute(&mut self.connection)
            .await?;
        Ok(())
    }

    /// Releases the cost lock, then closes the connection.
    pub async fn close(mut self) {
        let _ = self.rollback().await;
        let _ = sqlx::query("select pg_advisory_unlock($1)")
            .bind(COST_LOCK)
            .execute(&mut self.connection)
            .await;
        let _ = self.connection.close().await;
    }
}

/// The first key `rows` list twice, if any: by hash, then comparing the rows themselves.
/// `seen` is emptied first and kept for the next page.
fn first_duplicate<'r>(
    rows: impl Iterator<Item = CostRow<'r>> + Clone,
    seen: &mut KeyHashes,
) -> Option<DuplicateCost> {
    use std::hash::BuildHasher as _;
    let key = |row: &CostRow<'r>| {
        (
            row.bucket_start,
            row.project_id,
            row.line_item,
            row.currency,
        )
    };
    let (hasher, seen) = (&seen.0, &mut seen.1);
    seen.clear();
    for (n, row) in rows.clone().enumerate() {
        if !seen.insert(hasher.hash_one(key(&row)))
            && rows
                .clone()
                .take(n)
                .any(|earlier| key(&earlier) == key(&row))
        {
            return Some(DuplicateCost {
                bucket_start: row.bucket_start,
                project_id: row.project_id.map(str::to_owned),
                line_item: row.line_item.map(str::to_owned),
                currency: row.currency.map(str::to_owned),
            });
        }
    }
    None
}

/// Records a finished cost pass: `succeeded`, or `failed` with its error, and its figures.
pub async fn finish_cost_run(
    pool: &PgPool,
    run_id: i64,
    counts: &CostCounts,
    error: Option<&str>,
) -> Result<(), StoreError> {
    let clamp = |n: i64| i32::try_from(n).unwrap_or(i32::MAX);
    sqlx::query(include_str!("costs/finish_run.sql"))
        .bind(run_id)
        .bind(if error.is_some() {
            "failed"
        } else {
            "succeeded"
        })
        .bind(error)
        .bind(clamp(counts.pages))
        .bind(clamp(counts.days_read))
        .bind(clamp(counts.inserted))
        .bind(clamp(counts.updated))
        .bind(clamp(counts.unchanged))
        .bind(clamp(counts.removed))
        .bind(clamp(counts.revisions))
        .bind(clamp(counts.days_kept))
        .execute(pool)
        .await?;
    Ok(())
}

/// Fails with the first key the staged rows hold twice, if any.
async fn refuse_duplicate(c: &mut PgConnection) -> Result<(), CostApplyError> {
    type Key = (
        DateTime<Utc>,
        Option<String>,
        Option<String>,
        Option<String>,
    );
    let duplicate: Option<Key> = sqlx::query_as(include_str!("costs/duplicate.sql"))
        .fetch_optional(&mut *c)
        .await?;
    match duplicate {
        Some((bucket_start, project_id, line_item, currency)) => {
            Err(CostApplyError::Duplicate(DuplicateCost {
                bucket_start,
                project_id,
                line_item,
                currency,
            }))
        }
        None => Ok(()),
    }
}
