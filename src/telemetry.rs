//! Log output: text or JSON on stderr, level from `log.level` unless `RUST_LOG` says otherwise.
//! Text is coloured only when stderr is a terminal: piped output and files stay plain.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber once; later calls are ignored so tests may call it freely.
pub fn init(format: LogFormat, level: &str) {
    // Postgres notices such as "relation already exists, skipping" are not news.
    let quiet = ",sqlx::postgres::notice=warn,tokio_cron_scheduler=warn";
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(format!("{level}{quiet}")))
        .unwrap_or_else(|_| EnvFilter::new(format!("info{quiet}")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder
            .json()
            .with_ansi(false)
            .flatten_event(true)
            .try_init(),
    };
}
