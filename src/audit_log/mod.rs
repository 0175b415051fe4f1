//! Reading the organization's audit log: each poll reads from the watermark less the overlap,
//! stores the new events, and applies project events to history with their exact time and
//! author; the full walk stays the source of truth.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::client::{
    AdminClient, ApiError, AuditEvent, MEMBER_EVENT_TYPES, PROJECT_ARCHIVED, PROJECT_EVENT_TYPES,
    PROJECT_UPDATED,
};
use crate::config::AuditLogEnabled;
use crate::store::{self, ApplyEvents, NewAuditEvent, RetrievedState, StoreError};
use crate::unix_time;

/// How long an organization found without audit logging goes before it is checked again.
pub const RECHECK_OFF_AFTER: Duration = Duration::from_secs(3600);

/// At most this many projects are retrieved at once while applying events.
const RETRIEVES_IN_FLIGHT: usize = 8;

/// What an operator is told, once, when the organization has no audit logging.
pub const LOGGING_OFF_ADVICE: &str = "the organization's audit log is off (it answers nothing, or refuses), so changes are recorded when a walk sees them and without their author. An organization owner can turn audit logging on under Organization settings in the OpenAI dashboard (once on it cannot be turned off); this is checked again every hour. Set audit_log.enabled = false to stop checking";

/// Everything an audit-log pass needs.
#[derive(Clone)]
pub struct AuditDeps {
    pub pool: PgPool,
    pub client: AdminClient,
    pub enabled: AuditLogEnabled,
    pub overlap: Duration,
}

/// Why a pass failed.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("reading the audit log failed: {0}")]
    Api(ApiError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What one pass did.
#[derive(Debug, Clone, PartialEq)]
pub enum AuditOutcome {
    /// `audit_log.enabled = false`.
    Disabled,
    /// The organization has no audit logging; `newly` when this pass found it so.
    LoggingOff { newly: bool },
    /// Nothing new: one call per page of the window, and no row written but the watermark.
    Idle { events_in_window: usize, pages: u32 },
    /// New events stored (and applied where they could be).
    Applied(AuditSummary),
}

/// The figures of a pass that stored or applied something.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditSummary {
    pub run_id: i64,
    pub pages: u32,
    pub events_in_window: usize,
    pub new_events: u64,
    pub projects_inserted: i64,
    pub projects_changed: i64,
    pub versions_corrected: i64,
    /// Projects whose events wait for the next pass (a walk held the lock or wrote the project
    /// while it was retrieved, or a retrieve failed).
    pub projects_waiting: usize,
    pub duration: Duration,
}

/// One catch-up pass: reads the window, stores what is new, applies project events.
pub async fn pass(deps: &AuditDeps, trigger: &'static str) -> Result<AuditOutcome, AuditError> {
    let span = tracing::info_span!("audit_log", trigger);
    let started = Instant::now();
    let outcome = pass_inner(deps, trigger, started).instrument(span).await;
    let pages = match &outcome {
        Ok(AuditOutcome::Disabled | AuditOutcome::LoggingOff { .. }) => None,
        Ok(AuditOutcome::Idle { pages, .. }) => Some(("succeeded", *pages)),
        Ok(AuditOutcome::Applied(summary)) => Some(("succeeded", summary.pages)),
        Err(_) => Some(("failed", 0)),
    };
    if let Some((status, pages)) = pages {
        crate::metric::record_pass(
            store::Resource::AuditLog,
            status,
            u64::from(pages),
            started.elapsed(),
        );
    }
    outcome
}

/// Whether an API failure is the organization saying audit logging is off.
fn says_logging_off(error: &ApiError) -> bool {
    matches!(
        error.root(),
        ApiError::Status {
            status: 400 | 403 | 404,
            ..
        }
    )
}

async fn pass_inner(
    deps: &AuditDeps,
    trigger: &'static str,
    started: Instant,
) -> Result<AuditOutcome, AuditError> {
    if deps.enabled == AuditLogEnabled::Off {
        return Ok(AuditOutcome::Disabled);
    }
    let poll_began = Utc::now();
    let state = store::audit_log_state(&deps.pool).await?;
    // Once the log has given events, audit logging is on for good (it cannot be turned off): a
    // refusal then is a failure to report, not an organization without audit logging.
    let auto = deps.enabled == AuditLogEnabled::Auto
        && !(state.logging == "on" && store::any_audit_event_stored(&deps.pool).await?);
    if auto && state.logging == "off" {
        let checked = state
            .logging_checked_at
            .and_then(|at| (Utc::now() - at).to_std().ok());
        if checked.is_some_and(|ago| ago < RECHECK_OFF_AFTER) {
            return Ok(AuditOutcome::LoggingOff { newly: false });
        }
    }
    let overlap = chrono::Duration::from_std(deps.overlap).unwrap_or(chrono::Duration::hours(1));
    let since = state.watermark.unwrap_or(poll_began) - overlap;
    let types: Vec<&str> = PROJECT_EVENT_TYPES
        .iter()
        .chain(MEMBER_EVENT_TYPES.iter())
        .copied()
        .collect();
    let mut window = match deps
        .client
        .audit_log_window(since.timestamp(), &types)
        .await
    {
        Ok(window) => window,
        Err(error) if auto && says_logging_off(&error) => {
            return logging_off(deps, &state.logging, Some(&error)).await;
        }
        Err(error) => {
            record_failed_run(deps, trigger, &error.to_string()).await;
            return Err(AuditError::Api(error));
        }
    };
    // An event dated outside the years 1 to 9999 cannot be stored as a time: left out, or every
    // poll would fail on it or find it new again, and no poll would ever be idle.
    let readable = window.events.len();
    window
        .events
        .retain(|e| unix_time::storable(e.effective_at).is_some());
    if window.events.len() < readable {
        tracing::warn!(
            left_out = readable - window.events.len(),
            "the audit log sent events dated outside any storable time; they were left out"
        );
    }
    if window.unasked > 0 {
        tracing::warn!(
            unasked = window.unasked,
            "the audit log sent events of types not asked for (a filter it ignored); they were left out"
        );
    }
    if window.events.is_empty() && state.logging != "on" {
        match deps.client.audit_log_has_events().await {
            Ok(false) if auto => return logging_off(deps, &state.logging, None).await,
            Ok(false) => tracing::warn!(
                "the organization's audit log holds no event at all; audit logging may be off (audit_log.enabled = true keeps polling)"
            ),
            Ok(true) => store::set_audit_logging(&deps.pool, "on").await?,
            Err(error) if auto && says_logging_off(&error) => {
                return logging_off(deps, &state.logging, Some(&error)).await;
            }
            Err(error) => {
                record_failed_run(deps, trigger, &error.to_string()).await;
                return Err(AuditError::Api(error));
            }
        }
    }
    if state.logging == "off" {
        tracing::info!("the organization's audit log answers again; reading it");
    }
    // An event dated after this poll began (a server clock ahead, or a bad date) must not carry
    // the watermark past changes still to come: the watermark never passes the poll's own time.
    let newest = window
        .events
        .iter()
        .map(|e| e.effective_at)
        .max()
        .and_then(unix_time::storable)
        .map(|at| at.min(poll_began));
    let ids: Vec<&str> = window.events.iter().map(|e| e.id.as_str()).collect();
    let unstored = store::unstored_audit_events(&deps.pool, &ids).await?;
    let pending = store::pending_targets(&deps.pool).await?;
    if unstored.is_empty() && pending.is_empty() {
        store::note_idle_poll(&deps.pool, newest).await?;
        tracing::debug!(events = window.events.len(), "nothing new in the audit log");
        return Ok(AuditOutcome::Idle {
            events_in_window: window.events.len(),
            pages: window.pages,
        });
    }
    let (run_id, _) = store::start_run(&deps.pool, store::Resource::AuditLog, trigger).await?;
    let result = store_and_apply(deps, run_id, &window.events, &unstored, newest).await;
    match result {
        Ok((new_events, applied, waiting)) => {
            let summary = AuditSummary {
                run_id,
                pages: window.pages,
                events_in_window: window.events.len(),
                new_events,
                projects_inserted: applied.inserted,
                projects_changed: applied.changed,
                versions_corrected: applied.corrected,
                projects_waiting: waiting,
                duration: started.elapsed(),
            };
            let changed = applied.changed.saturating_add(applied.corrected);
            store::finish_audit_run(
                &deps.pool,
                run_id,
                i32::try_from(window.pages).unwrap_or(i32::MAX),
                i32::try_from(window.events.len()).unwrap_or(i32::MAX),
                i32::try_from(applied.inserted).unwrap_or(i32::MAX),
                i32::try_from(changed).unwrap_or(i32::MAX),
            )
            .await?;
            tracing::info!(
                run_id,
                new_events,
                inserted = applied.inserted,
                changed = applied.changed,
                corrected = applied.corrected,
                waiting,
                "audit log read"
            );
            Ok(AuditOutcome::Applied(summary))
        }
        Err(error) => {
            tracing::error!(run_id, error = %error, "the audit-log pass failed");
            if let Err(e) = store::fail_run(
                &deps.pool,
                run_id,
                i32::try_from(window.pages).unwrap_or(i32::MAX),
                &error.to_string(),
            )
            .await
            {
                tracing::error!(error = %e, "could not record the failed audit-log pass");
            }
            Err(error)
        }
    }
}

/// Records that the organization has no audit logging, telling the operator once.
async fn logging_off(
    deps: &AuditDeps,
    before: &str,
    error: Option<&ApiError>,
) -> Result<AuditOutcome, AuditError> {
    store::set_audit_logging(&deps.pool, "off").await?;
    let newly = before != "off";
    if newly {
        match error {
            Some(error) => tracing::warn!(answer = %error, "{LOGGING_OFF_ADVICE}"),
            None => tracing::warn!("{LOGGING_OFF_ADVICE}"),
        }
    }
    Ok(AuditOutcome::LoggingOff { newly })
}

/// A pass that failed before it stored anything still leaves a failed run behind.
async fn record_failed_run(deps: &AuditDeps, trigger: &'static str, error: &str) {
    tracing::error!(
        error,
        "reading the audit log failed; nothing was stored and the watermark stays"
    );
    let recorded = async {
        let (run_id, _) = store::start_run(&deps.pool, store::Resource::AuditLog, trigger).await?;
        store::fail_run(&deps.pool, run_id, 0, error).await
    }
    .await;
    if let Err(e) = recorded {
        tracing::error!(error = %e, "could not record the failed audit-log pass");
    }
}

/// Stores the window's new events with the watermark, then applies pending project events.
async fn store_and_apply(
    deps: &AuditDeps,
    run_id: i64,
    events: &[AuditEvent],
    unstored: &[String],
    newest: Option<DateTime<Utc>>,
) -> Result<(u64, store::AppliedCounts, usize), AuditError> {
    let new: Vec<NewAuditEvent<'_>> = events
        .iter()
        .filter(|e| unstored.contains(&e.id))
        .filter_map(|e| {
            let effective_at = unix_time::storable(e.effective_at)?;
            Some(NewAuditEvent {
                id: &e.id,
                kind: &e.kind,
                effective_at,
                target_id: e.target_id.as_deref(),
                actor_type: e.actor_type.as_deref(),
                actor_email: e.actor_email.as_deref(),
                actor_id: e.actor_id.as_deref(),
                changed_by: e.changed_by.as_deref(),
                raw: &e.raw,
                to_apply: PROJECT_EVENT_TYPES.contains(&e.kind.as_str()),
            })
        })
        .collect();
    let new_events = store::store_audit_window(&deps.pool, &new, newest).await?;
    let mut pending = store::pending_targets(&deps.pool).await?;
    let retrieved = retrieve_all(&deps.client, &pending).await;
    for (target, result) in pending.iter_mut().zip(&retrieved) {
        if let Ok(Some(raw)) = result {
            prefer_event_describing(target, raw);
        }
    }
    let mut states = Vec::with_capacity(pending.len());
    for (target, result) in pending.iter().zip(&retrieved) {
        match result {
            Ok(raw) => states.push(RetrievedState {
                target,
                raw: raw.as_deref(),
                digest: raw.as_deref().map_or(0, store::content_digest),
            }),
            Err(error) => tracing::warn!(
                project_id = %target.target_id,
                error = %error,
                "could not retrieve a project its audit events are about; trying again at the next poll"
            ),
        }
    }
    let waiting = pending.len() - states.len();
    match store::apply_retrieved_states(&deps.pool, run_id, &states).await? {
        ApplyEvents::Applied(counts) => {
            if counts.superseded > 0 {
                tracing::info!(
                    projects = counts.superseded,
                    "a walk recorded these projects while they were retrieved; applying their audit events at the next poll"
                );
            }
            let superseded = usize::try_from(counts.superseded).unwrap_or(usize::MAX);
            Ok((new_events, counts, waiting.saturating_add(superseded)))
        }
        ApplyEvents::WalkRunning => {
            tracing::info!(
                projects = pending.len(),
                "a walk is running; applying these audit events at the next poll"
            );
            Ok((new_events, store::AppliedCounts::default(), pending.len()))
        }
    }
}

/// Of the events of a pending project's latest second, takes the one that describes the
/// project's state now (an update to its name, or an archive of an archived project) as its
/// latest: within one second the log's order says nothing.
fn prefer_event_describing(target: &mut store::PendingTarget, raw: &str) {
    let state: serde_json::Value = serde_json::from_str(raw).unwrap_or_default();
    let name = state.get("name").and_then(serde_json::Value::as_str);
    let archived = state.get("status").and_then(serde_json::Value::as_str) == Some("archived");
    let wanted = name.map(crate::worker::comparable_name);
    let describes = |(kind, title): (&String, &Option<String>)| match kind.as_str() {
        PROJECT_ARCHIVED => archived,
        PROJECT_UPDATED => {
            !archived
                && match (title, &wanted) {
                    (Some(title), Some(name)) => &crate::worker::comparable_name(title) == name,
                    (None, _) => true,
                    (Some(_), None) => false,
                }
        }
        _ => false,
    };
    let chosen = target
        .same_second_types
        .iter()
        .zip(&target.same_second_titles)
        .position(describes);
    if let Some(at) = chosen {
        target.kind = target.same_second_types[at].clone();
        target.title = target.same_second_titles[at].clone();
        target.changed_by = target.same_second_by.get(at).cloned().flatten();
    }
}

/// Each pending project's JSON as the API shows it now (`None`: not found), a few at a time.
// An error keeps the API's own words for the log; a few per pass.
#[allow(clippy::result_large_err)]
async fn retrieve_all(
    client: &AdminClient,
    pending: &[store::PendingTarget],
) -> Vec<Result<Option<String>, ApiError>> {
    let mut results: Vec<Option<Result<Option<String>, ApiError>>> =
        (0..pending.len()).map(|_| None).collect();
    let mut tasks = tokio::task::JoinSet::new();
    let mut next = 0;
    loop {
        while tasks.len() < RETRIEVES_IN_FLIGHT && next < pending.len() {
            let client = client.clone();
            let id = pending[next].target_id.clone();
            let at = next;
            tasks.spawn(
                async move {
                    let result = match client.retrieve_project_raw(&id).await {
                        Ok(raw) => Ok(Some(crate::json_text::jsonb_safe(&raw).unwrap_or(raw))),
                        Err(error)
                            if matches!(error.root(), ApiError::Status { status: 404, .. }) =>
                        {
                            Ok(None)
                        }
                        Err(error) => Err(error),
                    };
                    (at, result)
                }
                .in_current_span(),
            );
            next += 1;
        }
        let Some(done) = tasks.join_next().await else {
            break;
        };
        if let Ok((at, result)) = done
            && let Some(slot) = results.get_mut(at)
        {
            *slot = Some(result);
        }
    }
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(ApiError::Transport("the retrieve task stopped".into()))))
        .collect()
}

/// Polls every `interval` until `shutdown`, the first pass at once.
pub async fn run(deps: AuditDeps, interval: Duration, shutdown: CancellationToken) {
    let mut trigger = "startup";
    loop {
        let pass_deps = deps.clone();
        let polled = async move { pass(&pass_deps, trigger).await };
        match crate::panics::caught_pass(store::Resource::AuditLog, polled).await {
            Ok(Ok(AuditOutcome::Disabled)) => return,
            Ok(Ok(_)) => {}
            Ok(Err(error)) => tracing::error!(
                error = %error,
                "the audit-log poll failed; the daemon keeps running and polls again"
            ),
            Err(panic) => tracing::error!(
                panic = %panic,
                "the audit-log poll panicked; the daemon keeps running and polls again"
            ),
        }
        trigger = "schedule";
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}
