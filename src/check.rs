//! The `check` command: configuration, Postgres and the API, each with a plain-words fix.

use std::fmt;

use crate::client::{AdminClient, ApiError, ClientOptions, ListParams, RetryPolicy};
use crate::config::Settings;
use crate::store;

/// The result of one check: what was found, or what is wrong and how to fix it.
#[derive(Debug, Clone)]
pub struct CheckLine {
    pub name: &'static str,
    pub outcome: Result<String, Problem>,
}

/// A failed check.
#[derive(Debug, Clone)]
pub struct Problem {
    pub what: String,
    pub fix: String,
}

impl fmt::Display for CheckLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.outcome {
            Ok(found) => write!(f, "ok    {}: {found}", self.name),
            Err(problem) => write!(
                f,
                "FAIL  {}: {}\n      fix: {}",
                self.name, problem.what, problem.fix
            ),
        }
    }
}

/// Runs every check; the audit log's only when the API's passed, since it needs the same URL
/// and key.
pub async fn run_checks(settings: &Settings) -> Vec<CheckLine> {
    let mut lines = vec![CheckLine {
        name: "configuration",
        outcome: Ok(format!(
            "valid (API {}, page size {}, schedule \"{}\")",
            without_credentials(&settings.openai.base_url),
            settings.openai.page_size,
            settings.sync.schedule
        )),
    }];
    lines.push(check_database(settings).await);
    let api = check_api(settings).await;
    // The audit log is read with the same URL and key: with those broken, what it answers
    // (a 404 or a 401, after retries) would only be misread as audit logging being off.
    let audit = if api.outcome.is_ok() {
        check_audit_log(settings).await
    } else {
        CheckLine {
            name: "audit log",
            outcome: Err(Problem {
                what: "not read: it is read with the API's URL and key, which failed above".into(),
                fix: "fix the API check first".into(),
            }),
        }
    };
    lines.push(api);
    lines.push(audit);
    lines
}

/// Whether the organization's audit log answers with events; off is a failure only when
/// `audit_log.enabled = true` asks for it.
async fn check_audit_log(settings: &Settings) -> CheckLine {
    use crate::config::AuditLogEnabled;
    let name = "audit log";
    if settings.audit_log.enabled == AuditLogEnabled::Off {
        return CheckLine {
            name,
            outcome: Ok("not read (audit_log.enabled = false)".into()),
        };
    }
    let required = settings.audit_log.enabled == AuditLogEnabled::On;
    let turn_on = "an organization owner can turn audit logging on under Organization settings in the OpenAI dashboard (once on it cannot be turned off)";
    let outcome = async {
        let client = crate::app::build_client(settings).map_err(|e| Problem {
            what: e.to_string(),
            fix: "fix the API settings above".into(),
        })?;
        let off = |why: String| {
            if required {
                Err(Problem {
                    what: format!("audit logging is off: {why}"),
                    fix: format!("{turn_on}, or set audit_log.enabled = auto"),
                })
            } else {
                Ok(format!(
                    "off ({why}): changes are recorded when a walk sees them, without their author; {turn_on}"
                ))
            }
        };
        match client.audit_log_has_events().await {
            Ok(true) => Ok("on: who changed a project and exactly when is read from it".to_owned()),
            Ok(false) => off("the log holds no event".into()),
            Err(error)
                if matches!(error.root(), ApiError::Status { status: 400 | 403 | 404, .. }) =>
            {
                off(format!("the API refused: {error}"))
            }
            Err(error) if required => Err(explain_api_error(&error, settings)),
            Err(error) => Ok(format!(
                "could not tell whether it is on ({error}); the daemon checks again as it runs"
            )),
        }
    }
    .await;
    CheckLine { name, outcome }
}

/// A URL with any user name and password in it removed, and any key in it redacted, for printing.
fn without_credentials(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut parsed) => {
            let _ = parsed.set_password(None);
            let _ = parsed.set_username("");
            crate::secrets::redact_keys(parsed.as_str())
        }
        Err(_) => "(not a URL)".to_owned(),
    }
}

async fn check_database(settings: &Settings) -> CheckLine {
    let name = "database";
    let outcome = async {
        let url = settings.database_url().map_err(|e| Problem {
            what: "no database URL".into(),
            fix: e.to_string(),
        })?;
        let pool = store::connect(&url, 1).await.map_err(|e| Problem {
            what: e.to_string(),
            fix: "check that Postgres runs and that database.url (DATABASE_URL) names the right host, port, database, user and password".into(),
        })?;
        store::ping(&pool).await.map_err(|e| Problem {
            what: e.to_string(),
            fix: "the server accepted the connection but not a query; check the user's rights".into(),
        })?;
        let rights = store::missing_grants(&pool).await;
        pool.close().await;
        match rights {
            Ok(None) => Ok("reachable; not migrated yet (run `migrate` as the schema's owner)".to_owned()),
            Ok(Some((role, missing))) if missing.is_empty() => Ok(format!(
                "reachable; role {role} may claim requests, write outcomes and run walks"
            )),
            Ok(Some((role, missing))) => Err(Problem {
                what: format!(
                    "role {role} lacks what the daemon needs: {}",
                    missing
                        .iter()
                        .map(|m| m.needed_for)
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
                fix: format!(
                    "as the schema's owner, run: {}",
                    missing
                        .iter()
                        .map(|m| m.grant.as_str())
                        .collect::<Vec<_>>()
                        .join(" ")
                ),
            }),
            Err(e) => Err(Problem {
                what: format!("could not read the role's rights: {e}"),
                fix: "check the user's rights on the openai schema".into(),
            }),
        }
    }
    .await;
    CheckLine { name, outcome }
}

async fn check_api(settings: &Settings) -> CheckLine {
    let name = "OpenAI Admin API";
    let outcome = async {
        let admin_key = settings.admin_key().map_err(|e| Problem {
            what: "no admin key".into(),
            fix: e.to_string(),
        })?;
        let base_url = settings.base_url().map_err(|e| Problem {
            what: e.to_string(),
            fix: "correct openai.base_url".into(),
        })?;
        let client = AdminClient::new(ClientOptions {
            base_url: base_url.clone(),
            admin_key,
            timeout: settings.openai.timeout,
            retry: RetryPolicy {
                max_retries: 1,
                ..RetryPolicy::default()
            },
        })
        .map_err(|e| Problem {
            what: e.to_string(),
            fix: "set the admin key again, without surrounding quotes or line breaks".into(),
        })?;
        let params = ListParams {
            limit: 1,
            after: None,
            include_archived: true,
        };
        match client.list_page(&params).await {
            Ok(page) => Ok(format!(
                "{} answered the projects list{}",
                without_credentials(base_url.as_str()),
                if page.data.is_empty() {
                    " (the organization has no projects yet)"
                } else {
                    ""
                }
            )),
            Err(error) => Err(explain_api_error(&error, settings)),
        }
    }
    .await;
    CheckLine { name, outcome }
}

/// Turns an API failure into the sentence an operator needs.
pub fn explain_api_error(error: &ApiError, settings: &Settings) -> Problem {
    let base = &without_credentials(&settings.openai.base_url);
    let fix = match error.root() {
        ApiError::Status { status: 401, .. } => "the admin key was refused. Admin keys start with \"sk-admin-\" and are made under Organization settings → Admin keys; set OPENAI_ADMIN_KEY (or openai.admin_key_file) to one".to_owned(),
        ApiError::Status { status: 403, .. } => "the key may not manage projects. Use an organization admin key (\"sk-admin-...\"), not a project or user key".to_owned(),
        ApiError::Status { status: 404, .. } => format!("{base} has no projects endpoint; openai.base_url should end in /v1, e.g. https://api.openai.com/v1"),
        ApiError::Status { status: 429, .. } => "the API is rate limiting this key; wait a minute and run check again".to_owned(),
        ApiError::Status { status, .. } if *status >= 500 => "the API is failing right now; try again later".to_owned(),
        ApiError::Status { .. } => "the API refused the call; the message above says why".to_owned(),
        ApiError::Connect(_) => format!("could not reach {base}; check openai.base_url, DNS, firewalls and any proxy"),
        ApiError::Timeout(_) => "no answer in time; check the network, or raise openai.timeout".to_owned(),
        ApiError::Transport(_) => "the connection broke; check the network and any proxy between here and the API".to_owned(),
        ApiError::Decode { .. } => format!("{base} did not answer like the OpenAI API; check openai.base_url"),
        ApiError::GaveUp { .. } | ApiError::Pagination { .. } => "try again later".to_owned(),
    };
    Problem {
        what: error.to_string(),
        fix,
    }
}
