//! What a create call's result means for whoever must never create twice.

use std::time::Duration;

use super::retry::RETRY_AFTER_CAP;
use super::{ApiError, Project};

/// A project the API says it created: its fields, and its JSON exactly as the API sent it.
#[derive(Debug, Clone)]
pub struct CreatedProject {
    pub project: Project,
    pub raw: String,
}

/// The outcome of one `POST /organization/projects`, classified for the request queue.
#[derive(Debug, Clone)]
pub enum CreateOutcome {
    /// The project exists and this is it.
    Created(CreatedProject),
    /// The API refused the request for good; the message says why.
    Rejected(ApiError),
    /// Nothing was created (rate limited, or the request never left); safe to try later.
    RefusedForNow {
        error: ApiError,
        /// The server's asked wait, capped like a read's.
        retry_after: Option<Duration>,
    },
    /// The project may or may not exist; only looking it up can tell.
    Ambiguous(ApiError),
}

impl CreateOutcome {
    /// Sorts a single create attempt's result into its class.
    pub(super) fn classify(result: Result<CreatedProject, ApiError>) -> CreateOutcome {
        let error = match result {
            Ok(project) => return CreateOutcome::Created(project),
            Err(error) => error,
        };
        match &error {
            ApiError::Status {
                status: 429,
                retry_after,
                ..
            } => CreateOutcome::RefusedForNow {
                retry_after: retry_after.map(|asked| asked.min(RETRY_AFTER_CAP)),
                error,
            },
            // 408 and 409 (a lock timeout, as the SDKs read it) may hide a create that happened,
            // and so may any refusal the server itself calls worth retrying.
            ApiError::Status {
                status,
                should_retry,
                ..
            } if (400..500).contains(status)
                && !matches!(status, 408 | 409)
                && *should_retry != Some(true) =>
            {
                CreateOutcome::Rejected(error)
            }
            ApiError::Connect(_) => CreateOutcome::RefusedForNow {
                error,
                retry_after: None,
            },
            // 408, 5xx, timeouts, broken connections and unreadable successes may all hide a
            // project that was created.
            _ => CreateOutcome::Ambiguous(error),
        }
    }
}
