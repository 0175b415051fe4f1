//! Layered configuration: built-in defaults, `config/default.toml`, `config/local.toml`,
//! `--config FILE`, the conventional variables, then `APP_SECTION__KEY`; validated once.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use reqwest::Url;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

/// Every way configuration can be unusable; each message names the key and the fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration could not be read: {0}")]
    Load(String),
    #[error("`{key}` {problem}; {fix}")]
    Invalid {
        key: &'static str,
        problem: String,
        fix: &'static str,
    },
    #[error(
        "no admin key is configured; set OPENAI_ADMIN_KEY (or APP_OPENAI__ADMIN_KEY), or point `openai.admin_key_file` at a file holding it"
    )]
    MissingAdminKey,
    #[error(
        "no database is configured; set DATABASE_URL (or APP_DATABASE__URL), e.g. postgres://user@127.0.0.1:5432/dbname"
    )]
    MissingDatabaseUrl,
    #[error("`openai.admin_key_file` {path} could not be read: {reason}")]
    KeyFile { path: PathBuf, reason: String },
}

/// The whole configuration, as the daemon and its commands use it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub database: DatabaseSettings,
    pub openai: OpenAiSettings,
    pub sync: SyncSettings,
    pub requests: RequestSettings,
    pub http: HttpSettings,
    pub log: LogSettings,
    pub audit_log: AuditLogSettings,
}

/// The organization audit log: whether to read it, how often, how far back each poll re-reads.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditLogSettings {
    pub enabled: AuditLogEnabled,
    pub poll_interval: String,
    pub overlap: String,
}

/// `audit_log.enabled`: `auto` detects whether the organization has audit logging on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditLogEnabled {
    Auto,
    On,
    Off,
}

impl<'de> Deserialize<'de> for AuditLogEnabled {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Given {
            Flag(bool),
            Word(String),
        }
        match Given::deserialize(deserializer)? {
            Given::Flag(true) => Ok(AuditLogEnabled::On),
            Given::Flag(false) => Ok(AuditLogEnabled::Off),
            Given::Word(word) => match word.trim().to_ascii_lowercase().as_str() {
                "auto" => Ok(AuditLogEnabled::Auto),
                "true" | "on" | "yes" => Ok(AuditLogEnabled::On),
                "false" | "off" | "no" => Ok(AuditLogEnabled::Off),
                other => Err(serde::de::Error::custom(format!(
                    "audit_log.enabled is {other:?}; give auto, true or false"
                ))),
            },
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    /// Held as a secret because connection strings often carry a password.
    pub url: Option<SecretString>,
    pub max_connections: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenAiSettings {
    pub base_url: String,
    pub admin_key: Option<SecretString>,
    pub admin_key_file: Option<PathBuf>,
    pub page_size: u32,
    pub timeout: String,
    pub max_retries: u32,
    pub retry_base_delay: String,
    pub retry_max_delay: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncSettings {
    pub schedule: String,
    pub min_seen_ratio: f64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestSettings {
    pub poll_interval: String,
    pub max_attempts: u32,
    pub reconcile_grace: String,
    pub unresolved: crate::worker::Unresolved,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    pub listen: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    pub format: LogFormat,
    pub level: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Where configuration comes from besides the built-in defaults.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// Folder holding `default.toml` and the optional `local.toml`.
    pub config_dir: Option<PathBuf>,
    /// The file given with `--config`.
    pub file: Option<PathBuf>,
    /// Environment variables to read; `None` reads the process environment.
    pub env: Option<Vec<(String, String)>>,
}

const DEFAULTS: &str = r#"
[database]
max_connections = 10
[openai]
base_url = "https://api.openai.com/v1"
page_size = 100
timeout = "30s"
max_retries = 6
retry_base_delay = "500ms"
retry_max_delay = "30s"
[sync]
schedule = "0 */10 * * * *"
min_seen_ratio = 0.5
[requests]
poll_interval = "5s"
max_attempts = 5
reconcile_grace = "5m"
unresolved = "retry"
[http]
listen = "127.0.0.1:9187"
[log]
format = "text"
level = "info"
[audit_log]
enabled = "auto"
poll_interval = "30s"
overlap = "1h"
"#;

impl Settings {
    /// Reads every layer in order and validates the result.
    pub fn load(sources: &Sources) -> Result<Settings, ConfigError> {
        use config::{Config, Environment, File, FileFormat};

        let env: Vec<(String, String)> = match &sources.env {
            Some(vars) => vars.clone(),
            None => std::env::vars().collect(),
        };
        let dir = sources
            .config_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("config"));
        let mut builder = Config::builder()
            .add_source(File::from_str(DEFAULTS, FileFormat::Toml))
            .add_source(File::from(dir.join("default.toml")).required(false))
            .add_source(File::from(dir.join("local.toml")).required(false));
        if let Some(file) = &sources.file {
            if !file.exists() {
                return Err(ConfigError::Load(format!(
                    "the file given with --config, {}, does not exist",
                    file.display()
                )));
            }
            builder = builder.add_source(File::from(file.as_path()).required(true));
        }
        let mut app_env: std::collections::HashMap<String, String> = env
            .iter()
            .filter(|(k, _)| k.starts_with("APP_"))
            .cloned()
            .collect();
        // The conventional names rank just below their APP_ spelling.
        let conventional = [
            ("DATABASE_URL", "APP_DATABASE__URL"),
            ("OPENAI_ADMIN_KEY", "APP_OPENAI__ADMIN_KEY"),
            ("OPENAI_BASE_URL", "APP_OPENAI__BASE_URL"),
        ];
        for (var, app_var) in conventional {
            if let Some((_, value)) = env.iter().find(|(k, v)| k == var && !v.is_empty()) {
                app_env
                    .entry(app_var.to_owned())
                    .or_insert_with(|| value.clone());
            }
        }
        builder = builder.add_source(
            Environment::with_prefix("APP")
                .prefix_separator("_")
                .separator("__")
                .source(Some(app_env)),
        );
        let settings: Settings = builder
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(|e| ConfigError::Load(explain_load_error(&e.to_string())))?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks every value whose type alone does not make it valid.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=100).contains(&self.openai.page_size) {
            return Err(ConfigError::Invalid {
                key: "openai.page_size",
                problem: format!("is {}", self.openai.page_size),
                fix: "the API accepts 1 to 100 projects per page; 100 is the default and the fastest",
            });
        }
        self.base_url()?;
        self.timeout()?;
        parse_key_duration("openai.retry_base_delay", &self.openai.retry_base_delay)?;
        parse_key_duration("openai.retry_max_delay", &self.openai.retry_max_delay)?;
        parse_key_duration("requests.poll_interval", &self.requests.poll_interval)?;
        parse_key_duration("requests.reconcile_grace", &self.requests.reconcile_grace)?;
        if self.requests.max_attempts == 0 {
            return Err(ConfigError::Invalid {
                key: "requests.max_attempts",
                problem: "is 0".into(),
                fix: "give at least 1",
            });
        }
        validate_schedule(&self.sync.schedule)?;
        if !(0.0..=1.0).contains(&self.sync.min_seen_ratio) {
            return Err(ConfigError::Invalid {
                key: "sync.min_seen_ratio",
                problem: format!("is {}", self.sync.min_seen_ratio),
                fix: "give a share between 0 and 1, e.g. 0.5 refuses a walk that sees under half the known projects",
            });
        }
        if self.database.max_connections == 0 {
            return Err(ConfigError::Invalid {
                key: "database.max_connections",
                problem: "is 0".into(),
                fix: "give at least 2 (one for the sync lock, one for the work)",
            });
        }
        self.audit_log_poll_interval()?;
        self.audit_log_overlap()?;
        self.listen_addr()?;
        if let Some(url) = &self.database.url {
            validate_database_url(url.expose_secret())?;
        }
        Ok(())
    }

    /// The API base URL, parsed; it must be http or https.
    pub fn base_url(&self) -> Result<Url, ConfigError> {
        let invalid = |problem: String| ConfigError::Invalid {
            key: "openai.base_url",
            problem,
            fix: "give a full URL such as https://api.openai.com/v1",
        };
        let url = Url::parse(&self.openai.base_url)
            .map_err(|e| invalid(format!("{:?} is not a URL ({e})", self.openai.base_url)))?;
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            return Err(invalid(format!(
                "{:?} is not an http(s) URL",
                self.openai.base_url
            )));
        }
        Ok(url)
    }

    /// The per-request timeout of API calls.
    pub fn timeout(&self) -> Result<Duration, ConfigError> {
        let timeout = parse_key_duration("openai.timeout", &self.openai.timeout)?;
        if timeout.is_zero() {
            return Err(ConfigError::Invalid {
                key: "openai.timeout",
                problem: "is zero".into(),
                fix: "give a duration such as \"30s\"",
            });
        }
        Ok(timeout)
    }

    /// Base and cap of the exponential backoff between retried reads.
    pub fn retry_delays(&self) -> Result<(Duration, Duration), ConfigError> {
        Ok((
            parse_key_duration("openai.retry_base_delay", &self.openai.retry_base_delay)?,
            parse_key_duration("openai.retry_max_delay", &self.openai.retry_max_delay)?,
        ))
    }

    /// How often the request worker polls even when no notification arrives.
    pub fn poll_interval(&self) -> Result<Duration, ConfigError> {
        parse_key_duration("requests.poll_interval", &self.requests.poll_interval)
    }

    /// How long reconciliation waits after an attempt before concluding it created nothing.
    pub fn reconcile_grace(&self) -> Result<Duration, ConfigError> {
        parse_key_duration("requests.reconcile_grace", &self.requests.reconcile_grace)
    }

    /// How often the daemon polls the audit log.
    pub fn audit_log_poll_interval(&self) -> Result<Duration, ConfigError> {
        let interval = parse_key_duration("audit_log.poll_interval", &self.audit_log.poll_interval)?;
        if interval.is_zero() {
            return Err(ConfigError::Invalid {
                key: "audit_log.poll_interval",
                problem: "is zero".into(),
                fix: "give a duration such as \"30s\"",
            });
        }
        Ok(interval)
    }

    /// How far before the watermark each poll reads again, for events that show up late.
    pub fn audit_log_overlap(&self) -> Result<Duration, ConfigError> {
        parse_key_duration("audit_log.overlap", &self.audit_log.overlap)
    }

    /// The address of the health and metrics listener.
    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.http.listen.parse().map_err(|_| ConfigError::Invalid {
            key: "http.listen",
            problem: format!("{:?} is not an address", self.http.listen),
            fix: "give host:port, e.g. 127.0.0.1:9187",
        })
    }

    /// The admin key, from the environment or the key file.
    pub fn admin_key(&self) -> Result<SecretString, ConfigError> {
        if let Some(key) = &self.openai.admin_key
            && !key.expose_secret().trim().is_empty()
        {
            return Ok(SecretString::from(key.expose_secret().trim().to_owned()));
        }
        if let Some(path) = &self.openai.admin_key_file {
            let text = std::fs::read_to_string(path).map_err(|e| ConfigError::KeyFile {
                path: path.clone(),
                reason: e.kind().to_string(),
            })?;
            let key = text.trim();
            if key.is_empty() {
                return Err(ConfigError::KeyFile {
                    path: path.clone(),
                    reason: "it is empty".into(),
                });
            }
            return Ok(SecretString::from(key.to_owned()));
        }
        Err(ConfigError::MissingAdminKey)
    }

    /// The database URL, which commands that touch Postgres require.
    pub fn database_url(&self) -> Result<SecretString, ConfigError> {
        self.database
            .url
            .clone()
            .filter(|u| !u.expose_secret().trim().is_empty())
            .ok_or(ConfigError::MissingDatabaseUrl)
    }
}

/// Rewrites the `config` crate's messages so an unknown key reads as such.
fn explain_load_error(message: &str) -> String {
    if message.contains("unknown field") {
        format!(
            "{message}; remove or correct that key (keys are listed in config/default.toml; environment variables are APP_SECTION__KEY)"
        )
    } else {
        message.to_owned()
    }
}

fn validate_database_url(url: &str) -> Result<(), ConfigError> {
    let parsed = Url::parse(url).ok();
    let ok = parsed
        .as_ref()
        .is_some_and(|u| matches!(u.scheme(), "postgres" | "postgresql"));
    if ok {
        Ok(())
    } else {
        // The value itself is not echoed: it may hold a password.
        Err(ConfigError::Invalid {
            key: "database.url",
            problem: "is not a postgres:// URL".into(),
            fix: "give a URL such as postgres://user:password@host:5432/dbname",
        })
    }
}

/// Accepts the scheduler's 6-field cron syntax (seconds first) and explains 5-field crontabs.
pub fn validate_schedule(schedule: &str) -> Result<(), ConfigError> {
    let fields = schedule.split_whitespace().count();
    if fields == 5 {
        return Err(ConfigError::Invalid {
            key: "sync.schedule",
            problem: format!("{schedule:?} has 5 fields, like a crontab line"),
            fix: "schedules have 6 fields with seconds first (UTC): put a 0 in front, e.g. \"0 */10 * * * *\"",
        });
    }
    if fields != 6 {
        return Err(ConfigError::Invalid {
            key: "sync.schedule",
            problem: format!("{schedule:?} has {fields} fields"),
            fix: "give 6 fields, seconds first, in UTC, e.g. \"0 */10 * * * *\" for every ten minutes",
        });
    }
    let noop = |_, _| Box::pin(async {}) as std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;
    tokio_cron_scheduler::Job::new_async(schedule, noop)
        .map(|_| ())
        .map_err(|e| ConfigError::Invalid {
            key: "sync.schedule",
            problem: format!("{schedule:?} is not a valid cron expression ({e})"),
            fix: "give 6 fields, seconds first, in UTC, e.g. \"0 */10 * * * *\"",
        })
}

fn parse_key_duration(key: &'static str, text: &str) -> Result<Duration, ConfigError> {
    parse_duration(text).ok_or_else(|| ConfigError::Invalid {
        key,
        problem: format!("{text:?} is not a duration"),
        fix: "give a number with a unit: \"250ms\", \"30s\", \"5m\" (a bare number means seconds)",
    })
}

/// Parses `250ms`, `30s`, `5m`, `1h` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().ok()?;
    let seconds = match unit.trim() {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return None,
    };
    Duration::try_from_secs_f64(seconds).ok()
}
