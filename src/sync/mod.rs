//! One walk of the project list into Postgres: fetch pages, stage them as they arrive, apply atomically.

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
    fn as_str(self) -> &'static str {
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
    let started = Instant::now();
    let Some(mut session) = WalkSession::open(&deps.connect).await? else {
        return Err(SyncError::AlreadyRunning);
    };
    // Pages start arriving while the run is recorded and its transaction opened.
    let (pages_rx, _fetcher) = start_fetch(deps);
    let abandoned = store::abandon_stale_runs(&deps.pool).await?;
    if abandoned > 0 {
        tracing::warn!(
            abandoned,
            "marked walks left running by a stopped process as failed"
        );
    }
    let (run_id, observed_at) = store::start_run(&deps.pool, trigger.as_str()).await?;
    let span = tracing::info_span!("sync", run_id, trigger = trigger.as_str());
    let outcome = async {
        tracing::info!("walk started");
        session.begin(run_id, observed_at).await.map_err(|e| (0, SyncError::Store(e)))?;
        let pages = match apply_all_pages(pages_rx, &mut session, cancel, progress).await {
            Ok(pages) => pages,
            Err(failure) => {
                if let Err(e) = session.rollback().await {
                    tracing::warn!(error = %e, "rolling back the abandoned walk failed; closing its connection rolls it back");
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
    .instrument(span.clone())
    .await;
    let _entered = span.enter();
    let duration = started.elapsed();
    match outcome {
        Ok(counts) => {
            record_metrics("succeeded", counts.pages, duration);
            metrics::gauge!("sync_last_success_timestamp_seconds")
                .set(chrono::Utc::now().timestamp() as f64);
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
            tracing::error!(pages, error = %error, "walk failed; nothing was applied");
            if let Err(e) = store::fail_run(&deps.pool, run_id, pages, &error.to_string()).await {
                tracing::error!(error = %e, "could not record the failed walk");
            }
            Err(error)
        }
    }
}

fn record_metrics(status: &'static str, pages: i32, duration: Duration) {
    metrics::counter!("sync_runs_total", "status" => status).increment(1);
    metrics::counter!("sync_pages_total").increment(pages.max(0) as u64);
    metrics::histogram!("sync_duration_seconds", "status" => status).record(duration.as_secs_f64());
}

/// A fetched page: each project as the API's own JSON, with its digest.
struct FetchedPage {
    projects: Vec<(ListedProject, i64)>,
}

/// Aborts the fetch task when the walk ends early, whatever the reason.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Most pages staged in one statement when the writer falls behind the fetcher.
const MAX_PAGES_PER_BATCH: usize = 16;

/// Fetches every page in a task of its own, at most `PAGES_IN_FLIGHT` ahead of the writer.
fn start_fetch(deps: &SyncDeps) -> (mpsc::Receiver<Result<FetchedPage, ApiError>>, AbortOnDrop) {
    let (sender, pages_rx) = mpsc::channel::<Result<FetchedPage, ApiError>>(PAGES_IN_FLIGHT);
    let mut walk = deps.client.walk_projects(deps.page_size, true);
    let fetch_started = Instant::now();
    let fetcher = AbortOnDrop(tokio::spawn(async move {
        loop {
            let next = match walk.next_raw_page().await {
                // Digests are computed here, beside the fetch, not on the writer's path.
                Ok(Some(page)) => Ok(FetchedPage {
                    projects: page
                        .projects
                        .into_iter()
                        .map(|p| {
                            let digest = store::content_digest(p.raw.get());
                            (p, digest)
                        })
                        .collect(),
                }),
                Ok(None) => {
                    tracing::debug!(
                        pages = walk.pages(),
                        elapsed_ms = fetch_started.elapsed().as_millis() as u64,
                        "every page fetched"
                    );
                    return;
                }
                Err(error) => Err(error),
            };
            let failed = next.is_err();
            if sender.send(next).await.is_err() || failed {
                return;
            }
        }
    }));
    (pages_rx, fetcher)
}

/// Applies pages as the fetch task delivers them; returns the page count.
async fn apply_all_pages(
    mut pages_rx: mpsc::Receiver<Result<FetchedPage, ApiError>>,
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
            None => return Ok(pages),
            Some(Err(cause)) => return Err((pages, SyncError::Api { pages, cause })),
            Some(Ok(page)) => page,
        };
        let mut batch = vec![first];
        let mut failure = None;
        while batch.len() < MAX_PAGES_PER_BATCH {
            match pages_rx.try_recv() {
                Ok(Ok(page)) => batch.push(page),
                Ok(Err(cause)) => {
                    failure = Some(cause);
                    break;
                }
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
            .apply_batch(&listings)
            .await
            .map_err(|e| (pages, SyncError::Store(e)))?;
        for page in &batch {
            pages += 1;
            projects += page.projects.len() as u64;
            progress.page_staged(pages as u64, projects);
        }
        if let Some(cause) = failure {
            return Err((pages, SyncError::Api { pages, cause }));
        }
    }
}
