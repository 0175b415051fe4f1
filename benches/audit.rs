//! `cargo bench --bench audit`: how soon a rename made upstream is in `project_changes` with its
//! exact time and author, through the daemon's audit-log poll, with the emulator at 50 ms per
//! call; and what an idle poll costs. Prints a table.
//!
//! 200 renames at random times (`AUDIT_BENCH_RENAMES`), the poll interval `AUDIT_BENCH_POLL`
//! (default 2s: the targets scale with it, and 30 s would make the run take over an hour).
//! Postgres comes from `DATABASE_URL`, else a throwaway cluster from the machine's binaries.

mod support;

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use openai_project_sync::local_postgres::{self, ClusterOptions};
use sqlx::{Connection, PgConnection};
use support::{BINARY, Emulator, KEY, fresh_database, sync_command};

struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

fn daemon(db_url: &str, base_url: &str, poll: &str) -> Process {
    Process(
        Command::new(BINARY)
            .arg("run")
            .env("DATABASE_URL", db_url)
            .env("OPENAI_BASE_URL", base_url)
            .env("OPENAI_ADMIN_KEY", KEY)
            .env("APP_HTTP__LISTEN", "127.0.0.1:0")
            .env("APP_LOG__LEVEL", "warn")
            .env("APP_SYNC__SCHEDULE", "0 0 0 1 1 *")
            .env("APP_AUDIT_LOG__POLL_INTERVAL", poll)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the daemon"),
    )
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn audit_calls(http: &reqwest::Client, port: u16) -> u64 {
    let stats: serde_json::Value = http
        .get(format!("http://127.0.0.1:{port}/_emulator/stats"))
        .bearer_auth(KEY)
        .send()
        .await
        .expect("stats")
        .json()
        .await
        .expect("stats JSON");
    stats["audit_log_calls"].as_u64().expect("a count")
}

#[tokio::main]
async fn main() {
    let renames: usize = std::env::var("AUDIT_BENCH_RENAMES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let poll_text = std::env::var("AUDIT_BENCH_POLL").unwrap_or_else(|_| "2s".into());
    let poll = humantime::parse_duration(&poll_text).expect("AUDIT_BENCH_POLL is a duration");
    let (server_url, _cluster) = local_postgres::server_from_env_or_throwaway(
        "bench-audit",
        ClusterOptions { durable: true },
    )
    .expect("a Postgres server");
    let mut admin = PgConnection::connect(&server_url).await.expect("connect");
    let db_url = fresh_database(&mut admin, &server_url, "ops_bench_audit").await;
    let emulator = Emulator::start(renames * 2, 50);
    let status = sync_command(&db_url, &emulator)
        .status()
        .expect("first walk");
    assert!(status.success(), "the first walk failed");
    let mut db = PgConnection::connect(&db_url).await.expect("connect");
    let active: Vec<(String,)> = sqlx::query_as(
        "select project_id from openai.project_current where status = 'active' order by key limit $1",
    )
    .bind(i64::try_from(renames).expect("a count"))
    .fetch_all(&mut db)
    .await
    .expect("active projects");
    assert!(active.len() >= renames, "not enough active projects");

    let _daemon = daemon(&db_url, &emulator.base_url(), &poll_text);
    // The daemon's first poll finds the log on; renames start after it.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let http = reqwest::Client::new();
    let mut rng = fastrand::Rng::with_seed(7);
    let mut made: HashMap<String, Instant> = HashMap::new();
    let mut seen: HashMap<String, (Instant, DateTime<Utc>, Option<String>)> = HashMap::new();
    let spacing_ms = u64::try_from(poll.as_millis()).unwrap_or(2000) / 4;
    let started = Instant::now();
    let mut next_rename = Instant::now();
    let mut done = 0;
    let deadline = Duration::from_secs(60)
        + poll * 3
        + Duration::from_millis(spacing_ms * 2) * u32::try_from(renames).unwrap_or(200);
    while seen.len() < renames && started.elapsed() < deadline {
        if done < renames && Instant::now() >= next_rename {
            let name = format!("Bench rename {done}");
            let id = &active[done].0;
            let response = http
                .post(format!(
                    "http://127.0.0.1:{}/_emulator/projects/{id}",
                    emulator.port
                ))
                .bearer_auth(KEY)
                .json(&serde_json::json!({"name": name, "actor_email": "bench@example.com"}))
                .send()
                .await
                .expect("rename");
            assert!(response.status().is_success());
            made.insert(name, Instant::now());
            done += 1;
            // Random times: exponential gaps with a mean of a quarter poll interval.
            let gap = -(1.0 - rng.f64()).ln() * spacing_ms as f64;
            next_rename = Instant::now() + Duration::from_millis(gap as u64);
        }
        let rows: Vec<(String, DateTime<Utc>, Option<String>)> = sqlx::query_as(
            "select new_name, changed_at, changed_by from openai.project_changes \
             where time_source = 'audit_log' and change = 'renamed' and changed_at > now() - interval '1 hour'",
        )
        .fetch_all(&mut db)
        .await
        .expect("changes");
        let now = Instant::now();
        for (name, at, by) in rows {
            seen.entry(name).or_insert((now, at, by));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(seen.len(), renames, "every rename reached project_changes");

    // Exact times and authors: each change starts at its event's effective_at.
    let events: Vec<serde_json::Value> = http
        .get(format!(
            "http://127.0.0.1:{}/_emulator/audit_log",
            emulator.port
        ))
        .bearer_auth(KEY)
        .send()
        .await
        .expect("events")
        .json()
        .await
        .expect("events JSON");
    let event_time: HashMap<String, i64> = events
        .iter()
        .filter(|e| e["type"] == "project.updated")
        .filter_map(|e| {
            Some((
                e["project.updated"]["changes_requested"]["title"]
                    .as_str()?
                    .to_owned(),
                e["effective_at"].as_i64()?,
            ))
        })
        .collect();
    let exact = seen
        .iter()
        .filter(|(name, (_, at, by))| {
            event_time.get(*name) == Some(&at.timestamp())
                && by.as_deref() == Some("bench@example.com")
        })
        .count();
    let mut latencies: Vec<f64> = seen
        .iter()
        .filter_map(|(name, (at, _, _))| Some(at.duration_since(*made.get(name)?).as_secs_f64()))
        .collect();
    latencies.sort_by(f64::total_cmp);

    // Idle polls: calls and rows over a few intervals with nothing happening.
    tokio::time::sleep(poll * 2).await;
    let (runs_before,): (i64,) = sqlx::query_as("select count(*) from openai.sync_runs")
        .fetch_one(&mut db)
        .await
        .expect("runs");
    let calls_before = audit_calls(&http, emulator.port).await;
    let idle_for = poll * 5;
    tokio::time::sleep(idle_for).await;
    let calls = audit_calls(&http, emulator.port).await - calls_before;
    let (runs_after,): (i64,) = sqlx::query_as("select count(*) from openai.sync_runs")
        .fetch_one(&mut db)
        .await
        .expect("runs");

    let p50 = percentile(&latencies, 0.5);
    let p99 = percentile(&latencies, 0.99);
    let interval = poll.as_secs_f64();
    println!(
        "audit-log benchmark: {renames} renames at random times, emulator at 50 ms per call, poll interval {poll_text}"
    );
    println!("| measure | value | target |");
    println!("|---|---|---|");
    println!(
        "| rename → project_changes p50 | {p50:.2} s | ≤ {:.1} s (interval / 2 + 1 s) |",
        interval / 2.0 + 1.0
    );
    println!(
        "| rename → project_changes p99 | {p99:.2} s | ≤ {:.1} s (interval + 2 s) |",
        interval + 2.0
    );
    println!(
        "| max | {:.2} s | |",
        latencies.last().copied().unwrap_or_default()
    );
    println!("| exact changed_at and changed_by | {exact} of {renames} | all |");
    let (in_window,): (i64,) = sqlx::query_as(
        "select count(*) from openai.audit_events e, openai.audit_log_state s \
         where e.effective_at >= s.watermark - interval '1 hour'",
    )
    .fetch_one(&mut db)
    .await
    .expect("window");
    let polls = (idle_for.as_secs_f64() / interval).round();
    println!(
        "| idle polls over {:.0} s (~{polls:.0} polls, {in_window} events in the 1 h overlap, 100 a page) | {calls} API call(s), {} run row(s) | one call per page of the window, no row |",
        idle_for.as_secs_f64(),
        runs_after - runs_before
    );
    assert_eq!(
        exact, renames,
        "every change has its event's time and author"
    );
}
