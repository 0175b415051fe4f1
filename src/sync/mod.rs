//! One walk of the project list into Postgres: fetch pages, stage them as they arrive, apply
//! atomically in one short transaction once the list's end is reached.

use std::time::{Duration, Instant};

use sqlx::PgPool;
use sqlx::postgres::PgConnectOptions;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::client::{AdminClient, ApiError, ListedProject};
use crate::store::{self, ApplyOutcome, GuardRefusal, Listing, RunCounts, StoreError, WalkSession};

/// What starts a walk, as recorded in `sync_runs.trigger`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Manual,
    Schedule,
    Startup,
}

impl Trigger {
    /// The name recorded in `sync_runs.trigger`.
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Manual => "manual",
            Trigger::Schedule => "schedule",
            Trigger::Startup => "startup",
        }
    }
}

/// Why a walk did not apply.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("another sync is running against this database; only one walk runs at a time")]
    AlreadyRunning,
    #[error("the walk failed after {pages} page(s): {cause}")]
    Api { pages: i32, cause: ApiError },
    #[error("{0}")]
    Guard(GuardRefusal),
    #[error("the walk was abandoned because shutdown was requested; nothing was applied")]
    Cancelled,
    #[error(
        "the page fetcher stopped without reaching the end of the list after {pages} page(s){}; nothing was applied",
        .panic.as_deref().map(|p| format!(" (it panicked: {p})")).unwrap_or_default()
    )]
    FetcherStopped { pages: i32, panic: Option<String> },
    #[error(
        "the page fetcher reported {fetched} page(s) at the end of the list but {applied} arrived; nothing was applied"
    )]
    PagesLost { fetched: u64, applied: i32 },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Everything a walk needs.
#[derive(Clone)]
pub struct SyncDeps {
    pub pool: PgPool,
    pub connect: PgConnectOptions,
    pub client: AdminClient,
    pub page_size: u32,
    pub min_seen_ratio: f64,
    /// What happens after a failed walk, for its one log line: the daemon's next tick, or the
    /// command's exit.
    pub after_failure: &'static str,
}

/// The outcome of a successful walk.
#[derive(Debug, Clone, PartialEq)]
pub struct WalkSummary {
    pub run_id: i64,
    pub counts: RunCounts,
    pub duration: Duration,
}

/// Told about each page as it is staged, for progress display.
pub trait Progress: Send {
    fn page_staged(&mut self, pages: u64, projects: u64);
}

impl Progress for () {
    fn page_staged(&mut self, _: u64, _: u64) {}
}

/// Pages the fetcher may run ahead of the writer; bounds memory whatever the organization's size.
const PAGES_IN_FLIGHT: usize = 4;

/// Walks every page (archived projects included) and applies the result, or records why not.
pub async fn walk_and_apply(
    deps: &SyncDeps,
    trigger: Trigger,
    cancel: &CancellationToken,
    progress: &mut dyn Progress,
) -> Result<WalkSummary, SyncError> {
    walk_and_apply_hooked(deps, trigger, cancel, progress, None).await
}

/// Called in the fetch task with each page's number once it is fetched; a test hook.
#[doc(hidden)]
pub type FetchHook = Box<dyn FnMut(u64) + Send>;

/// `walk_and_apply` with a hook run in the fetch task after each page; for tests only.
#[doc(hidden)]
pub async fn walk_and_apply_hooked(
    deps: &SyncDeps,
    trigger: Trigger,
    cancel: &CancellationToken,
    progress: &mut dyn Progress,
    hook: Option<FetchHook>,
) -> Result<WalkSummary, SyncError> {
    // `run_id` is recorded once the run exists; the fetch task logs inside this span from the start.
    let span = tracing::info_span!(
        "sync",
        run_id = tracing::field::Empty,
        trigger = trigger.as_str()
    );
    walk(deps, trigger, cancel, progress, hook, &span)
        .instrument(span.clone())
        .await
}

async fn walk(
    deps: &SyncDeps,
    trigger: Trigger,
    cancel: &CancellationToken,
    progress: &mut dyn Progress,
    hook: Option<FetchHook>,
    span: &tracing::Span,
) -> Result<WalkSummary, SyncError> {
    let started = Instant::now();
    let (session, mut fetcher, pages_rx, run_id, observed_at) = match open_and_record(
        deps, trigger, hook, span,
    )
    .await
    {
        Ok(Some(opened)) => opened,
        Ok(None) => return Err(SyncError::AlreadyRunning),
        Err(error) => {
            let duration = started.elapsed();
            record_metrics("failed", 0, duration);
            tracing::error!(
                error = %error,
                next = deps.after_failure,
                "the walk could not start (opening its connection, taking the walk lock or recording the run); nothing was applied"
            );
            return Err(error);
        }
    };
    tracing::info!("walk started");
    let outcome = apply(
        deps,
        session,
        &mut fetcher,
        pages_rx,
        run_id,
        observed_at,
        cancel,
        progress,
    )
    .await;
    let duration = started.elapsed();
    match outcome {
        Ok(counts) => {
            record_metrics("succeeded", counts.pages, duration);
            tracing::info!(
                pages = counts.pages,
                seen = counts.seen,
                new = counts.inserted,
                changed = counts.changed,
                unchanged = counts.unchanged,
                vanished = counts.vanished,
                reappeared = counts.reappeared,
                duration_ms = duration.as_millis() as u64,
                "walk applied"
            );
            Ok(WalkSummary {
                run_id,
                counts,
                duration,
            })
        }
        Err((pages, error)) => {
            record_metrics("failed", pages, duration);
            tracing::error!(pages, error = %error, next = deps.after_failure, "walk failed; nothing was applied");
            if let Err(e) = store::fail_run(&deps.pool, run_id, pages, &error.to_string()).await {
                tracing::error!(error = %e, "could not record the failed walk");
            }
            Err(error)
        }
    }
}

/// What a walk holds once it has started: its session, fetch task, pages, run and start time.
type Opened = (
    WalkSession,
    AbortOnDrop,
    mpsc::Receiver<Fetched>,
    i64,
    chrono::DateTime<chrono::Utc>,
);

/// Takes the walk lock, starts fetching, and records the run; `None` when another walk runs.
async fn open_and_record(
    deps: &SyncDeps,
    trigger: Trigger,
    hook: Option<FetchHook>,
    span: &tracing::Span,
) -> Result<Option<Opened>, SyncError> {
    let Some(session) = WalkSession::open(&deps.connect).await? else {
        return Ok(None);
    };
    // Pages start arriving while the run is recorded and its transaction opened.
    let (pages_rx, fetcher) = start_fetch(deps, hook, span);
    let abandoned = store::abandon_stale_runs(&deps.pool, store::Resource::Projects).await?;
    if abandoned > 0 {
        tracing::warn!(
            abandoned,
            "marked walks left running by a stopped process as failed"
        );
    }
    let (run_id, observed_at) =
        store::start_run(&deps.pool, store::Resource::Projects, trigger.as_str()).await?;
    span.record("run_id", run_id);
    Ok(Some((session, fetcher, pages_rx, run_id, observed_at)))
}

/// Stages every page as it arrives and applies the walk only at the list's explicit end.
#[allow(clippy::too_many_arguments)]
async fn apply(
    deps: &SyncDeps,
    mut session: WalkSession,
    fetcher: &mut AbortOnDrop,
    pages_rx: mpsc::Receiver<Fetched>,
    run_id: i64,
    observed_at: chrono::DateTime<chrono::Utc>,
    cancel: &CancellationToken,
    progress: &mut dyn Progress,
) -> Result<RunCounts, (i32, SyncError)> {
    session.record_as(run_id, observed_at);
    let pages = match stage_all_pages(pages_rx, fetcher, &mut session, cancel, progress).await {
        Ok(pages) => pages,
        Err(failure) => {
            if let Err(e) = session.rollback().await {
                tracing::warn!(error = %e, "releasing the abandoned walk's connection failed; closing it releases the walk lock");
            }
            return Err(failure);
        }
    };
    let committed = session
        .commit(pages, deps.min_seen_ratio)
        .await
        .map_err(|e| (pages, SyncError::Store(e)))?;
    match committed {
        ApplyOutcome::Applied(counts) => Ok(counts),
        ApplyOutcome::Refused(refusal) => Err((pages, SyncError::Guard(refusal))),
    }
}

fn record_metrics(status: &'static str, pages: i32, duration: Duration) {
    let pages = u64::try_from(pages).unwrap_or(0);
    crate::metric::record_pass(store::Resource::Projects, status, pages, duration);
}

/// A fetched page: each project as the API's own JSON, with its digest.
struct FetchedPage {
    projects: Vec<(ListedProject, i64)>,
}

/// What the fetch task tells the writer.
enum Fetched {
    Page(FetchedPage),
    End(WalkEnd),
}

/// How the fetch task ended; only `Done` lets a walk commit.
enum WalkEnd {
    /// The API said there is no more; `pages` pages were sent before this.
    Done {
        pages: u64,
    },
    Failed(ApiError),
}

/// Aborts the fetch task when the walk ends early, whatever the reason.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl AbortOnDrop {
    /// Waits for the stopped task and returns its panic message, if it panicked.
    async fn panic_message(&mut self) -> Option<String> {
        let error = (&mut self.0).await.err()?;
        if !error.is_panic() {
            return None;
        }
        let payload = error.into_panic();
        Some(
            payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".to_owned()),
        )
    }
}

/// Most pages staged in one statement when the writer falls behind the fetcher.
const MAX_PAGES_PER_BATCH: usize = 16;

/// Fetches every page in a task of its own inside the walk's span, at most `PAGES_IN_FLIGHT`
/// ahead of the writer, and ends with `Done` only at the list's end.
fn start_fetch(
    deps: &SyncDeps,
    mut hook: Option<FetchHook>,
    span: &tracing::Span,
) -> (mpsc::Receiver<Fetched>, AbortOnDrop) {
    let (sender, pages_rx) = mpsc::channel::<Fetched>(PAGES_IN_FLIGHT);
    let mut walk = deps.client.walk_projects(deps.page_size, true);
    let fetch_started = Instant::now();
    let task = async move {
        loop {
            let next = match walk.next_raw_page().await {
                // Digests are computed here, beside the fetch, not on the writer's path.
                Ok(Some(page)) => Fetched::Page(FetchedPage {
                    projects: page.projects.into_iter().map(prepare).collect(),
                }),
                Ok(None) => {
                    tracing::debug!(
                        pages = walk.pages(),
                        elapsed_ms = fetch_started.elapsed().as_millis() as u64,
                        "every page fetched"
                    );
                    let done = WalkEnd::Done {
                        pages: walk.pages(),
                    };
                    let _ = sender.send(Fetched::End(done)).await;
                    return;
                }
                Err(error) => Fetched::End(WalkEnd::Failed(error)),
            };
            if let (Some(hook), Fetched::Page(_)) = (hook.as_mut(), &next) {
                hook(walk.pages());
            }
            let failed = matches!(next, Fetched::End(_));
            if sender.send(next).await.is_err() || failed {
                return;
            }
        }
    };
    let fetcher = AbortOnDrop(tokio::spawn(task.instrument(span.clone())));
    (pages_rx, fetcher)
}

/// A listed project made storable, with the digest of the text that will be stored.
fn prepare(mut project: ListedProject) -> (ListedProject, i64) {
    if let Some(safe) = crate::json_text::jsonb_safe(project.raw.get()) {
        match serde_json::value::RawValue::from_string(safe) {
            Ok(raw) => {
                tracing::warn!(
                    project_id = %project.id,
                    "the project's JSON holds \\u0000 or an unpaired surrogate, which Postgres cannot store; stored with U+FFFD in its place"
                );
                project.raw = raw;
            }
            Err(e) => {
                tracing::warn!(project_id = %project.id, error = %e, "could not replace \\u0000 in the project's JSON")
            }
        }
    }
    let digest = store::content_digest(project.raw.get());
    (project, digest)
}

/// Stages pages as the fetch task delivers them; returns the page count once it said `Done`.
async fn stage_all_pages(
    mut pages_rx: mpsc::Receiver<Fetched>,
    fetcher: &mut AbortOnDrop,
    session: &mut WalkSession,
    cancel: &CancellationToken,
    progress: &mut dyn Progress,
) -> Result<i32, (i32, SyncError)> {
    let (mut pages, mut projects) = (0i32, 0u64);
    loop {
        let received = tokio::select! {
            biased;
            _ = cancel.cancelled() => return Err((pages, SyncError::Cancelled)),
            received = pages_rx.recv() => received,
        };
        let first = match received {
            Some(Fetched::Page(page)) => page,
            Some(Fetched::End(end)) => return finish(end, pages),
            None => {
                let panic = fetcher.panic_message().await;
                return Err((pages, SyncError::FetcherStopped { pages, panic }));
            }
        };
        let mut batch = vec![first];
        let mut last = None;
        while batch.len() < MAX_PAGES_PER_BATCH {
            match pages_rx.try_recv() {
                Ok(Fetched::Page(page)) => batch.push(page),
                Ok(Fetched::End(end)) => {
                    last = Some(end);
                    break;
                }
                // Empty, or closed: the next `recv` tells which.
                Err(_) => break,
            }
        }
        let listings: Vec<Listing<'_>> = batch
            .iter()
            .flat_map(|page| &page.projects)
            .map(|(project, digest)| Listing {
                project_id: &project.id,
                raw: project.raw.get(),
                digest: *digest,
            })
            .collect();
        session
            .stage(&listings)
            .await
            .map_err(|e| (pages, SyncError::Store(e)))?;
        for page in &batch {
            pages += 1;
            projects += page.projects.len() as u64;
            progress.page_staged(pages as u64, projects);
        }
        if let Some(last) = last {
            return finish(last, pages);
        }
    }
}

/// The walk's end as the fetcher reported it: the page count when complete, else why not.
// The error carries the API's own words; it is returned once per walk.
#[allow(clippy::result_large_err)]
fn finish(end: WalkEnd, pages: i32) -> Result<i32, (i32, SyncError)> {
    match end {
        WalkEnd::Done { pages: fetched } if u64::try_from(pages) == Ok(fetched) => Ok(pages),
        WalkEnd::Done { pages: fetched } => Err((
            pages,
            SyncError::PagesLost {
                fetched,
                applied: pages,
            },
        )),
        WalkEnd::Failed(cause) => Err((pages, SyncError::Api { pages, cause })),
    }
}
