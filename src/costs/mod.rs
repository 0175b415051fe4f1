//! One cost pass: backfill the days not read after they ended (committed page by page, so an
//! interrupted backfill resumes), then re-read the window `[today − lookback_days, tomorrow)`
//! and apply it in one transaction.

use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveDate, Utc};
use sqlx::PgPool;
use sqlx::postgres::PgConnectOptions;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::client::{AdminClient, ApiError, CostPage, CostQuery, DAY_SECONDS, MAX_COST_LIMIT};
use crate::store::{
    self, Backfilled, CostApplyError, CostCounts, CostRow, CostSession, DuplicateCost, Resource,
    StoreError,
};
use crate::sync::Trigger;

/// Everything a cost pass needs.
#[derive(Clone)]
pub struct CostDeps {
    pub pool: PgPool,
    pub connect: PgConnectOptions,
    pub client: AdminClient,
    /// Days before today re-read on every pass.
    pub lookback_days: u32,
    /// The first day a backfill reads; `None`: the day of the oldest project's `created_at`.
    pub backfill_from: Option<NaiveDate>,
}

/// Why a cost pass did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum CostError {
    #[error("another cost pass is running against this database; only one runs at a time")]
    AlreadyRunning,
    #[error(
        "the cost pass failed after {pages} page(s): {cause}; the window was not applied{}",
        backfill_note(*.backfilled_days)
    )]
    Api {
        pages: i64,
        backfilled_days: i64,
        cause: ApiError,
    },
    #[error("{cause}{}", backfill_note(*.backfilled_days))]
    Duplicate {
        backfilled_days: i64,
        cause: DuplicateCost,
    },
    #[error(
        "the cost pass was abandoned because shutdown was requested; the window was not applied{}",
        backfill_note(*.backfilled_days)
    )]
    Cancelled { backfilled_days: i64 },
    #[error("the page fetcher stopped before the end of the pass; the window was not applied")]
    FetcherStopped,
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn backfill_note(days: i64) -> String {
    if days > 0 {
        format!(
            " ({days} backfilled day(s) committed before it stopped are kept; the next pass resumes after them)"
        )
    } else {
        String::new()
    }
}

/// The outcome of a successful cost pass.
#[derive(Debug, Clone, PartialEq)]
pub struct CostSummary {
    pub run_id: i64,
    pub counts: CostCounts,
    /// Days read for the first time before the window.
    pub backfilled_days: i64,
    /// The window re-read, `[start, end)`.
    pub window: (DateTime<Utc>, DateTime<Utc>),
    pub duration: Duration,
}

/// About how many results one page should hold: the first query reads one day (or what the
/// stored days suggest), later ones as many days as keep a page near this, so memory stays
/// flat whatever the organization's size or the backfill's length.
const ROWS_PER_PAGE: i64 = 5_000;

/// Pages a pass holds at a time: the one fetched is read into the buffers of the one written
/// before, once that one is sent to Postgres.
const PAGES_IN_FLIGHT: usize = 1;

/// Which part of a pass a page belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Days before the window not read after they ended: each page is committed on its own.
    Backfill,
    /// The window: every page is applied in one transaction at its end.
    Window,
}

/// A range of days read in one phase, `[from, until)` in unix seconds.
#[derive(Debug, Clone, Copy)]
struct Segment {
    phase: Phase,
    from: i64,
    until: i64,
}

enum Fetched {
    Page(Phase, CostPage),
    SegmentEnd(Phase),
    Done,
    Failed(ApiError),
}

/// Runs one cost pass and records it in `openai.sync_runs`.
pub async fn run_pass(
    deps: &CostDeps,
    trigger: Trigger,
    cancel: &CancellationToken,
) -> Result<CostSummary, CostError> {
    let span = tracing::info_span!(
        "costs",
        run_id = tracing::field::Empty,
        trigger = trigger.as_str()
    );
    pass(deps, trigger, cancel, &span)
        .instrument(span.clone())
        .await
}

async fn pass(
    deps: &CostDeps,
    trigger: Trigger,
    cancel: &CancellationToken,
    span: &tracing::Span,
) -> Result<CostSummary, CostError> {
    let started = Instant::now();
    let Some(mut session) = CostSession::open(&deps.connect).await? else {
        return Err(CostError::AlreadyRunning);
    };
    let opened = async {
        let abandoned = store::abandon_stale_runs(&deps.pool, Resource::Costs).await?;
        if abandoned > 0 {
            tracing::warn!(
                abandoned,
                "marked cost passes left running by a stopped process as failed"
            );
        }
        store::start_run(&deps.pool, Resource::Costs, trigger.as_str()).await
    }
    .await;
    let (run_id, observed_at) = match opened {
        Ok(run) => run,
        Err(error) => {
            session.close().await;
            record_metrics("failed", 0, started.elapsed());
            return Err(error.into());
        }
    };
    span.record("run_id", run_id);
    let mut counts = CostCounts::default();
    let mut backfilled_days = 0i64;
    let today = observed_at.timestamp().div_euclid(DAY_SECONDS) * DAY_SECONDS;
    let lookback = i64::from(deps.lookback_days).saturating_mul(DAY_SECONDS);
    let window = (
        today.saturating_sub(lookback),
        today.saturating_add(DAY_SECONDS),
    );
    let outcome = run_segments(
        deps,
        &mut session,
        run_id,
        observed_at,
        window,
        cancel,
        &mut counts,
        &mut backfilled_days,
    )
    .await;
    session.close().await;
    let duration = started.elapsed();
    let window_times = (at(window.0), at(window.1));
    match outcome {
        Ok(()) => {
            store::finish_cost_run(&deps.pool, run_id, &counts, None).await?;
            record_metrics("succeeded", counts.pages, duration);
            for (change, n) in [
                ("inserted", counts.inserted),
                ("updated", counts.updated),
                ("removed", counts.removed),
            ] {
                metrics::counter!(crate::metric::COST_ROWS_TOTAL, "change" => change)
                    .increment(u64::try_from(n).unwrap_or(0));
            }
            metrics::counter!(crate::metric::COST_REVISIONS_TOTAL)
                .increment(u64::try_from(counts.revisions).unwrap_or(0));
            tracing::info!(
                pages = counts.pages,
                days_read = counts.days_read,
                backfilled_days,
                inserted = counts.inserted,
                updated = counts.updated,
                unchanged = counts.unchanged,
                removed = counts.removed,
                revisions = counts.revisions,
                days_kept = counts.days_kept,
                duration_ms = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX),
                "cost pass applied"
            );
            Ok(CostSummary {
                run_id,
                counts,
                backfilled_days,
                window: window_times,
                duration,
            })
        }
        Err(error) => {
            record_metrics("failed", counts.pages, duration);
            tracing::error!(error = %error, "cost pass failed");
            if let Err(e) =
                store::finish_cost_run(&deps.pool, run_id, &counts, Some(&error.to_string())).await
            {
                tracing::error!(error = %e, "could not record the failed cost pass");
            }
            Err(error)
        }
    }
}

fn at(unix: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(unix, 0).unwrap_or_default()
}

fn record_metrics(status: &'static str, pages: i64, duration: Duration) {
    crate::metric::record_pass(
        Resource::Costs,
        status,
        u64::try_from(pages).unwrap_or(0),
        duration,
    );
}

/// Plans the pass's segments, fetches them on a thread of their own, and applies what arrives.
#[allow(clippy::too_many_arguments)]
async fn run_segments(
    deps: &CostDeps,
    session: &mut CostSession,
    run_id: i64,
    observed_at: DateTime<Utc>,
    window: (i64, i64),
    cancel: &CancellationToken,
    counts: &mut CostCounts,
    backfilled_days: &mut i64,
) -> Result<(), CostError> {
    let backfill_from = match deps.backfill_from {
        Some(day) => Some(day.and_time(chrono::NaiveTime::MIN).and_utc().timestamp()),
        None => session
            .oldest_project_created_at()
            .await?
            .map(|created| created.timestamp().div_euclid(DAY_SECONDS) * DAY_SECONDS),
    };
    let mut segments = Vec::new();
    if let Some(from) = backfill_from.filter(|&from| from < window.0) {
        let unread = session.unread_days(at(from), at(window.0)).await?;
        for day in unread.into_iter().map(|d| d.timestamp()) {
            match segments.last_mut() {
                Some(Segment { until, .. }) if *until == day => *until = day + DAY_SECONDS,
                _ => segments.push(Segment {
                    phase: Phase::Backfill,
                    from: day,
                    until: day + DAY_SECONDS,
                }),
            }
        }
    } else if backfill_from.is_none() {
        tracing::info!(
            "no project is known yet, so the backfill waits for a project walk; reading the window only"
        );
    }
    segments.push(Segment {
        phase: Phase::Window,
        from: window.0,
        until: window.1,
    });
    let hint = session
        .most_rows_per_day(at(window.0.saturating_sub(14 * DAY_SECONDS)))
        .await?;
    let client = deps
        .client
        .with_own_connections()
        .map_err(|cause| CostError::Api {
            pages: 0,
            backfilled_days: *backfilled_days,
            cause,
        })?;
    let (mut pages_rx, spares, fetcher) = start_fetch(client, segments, hint);
    let _fetcher = FetchThread::start(fetcher).map_err(|error| {
        tracing::error!(error = %error, "could not start the cost page fetcher's thread");
        CostError::FetcherStopped
    })?;
    let mut in_window = false;
    let result = async {
        loop {
            let received = tokio::select! {
                biased;
                _ = cancel.cancelled() => return Err(CostError::Cancelled { backfilled_days: *backfilled_days }),
                received = pages_rx.recv() => received,
            };
            match received {
                Some(Fetched::Page(phase, page)) => {
                    counts.pages += 1;
                    if page.without_amount > 0 {
                        tracing::warn!(
                            results = page.without_amount,
                            "cost results without an amount were skipped, not stored as 0"
                        );
                    }
                    if page.beyond_numeric > 0 {
                        tracing::warn!(
                            results = page.beyond_numeric,
                            "cost results with an amount or quantity of more digits than Postgres numeric holds were skipped; their days keep what is stored"
                        );
                    }
                    if phase == Phase::Backfill {
                        session.begin().await?;
                        let days = backfill_page(
                            session,
                            page,
                            &spares,
                            run_id,
                            observed_at,
                            counts,
                            *backfilled_days,
                        )
                        .await?;
                        session.commit().await?;
                        counts.days_read += days;
                        *backfilled_days += days;
                    } else {
                        if !in_window {
                            session.begin().await?;
                            in_window = true;
                        }
                        counts.days_read += stage_page(session, &page).await?;
                        recycle(&spares, page);
                    }
                }
                Some(Fetched::SegmentEnd(Phase::Window)) => {
                    if !in_window {
                        session.begin().await?;
                        in_window = true;
                    }
                    apply(session, run_id, observed_at, counts, *backfilled_days).await?;
                    session.commit().await?;
                    in_window = false;
                }
                Some(Fetched::SegmentEnd(Phase::Backfill)) => {}
                Some(Fetched::Done) => return Ok(()),
                Some(Fetched::Failed(cause)) => {
                    return Err(CostError::Api {
                        pages: counts.pages,
                        backfilled_days: *backfilled_days,
                        cause,
                    });
                }
                None => return Err(CostError::FetcherStopped),
            }
        }
    }
    .await;
    if result.is_err()
        && let Err(e) = session.rollback().await
    {
        tracing::warn!(error = %e, "rolling back the failed cost pass failed; closing its connection rolls it back");
    }
    result
}

/// Applies the staged days and adds what changed to `counts`; warns about days kept.
async fn apply(
    session: &mut CostSession,
    run_id: i64,
    observed_at: DateTime<Utc>,
    counts: &mut CostCounts,
    backfilled_days: i64,
) -> Result<(), CostError> {
    let applied = session
        .apply_staged(run_id, observed_at)
        .await
        .map_err(|e| apply_error(e, backfilled_days))?;
    for day in &applied.kept_days {
        tracing::warn!(
            day = %day.date_naive(),
            "the Costs API answered this day without results although spend is stored for it; the stored figures are kept"
        );
    }
    counts.add(&applied);
    Ok(())
}

fn apply_error(error: CostApplyError, backfilled_days: i64) -> CostError {
    match error {
        CostApplyError::Duplicate(cause) => CostError::Duplicate {
            backfilled_days,
            cause,
        },
        CostApplyError::Store(e) => CostError::Store(e),
    }
}

/// Writes a page of days to backfill, in the open transaction: inserted as it came when its
/// days were never read, or staged and applied when something is stored for them (a day read
/// while it was in progress, read again now that it has ended). The page goes back to
/// the fetcher as soon as it is sent, so the next one is read while Postgres inserts this one.
/// Returns its days.
#[allow(clippy::too_many_arguments)]
async fn backfill_page(
    session: &mut CostSession,
    mut page: CostPage,
    spares: &mpsc::Sender<CostPage>,
    run_id: i64,
    observed_at: DateTime<Utc>,
    counts: &mut CostCounts,
    backfilled_days: i64,
) -> Result<i64, CostError> {
    let days = page_days(&page);
    let read = i64::try_from(days.len()).unwrap_or(i64::MAX);
    // Appended in the unique index's order, a day's rows go in without searching it.
    page.order_by_key();
    match session
        .insert_unread(page_rows(&page), &days, run_id, observed_at)
        .await
        .map_err(|e| apply_error(e, backfilled_days))?
    {
        Backfilled::Sent(copy) => {
            recycle(spares, page);
            counts.inserted += copy.finish().await?;
            return Ok(read);
        }
        Backfilled::Compare => {}
    }
    tracing::info!(
        from = %at(page.covers.0).date_naive(),
        until = %at(page.covers.1).date_naive(),
        "days to backfill were read before, or have cost rows (or a figure too long to copy); comparing them"
    );
    stage_page(session, &page).await?;
    recycle(spares, page);
    apply(session, run_id, observed_at, counts, backfilled_days).await?;
    Ok(read)
}

/// Hands a page done with back to the fetcher, which reads the next one into its buffers.
fn recycle(spares: &mpsc::Sender<CostPage>, page: CostPage) {
    // Fewer pages circulate than the channel holds; closed only once the fetcher has stopped.
    let _ = spares.try_send(page);
}

/// The days a page answers for, each a UTC midnight.
fn page_days(page: &CostPage) -> Vec<DateTime<Utc>> {
    (page.covers.0..page.covers.1)
        .step_by(usize::try_from(DAY_SECONDS).unwrap_or(1))
        .map(at)
        .collect()
}

/// A page's results as rows borrowed from it. (A result whose text cannot be read back from
/// its page cannot exist: such a one would be left out rather than stored as a guess.)
fn page_rows(page: &CostPage) -> impl Iterator<Item = CostRow<'_>> + Clone {
    page.buckets().flat_map(move |(bucket, results)| {
        let (start, end) = (at(bucket.start_time), at(bucket.end_time));
        results.iter().filter_map(move |result| {
            Some(CostRow {
                bucket_start: start,
                bucket_end: end,
                project_id: page.text(&result.project_id),
                line_item: page.text(&result.line_item),
                currency: page.text(&result.currency),
                amount: page.text(&result.amount)?,
                quantity: page.text(&result.quantity),
                quantity_unit: page.text(&result.quantity_unit),
                raw: page.text(&result.raw)?,
            })
        })
    })
}

/// Stages a page's results and the days it answered for; returns how many days that is. A day
/// that listed a result left out (without an amount, or with a figure Postgres `numeric`
/// cannot hold) is incomplete: nothing stored for it is removed.
async fn stage_page(session: &mut CostSession, page: &CostPage) -> Result<i64, StoreError> {
    let readable = page_rows(page).count();
    if readable != page.results() {
        tracing::error!(
            skipped = page.results() - readable,
            "cost results whose text could not be read back from their page were skipped"
        );
    }
    let mut days = Vec::new();
    let mut buckets = page.buckets().peekable();
    let mut day = page.covers.0;
    while day < page.covers.1 {
        let (results, incomplete) = buckets
            .next_if(|(b, _)| b.start_time == day)
            .map_or((0, false), |(b, r)| {
                (i32::try_from(r.len()).unwrap_or(i32::MAX), b.left_out > 0)
            });
        days.push((at(day), results, incomplete));
        day += DAY_SECONDS;
    }
    session.stage(page_rows(page), &days).await?;
    Ok(i64::try_from(days.len()).unwrap_or(i64::MAX))
}

/// The page fetcher on a thread of its own, with a single-threaded runtime and its own HTTP
/// connections: the connection's read buffers and the pages' stay on that thread (one
/// allocator arena, rather than spread over every worker of the process's runtime, each then
/// keeping its share). It stops when this is dropped, whatever ended the pass.
struct FetchThread {
    _stop: tokio_util::sync::DropGuard,
}

impl FetchThread {
    fn start(fetch: impl Future<Output = ()> + Send + 'static) -> std::io::Result<FetchThread> {
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let span = tracing::Span::current();
        std::thread::Builder::new()
            .name("cost-fetch".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(error) => {
                        // The pages' channel closes: the pass fails as the fetcher stopped.
                        span.in_scope(|| {
                            tracing::error!(error = %error, "could not start the cost page fetcher's runtime");
                        });
                        return;
                    }
                };
                runtime.block_on(
                    async {
                        tokio::select! {
                            () = stopped.cancelled() => {}
                            () = fetch => {}
                        }
                    }
                    .instrument(span),
                );
            })?;
        Ok(FetchThread {
            _stop: stop.drop_guard(),
        })
    }
}

/// Days per query that keep a page near `ROWS_PER_PAGE` when a day holds `rows_per_day`.
fn days_per_query(rows_per_day: i64) -> i64 {
    (ROWS_PER_PAGE / rows_per_day.max(1)).clamp(1, i64::from(MAX_COST_LIMIT))
}

/// Reads every segment in order, a page ahead of the writer; each query has a fixed window so
/// its `next_page` tokens stay valid, and is sized from the busiest day seen so far.
///
/// Pages come back through the second channel once written (a backfill page once sent to
/// Postgres), and the next one is read into the same buffers: one page is held at a time,
/// allocated once for the pass, fetched while Postgres inserts the one before.
fn start_fetch(
    client: AdminClient,
    segments: Vec<Segment>,
    hint: Option<i64>,
) -> (
    mpsc::Receiver<Fetched>,
    mpsc::Sender<CostPage>,
    impl Future<Output = ()> + Send + 'static,
) {
    let (sender, receiver) = mpsc::channel::<Fetched>(1);
    let (spare_sender, mut spares) = mpsc::channel::<CostPage>(PAGES_IN_FLIGHT + 1);
    for _ in 0..PAGES_IN_FLIGHT {
        let _ = spare_sender.try_send(CostPage::default());
    }
    let task = async move {
        let mut busiest = hint.filter(|&rows| rows > 0);
        // Until a day with spend is seen, each query reads twice the days of the last one.
        let mut probe = 1i64;
        for segment in segments {
            let mut from = segment.from;
            while from < segment.until {
                let days = busiest.map_or(probe, days_per_query);
                probe = probe.saturating_mul(2).min(i64::from(MAX_COST_LIMIT));
                let until = from
                    .saturating_add(days.saturating_mul(DAY_SECONDS))
                    .min(segment.until);
                let limit = u32::try_from((until - from) / DAY_SECONDS)
                    .unwrap_or(MAX_COST_LIMIT)
                    .clamp(1, MAX_COST_LIMIT);
                let mut walk = client.cost_pages(CostQuery {
                    start_time: from,
                    end_time: until,
                    limit,
                });
                while !walk.finished() {
                    // A page's buffers are taken before fetching: no more pages than circulate.
                    let Some(spare) = spares.recv().await else {
                        return;
                    };
                    let Ok(slot) = sender.reserve().await else {
                        return;
                    };
                    match walk.next_page_reusing(Some(spare)).await {
                        Ok(Some(page)) => {
                            let most = page
                                .buckets()
                                .map(|(_, r)| i64::try_from(r.len()).unwrap_or(i64::MAX))
                                .max();
                            // A quiet day says nothing about how busy the next ones are.
                            if let Some(most) = most.filter(|&m| m > 0) {
                                busiest = Some(busiest.map_or(most, |b| b.max(most)));
                            }
                            slot.send(Fetched::Page(segment.phase, page));
                        }
                        Ok(None) => break,
                        Err(error) => {
                            slot.send(Fetched::Failed(error));
                            return;
                        }
                    }
                }
                from = until;
            }
            if sender
                .send(Fetched::SegmentEnd(segment.phase))
                .await
                .is_err()
            {
                return;
            }
        }
        let _ = sender.send(Fetched::Done).await;
    };
    (receiver, spare_sender, task)
}
