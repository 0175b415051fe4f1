//! Settling an unknown request from the audit log, where the product reads it: a
//! `project.created` event made with the daemon's own key, under the request's name, at or after
//! the attempt began, is the authoritative answer that the create happened.
//!
//! The API never says which key is the caller's. The daemon's own key is learned from the log
//! itself: the actor key ids of the `project.created` events of projects already linked to a
//! created request (made, or adopted, by this product). Until one such create is in the log,
//! unknown requests are settled by list walks alone.

use chrono::{DateTime, Utc};

use super::candidates::Candidate;
use super::{TickReport, WorkerDeps, WorkerError};
use crate::client::ApiError;
use crate::store::{self, ClaimedRequest, Linked, RowWait};

/// Adopts the project the daemon's own key created for this request, if the audit log shows
/// exactly one; `true` when the request was settled (or must wait for a same-name request, or,
/// without `may_call_api`, for a pass that may retrieve the project).
pub(super) async fn settle_from_audit_log(
    deps: &WorkerDeps,
    request: &ClaimedRequest,
    since: DateTime<Utc>,
    own_keys: &[String],
    may_call_api: bool,
    report: &mut TickReport,
) -> Result<bool, WorkerError> {
    let Some(attempt_id) = request.attempt_id.as_deref() else {
        return Ok(false);
    };
    if own_keys.is_empty() {
        return Ok(false);
    }
    // Event times are whole seconds: the attempt's second counts.
    let since = since - chrono::Duration::seconds(1);
    let created = store::created_by_keys(&deps.pool, &request.name, since, own_keys).await?;
    let [project_id] = created.as_slice() else {
        // None in the log (yet), or several: the list walks and a person decide.
        return Ok(false);
    };
    if store::same_name_in_flight(&deps.pool, request).await? {
        return Ok(true);
    }
    if !may_call_api {
        // The worker's own pass: a retrieve that hangs would hold back every new row.
        return Ok(true);
    }
    let raw = match deps.client.retrieve_project_raw(project_id).await {
        Ok(raw) => crate::json_text::jsonb_safe(&raw).unwrap_or(raw),
        Err(error) if matches!(error.root(), ApiError::Status { status: 404, .. }) => {
            return Ok(false);
        }
        Err(error) => {
            tracing::warn!(id = request.id, project_id = %project_id, error = %error, "could not retrieve the project the audit log says this request created; trying again later");
            return Ok(true);
        }
    };
    let candidate = Candidate::from_raw(raw);
    match store::finish_created(
        &deps.pool,
        request.id,
        attempt_id,
        project_id,
        &candidate.raw,
        RowWait::Bounded,
    )
    .await?
    {
        Linked::Done => {
            report.adopted += 1;
            metrics::counter!(crate::metric::REQUEST_RECONCILIATIONS_TOTAL, "outcome" => "adopted_from_audit_log")
                .increment(1);
            tracing::info!(id = request.id, project_id = %project_id, "the audit log shows this daemon's key created the project; adopted it");
        }
        Linked::ProjectTaken | Linked::NotOwner => {}
    }
    Ok(true)
}
