//! Settling requests whose create may or may not have happened, by walking the project list.

use std::collections::HashMap;

use chrono::Utc;

use super::{TickReport, Unresolved, WorkerDeps, WorkerError};
use crate::client::Project;
use crate::store::{self, ClaimedRequest};

/// How far a project's `created_at` may precede the attempt's start and still be its result;
/// the API's clock and ours are not the same clock.
const CLOCK_SKEW_SECS: i64 = 60;

/// Walks the list once for every unknown request: one match is adopted, several go to a person,
/// none (after two walks and the grace period) lets the request be tried again.
pub async fn settle_unknown(deps: &WorkerDeps, report: &mut TickReport) -> Result<(), WorkerError> {
    let unknown = store::unknown_requests(&deps.pool).await?;
    if unknown.is_empty() {
        return Ok(());
    }
    let candidates = match find_candidates(deps, &unknown).await {
        Ok(candidates) => candidates,
        Err(e) => {
            tracing::warn!(error = %e, requests = unknown.len(), "could not walk the project list to settle unknown outcomes; trying again later");
            return Ok(());
        }
    };
    report.walks += 1;
    for (request, found) in unknown.iter().zip(candidates) {
        let Some(attempt_id) = request.attempt_id.as_deref() else {
            continue;
        };
        let mut free = Vec::new();
        for project in found {
            if !store::is_project_linked(&deps.pool, &project.id).await? {
                free.push(project);
            }
        }
        match free.as_slice() {
            [project] => {
                let raw = serde_json::to_value(project).unwrap_or_default();
                if store::finish_created(&deps.pool, request.id, attempt_id, &raw).await? {
                    report.adopted += 1;
                    count("adopted");
                    tracing::info!(id = request.id, project_id = %project.id, "the create had happened; adopted the project");
                }
            }
            [] => settle_not_found(deps, request, attempt_id, report).await?,
            several => {
                let ids: Vec<&str> = several.iter().map(|p| p.id.as_str()).collect();
                let error = format!(
                    "several projects match this request and none is linked yet: {}; decide which one is its project",
                    ids.join(", ")
                );
                if store::fail_request(&deps.pool, request.id, attempt_id, &error).await? {
                    report.failed += 1;
                    count("ambiguous");
                }
            }
        }
    }
    Ok(())
}

async fn settle_not_found(
    deps: &WorkerDeps,
    request: &ClaimedRequest,
    attempt_id: &str,
    report: &mut TickReport,
) -> Result<(), WorkerError> {
    let Some(walks) = store::note_fruitless_walk(&deps.pool, request.id, attempt_id).await? else {
        return Ok(());
    };
    let waited = request
        .attempt_started_at
        .map(|at| (Utc::now() - at).to_std().unwrap_or_default())
        .unwrap_or_default();
    if walks < 2 || waited < deps.reconcile_grace {
        return Ok(());
    }
    let settled = match deps.unresolved {
        Unresolved::Retry => {
            let reason = format!(
                "attempt {} left no project after {walks} walks of the list; trying again",
                request.attempts
            );
            store::defer_request(
                &deps.pool,
                request.id,
                attempt_id,
                deps.retry_base_delay,
                &reason,
            )
            .await?
        }
        Unresolved::Hold => {
            let reason = format!(
                "attempt {} left no project after {walks} walks of the list; held for a person (requests.unresolved = hold): insert a new request to try again",
                request.attempts
            );
            store::fail_request(&deps.pool, request.id, attempt_id, &reason).await?
        }
    };
    if settled {
        report.retried += 1;
        count("not_found");
    }
    Ok(())
}

/// One walk of the whole list, keeping per request the projects that could be its result.
async fn find_candidates(
    deps: &WorkerDeps,
    unknown: &[ClaimedRequest],
) -> Result<Vec<Vec<Project>>, crate::client::ApiError> {
    let mut by_name: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, request) in unknown.iter().enumerate() {
        by_name.entry(request.name.as_str()).or_default().push(i);
    }
    let mut candidates = vec![Vec::new(); unknown.len()];
    let mut walk = deps.client.walk_projects(deps.page_size, true);
    while let Some(page) = walk.next_page().await? {
        for project in page.data {
            let Some(indexes) = project.name.as_deref().and_then(|name| by_name.get(name)) else {
                continue;
            };
            for &i in indexes {
                if could_be_result_of(&unknown[i], &project) {
                    candidates[i].push(project.clone());
                }
            }
        }
    }
    Ok(candidates)
}

/// Same name, key and residency, and created no earlier than the attempt (less clock skew).
fn could_be_result_of(request: &ClaimedRequest, project: &Project) -> bool {
    let wanted = request
        .geography
        .as_deref()
        .or(request.residency.as_deref());
    let same_residency = wanted.is_none_or(|w| {
        project.residency.as_deref() == Some(w) || geography_of(project) == Some(w)
    });
    project.name.as_deref() == Some(request.name.as_str())
        && project.external_key_id == request.external_key_id
        && same_residency
        && request
            .attempt_started_at
            .is_none_or(|started| project.created_at >= started.timestamp() - CLOCK_SKEW_SECS)
}

fn geography_of(project: &Project) -> Option<&str> {
    project.extra.get("geography").and_then(|g| g.as_str())
}

fn count(outcome: &'static str) {
    metrics::counter!("project_request_reconciliations_total", "outcome" => outcome).increment(1);
}
