//! openai-project-sync: keeps an organization's OpenAI projects in Postgres.

pub mod app;
pub mod audit_log;
pub mod check;
pub mod cli;
pub mod client;
pub mod config;
pub mod costs;
#[cfg(feature = "dev-tools")]
pub mod demo;
#[cfg(feature = "dev-tools")]
pub mod emulator;
pub mod http;
pub mod json_text;
pub mod local_postgres;
pub mod metric;
pub mod panics;
pub mod secrets;
pub mod shutdown;
pub mod store;
pub mod sync;
pub mod telemetry;
pub mod unix_time;
pub mod worker;
