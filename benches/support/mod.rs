//! What both benchmarks share: the release binary, the emulator in its own process, a fresh
//! migrated database.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use openai_project_sync::local_postgres;
use sqlx::PgConnection;

pub const BINARY: &str = env!("CARGO_BIN_EXE_openai-project-sync");
pub const KEY: &str = "sk-admin-bench-placeholder";

/// The emulator in a process of its own, so the measured process's memory is the sync's alone.
pub struct Emulator {
    child: Child,
    pub port: u16,
}

impl Emulator {
    /// Starts an emulator of `projects` with `latency_ms` per call, once it says it listens.
    #[allow(dead_code)] // Each benchmark compiles this module; the costs one passes flags.
    pub fn start(projects: usize, latency_ms: u64) -> Emulator {
        Emulator::start_with(projects, latency_ms, &[])
    }

    /// `start` with further emulator flags.
    pub fn start_with(projects: usize, latency_ms: u64, flags: &[&str]) -> Emulator {
        let port = local_postgres::free_port().expect("free port");
        let mut child = Command::new(BINARY)
            .args([
                "emulator",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--admin-key",
                KEY,
            ])
            .args([
                "--projects",
                &projects.to_string(),
                "--seed",
                "1",
                "--latency-ms",
                &latency_ms.to_string(),
            ])
            .args(flags)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the emulator");
        let stdout = child.stdout.take().expect("emulator stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("emulator says it listens");
        assert!(line.contains("listening"), "emulator did not start: {line}");
        Emulator { child, port }
    }

    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.port)
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The release binary's `sync` command against `db_url` and `emulator`, quiet but for warnings.
#[allow(dead_code)] // Each benchmark compiles this module; the requests one runs no sync.
pub fn sync_command(db_url: &str, emulator: &Emulator) -> Command {
    let mut command = Command::new(BINARY);
    command
        .args(["sync", "projects"])
        .env("DATABASE_URL", db_url)
        .env("OPENAI_BASE_URL", emulator.base_url())
        .env("OPENAI_ADMIN_KEY", KEY)
        .env("APP_LOG__LEVEL", "warn");
    command
}

/// Drops and creates database `name` on the server, migrates it, and returns its URL.
pub async fn fresh_database(admin: &mut PgConnection, server_url: &str, name: &str) -> String {
    sqlx::query(&format!("drop database if exists {name} with (force)"))
        .execute(&mut *admin)
        .await
        .expect("drop");
    sqlx::query(&format!("create database {name}"))
        .execute(&mut *admin)
        .await
        .expect("create");
    let mut url = reqwest::Url::parse(server_url).expect("server URL");
    url.set_path(&format!("/{name}"));
    let status = Command::new(BINARY)
        .arg("migrate")
        .env("DATABASE_URL", url.as_str())
        .env("APP_LOG__LEVEL", "warn")
        .status()
        .expect("migrate");
    assert!(status.success(), "migrations failed");
    url.to_string()
}

/// Renames, archives and creates projects behind the sync's back.
#[allow(dead_code)] // Each benchmark compiles this module; not every one churns.
pub async fn churn(emulator: &Emulator, renamed: usize, archived: usize, created: usize) {
    let response = reqwest::Client::new()
        .post(format!(
            "http://127.0.0.1:{}/_emulator/churn",
            emulator.port
        ))
        .bearer_auth(KEY)
        .json(&serde_json::json!({"renamed": renamed, "archived": archived, "created": created}))
        .send()
        .await
        .expect("churn");
    assert!(response.status().is_success());
}

/// Rows written to `tables` (of schema `openai`) as Postgres counts them: inserted, updated or
/// deleted. Statistics arrive when the writing backend exits; read until two reads agree.
#[allow(dead_code)] // Each benchmark compiles this module; not every one counts rows.
pub async fn rows_written(connection: &mut PgConnection, tables: &[&str]) -> i64 {
    let mut last = -1;
    for _ in 0..40 {
        sqlx::query("select pg_stat_clear_snapshot()")
            .execute(&mut *connection)
            .await
            .expect("clear snapshot");
        let (now,): (i64,) = sqlx::query_as(
            "select coalesce(sum(n_tup_ins + n_tup_upd + n_tup_del), 0)::bigint from pg_stat_user_tables \
             where schemaname = 'openai' and relname = any($1)",
        )
        .bind(tables)
        .fetch_one(&mut *connection)
        .await
        .expect("read statistics");
        if now == last {
            return now;
        }
        last = now;
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    last
}

/// The figure on the last line of a sync's summary that starts with `name` (`pages`, `inserted`,
/// `peak memory`, …), or 0 when there is none.
#[allow(dead_code)] // Each benchmark compiles this module; not every one reads a summary.
pub fn summary_figure(summary: &str, name: &str) -> f64 {
    summary
        .lines()
        .rfind(|l| l.trim_start().starts_with(name))
        .and_then(|l| l.trim_start()[name.len()..].split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0)
}

/// How long a bare client takes to read every page of the emulator's project list, one after
/// the other over one connection: the floor under any walk of it.
#[allow(dead_code)] // Each benchmark compiles this module; only the sync one needs a floor.
pub async fn read_every_page(emulator: &Emulator, page_size: u32) -> std::time::Duration {
    let client = reqwest::Client::new();
    let url = format!("{}/organization/projects", emulator.base_url());
    let started = std::time::Instant::now();
    let mut after: Option<String> = None;
    loop {
        let mut query = vec![
            ("limit", page_size.to_string()),
            ("include_archived", "true".to_owned()),
        ];
        if let Some(cursor) = &after {
            query.push(("after", cursor.clone()));
        }
        let page: serde_json::Value = client
            .get(&url)
            .bearer_auth(KEY)
            .query(&query)
            .send()
            .await
            .expect("list a page")
            .json()
            .await
            .expect("a page of JSON");
        if page["has_more"] != serde_json::Value::Bool(true) {
            return started.elapsed();
        }
        after = page["data"]
            .as_array()
            .and_then(|data| data.last())
            .and_then(|last| last["id"].as_str())
            .map(str::to_owned);
        assert!(after.is_some(), "a page with has_more but no project");
    }
}
