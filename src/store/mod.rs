//! Postgres: the only module that holds SQL.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

/// Failures talking to Postgres, with the reason kept and the URL left out.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the database URL could not be understood: {0}")]
    BadUrl(String),
    #[error("could not connect to Postgres at {target}: {reason}")]
    Connect { target: String, reason: String },
    #[error("database error: {0}")]
    Sql(#[from] sqlx::Error),
}

/// Opens a pool; the error names host and database, never the password.
pub async fn connect(url: &SecretString, max_connections: u32) -> Result<PgPool, StoreError> {
    let options: PgConnectOptions = url
        .expose_secret()
        .parse()
        .map_err(|e: sqlx::Error| StoreError::BadUrl(redact(&e.to_string(), url)))?;
    let target = format!(
        "{}:{}/{}",
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or("(default)")
    );
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

fn redact(message: &str, url: &SecretString) -> String {
    message.replace(url.expose_secret(), "[database url]")
}
