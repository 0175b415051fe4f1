//! The request worker: claims due requests, creates each project at most once, and settles
//! ambiguous outcomes by looking at the project list, never by trying again blindly.

mod listener;
mod reconcile;

use std::time::Duration;

use chrono::Utc;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::client::{AdminClient, CreateOutcome, CreateProject};
use crate::store::{self, ClaimedRequest, StoreError};

pub use listener::spawn_listener;

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
    /// How long after an attempt started reconciliation waits before concluding nothing was created.
    pub reconcile_grace: Duration,
    pub unresolved: Unresolved,
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

/// One pass: expire dead leases, settle unknown outcomes, then create what is due.
pub async fn tick(deps: &WorkerDeps, stop: &CancellationToken) -> Result<TickReport, WorkerError> {
    let mut report = TickReport {
        expired: store::expire_leases(&deps.pool).await? as u32,
        ..TickReport::default()
    };
    if report.expired > 0 {
        tracing::warn!(
            requests = report.expired,
            "attempts whose worker stopped are now unknown; checking the project list"
        );
    }
    // Only what was due when the tick began: a request deferred during the tick waits for the next.
    let due_by = store::database_now(&deps.pool).await?;
    reconcile::settle_unknown(deps, &mut report).await?;
    while report.claimed < CLAIMS_PER_TICK && !stop.is_cancelled() {
        let Some(request) = store::claim_next_request(&deps.pool, deps.lease, due_by).await? else {
            break;
        };
        report.claimed += 1;
        attempt(deps, &request, &mut report).await?;
    }
    Ok(report)
}

/// Ticks until a tick changes nothing; for the `requests` command and after each wake-up.
pub async fn drain(deps: &WorkerDeps, stop: &CancellationToken) -> Result<TickReport, WorkerError> {
    let mut total = TickReport::default();
    loop {
        let report = tick(deps, stop).await?;
        total.add(&report);
        if !report.progressed() || stop.is_cancelled() {
            publish_request_counts(&deps.pool).await;
            return Ok(total);
        }
    }
}

/// The daemon's worker: drains at start, on every wake-up and every `poll_interval`, until `stop`.
pub async fn run(deps: WorkerDeps, poll_interval: Duration, stop: CancellationToken) {
    let wake = spawn_listener(deps.pool.clone(), stop.clone());
    loop {
        if let Err(e) = drain(&deps, &stop).await {
            tracing::warn!(error = %e, "the request worker failed a pass; it tries again shortly");
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = wake.notified() => {}
            _ = tokio::time::sleep(poll_interval) => {}
        }
    }
}

/// Creates the project of one claimed request and records what is known of the outcome.
async fn attempt(
    deps: &WorkerDeps,
    request: &ClaimedRequest,
    report: &mut TickReport,
) -> Result<(), WorkerError> {
    let Some(attempt_id) = request.attempt_id.as_deref() else {
        return Ok(());
    };
    let span = tracing::info_span!("request", id = request.id, attempt = request.attempts);
    let _entered = span.enter();
    if !request.allow_duplicate_name
        && let Some(clash) = store::find_same_name(&deps.pool, request).await?
    {
        let error = format!(
            "duplicate name: {clash}; set allow_duplicate_name to create another one anyway"
        );
        if store::fail_request(&deps.pool, request.id, attempt_id, &error).await? {
            report.failed += 1;
            count_outcome("failed");
        }
        return Ok(());
    }
    if request.attempts == 1 {
        let waited = (Utc::now() - request.requested_at)
            .to_std()
            .unwrap_or_default();
        metrics::histogram!("project_request_insert_to_api_seconds").record(waited.as_secs_f64());
    }
    let body = CreateProject {
        name: request.name.clone(),
        external_key_id: request.external_key_id.clone(),
        geography: request.geography.clone(),
        residency: request.residency.clone(),
    };
    let outcome = deps.client.create_project(&body).await;
    let recorded = match &outcome {
        CreateOutcome::Created(project) => {
            let raw = serde_json::to_value(project).unwrap_or_default();
            let done = store::finish_created(&deps.pool, request.id, attempt_id, &raw).await?;
            if done {
                report.created += 1;
                tracing::info!(project_id = %project.id, "project created");
            }
            done
        }
        CreateOutcome::Rejected(error) => {
            let done = store::fail_request(
                &deps.pool,
                request.id,
                attempt_id,
                &format!("the API refused it: {error}"),
            )
            .await?;
            report.failed += u32::from(done);
            done
        }
        CreateOutcome::RefusedForNow { error, retry_after } => {
            if request.attempts as u32 >= deps.max_attempts {
                let reason = format!(
                    "gave up after {} attempts, none of which reached the API: {error}",
                    request.attempts
                );
                let done = store::fail_request(&deps.pool, request.id, attempt_id, &reason).await?;
                report.failed += u32::from(done);
                done
            } else {
                let wait =
                    backoff(deps, request.attempts as u32).max(retry_after.unwrap_or_default());
                let reason = format!(
                    "attempt {} was refused for now ({error}); trying again",
                    request.attempts
                );
                let done =
                    store::defer_request(&deps.pool, request.id, attempt_id, wait, &reason).await?;
                report.deferred += u32::from(done);
                done
            }
        }
        CreateOutcome::Ambiguous(error) => {
            let reason =
                format!("the create may have reached the API ({error}); checking the project list");
            let done = store::mark_unknown(&deps.pool, request.id, attempt_id, &reason).await?;
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
    Ok(())
}

fn count_outcome(outcome: &'static str) {
    metrics::counter!("project_request_attempts_total", "outcome" => outcome).increment(1);
}

/// Exponential backoff with jitter before attempt `attempts + 1` of a request refused for now.
fn backoff(deps: &WorkerDeps, attempts: u32) -> Duration {
    let exponential = deps
        .retry_base_delay
        .saturating_mul(2u32.saturating_pow(attempts.saturating_sub(1).min(16)))
        .min(deps.retry_max_delay);
    exponential.mul_f64(0.5 + fastrand::f64() * 0.5)
}

async fn publish_request_counts(pool: &PgPool) {
    match store::count_requests_by_status(pool).await {
        Ok(counts) => {
            for (status, count) in counts {
                metrics::gauge!("project_requests", "status" => status).set(count as f64);
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not count requests for metrics"),
    }
}
