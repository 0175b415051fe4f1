//! Postgres: the only module that holds SQL.

mod audit_log;
mod costs;
mod gauges;
mod requests;
mod roles;
mod runs;
mod walk;

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

pub use audit_log::{
    AppliedCounts, ApplyEvents, AuditLogState, NewAuditEvent, PendingTarget, RetrievedState,
    any_audit_event_stored, apply_retrieved_states, audit_log_state, created_by_keys,
    finish_audit_run, note_idle_poll, own_key_ids, pending_targets, set_audit_logging,
    store_audit_window, unstored_audit_events,
};
pub use costs::{
    Backfilled, CostApplied, CostApplyError, CostCounts, CostRow, CostSession, DuplicateCost,
    UnreadCopy, finish_cost_run,
};
pub use gauges::{GaugeFigures, gauge_figures};
pub use requests::{
    ClaimedRequest, Linked, RowWait, StoredCandidate, another_request_in_flight,
    claim_next_request, comparable_name, count_requests_by_status, database_now, defer_request,
    expire_leases, fail_request, find_same_name, finish_created, linked_projects, mark_unknown,
    note_candidate_within_grace, note_fruitless_walk, reconcile_walk_due,
    renew_lease_before_sending, return_to_unknown_unsent, same_name_in_flight, stored_at,
    stored_candidates, unknown_requests, work_is_due,
};
pub use roles::{MissingGrant, missing_grants};
pub use runs::{
    Resource, RunCounts, StatusCount, abandon_stale_runs, count_projects_by_status, fail_run,
    last_success_span, last_success_started_at, start_run,
};
pub use walk::{
    ApplyOutcome, GuardRefusal, Listing, WalkSession, content_digest, walk_connect_options,
};

/// Failures talking to Postgres, with the reason kept and the URL left out.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the database URL could not be understood: {0}")]
    BadUrl(String),
    #[error("could not connect to Postgres at {target}: {reason}")]
    Connect { target: String, reason: String },
    // Not a `source`: the message already carries it, and chains would print it twice.
    #[error("database error: {0}")]
    Sql(sqlx::Error),
    #[error("migrations failed: {0}")]
    Migrate(sqlx::migrate::MigrateError),
    /// Postgres did not answer a walk's call in time; its connection is taken as dead.
    #[error(
        "Postgres did not answer the walk within {0:?}; its connection is taken as dead (a server \
         that vanished or a network that drops packets) and nothing was applied"
    )]
    NoAnswer(std::time::Duration),
    /// Another session held request `0`'s row locked for longer than a write of the queue
    /// waits; the request is left as it was, for a later pass.
    #[error(
        "request {0} is held locked by another session (a client left in an open transaction?); \
         it is left for a later pass"
    )]
    RequestLocked(i64),
    /// Migrations are pending and the connected role may not apply them.
    #[error(
        "{pending} migration(s) of this version are not applied yet (the newest is {newest}), and role \
         {role} may not apply them ({reason}); run `openai-project-sync migrate` as the owner of \
         the openai schema, then start this one again"
    )]
    MigrationsPending {
        pending: usize,
        newest: i64,
        role: String,
        reason: String,
    },
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        StoreError::Sql(error)
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(error: sqlx::migrate::MigrateError) -> Self {
        StoreError::Migrate(error)
    }
}

/// Parses a database URL without echoing it in errors.
pub fn connect_options(url: &SecretString) -> Result<PgConnectOptions, StoreError> {
    url.expose_secret()
        .parse()
        .map_err(|e: sqlx::Error| StoreError::BadUrl(redact(&e.to_string(), url)))
}

fn describe(options: &PgConnectOptions) -> String {
    format!(
        "{}:{}/{}",
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or("(default)")
    )
}

/// Opens a pool; the error names host and database, never the password.
pub async fn connect(url: &SecretString, max_connections: u32) -> Result<PgPool, StoreError> {
    let options = connect_options(url)?;
    let target = describe(&options);
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options)
        .await
        .map_err(|e| StoreError::Connect {
            target,
            reason: redact(&e.to_string(), url),
        })
}

/// Answers `select 1`, proving the pool reaches the server.
pub async fn ping(pool: &PgPool) -> Result<(), StoreError> {
    sqlx::query("select 1").execute(pool).await?;
    Ok(())
}

/// Creates database `name` on the server at `server_url` unless it exists.
pub async fn ensure_database(server_url: &str, name: &str) -> Result<(), StoreError> {
    use sqlx::Connection;
    let mut connection = sqlx::PgConnection::connect(server_url).await?;
    let exists: Option<(i32,)> = sqlx::query_as("select 1 from pg_database where datname = $1")
        .bind(name)
        .fetch_optional(&mut connection)
        .await?;
    if exists.is_none() {
        // Identifiers cannot be bound; the name is quoted as one.
        let quoted = format!("\"{}\"", name.replace('"', "\"\""));
        sqlx::query(&format!("create database {quoted}"))
            .execute(&mut connection)
            .await?;
    }
    let _ = connection.close().await;
    Ok(())
}

/// Applies every migration not yet applied; concurrent callers wait on sqlx's migration lock.
pub async fn migrate(pool: &PgPool) -> Result<(), StoreError> {
    let migrator = sqlx::migrate!("./migrations");
    // A daemon running as a role that does not own the schema cannot run the migrator, which
    // always asks to create its table; with every migration applied there is nothing to run.
    if migrations_applied(pool, &migrator).await {
        return Ok(());
    }
    let Err(error) = migrator.run(pool).await else {
        return Ok(());
    };
    let denied = match &error {
        sqlx::migrate::MigrateError::Execute(sqlx::Error::Database(e))
        | sqlx::migrate::MigrateError::ExecuteMigration(sqlx::Error::Database(e), _) => {
            e.code().as_deref() == Some("42501")
        }
        _ => false,
    };
    if !denied {
        return Err(error.into());
    }
    // Without the list of applied migrations there is no telling what is pending.
    let Ok(applied) =
        sqlx::query_scalar::<_, i64>("select version from public._sqlx_migrations where success")
            .fetch_all(pool)
            .await
    else {
        return Err(error.into());
    };
    let pending: Vec<i64> = migrator
        .iter()
        .map(|m| m.version)
        .filter(|version| !applied.contains(version))
        .collect();
    let (role,): (String,) = sqlx::query_as("select current_user::text")
        .fetch_one(pool)
        .await?;
    Err(StoreError::MigrationsPending {
        pending: pending.len(),
        newest: pending.iter().copied().max().unwrap_or_default(),
        role,
        reason: error.to_string(),
    })
}

/// Whether every migration is applied, unchanged; `false` whenever that cannot be read.
async fn migrations_applied(pool: &PgPool, migrator: &sqlx::migrate::Migrator) -> bool {
    let applied: Result<Vec<(i64, Vec<u8>)>, _> =
        sqlx::query_as("select version, checksum from public._sqlx_migrations where success")
            .fetch_all(pool)
            .await;
    let Ok(applied) = applied else {
        return false;
    };
    migrator.iter().all(|m| {
        applied
            .iter()
            .any(|(version, checksum)| *version == m.version && checksum[..] == m.checksum[..])
    })
}

fn redact(message: &str, url: &SecretString) -> String {
    message.replace(url.expose_secret(), "[database url]")
}
