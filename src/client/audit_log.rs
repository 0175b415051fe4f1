//! `GET /organization/audit_logs`: the organization's audit log, read as a window of events.
//!
//! The order of events is undocumented and the server ignores filters it does not know, so
//! every event's `type` is checked here, events are deduplicated by `id`, and nothing relies
//! on the order within or across pages. Event types are free text: the list keeps growing.

use std::borrow::Cow;
use std::collections::HashSet;

use reqwest::Method;
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

use super::{AdminClient, ApiError};

/// A project was created; the payload has `data{name,title}`.
pub const PROJECT_CREATED: &str = "project.created";
/// A project was changed; the payload has at most `changes_requested{title}`.
pub const PROJECT_UPDATED: &str = "project.updated";
/// A project was archived; the payload has only the project's `id`.
pub const PROJECT_ARCHIVED: &str = "project.archived";

/// The project events that change history.
pub const PROJECT_EVENT_TYPES: [&str; 3] = [PROJECT_CREATED, PROJECT_UPDATED, PROJECT_ARCHIVED];

/// Membership events, stored as they come for a later use.
pub const MEMBER_EVENT_TYPES: [&str; 6] = [
    "user.added",
    "user.updated",
    "user.deleted",
    "service_account.created",
    "service_account.updated",
    "service_account.deleted",
];

/// Events per page: the most the API gives.
const AUDIT_PAGE_LIMIT: u32 = 100;

/// One audit-log event: the fields the product uses, read from the API's own JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEvent {
    pub id: String,
    /// The event type as the API wrote it.
    pub kind: String,
    /// When it happened, unix seconds.
    pub effective_at: i64,
    /// What the event is about: the payload's `id` (for project events, the project).
    pub target_id: Option<String>,
    /// `session` or `api_key`, or whatever else the API says.
    pub actor_type: Option<String>,
    /// The session user's email, or the email of the user owning the key.
    pub actor_email: Option<String>,
    /// The session user's id, or the key's tracking id.
    pub actor_id: Option<String>,
    /// Who made the change, in words: the session user's email, or the key's id and owner.
    pub changed_by: Option<String>,
    /// `project.created`'s `data.name`.
    pub created_name: Option<String>,
    /// `project.updated`'s `changes_requested.title`, a hint of the new name.
    pub requested_title: Option<String>,
    /// The event exactly as the API sent it.
    pub raw: String,
}

#[derive(Deserialize)]
struct Required {
    id: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(deserialize_with = "super::project::any_unix_seconds")]
    effective_at: i64,
}

#[derive(Deserialize)]
struct RawPage {
    data: Vec<Box<RawValue>>,
    #[serde(default)]
    last_id: Option<String>,
    has_more: bool,
}

impl AuditEvent {
    /// Reads an event from the API's JSON; only `id`, `type` and `effective_at` are required.
    pub fn from_raw(raw: &str) -> Result<AuditEvent, String> {
        let required: Required = serde_json::from_str(raw)
            .map_err(|e| format!("an audit-log event lacks a required field: {e}"))?;
        // Field by field: a value serde cannot hold (a number beyond any float) in one field
        // must not make the whole event unreadable.
        let fields: std::collections::HashMap<String, Box<RawValue>> =
            serde_json::from_str(raw).map_err(|e| e.to_string())?;
        let field = |key: &str| {
            fields
                .get(key)
                .and_then(|v| serde_json::from_str::<Value>(v.get()).ok())
        };
        let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_owned);
        let (payload, actor) = (field(&required.kind), field("actor"));
        let (payload, actor) = (payload.as_ref(), actor.as_ref());
        let actor_type = text(actor.and_then(|a| a.get("type")));
        let session_user = actor
            .and_then(|a| a.get("session"))
            .and_then(|s| s.get("user"));
        let key = actor.and_then(|a| a.get("api_key"));
        let key_user = key.and_then(|k| k.get("user"));
        let key_account = text(
            key.and_then(|k| k.get("service_account"))
                .and_then(|s| s.get("id")),
        );
        let (actor_id, actor_email, changed_by) = match actor_type.as_deref() {
            Some("session") => {
                let email = text(session_user.and_then(|u| u.get("email")));
                let id = text(session_user.and_then(|u| u.get("id")));
                (id.clone(), email.clone(), email.or(id))
            }
            Some("api_key") => {
                let id = text(key.and_then(|k| k.get("id")));
                let email = text(key_user.and_then(|u| u.get("email")));
                let owner = email
                    .clone()
                    .or_else(|| text(key_user.and_then(|u| u.get("id"))))
                    .or_else(|| key_account.clone().map(|a| format!("service account {a}")));
                let words = match (&id, owner) {
                    (Some(id), Some(owner)) => Some(format!("{id} ({owner})")),
                    (Some(id), None) => Some(id.clone()),
                    (None, owner) => owner,
                };
                (id, email, words)
            }
            _ => (None, None, None),
        };
        Ok(AuditEvent {
            target_id: text(payload.and_then(|p| p.get("id"))),
            created_name: text(
                payload
                    .and_then(|p| p.get("data"))
                    .and_then(|d| d.get("name")),
            ),
            requested_title: text(
                payload
                    .and_then(|p| p.get("changes_requested"))
                    .and_then(|c| c.get("title")),
            ),
            id: required.id,
            kind: required.kind,
            effective_at: required.effective_at,
            actor_type,
            actor_email,
            actor_id,
            changed_by,
            raw: raw.to_owned(),
        })
    }
}

/// An event's JSON as it can be read and stored: `\u0000` and unpaired surrogates (which JSON
/// allows, and which neither a Rust string nor Postgres text holds) replaced by U+FFFD, reported.
/// Read as it came, such an event would fail every poll after it; read before its id is, so
/// every poll dedupes and stores it under the same id.
fn storable(raw: &str) -> Cow<'_, str> {
    match crate::json_text::jsonb_safe(raw) {
        Some(safe) => {
            tracing::warn!(
                "an audit event's JSON holds \\u0000 or an unpaired surrogate, which Postgres cannot store; read with U+FFFD in its place"
            );
            Cow::Owned(safe)
        }
        None => Cow::Borrowed(raw),
    }
}

/// Every event of a window, deduplicated, with the pages it took.
#[derive(Debug, Clone, Default)]
pub struct AuditWindow {
    pub events: Vec<AuditEvent>,
    pub pages: u32,
    /// Events the server sent whose type was not asked for (an ignored filter), left out.
    pub unasked: u32,
}

impl AdminClient {
    /// Reads every event of `types` at or after `since` (unix seconds), following `after`
    /// cursors to the end; events of other types are counted and left out.
    pub async fn audit_log_window(
        &self,
        since: i64,
        types: &[&str],
    ) -> Result<AuditWindow, ApiError> {
        let mut window = AuditWindow::default();
        let mut ids = HashSet::new();
        let mut cursors = HashSet::new();
        let mut after: Option<String> = None;
        loop {
            let mut url = self.url(&["organization", "audit_logs"]);
            {
                let mut query = url.query_pairs_mut();
                query.append_pair("effective_at[gte]", &since.to_string());
                for kind in types {
                    query.append_pair("event_types[]", kind);
                }
                query.append_pair("limit", &AUDIT_PAGE_LIMIT.to_string());
                if let Some(after) = &after {
                    query.append_pair("after", after);
                }
            }
            let page: RawPage = self
                .call_retrying("audit_logs", Method::GET, url, None::<&()>)
                .await?;
            window.pages = window.pages.saturating_add(1);
            let pagination = |problem: String| ApiError::Pagination {
                page: u64::from(window.pages),
                problem,
            };
            let mut last = None;
            for raw in &page.data {
                let event = AuditEvent::from_raw(&storable(raw.get())).map_err(|message| {
                    ApiError::Decode {
                        message,
                        request_id: None,
                    }
                })?;
                last = Some(event.id.clone());
                if !types.contains(&event.kind.as_str()) {
                    window.unasked = window.unasked.saturating_add(1);
                    continue;
                }
                if ids.insert(event.id.clone()) {
                    window.events.push(event);
                }
            }
            if !page.has_more {
                return Ok(window);
            }
            let Some(next) = last.or(page.last_id.filter(|id| !id.is_empty())) else {
                return Err(pagination(
                    "the audit log said has_more on an empty page".into(),
                ));
            };
            if !cursors.insert(next.clone()) {
                return Err(pagination(format!(
                    "cursor {next} came back a second time; reading on would loop"
                )));
            }
            after = Some(next);
        }
    }

    /// Asks for the newest event of any type: whether the organization's log holds anything.
    pub async fn audit_log_has_events(&self) -> Result<bool, ApiError> {
        let mut url = self.url(&["organization", "audit_logs"]);
        url.query_pairs_mut().append_pair("limit", "1");
        let page: RawPage = self
            .call_retrying("audit_logs", Method::GET, url, None::<&()>)
            .await?;
        Ok(!page.data.is_empty())
    }

    /// Fetches one project as the API's own JSON, checking its required fields.
    pub async fn retrieve_project_raw(&self, id: &str) -> Result<String, ApiError> {
        let url = self.url(&["organization", "projects", id]);
        let raw: Box<RawValue> = self
            .call_retrying("retrieve", Method::GET, url, None::<&()>)
            .await?;
        let fields: super::project::RequiredFields =
            serde_json::from_str(raw.get()).map_err(|e| ApiError::Decode {
                message: format!("the project lacks a required field: {e}"),
                request_id: None,
            })?;
        if fields.object != "organization.project" || fields.id != id {
            return Err(ApiError::Decode {
                message: format!(
                    "asked for project {id}, got a {:?} with id {}",
                    fields.object, fields.id
                ),
                request_id: None,
            });
        }
        Ok(raw.get().to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::AuditEvent;

    #[test]
    fn an_admin_key_event_names_its_target_from_the_payload_and_its_key_and_owner() {
        let raw = r#"{"id":"audit_log-1","type":"project.archived","effective_at":1787754034,
            "project":{"id":"proj_Default","name":"Default project"},
            "actor":{"type":"api_key","api_key":{"id":"key_adm1n","type":"user",
                "user":{"id":"user-ops01","email":"ops@example.com"}}},
            "project.archived":{"id":"proj_8Hk2"}}"#;
        let event = AuditEvent::from_raw(raw).expect("reads");
        assert_eq!(event.target_id.as_deref(), Some("proj_8Hk2"));
        assert_eq!(event.actor_id.as_deref(), Some("key_adm1n"));
        assert_eq!(
            event.changed_by.as_deref(),
            Some("key_adm1n (ops@example.com)")
        );
        let session = r#"{"id":"a","type":"project.updated","effective_at":1,
            "actor":{"type":"session","session":{"user":{"id":"u1","email":"ana@example.com"}}},
            "project.updated":{"id":"proj_1","changes_requested":{"title":"New"}}}"#;
        let event = AuditEvent::from_raw(session).expect("reads");
        assert_eq!(event.changed_by.as_deref(), Some("ana@example.com"));
        assert_eq!(event.requested_title.as_deref(), Some("New"));
        assert!(AuditEvent::from_raw(r#"{"id":"a","type":"x"}"#).is_err());
    }
}
