//! Settling requests whose create may or may not have happened: projects already stored are
//! looked at first, the API's list only when needed, and a new attempt is made only when no
//! candidate exists at all — "could not confirm" never becomes "nothing was made".

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use super::candidates::{Candidate, comparable_name, created_since};
use super::{TickReport, Unresolved, WorkerDeps, WorkerError};
use crate::client::ApiError;
use crate::store::{self, ClaimedRequest, Linked, RowWait, StoreError};

/// How far a project's `created_at` may precede the attempt's start and still be its result;
/// the API's clock and ours are not the same clock. Generous on purpose: an extra candidate
/// only hands a request to a person, a missed one could let it be created twice.
const CLOCK_SKEW_SECS: i64 = 300;

/// Where one reconciliation pass may look for candidates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// Only projects already in `openai.project_current`, and no API call: cheap, for every tick.
    StoredOnly,
    /// Stored projects, then a walk of the API's list when some request needs one.
    StoredThenList,
}

/// Settles what it can of every unknown request: one fitting candidate is adopted, anything
/// else but "no candidate" goes to a person, and no candidate in two walks a grace period apart
/// lets the request be tried again.
pub async fn settle_unknown(
    deps: &WorkerDeps,
    lookup: Lookup,
    report: &mut TickReport,
) -> Result<(), WorkerError> {
    let unknown = store::unknown_requests(&deps.pool).await?;
    let mut unsettled = Vec::new();
    let own_keys = if unknown.is_empty() {
        Vec::new()
    } else {
        store::own_key_ids(&deps.pool).await?
    };
    let mut left = LeftLocked::default();
    for request in unknown {
        let Some(since) = candidates_since(&request) else {
            continue;
        };
        if left.holds_up(&request) {
            continue;
        }
        let skew = chrono::Duration::seconds(CLOCK_SKEW_SECS);
        match super::audit_settle::settle_from_audit_log(
            deps,
            &request,
            since - skew,
            &own_keys,
            lookup == Lookup::StoredThenList,
            report,
        )
        .await
        {
            Ok(true) => continue,
            Ok(false) => {}
            Err(e) => {
                left.absorb(&request, Err(e))?;
                continue;
            }
        }
        let stored =
            store::stored_candidates(&deps.pool, &request.name, since - skew, since).await?;
        let candidates: Vec<Candidate> = stored
            .into_iter()
            .map(|c| Candidate::from_raw(c.raw))
            .collect();
        if candidates.is_empty()
            || stored_state_predates_the_grace(deps, &request, &candidates).await?
        {
            unsettled.push(request);
        } else {
            let settled = settle_with(deps, &request, candidates, report).await;
            left.absorb(&request, settled)?;
        }
    }
    if unsettled.is_empty()
        || lookup == Lookup::StoredOnly
        || !store::reconcile_walk_due(&deps.pool, deps.reconcile_grace).await?
    {
        return Ok(());
    }
    let walk_started_at = store::database_now(&deps.pool).await?;
    let found = match list_candidates(deps, &unsettled).await {
        Ok(found) => found,
        Err(e) => {
            tracing::warn!(error = %e, requests = unsettled.len(), "could not walk the project list to settle unknown outcomes; trying again later");
            return Ok(());
        }
    };
    report.walks += 1;
    let ids: Vec<&str> = found
        .iter()
        .flatten()
        .map(|c| c.project.id.as_str())
        .collect();
    let linked = store::linked_projects(&deps.pool, &ids).await?;
    let stored_at = store::stored_at(&deps.pool, &ids).await?;
    for (request, candidates) in unsettled.iter().zip(found) {
        if left.holds_up(request) {
            continue;
        }
        // A project stored before the attempt began existed before it: not its result.
        let began = candidates_since(request);
        let existed_before = |id: &str| {
            stored_at
                .get(id)
                .zip(began)
                .is_some_and(|(stored, began)| *stored < began)
        };
        let free: Vec<Candidate> = candidates
            .into_iter()
            .filter(|c| !linked.contains(&c.project.id) && !existed_before(&c.project.id))
            .collect();
        let settled = if free.is_empty() {
            settle_not_found(deps, request, walk_started_at, report).await
        } else {
            settle_with(deps, request, free, report).await
        };
        left.absorb(request, settled)?;
    }
    Ok(())
}

/// The comparable names of requests one pass left for later because someone holds them
/// locked: a request of the same name must not take, meanwhile, the project that may be theirs.
#[derive(Default)]
struct LeftLocked(std::collections::HashSet<String>);

impl LeftLocked {
    /// Whether `request` waits for a same-name request left for later in this pass.
    fn holds_up(&self, request: &ClaimedRequest) -> bool {
        self.0.contains(&comparable_name(&request.name))
    }

    /// Passes on how settling `request` went, but for its row being held locked: then the
    /// request, and its name for the rest of the pass, are left for later.
    fn absorb(
        &mut self,
        request: &ClaimedRequest,
        settled: Result<(), WorkerError>,
    ) -> Result<(), WorkerError> {
        let Err(error) = settled else {
            return Ok(());
        };
        left_for_later(error)?;
        self.0.insert(comparable_name(&request.name));
        Ok(())
    }
}

/// Leaves a request that another session holds locked for a later pass, saying so; any other
/// failure is returned. One operator's open transaction must not hold up every other request.
pub(super) fn left_for_later(error: WorkerError) -> Result<(), WorkerError> {
    match error {
        WorkerError::Store(StoreError::RequestLocked(id)) => {
            tracing::warn!(
                id,
                "the request is held locked by another session (a client left in an open transaction?); left for a later pass"
            );
            Ok(())
        }
        other => Err(other),
    }
}

/// A stored project that may be the result of an earlier attempt of this request, which is
/// about to be tried again; such a request must be looked at again, not created.
pub(super) async fn stored_candidate_of_earlier_attempt(
    deps: &WorkerDeps,
    request: &ClaimedRequest,
) -> Result<Option<String>, WorkerError> {
    let Some(since) = request.candidates_since else {
        return Ok(None);
    };
    let skew = chrono::Duration::seconds(CLOCK_SKEW_SECS);
    let stored = store::stored_candidates(&deps.pool, &request.name, since - skew, since).await?;
    Ok(stored.into_iter().next().map(|c| c.project_id))
}

/// Where the request's candidates start: its earliest attempt that may have reached the API.
fn candidates_since(request: &ClaimedRequest) -> Option<DateTime<Utc>> {
    request.candidates_since.or(request.attempt_started_at)
}

/// Adopts the one fitting candidate, or hands the request to a person naming every candidate.
async fn settle_with(
    deps: &WorkerDeps,
    request: &ClaimedRequest,
    candidates: Vec<Candidate>,
    report: &mut TickReport,
) -> Result<(), WorkerError> {
    let Some(attempt_id) = request.attempt_id.as_deref() else {
        return Ok(());
    };
    if store::same_name_in_flight(&deps.pool, request).await? {
        // Another request of this name is being created: a candidate may be its project.
        tracing::debug!(
            id = request.id,
            "a same-name request is being created; settling this one after it"
        );
        return Ok(());
    }
    match candidates.as_slice() {
        [only] if only.fits(request) => {
            if within_grace(deps, request).await? {
                return Ok(());
            }
            match store::finish_created(
                &deps.pool,
                request.id,
                attempt_id,
                &only.project.id,
                &only.raw,
                RowWait::Bounded,
            )
            .await?
            {
                Linked::Done => {
                    report.adopted += 1;
                    count("adopted");
                    tracing::info!(id = request.id, project_id = %only.project.id, "the create had happened; adopted the project");
                }
                Linked::ProjectTaken => tracing::info!(
                    id = request.id,
                    project_id = %only.project.id,
                    "another request linked the candidate meanwhile; looking again"
                ),
                Linked::NotOwner => {}
            }
        }
        _ => {
            // A project shown without a name may be this request's own, which the audit log
            // can still name: within the grace, wait for it rather than go to a person. It may
            // also be the project of another request being created now, of any name, which its
            // answer will link: wait for that too.
            if candidates.iter().any(|c| c.shown_name().is_none())
                && (within_grace(deps, request).await?
                    || store::another_request_in_flight(&deps.pool, request.id).await?)
            {
                return Ok(());
            }
            let error = describe_candidates(request, &candidates);
            if store::fail_request(&deps.pool, request.id, attempt_id, &error, RowWait::Bounded)
                .await?
            {
                report.failed += 1;
                count("ambiguous");
                tracing::warn!(
                    id = request.id,
                    candidates = candidates.len(),
                    "could not tell which project is the request's; ended for a person"
                );
            }
        }
    }
    Ok(())
}

/// Whether the grace since the request's outcome became unknown is still running: its own create
/// may still be landing, so a lone candidate may be a same-name project someone made meanwhile,
/// and is not adopted yet (once ours lands, the two go to a person).
async fn within_grace(deps: &WorkerDeps, request: &ClaimedRequest) -> Result<bool, WorkerError> {
    let Some(unknown_since) = request.unknown_since else {
        return Ok(false);
    };
    let within = match grace_ends(deps, unknown_since) {
        Some(ends) => store::database_now(&deps.pool).await? < ends,
        None => true,
    };
    if within {
        if let Some(attempt_id) = request.attempt_id.as_deref() {
            store::note_candidate_within_grace(&deps.pool, request.id, attempt_id).await?;
        }
        tracing::debug!(
            id = request.id,
            "one candidate, found within the grace since the outcome became unknown; adopting it once the grace has passed"
        );
    }
    Ok(within)
}

/// When the grace since an outcome became unknown at `unknown_since` ends; `None`: never.
fn grace_ends(deps: &WorkerDeps, unknown_since: DateTime<Utc>) -> Option<DateTime<Utc>> {
    chrono::Duration::from_std(deps.reconcile_grace)
        .ok()
        .and_then(|grace| unknown_since.checked_add_signed(grace))
}

/// Whether the one fitting stored candidate of a request whose grace has passed may not be
/// adopted from the stored state: no walk has listed the projects since the grace ended, so our
/// own create, landed within the grace, may be missing beside it. Such a request takes a list
/// walk (which then shows both, for a person, or the one alone).
async fn stored_state_predates_the_grace(
    deps: &WorkerDeps,
    request: &ClaimedRequest,
    candidates: &[Candidate],
) -> Result<bool, WorkerError> {
    let ([only], Some(unknown_since)) = (candidates, request.unknown_since) else {
        return Ok(false);
    };
    if !only.fits(request) {
        return Ok(false);
    }
    let Some(grace_ends) = grace_ends(deps, unknown_since) else {
        return Ok(false);
    };
    if store::database_now(&deps.pool).await? < grace_ends {
        // Within the grace: the candidate waits there (`within_grace`).
        return Ok(false);
    }
    let listed_at = store::last_success_started_at(&deps.pool, store::Resource::Projects).await?;
    Ok(listed_at.is_none_or(|at| at < grace_ends))
}

/// The reason a request goes to a person: every candidate with what the API said of it.
fn describe_candidates(request: &ClaimedRequest, candidates: &[Candidate]) -> String {
    let listed: Vec<String> = candidates
        .iter()
        .map(|c| {
            let p = &c.project;
            format!(
                "{} (name {:?}, residency {}, external key {}{})",
                p.id,
                p.name.as_deref().unwrap_or(""),
                p.residency.as_deref().unwrap_or("not shown"),
                p.external_key_id.as_deref().unwrap_or("none shown"),
                if !c.readable {
                    ", could not be read as a project"
                } else if c.shown_name().is_none() {
                    ", its name not shown by the API"
                } else if c.fits(request) {
                    ""
                } else {
                    ", does not match the request"
                }
            )
        })
        .collect();
    format!(
        "could not tell whether the create of attempt {} made a project: {} candidate(s) with this name{}, \
         created since the attempt began and linked to no request: {}. Check them in the OpenAI \
         dashboard: if one is this request's project it exists already, so do not request it again",
        request.attempts,
        candidates.len(),
        if candidates.iter().any(|c| c.shown_name().is_none()) {
            " or with no name shown"
        } else {
            ""
        },
        listed.join("; ")
    )
}

/// Counts a walk that found no candidate; after two such walks a grace period apart (and the
/// grace since the outcome became unknown), tries again or holds for a person.
async fn settle_not_found(
    deps: &WorkerDeps,
    request: &ClaimedRequest,
    walk_started_at: DateTime<Utc>,
    report: &mut TickReport,
) -> Result<(), WorkerError> {
    let Some(attempt_id) = request.attempt_id.as_deref() else {
        return Ok(());
    };
    let Some((walks, first_walk_at)) =
        store::note_fruitless_walk(&deps.pool, request.id, attempt_id, walk_started_at).await?
    else {
        return Ok(());
    };
    let grace = chrono::Duration::from_std(deps.reconcile_grace).unwrap_or(chrono::Duration::MAX);
    let unknown_since = request.unknown_since.unwrap_or(walk_started_at);
    let waited_since = |from: DateTime<Utc>| walk_started_at.signed_duration_since(from) >= grace;
    if walks < 2 || !waited_since(first_walk_at) || !waited_since(unknown_since) {
        return Ok(());
    }
    let looked = format!(
        "two walks of the list {}s apart found no project with this name created since attempt {} began",
        deps.reconcile_grace.as_secs(),
        request.attempts
    );
    let settled = match deps.unresolved {
        Unresolved::Retry if (request.attempts as u32) < deps.max_attempts => {
            let reason = format!("{looked}, so none was made; trying again");
            store::defer_request(
                &deps.pool,
                request.id,
                attempt_id,
                deps.retry_base_delay,
                &reason,
                RowWait::Bounded,
            )
            .await?
        }
        Unresolved::Retry => {
            let reason = format!(
                "gave up after {} attempts whose outcome was never confirmed; {looked}. Insert a new request to try again",
                request.attempts
            );
            store::fail_request(
                &deps.pool,
                request.id,
                attempt_id,
                &reason,
                RowWait::Bounded,
            )
            .await?
        }
        Unresolved::Hold => {
            let reason = format!(
                "{looked}; held for a person (requests.unresolved = hold): insert a new request to try again"
            );
            store::fail_request(
                &deps.pool,
                request.id,
                attempt_id,
                &reason,
                RowWait::Bounded,
            )
            .await?
        }
    };
    if settled {
        report.retried += 1;
        count("not_found");
    }
    Ok(())
}

/// One walk of the whole list, keeping per request the same-name projects (and those listed
/// without a name) created since its attempt began.
async fn list_candidates(
    deps: &WorkerDeps,
    unknown: &[ClaimedRequest],
) -> Result<Vec<Vec<Candidate>>, ApiError> {
    let mut by_name: HashMap<String, Vec<usize>> = HashMap::new();
    for (i, request) in unknown.iter().enumerate() {
        by_name
            .entry(comparable_name(&request.name))
            .or_default()
            .push(i);
    }
    let every: Vec<usize> = (0..unknown.len()).collect();
    let mut candidates = vec![Vec::new(); unknown.len()];
    let mut walk = deps.client.walk_projects(deps.page_size, true);
    while let Some(page) = walk.next_raw_page().await? {
        for listed in page.projects {
            let candidate = Candidate::from_raw(listed.raw.get().to_owned());
            // A project listed without its name (the spec lets a server leave it out), or with
            // a blank one, may be any request's: a candidate of each, which never fits.
            let indexes = match candidate.shown_name() {
                None => &every,
                Some(name) => match by_name.get(&name) {
                    Some(indexes) => indexes,
                    None => continue,
                },
            };
            for &i in indexes {
                let since = candidates_since(&unknown[i]).map(|at| at.timestamp());
                if since.is_none_or(|since| {
                    created_since(candidate.project.created_at, since, CLOCK_SKEW_SECS)
                }) {
                    candidates[i].push(candidate.clone());
                }
            }
        }
    }
    Ok(candidates)
}

fn count(outcome: &'static str) {
    metrics::counter!(crate::metric::REQUEST_RECONCILIATIONS_TOTAL, "outcome" => outcome)
        .increment(1);
}
