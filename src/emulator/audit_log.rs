//! The emulated organization audit log: `GET /v1/organization/audit_logs` over the events the
//! emulator records for its own creates, renames and archives, with wire types of its own.
//!
//! Freedoms it takes: events come newest first (as the spec's example), or in another order
//! when the list order says so; pages may be short; unknown filters are ignored, not refused;
//! admin-key actions are filed under the default project (the target is in the payload only);
//! `project.updated` says only `changes_requested.title` (nothing at all for a key change);
//! events can show up late (`delay`) with their true `effective_at`; and audit logging can be off.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

/// The id of the organization's default project, under which admin-key actions are filed.
///
/// It is not one of the listed projects: the emulated organization's projects are the seeded ones.
pub const DEFAULT_PROJECT_ID: &str = "proj_DefauLtEmu1atorProj0000";

/// The default project's name as the audit log shows it.
pub const DEFAULT_PROJECT_NAME: &str = "Default project";

/// The email of the person who makes changes "behind the back" unless a control says otherwise.
pub const DEFAULT_SESSION_EMAIL: &str = "owner@example.com";

/// The email of the user who owns the emulator's admin key.
pub const ADMIN_KEY_OWNER_EMAIL: &str = "admin-key-owner@example.com";

/// Whether the organization has audit logging on, and how the endpoint answers when it is off.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum AuditLogging {
    /// Events are recorded and listed.
    #[default]
    On,
    /// Nothing is recorded; the list is always empty.
    OffEmpty,
    /// Nothing is recorded; the list answers 403 with an error saying logging is off.
    OffError,
}

/// Who did something, as the audit log records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditActor {
    /// A person signed in to the dashboard.
    Session { user_id: String, email: String },
    /// An API call with the admin key; `id` is the key's tracking id.
    AdminKey { id: String },
}

impl AuditActor {
    /// A dashboard user by email; the user id is derived from it.
    pub fn session(email: &str) -> AuditActor {
        AuditActor::Session {
            user_id: format!("user-{}", &hex_digest(email)[..12]),
            email: email.to_owned(),
        }
    }

    fn to_json(&self) -> Value {
        match self {
            AuditActor::Session { user_id, email } => json!({
                "type": "session",
                "session": {"user": {"id": user_id, "email": email}, "ip_address": "203.0.113.7"},
            }),
            AuditActor::AdminKey { id } => json!({
                "type": "api_key",
                "api_key": {
                    "id": id,
                    "type": "user",
                    "user": {"id": "user-adminkeyowner", "email": ADMIN_KEY_OWNER_EMAIL},
                },
            }),
        }
    }
}

/// The tracking id the audit log shows for an admin key: never the key itself.
pub fn key_tracking_id(admin_key: &str) -> String {
    format!("key_{}", &hex_digest(admin_key)[..16])
}

fn hex_digest(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// One recorded event.
#[derive(Debug, Clone)]
struct Event {
    id: String,
    kind: String,
    effective_at: i64,
    /// The top-level `project` filter and field: the default project for admin-key actions.
    filed_under: Option<(String, Option<String>)>,
    /// The payload's `id`: what the event is about.
    resource_id: Option<String>,
    actor_ids: Vec<String>,
    actor_email: Option<String>,
    json: Value,
    visible_from: Instant,
}

/// What one project change was, for `record`.
#[derive(Debug, Clone)]
pub enum ProjectChange {
    Created {
        name: String,
    },
    Renamed {
        title: String,
    },
    /// A change the payload does not describe (a new encryption key, say): no `title`.
    Updated,
    Archived,
}

/// Every recorded event, in the order they were recorded, and how the log behaves.
#[derive(Debug)]
pub struct AuditLog {
    events: Vec<Event>,
    logging: AuditLogging,
    delay: Duration,
    admin_key_id: String,
    counter: u64,
}

/// The list's filters and cursor, read from the query; unknown parameters are ignored.
#[derive(Debug, Default)]
pub struct AuditQuery {
    gt: Option<i64>,
    gte: Option<i64>,
    lt: Option<i64>,
    lte: Option<i64>,
    event_types: Vec<String>,
    project_ids: Vec<String>,
    resource_ids: Vec<String>,
    actor_ids: Vec<String>,
    actor_emails: Vec<String>,
    pub limit: usize,
    pub after: Option<String>,
    pub before: Option<String>,
}

/// Why a list query is refused: the parameter and the message.
#[derive(Debug)]
pub struct QueryRefusal {
    pub param: String,
    pub message: String,
}

impl AuditQuery {
    /// Reads the query pairs the spec names (with the literal `[]` of list filters).
    pub fn parse(pairs: &[(String, String)]) -> Result<AuditQuery, QueryRefusal> {
        let mut query = AuditQuery {
            limit: 20,
            ..AuditQuery::default()
        };
        for (key, value) in pairs {
            let number = || {
                value.parse::<i64>().map_err(|_| QueryRefusal {
                    param: key.clone(),
                    message: format!("Invalid '{key}': expected an integer (unix seconds)."),
                })
            };
            match key.as_str() {
                "effective_at[gt]" => query.gt = Some(number()?),
                "effective_at[gte]" => query.gte = Some(number()?),
                "effective_at[lt]" => query.lt = Some(number()?),
                "effective_at[lte]" => query.lte = Some(number()?),
                "event_types[]" => query.event_types.push(value.clone()),
                "project_ids[]" => query.project_ids.push(value.clone()),
                "resource_ids[]" => query.resource_ids.push(value.clone()),
                "actor_ids[]" => query.actor_ids.push(value.clone()),
                "actor_emails[]" => query.actor_emails.push(value.clone()),
                "limit" => match value.parse::<usize>() {
                    Ok(n) if (1..=100).contains(&n) => query.limit = n,
                    _ => {
                        return Err(QueryRefusal {
                            param: "limit".into(),
                            message: "Invalid 'limit': must be an integer between 1 and 100."
                                .into(),
                        });
                    }
                },
                "after" if !value.is_empty() => query.after = Some(value.clone()),
                "before" if !value.is_empty() => query.before = Some(value.clone()),
                // A filter the server does not know is ignored, not refused.
                _ => {}
            }
        }
        Ok(query)
    }

    fn matches(&self, event: &Event) -> bool {
        let any = |wanted: &[String], value: Option<&str>| {
            wanted.is_empty() || value.is_some_and(|v| wanted.iter().any(|w| w == v))
        };
        self.gt.is_none_or(|t| event.effective_at > t)
            && self.gte.is_none_or(|t| event.effective_at >= t)
            && self.lt.is_none_or(|t| event.effective_at < t)
            && self.lte.is_none_or(|t| event.effective_at <= t)
            && any(&self.event_types, Some(&event.kind))
            && any(
                &self.project_ids,
                event.filed_under.as_ref().map(|(id, _)| id.as_str()),
            )
            && any(&self.resource_ids, event.resource_id.as_deref())
            && (self.actor_ids.is_empty()
                || event.actor_ids.iter().any(|a| self.actor_ids.contains(a)))
            && any(&self.actor_emails, event.actor_email.as_deref())
    }
}

/// What a list call gets.
pub enum AuditAnswer {
    /// A list page's JSON body.
    Page(String),
    /// Logging is off and the server says so.
    LoggingOff,
    /// The cursor names no event.
    UnknownCursor(String),
}

impl AuditLog {
    /// An empty log for an organization whose admin key is `admin_key`, with logging on.
    pub fn new(admin_key: &str, logging: AuditLogging) -> AuditLog {
        let mut log = AuditLog {
            events: Vec::new(),
            logging,
            delay: Duration::ZERO,
            admin_key_id: key_tracking_id(admin_key),
            counter: 0,
        };
        // An organization that turned logging on has events of other kinds as well.
        let actor = AuditActor::session(DEFAULT_SESSION_EMAIL);
        log.push(
            "login.succeeded",
            chrono::Utc::now().timestamp(),
            None,
            None,
            &actor,
            json!({}),
        );
        log
    }

    /// The admin key's tracking id, as events of API calls show it.
    pub fn admin_key_id(&self) -> &str {
        &self.admin_key_id
    }

    /// The actor of an API call made with the admin key.
    pub fn admin_key_actor(&self) -> AuditActor {
        AuditActor::AdminKey {
            id: self.admin_key_id.clone(),
        }
    }

    /// Whether logging is on, and how the endpoint answers when off.
    pub fn logging(&self) -> AuditLogging {
        self.logging
    }

    /// Turns logging on or off; events recorded while off are never recorded.
    pub fn set_logging(&mut self, logging: AuditLogging) {
        self.logging = logging;
    }

    /// How long after it happens an event shows in the list.
    pub fn delay(&self) -> Duration {
        self.delay
    }

    /// Makes events recorded from now on show `delay` after they happened.
    pub fn set_delay(&mut self, delay: Duration) {
        self.delay = delay;
    }

    /// Records a project change made by `actor`, at `effective_at` (unix seconds).
    pub fn record(
        &mut self,
        project_id: &str,
        project_name: Option<&str>,
        change: &ProjectChange,
        actor: &AuditActor,
        effective_at: i64,
    ) {
        let (kind, payload) = match change {
            ProjectChange::Created { name } => (
                "project.created",
                json!({"id": project_id, "data": {"name": name, "title": name}}),
            ),
            ProjectChange::Renamed { title } => (
                "project.updated",
                json!({"id": project_id, "changes_requested": {"title": title}}),
            ),
            ProjectChange::Updated => (
                "project.updated",
                json!({"id": project_id, "changes_requested": {}}),
            ),
            ProjectChange::Archived => ("project.archived", json!({"id": project_id})),
        };
        let filed_under = match actor {
            AuditActor::AdminKey { .. } => (
                DEFAULT_PROJECT_ID.to_owned(),
                Some(DEFAULT_PROJECT_NAME.to_owned()),
            ),
            AuditActor::Session { .. } => (project_id.to_owned(), project_name.map(str::to_owned)),
        };
        self.push(
            kind,
            effective_at,
            Some(filed_under),
            Some(project_id.to_owned()),
            actor,
            payload,
        );
    }

    /// Records an event of any type with its payload as given, for tests of odd logs.
    pub fn record_raw(
        &mut self,
        kind: &str,
        effective_at: i64,
        resource_id: Option<&str>,
        actor: &AuditActor,
        payload: Value,
    ) {
        let filed_under = match actor {
            AuditActor::AdminKey { .. } => Some((
                DEFAULT_PROJECT_ID.to_owned(),
                Some(DEFAULT_PROJECT_NAME.to_owned()),
            )),
            AuditActor::Session { .. } => resource_id.map(|id| (id.to_owned(), None)),
        };
        self.push(
            kind,
            effective_at,
            filed_under,
            resource_id.map(str::to_owned),
            actor,
            payload,
        );
    }

    fn push(
        &mut self,
        kind: &str,
        effective_at: i64,
        filed_under: Option<(String, Option<String>)>,
        resource_id: Option<String>,
        actor: &AuditActor,
        payload: Value,
    ) {
        if self.logging != AuditLogging::On {
            return;
        }
        self.counter += 1;
        let day = chrono::DateTime::from_timestamp(effective_at, 0)
            .map(|t| t.format("%Y%m%d").to_string())
            .unwrap_or_default();
        let id = format!(
            "audit_log-{}_{day}",
            &hex_digest(&format!("{}:{}", self.admin_key_id, self.counter))[..12]
        );
        let mut event = Map::new();
        event.insert("id".into(), Value::from(id.clone()));
        event.insert("type".into(), Value::from(kind));
        event.insert("effective_at".into(), Value::from(effective_at));
        if let Some((project_id, name)) = &filed_under {
            event.insert("project".into(), json!({"id": project_id, "name": name}));
        }
        event.insert("actor".into(), actor.to_json());
        event.insert(kind.to_owned(), payload);
        let (actor_ids, actor_email) = match actor {
            AuditActor::Session { user_id, email } => (vec![user_id.clone()], Some(email.clone())),
            AuditActor::AdminKey { id } => (
                vec![id.clone(), "user-adminkeyowner".to_owned()],
                Some(ADMIN_KEY_OWNER_EMAIL.to_owned()),
            ),
        };
        self.events.push(Event {
            id,
            kind: kind.to_owned(),
            effective_at,
            filed_under,
            resource_id,
            actor_ids,
            actor_email,
            json: Value::Object(event),
            visible_from: Instant::now() + self.delay,
        });
    }

    /// Every event recorded, visible yet or not, in recording order, as the server writes them.
    pub fn all(&self) -> Vec<Value> {
        self.events.iter().map(|e| e.json.clone()).collect()
    }

    /// One list answer: matching events visible at `now`, newest first (or `oldest_first`),
    /// at most `page_size` after the cursor.
    pub fn list(
        &self,
        query: &AuditQuery,
        page_size: usize,
        oldest_first: bool,
        now: Instant,
    ) -> AuditAnswer {
        match self.logging {
            AuditLogging::OffError => return AuditAnswer::LoggingOff,
            AuditLogging::OffEmpty => {
                return AuditAnswer::Page(page_body(&[], false));
            }
            AuditLogging::On => {}
        }
        // Recording order is effective order but for raw events; sort as the list order says.
        let mut visible: Vec<&Event> = self
            .events
            .iter()
            .filter(|e| e.visible_from <= now && query.matches(e))
            .collect();
        visible.sort_by_key(|e| (e.effective_at, e.id.clone()));
        if !oldest_first {
            visible.reverse();
        }
        let start = match &query.after {
            None => 0,
            Some(after) => match visible.iter().position(|e| &e.id == after) {
                Some(at) => at + 1,
                None if self.events.iter().any(|e| &e.id == after) => visible.len(),
                None => return AuditAnswer::UnknownCursor(after.clone()),
            },
        };
        let end = match &query.before {
            None => visible.len(),
            Some(before) => visible
                .iter()
                .position(|e| &e.id == before)
                .unwrap_or(visible.len()),
        };
        let rest = visible.get(start..end.max(start)).unwrap_or(&[]);
        let page: Vec<&Event> = rest.iter().take(page_size).copied().collect();
        AuditAnswer::Page(page_body(&page, rest.len() > page.len()))
    }
}

fn page_body(page: &[&Event], has_more: bool) -> String {
    let data: Vec<&Value> = page.iter().map(|e| &e.json).collect();
    json!({
        "object": "list",
        "data": data,
        "first_id": page.first().map(|e| e.id.clone()),
        "last_id": page.last().map(|e| e.id.clone()),
        "has_more": has_more,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
        items
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn unknown_filters_are_ignored_and_bracketed_ones_apply() {
        let mut log = AuditLog::new("sk-admin-test-placeholder", AuditLogging::On);
        let actor = log.admin_key_actor();
        log.record("proj_a", Some("A"), &ProjectChange::Archived, &actor, 100);
        let everything =
            AuditQuery::parse(&pairs(&[("event_types", "project.created")])).expect("parses");
        let AuditAnswer::Page(body) = log.list(&everything, 100, false, Instant::now()) else {
            panic!("a page");
        };
        assert!(body.contains("login.succeeded") && body.contains("project.archived"));
        let only =
            AuditQuery::parse(&pairs(&[("event_types[]", "project.created")])).expect("parses");
        let AuditAnswer::Page(body) = log.list(&only, 100, false, Instant::now()) else {
            panic!("a page");
        };
        assert!(!body.contains("project.archived"), "{body}");
    }
}
