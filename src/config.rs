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
    #[error(
        "an admin key was found in the configuration file {path} (`openai.admin_key`); keys never go in configuration files: remove it, then set OPENAI_ADMIN_KEY or point `openai.admin_key_file` at a file only the daemon can read"
    )]
    KeyInFile { path: PathBuf },
    #[error(
        "a database password was found in the configuration file {path} (`database.url`); passwords never go in configuration files: remove it from the URL there, then give the whole URL as DATABASE_URL (or APP_DATABASE__URL), or keep the password in a ~/.pgpass file (or the file PGPASSFILE names)"
    )]
    PasswordInFile { path: PathBuf },
    #[error(
        "the environment variable {variable} is not valid UTF-8; set it to plain text (or unset it)"
    )]
    NotUtf8 { variable: String },
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
    pub costs: CostSettings,
    /// `APP_` variables that name no configuration key, ignored; `warn_ignored` logs them.
    #[serde(skip)]
    pub ignored_variables: Vec<String>,
}

/// The organization audit log: whether to read it, how often, how far back each poll re-reads.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditLogSettings {
    pub enabled: AuditLogEnabled,
    /// How often the daemon polls the audit log.
    #[serde(deserialize_with = "duration_text::deserialize")]
    pub poll_interval: Duration,
    /// How far before the watermark each poll reads again, for events that show up late.
    #[serde(deserialize_with = "duration_text::deserialize")]
    pub overlap: Duration,
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
    /// The per-request timeout of API calls.
    #[serde(deserialize_with = "duration_text::deserialize")]
    pub timeout: Duration,
    pub max_retries: u32,
    /// Base of the exponential backoff between retried reads.
    #[serde(deserialize_with = "duration_text::deserialize")]
    pub retry_base_delay: Duration,
    /// Cap of the exponential backoff between retried reads.
    #[serde(deserialize_with = "duration_text::deserialize")]
    pub retry_max_delay: Duration,
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
    /// How often the request worker polls even when no notification arrives.
    #[serde(deserialize_with = "duration_text::deserialize")]
    pub poll_interval: Duration,
    pub max_attempts: u32,
    /// How long reconciliation waits after an attempt before concluding it created nothing.
    #[serde(deserialize_with = "duration_text::deserialize")]
    pub reconcile_grace: Duration,
    pub unresolved: crate::worker::Unresolved,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CostSettings {
    pub enabled: bool,
    pub schedule: String,
    pub lookback_days: u32,
    /// A date, `YYYY-MM-DD`; unset: the day of the oldest project's `created_at`.
    pub backfill_from: Option<String>,
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
[costs]
enabled = true
schedule = "0 15 * * * *"
lookback_days = 7
"#;

impl Settings {
    /// Reads every layer in order and validates the result.
    pub fn load(sources: &Sources) -> Result<Settings, ConfigError> {
        use config::{Config, Environment, File, FileFormat};

        let env: Vec<(String, String)> = match &sources.env {
            Some(vars) => vars.clone(),
            None => process_environment()?,
        };
        let dir = sources
            .config_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("config"));
        let files = [dir.join("default.toml"), dir.join("local.toml")];
        for file in files.iter().chain(sources.file.as_ref()) {
            refuse_secrets_in_file(file)?;
        }
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
        let known = known_keys();
        let (mut app_env, mut ignored_variables) = (std::collections::HashMap::new(), Vec::new());
        for (name, value) in env.iter().filter(|(k, _)| k.starts_with("APP_")) {
            if known.contains(&key_of_variable(name)) {
                app_env.insert(name.clone(), value.clone());
            } else {
                ignored_variables.push(name.clone());
            }
        }
        ignored_variables.sort();
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
        let mut settings: Settings = builder
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(|e| ConfigError::Load(explain_load_error(&e.to_string())))?;
        settings.ignored_variables = ignored_variables;
        settings.validate()?;
        Ok(settings)
    }

    /// Logs each ignored `APP_` variable once, by name only (its value may be a secret).
    pub fn warn_ignored(&self) {
        for variable in &self.ignored_variables {
            tracing::warn!(
                variable = %variable,
                "this APP_ environment variable names no configuration key and is ignored (keys are listed in config/default.toml; APP_SECTION__KEY sets section.key)"
            );
        }
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
        if self.openai.timeout.is_zero() {
            return Err(ConfigError::Invalid {
                key: "openai.timeout",
                problem: "is zero".into(),
                fix: "give a duration such as \"30s\"",
            });
        }
        if self.openai.retry_base_delay > self.openai.retry_max_delay {
            return Err(ConfigError::Invalid {
                key: "openai.retry_base_delay",
                problem: format!(
                    "({}) is above openai.retry_max_delay ({})",
                    humantime::format_duration(self.openai.retry_base_delay),
                    humantime::format_duration(self.openai.retry_max_delay)
                ),
                fix: "the first retry waits the base delay and later ones double it up to the cap: give a base at most the cap, e.g. 500ms and 30s",
            });
        }
        if self.audit_log.poll_interval.is_zero() {
            return Err(ConfigError::Invalid {
                key: "audit_log.poll_interval",
                problem: "is zero".into(),
                fix: "give how often the daemon asks the audit log for new events, e.g. \"30s\"",
            });
        }
        if self.requests.poll_interval.is_zero() {
            return Err(ConfigError::Invalid {
                key: "requests.poll_interval",
                problem: "is zero".into(),
                fix: "give how often the worker looks for due requests without a notification, e.g. \"5s\"",
            });
        }
        // A bare word is a level; a filter would take any other word as a target name.
        const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
        let bare_word_not_a_level = self.log.level.split(',').any(|directive| {
            let directive = directive.trim();
            !directive.contains('=') && !LEVELS.contains(&directive.to_ascii_lowercase().as_str())
        });
        let parsed =
            tracing_subscriber::EnvFilter::try_new(&self.log.level).map_err(|e| e.to_string());
        if let Err(e) = parsed.and_then(|_| {
            if bare_word_not_a_level {
                Err("a bare word must be a level".to_owned())
            } else {
                Ok(())
            }
        }) {
            return Err(ConfigError::Invalid {
                key: "log.level",
                problem: format!("{:?} is not a log level or filter ({e})", self.log.level),
                fix: "give error, warn, info, debug or trace (or a filter such as \"info,openai_project_sync=debug\")",
            });
        }
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
        if self.database.max_connections < MIN_POOL_CONNECTIONS {
            return Err(ConfigError::Invalid {
                key: "database.max_connections",
                problem: format!("is {}", self.database.max_connections),
                fix: "give at least 3: the request worker's LISTEN connection holds one for good, and the queue, the health checks and each pass's bookkeeping need at least two more (walks use a connection of their own, outside the pool)",
            });
        }
        self.listen_addr()?;
        validate_schedule_of("costs.schedule", &self.costs.schedule)?;
        if self.costs.lookback_days > MAX_LOOKBACK_DAYS {
            return Err(ConfigError::Invalid {
                key: "costs.lookback_days",
                problem: format!("is {}", self.costs.lookback_days),
                fix: "give 0 to 366 days; older days are read once by the backfill (costs.backfill_from)",
            });
        }
        self.cost_backfill_from()?;
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

    /// The first day a cost backfill reads, when configured.
    pub fn cost_backfill_from(&self) -> Result<Option<chrono::NaiveDate>, ConfigError> {
        let Some(text) = self
            .costs
            .backfill_from
            .as_deref()
            .map(str::trim)
            .filter(|t| !t.is_empty())
        else {
            return Ok(None);
        };
        chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
            .map(Some)
            .map_err(|_| ConfigError::Invalid {
                key: "costs.backfill_from",
                problem: format!("{text:?} is not a date"),
                fix: "give a UTC day as YYYY-MM-DD, e.g. \"2025-01-01\", or leave it unset to start at the oldest project",
            })
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
    // A parse error quotes the offending line of the file, which may hold a key or a password:
    // the line and column it names are enough to find it.
    let quotes_a_line = |line: &&str| {
        line.trim_start()
            .trim_start_matches(|c: char| c.is_ascii_digit())
            .trim_start()
            .starts_with('|')
    };
    let message = crate::secrets::redact_keys(
        &message
            .lines()
            .filter(|line| !quotes_a_line(line))
            .collect::<Vec<_>>()
            .join("\n"),
    );
    /// The keys whose value is one of a few words, and those words.
    const WORDS: [(&str, &str); 2] = [
        ("requests.unresolved", "retry or hold"),
        ("log.format", "text or json"),
    ];
    if message.contains("unknown field") {
        format!(
            "{message}; remove or correct that key (keys are listed in config/default.toml; environment variables are APP_SECTION__KEY)"
        )
    } else if message.contains("does not have variant constructor")
        && let Some((key, words)) = WORDS
            .iter()
            .find(|(key, _)| message.contains(&format!("`{key}`")))
    {
        format!("`{key}` is not one of its words; give {words}")
    } else {
        message
    }
}

fn validate_database_url(url: &str) -> Result<(), ConfigError> {
    let parsed = Url::parse(url);
    if parsed == Err(::url::ParseError::EmptyHost) {
        // A Unix socket's URL with user info before an empty host: not echoed, it may hold a
        // password.
        return Err(ConfigError::Invalid {
            key: "database.url",
            problem: "names a user but no host (the URL's parser needs one, also when `?host=` names a socket folder)".into(),
            fix: "for a Unix socket, give postgres://user@localhost/dbname?host=/var/run/postgresql, or postgres:///dbname?host=/var/run/postgresql&user=user",
        });
    }
    let parsed = parsed.ok();
    let ok = parsed
        .as_ref()
        .is_some_and(|u| matches!(u.scheme(), "postgres" | "postgresql"));
    // A `/`, `#` or `?` in an unescaped password ends the authority early: the URL then fails to
    // parse, or reads part of the password as a port and the rest as the database name (which
    // error messages show).
    let split_password = url
        .split_once("://")
        .filter(|(scheme, _)| matches!(*scheme, "postgres" | "postgresql"))
        .and_then(|(_, rest)| rest.rsplit_once('@'))
        .is_some_and(|(user_info, _)| user_info.contains(['/', '#', '?']));
    if split_password {
        // The value itself is not echoed: it holds a password.
        Err(ConfigError::Invalid {
            key: "database.url",
            problem: "does not parse as user, password, host and database: the user name or password holds a character that URLs reserve".into(),
            fix: "percent-encode those characters in the user name and password (/ as %2F, # as %23, ? as %3F, @ as %40, % as %25, : as %3A)",
        })
    } else if ok {
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

/// How to write a schedule, for an error about one.
const SCHEDULE_FIX: &str = "give 6 fields, seconds first, in UTC, e.g. \"0 15 * * * *\"";

/// The interval between two consecutive fire times of the schedule under `key`.
pub fn schedule_period_of(key: &'static str, schedule: &str) -> Result<Duration, ConfigError> {
    let cron = schedule_of(key, schedule)?;
    let invalid = |problem: String| ConfigError::Invalid {
        key,
        problem,
        fix: SCHEDULE_FIX,
    };
    let now = chrono::Utc::now();
    let first = cron
        .find_next_occurrence(&now, false)
        .map_err(|e| invalid(e.to_string()))?;
    let second = cron
        .find_next_occurrence(&first, false)
        .map_err(|e| invalid(e.to_string()))?;
    Ok((second - first)
        .to_std()
        .unwrap_or(Duration::from_secs(3600)))
}

/// The schedule under `key`, parsed as the scheduler parses it: seconds first, and a day of the
/// month and a weekday given together must both match (croner's default is either).
pub fn schedule_of(key: &'static str, schedule: &str) -> Result<croner::Cron, ConfigError> {
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Required)
        .dom_and_dow(true)
        .build()
        .parse(schedule)
        .map_err(|e| ConfigError::Invalid {
            key,
            problem: e.to_string(),
            fix: SCHEDULE_FIX,
        })
}

/// The longest `costs.lookback_days` accepted.
const MAX_LOOKBACK_DAYS: u32 = 366;

/// Accepts the scheduler's 6-field cron syntax (seconds first) and explains 5-field crontabs.
pub fn validate_schedule(schedule: &str) -> Result<(), ConfigError> {
    validate_schedule_of("sync.schedule", schedule)
}

/// `validate_schedule` for the schedule under `key`.
pub fn validate_schedule_of(key: &'static str, schedule: &str) -> Result<(), ConfigError> {
    let fields = schedule.split_whitespace().count();
    if fields == 5 {
        return Err(ConfigError::Invalid {
            key,
            problem: format!(
                "{schedule:?} has 5 fields, like a crontab line (the same times with seconds first: \"0 {}\")",
                schedule.trim()
            ),
            fix: "schedules have 6 fields with seconds first (UTC): put a 0 in front",
        });
    }
    if fields != 6 {
        return Err(ConfigError::Invalid {
            key,
            problem: format!("{schedule:?} has {fields} fields"),
            fix: "give 6 fields, seconds first, in UTC, e.g. \"0 */10 * * * *\" for every ten minutes",
        });
    }
    let noop = |_, _| Box::pin(async {}) as std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;
    tokio_cron_scheduler::Job::new_async(schedule, noop)
        .map(|_| ())
        .map_err(|e| ConfigError::Invalid {
            key,
            problem: format!("{schedule:?} is not a valid cron expression ({e})"),
            fix: "give 6 fields, seconds first, in UTC, e.g. \"0 */10 * * * *\"",
        })?;
    // Valid syntax may still name no time at all (the 30th of February): it would never fire.
    schedule_period_of(key, schedule).map_err(|_| ConfigError::Invalid {
        key,
        problem: format!("{schedule:?} never fires (it names no day that exists)"),
        fix: "give a schedule that names a real time, e.g. \"0 */10 * * * *\"",
    })?;
    Ok(())
}

/// Durations as configuration gives them: `250ms`, `30s`, `5m`, `1h 30m` (humantime), or a bare
/// number of seconds.
mod duration_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, de::Error};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Given {
        Text(String),
        Whole(u64),
        Fraction(f64),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let invalid = |given: &str| {
            D::Error::custom(format!(
                "{given:?} is not a duration: give a number with a unit, e.g. \"250ms\", \"30s\", \"5m\" (a bare number means seconds)"
            ))
        };
        let (given, duration) = match Given::deserialize(deserializer)? {
            Given::Whole(seconds) => (seconds.to_string(), Ok(Duration::from_secs(seconds))),
            Given::Fraction(seconds) => (
                seconds.to_string(),
                Duration::try_from_secs_f64(seconds).map_err(|_| invalid(&seconds.to_string())),
            ),
            Given::Text(text) => {
                let text = text.trim().to_owned();
                let duration = match text.parse::<f64>() {
                    Ok(seconds) => Duration::try_from_secs_f64(seconds).map_err(|_| invalid(&text)),
                    Err(_) => humantime::parse_duration(&text).map_err(|_| invalid(&text)),
                };
                (text, duration)
            }
        };
        let duration = duration?;
        if duration > LONGEST {
            return Err(D::Error::custom(format!(
                "{given:?} is longer than a year: no setting needs that, and longer ones overflow \
                 the arithmetic and the database's intervals; give e.g. \"30s\" or \"1h\""
            )));
        }
        Ok(duration)
    }

    /// The longest duration any setting accepts.
    const LONGEST: Duration = Duration::from_secs(365 * 24 * 60 * 60);
}

/// The smallest pool the daemon can work with: see the `database.max_connections` check.
const MIN_POOL_CONNECTIONS: u32 = 3;

/// Keys that have no built-in default but may be set.
const OPTIONAL_KEYS: &[&str] = &[
    "database.url",
    "openai.admin_key",
    "openai.admin_key_file",
    "costs.backfill_from",
];

/// Every configuration key, as `section.key`: the built-in defaults' and the optional ones.
fn known_keys() -> std::collections::HashSet<String> {
    let mut keys: std::collections::HashSet<String> =
        OPTIONAL_KEYS.iter().map(|k| (*k).to_owned()).collect();
    let defaults = config::Config::builder()
        .add_source(config::File::from_str(DEFAULTS, config::FileFormat::Toml))
        .build()
        .and_then(|c| c.try_deserialize::<std::collections::HashMap<String, config::Value>>());
    if let Ok(sections) = defaults {
        for (section, value) in sections {
            if let Ok(table) = value.into_table() {
                keys.extend(table.into_keys().map(|key| format!("{section}.{key}")));
            }
        }
    }
    keys
}

/// The key an `APP_SECTION__KEY` variable sets: `section.key`.
fn key_of_variable(name: &str) -> String {
    name.trim_start_matches("APP_")
        .to_lowercase()
        .split("__")
        .collect::<Vec<_>>()
        .join(".")
}

/// The process environment's variables that configuration reads: `APP_*` and the conventional
/// names. A non-UTF-8 value of one of them is an error naming it; other variables are skipped.
fn process_environment() -> Result<Vec<(String, String)>, ConfigError> {
    let mut vars = Vec::new();
    for (name, value) in std::env::vars_os() {
        // A name that is not UTF-8 is not one of ours.
        let Some(name) = name.to_str() else { continue };
        let ours = name.starts_with("APP_")
            || ["DATABASE_URL", "OPENAI_ADMIN_KEY", "OPENAI_BASE_URL"].contains(&name);
        if !ours {
            continue;
        }
        let value = value.into_string().map_err(|_| ConfigError::NotUtf8 {
            variable: name.to_owned(),
        })?;
        vars.push((name.to_owned(), value));
    }
    Ok(vars)
}

/// Whether a database URL carries a password: in its user info (also where the URL parser
/// refuses the rest, a socket URL say), or as a `password` parameter.
fn url_has_password(url: &str) -> bool {
    if let Ok(parsed) = Url::parse(url) {
        return parsed.password().is_some_and(|p| !p.is_empty())
            || parsed
                .query_pairs()
                .any(|(name, value)| name == "password" && !value.is_empty());
    }
    let authority = url.split_once("://").map_or(url, |(_, rest)| rest);
    let in_user_info = authority
        .rsplit_once('@')
        .and_then(|(user_info, _)| user_info.split_once(':'))
        .is_some_and(|(_, password)| !password.is_empty());
    in_user_info || url.contains("password=")
}

/// Refuses a configuration file that holds `openai.admin_key` or a `database.url` with a
/// password; a missing file is fine.
fn refuse_secrets_in_file(path: &std::path::Path) -> Result<(), ConfigError> {
    if !path.exists() {
        return Ok(());
    }
    let Ok(file) = config::Config::builder()
        .add_source(config::File::from(path).required(false))
        .build()
    else {
        // Unreadable or unparsable: the load that follows says so, without echoing it.
        return Ok(());
    };
    if file.get::<config::Value>("openai.admin_key").is_ok() {
        return Err(ConfigError::KeyInFile {
            path: path.to_owned(),
        });
    }
    let holds_password = file
        .get::<String>("database.url")
        .ok()
        .is_some_and(|url| url_has_password(&url));
    if holds_password {
        return Err(ConfigError::PasswordInFile {
            path: path.to_owned(),
        });
    }
    Ok(())
}
