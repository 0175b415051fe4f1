//! The request worker: claims due requests, creates each project at most once, and settles
//! ambiguous outcomes by looking at the project list, never by trying again blindly.

mod audit_settle;
mod candidates;
mod listener;
mod reconcile;

use std::time::Duration;

use chrono::Utc;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use tracing::Instrument;

use crate::client::{AdminClient, CreateOutcome, CreateProject};
use crate::store::{self, ClaimedRequest, Linked, RowWait, StoreError};

pub use candidates::{comparable_name, region_family};
pub use listener::spawn_listener;
pub use reconcile::Lookup;

/// What to do with a request whose outcome stayed unknown after two walks found no project.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unresolved {
    /// Back to `pending` for a new attempt.
    Retry,
    /// End `failed`, for a person to decide.
    Hold,
}

/// Everything the worker needs.
#[derive(Clone)]
pub struct WorkerDeps {
    pub pool: PgPool,
    pub client: AdminClient,
    pub page_size: u32,
    /// How long a claimed attempt owns its request; longer than any create call can take.
    pub lease: Duration,
    pub max_attempts: u32,
    pub retry_base_delay: Duration,
    pub retry_max_delay: Duration,
    /// How long after an outcome became unknown, and between the two list walks that found no
    /// candidate, before concluding that nothing was created.
    pub reconcile_grace: Duration,
    pub unresolved: Unresolved,
    /// Called with each claimed request just before its create; lets tests make a worker panic.
    #[doc(hidden)]
    pub before_create: Option<fn(&ClaimedRequest)>,
}

/// Why a tick stopped early.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What one tick did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TickReport {
    pub claimed: u32,
    pub created: u32,
    pub failed: u32,
    pub deferred: u32,
    pub unknown: u32,
    pub expired: u32,
    pub adopted: u32,
    pub retried: u32,
    pub walks: u32,
}

impl TickReport {
    /// Whether anything changed state, so another tick may find more to do.
    pub fn progressed(&self) -> bool {
        self.claimed + self.expired + self.adopted + self.retried + self.failed > 0
    }

    fn add(&mut self, other: &TickReport) {
        self.claimed += other.claimed;
        self.created += other.created;
        self.failed += other.failed;
        self.deferred += other.deferred;
        self.unknown += other.unknown;
        self.expired += other.expired;
        self.adopted += other.adopted;
        self.retried += other.retried;
        self.walks += other.walks;
    }
}

/// Most requests one tick claims, so reconciliation and shutdown get their turn.
const CLAIMS_PER_TICK: u32 = 100;

/// One pass: expire dead leases, settle unknown outcomes (walking the list when due), then
/// create what is due.
pub async fn tick(deps: &WorkerDeps, stop: &CancellationToken) -> Result<TickReport, WorkerError> {
    tick_looking(deps, stop, Lookup::StoredThenList).await
}

async fn tick_looking(
    deps: &WorkerDeps,
    stop: &CancellationToken,
    lookup: Lookup,
) -> Result<TickReport, WorkerError> {
    let mut report = TickReport {
        expired: store::expire_leases(&deps.pool).await? as u32,
        ..TickReport::default()
    };
    if report.expired > 0 {
        tracing::warn!(
            requests = report.expired,
            "attempts whose worker stopped are now unknown; looking for their projects"
        );
    }
    // Only what was due when the tick began: a request deferred during the tick waits for the next.
    let due_by = store::database_now(&deps.pool).await?;
    reconcile::settle_unknown(deps, lookup, &mut report).await?;
    while report.claimed < CLAIMS_PER_TICK && !stop.is_cancelled() {
        let Some(request) = store::claim_next_request(&deps.pool, deps.lease, due_by).await? else {
            break;
        };
        report.claimed += 1;
        // Only a write the lease's end makes anyway (`unknown`) is left unwritten when someone
        // holds the row: once the lease runs out, the request is looked up like one whose
        // worker died.
        match attempt_catching_panics(deps, request).await {
            Ok(outcome) => report.add(&outcome),
            Err(e) => reconcile::left_for_later(e)?,
        }
    }
    Ok(report)
}

/// Ticks until a tick changes nothing; for the `requests` command.
pub async fn drain(deps: &WorkerDeps, stop: &CancellationToken) -> Result<TickReport, WorkerError> {
    drain_looking(deps, stop, Lookup::StoredThenList).await
}

async fn drain_looking(
    deps: &WorkerDeps,
    stop: &CancellationToken,
    lookup: Lookup,
) -> Result<TickReport, WorkerError> {
    let mut total = TickReport::default();
    loop {
        let report = tick_looking(deps, stop, lookup).await?;
        total.add(&report);
        if !report.progressed() || stop.is_cancelled() {
            return Ok(total);
        }
    }
}

/// The daemon's worker until `stop`: claims on start, on every wake-up and every
/// `poll_interval`, while a reconciler of its own walks the list for unknown outcomes, so a
/// long walk never delays a new row.
pub async fn run(deps: WorkerDeps, poll_interval: Duration, stop: CancellationToken) {
    // The listener and the reconciler stop with the worker, also when it ends by a panic.
    let children = stop.child_token();
    let _stop_children_on_exit = children.clone().drop_guard();
    let wake = spawn_listener(deps.pool.clone(), children.clone());
    let reconciler = tokio::spawn(
        reconcile_until_stopped(deps.clone(), poll_interval, children.clone(), wake.clone())
            .instrument(tracing::info_span!("reconciler")),
    );
    loop {
        if let Err(e) = drain_looking(&deps, &stop, Lookup::StoredOnly).await {
            tracing::warn!(error = %e, "the request worker failed a pass; it tries again at the next wake-up or poll");
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = wake.notified() => {}
            _ = tokio::time::sleep(poll_interval) => {}
        }
    }
    if let Err(e) = reconciler.await {
        tracing::warn!(error = %e, "the reconciler ended abnormally");
    }
}

/// Settles unknown outcomes every `poll_interval`, walking the list when one is due; a walk in
/// progress is abandoned on `stop`, and a panic ends only the pass it happened in.
async fn reconcile_until_stopped(
    deps: WorkerDeps,
    poll_interval: Duration,
    stop: CancellationToken,
    wake: std::sync::Arc<tokio::sync::Notify>,
) {
    loop {
        let pass_deps = deps.clone();
        let pass = tokio::spawn(
            async move {
                let mut report = TickReport::default();
                reconcile::settle_unknown(&pass_deps, Lookup::StoredThenList, &mut report)
                    .await
                    .map(|()| report)
            }
            .in_current_span(),
        );
        let abort = pass.abort_handle();
        let finished = tokio::select! {
            _ = stop.cancelled() => {
                abort.abort();
                return;
            }
            finished = pass => finished,
        };
        match finished {
            Ok(Ok(report)) if report.retried > 0 => wake.notify_one(),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "a reconciliation pass failed; the next one tries again")
            }
            Err(e) => {
                tracing::error!(error = %e, "a reconciliation pass panicked; the next one tries again")
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(poll_interval) => {}
        }
    }
}

/// Runs one attempt in a task of its own; a panic there is recorded on the request, which
/// becomes `unknown` (the create may have been sent) and is settled by looking, never retried blindly.
async fn attempt_catching_panics(
    deps: &WorkerDeps,
    request: ClaimedRequest,
) -> Result<TickReport, WorkerError> {
    let span = tracing::info_span!("request", id = request.id, attempt = request.attempts);
    let (id, attempt_id, attempts) = (request.id, request.attempt_id.clone(), request.attempts);
    let handled = tokio::spawn(attempt(deps.clone(), request).instrument(span.clone())).await;
    let panic = match handled {
        Ok(outcome) => return outcome,
        Err(e) => e,
    };
    let message = crate::panics::panic_message(panic);
    tracing::error!(parent: &span, panic = %message, "the worker panicked handling a request; it is now unknown and will be looked up");
    let mut report = TickReport::default();
    if let Some(attempt_id) = attempt_id {
        let reason = format!(
            "the worker failed while handling attempt {attempts} ({message}); the create may have been sent, so the daemon is looking for the project"
        );
        report.unknown += u32::from(
            store::mark_unknown(&deps.pool, id, &attempt_id, &reason, RowWait::Bounded).await?,
        );
    }
    Ok(report)
}

/// Creates the project of one claimed request and records what is known of the outcome.
async fn attempt(deps: WorkerDeps, request: ClaimedRequest) -> Result<TickReport, WorkerError> {
    let mut report = TickReport::default();
    let Some(attempt_id) = request.attempt_id.as_deref() else {
        return Ok(report);
    };
    let deps = &deps;
    if request.candidates_since.is_some()
        && let Some(found) = reconcile::stored_candidate_of_earlier_attempt(deps, &request).await?
    {
        // An earlier attempt may have made a project after all: look, do not create again.
        let reason = format!(
            "project {found} appeared since an earlier attempt of this request began; looking at it before creating anything"
        );
        report.unknown += u32::from(
            store::return_to_unknown_unsent(&deps.pool, request.id, attempt_id, &reason).await?,
        );
        return Ok(report);
    }
    if !request.allow_duplicate_name
        && let Some(clash) = store::find_same_name(&deps.pool, &request).await?
    {
        let error = format!(
            "duplicate name: {clash}; set allow_duplicate_name to create another one anyway"
        );
        if store::fail_request(
            &deps.pool,
            request.id,
            attempt_id,
            &error,
            RowWait::UntilFree,
        )
        .await?
        {
            report.failed += 1;
            count_outcome("failed");
        }
        return Ok(report);
    }
    if let Some(hook) = deps.before_create {
        hook(&request);
    }
    if request.attempts == 1 {
        let waited = (Utc::now() - request.requested_at)
            .to_std()
            .unwrap_or_default();
        metrics::histogram!(crate::metric::REQUEST_INSERT_TO_API_SECONDS)
            .record(waited.as_secs_f64());
    }
    let body = CreateProject {
        name: request.name.clone(),
        external_key_id: request.external_key_id.clone(),
        geography: request.geography.clone(),
        residency: request.residency.clone(),
    };
    // The claim's lease may have run out while this worker was stalled (a paused process, a
    // slow database): another worker may have settled the request and tried it again since.
    if !store::renew_lease_before_sending(&deps.pool, request.id, attempt_id, deps.lease).await? {
        tracing::warn!("the attempt lost its request before its create was sent; nothing was sent");
        return Ok(report);
    }
    let outcome = deps.client.create_project(&body).await;
    let recorded = match &outcome {
        CreateOutcome::Created(created) => {
            let project_id = created.project.id.as_str();
            match store::finish_created(
                &deps.pool,
                request.id,
                attempt_id,
                project_id,
                &created.raw,
                RowWait::UntilFree,
            )
            .await?
            {
                Linked::Done => {
                    report.created += 1;
                    tracing::info!(project_id, "project created");
                    true
                }
                Linked::NotOwner => false,
                Linked::ProjectTaken => {
                    // Another request adopted this project as its own while the answer was on its
                    // way: one of the two has the wrong project, which only a person can sort out.
                    let reason = format!(
                        "could not tell which request project {project_id} belongs to: the API created it for this request, \
                         but another request of the same name had already adopted it. Check that request and the projects \
                         of this name in the OpenAI dashboard: a project exists, so do not request it again"
                    );
                    let done = store::fail_request(
                        &deps.pool,
                        request.id,
                        attempt_id,
                        &reason,
                        RowWait::UntilFree,
                    )
                    .await?;
                    report.failed += u32::from(done);
                    done
                }
            }
        }
        CreateOutcome::Rejected(error) => {
            let done = store::fail_request(
                &deps.pool,
                request.id,
                attempt_id,
                &format!("the API refused it: {error}"),
                RowWait::UntilFree,
            )
            .await?;
            report.failed += u32::from(done);
            done
        }
        CreateOutcome::RefusedForNow { error, retry_after } => {
            if request.attempts as u32 >= deps.max_attempts {
                let reason = if request.candidates_since.is_some() {
                    format!(
                        "gave up after {} attempts: the last was refused ({error}), and the earlier ones left no project the list showed",
                        request.attempts
                    )
                } else {
                    format!(
                        "gave up after {} attempts, none of which reached the API: {error}",
                        request.attempts
                    )
                };
                let done = store::fail_request(
                    &deps.pool,
                    request.id,
                    attempt_id,
                    &reason,
                    RowWait::UntilFree,
                )
                .await?;
                report.failed += u32::from(done);
                done
            } else {
                let wait =
                    backoff(deps, request.attempts as u32).max(retry_after.unwrap_or_default());
                let reason = format!(
                    "attempt {} was refused for now ({error}); trying again",
                    request.attempts
                );
                let done = store::defer_request(
                    &deps.pool,
                    request.id,
                    attempt_id,
                    wait,
                    &reason,
                    RowWait::UntilFree,
                )
                .await?;
                report.deferred += u32::from(done);
                done
            }
        }
        CreateOutcome::Ambiguous(error) => {
            let reason =
                format!("the create may have reached the API ({error}); looking for the project");
            let done = store::mark_unknown(
                &deps.pool,
                request.id,
                attempt_id,
                &reason,
                RowWait::Bounded,
            )
            .await?;
            report.unknown += u32::from(done);
            done
        }
    };
    let label = match outcome {
        CreateOutcome::Created(_) => "created",
        CreateOutcome::Rejected(_) => "rejected",
        CreateOutcome::RefusedForNow { .. } => "refused_for_now",
        CreateOutcome::Ambiguous(_) => "ambiguous",
    };
    count_outcome(label);
    if !recorded {
        // Only a lease that ran out mid-call gets here; the row is `unknown` and the list will settle it.
        tracing::warn!(
            outcome = label,
            "the attempt no longer owned its request; reconciliation settles it"
        );
    }
    Ok(report)
}

fn count_outcome(outcome: &'static str) {
    metrics::counter!(crate::metric::REQUEST_ATTEMPTS_TOTAL, "outcome" => outcome).increment(1);
}

/// Exponential backoff with jitter before attempt `attempts + 1` of a request refused for now.
fn backoff(deps: &WorkerDeps, attempts: u32) -> Duration {
    let exponential = deps
        .retry_base_delay
        .saturating_mul(2u32.saturating_pow(attempts.saturating_sub(1).min(16)))
        .min(deps.retry_max_delay);
    exponential.mul_f64(0.5 + fastrand::f64() * 0.5)
}
