//! `cargo bench --bench costs`: the release binary backfills a year of an emulated
//! organization's costs (1,000 projects, about five line items a day: ≈ 1.8 M rows) into a fresh
//! database, then 10 projects for the memory baseline; an unchanged re-run; and the finance
//! view summed by project name over one month, with its plan. Writes nothing to the repository.
//!
//! `COSTS_BENCH_PROJECTS` and `COSTS_BENCH_DAYS` shrink the large run on a slow machine.
//! Postgres comes from `DATABASE_URL`, else a throwaway cluster from the machine's binaries.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use chrono::Datelike as _;
use openai_project_sync::local_postgres::{self, ClusterOptions};
use sqlx::{Connection, PgConnection};
use support::{BINARY, Emulator, KEY, fresh_database, rows_written, summary_figure};

/// The tables whose writes the benchmark counts.
const TABLES: &[&str] = &["costs", "cost_revisions", "cost_days"];

struct Measured {
    wall: Duration,
    inserted: f64,
    pages: f64,
    peak_mib: f64,
    rows_written: i64,
}

fn command(db_url: &str, emulator: &Emulator, resource: &str, backfill_from: &str) -> Command {
    let mut command = Command::new(BINARY);
    command
        .args(["sync", resource])
        .env("DATABASE_URL", db_url)
        .env("OPENAI_BASE_URL", emulator.base_url())
        .env("OPENAI_ADMIN_KEY", KEY)
        .env("APP_COSTS__BACKFILL_FROM", backfill_from)
        .env("APP_LOG__LEVEL", "warn");
    command
}

async fn run(db_url: &str, emulator: &Emulator, resource: &str, backfill_from: &str) -> Measured {
    let mut stats = PgConnection::connect(db_url).await.expect("connect");
    let before = rows_written(&mut stats, TABLES).await;
    let started = Instant::now();
    let output = command(db_url, emulator, resource, backfill_from)
        .output()
        .expect("run sync");
    let wall = started.elapsed();
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(
        output.status.success(),
        "sync {resource} failed: {text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let field = |name: &str| summary_figure(&text, name);
    Measured {
        wall,
        inserted: field("inserted"),
        pages: field("pages"),
        peak_mib: field("peak memory"),
        rows_written: rows_written(&mut stats, TABLES).await - before,
    }
}

fn row(label: &str, projects: usize, m: &Measured) {
    println!(
        "| {label:<24} | {projects:>8} | {:>6.0} | {:>9.0} | {:>8.2} | {:>9.0} | {:>8.1} | {:>9} |",
        m.pages,
        m.inserted,
        m.wall.as_secs_f64(),
        m.inserted / m.wall.as_secs_f64(),
        m.peak_mib,
        m.rows_written
    );
}

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() {
    let projects = env_number("COSTS_BENCH_PROJECTS", 1_000);
    let days = env_number("COSTS_BENCH_DAYS", 365);
    let today = chrono::Utc::now().date_naive();
    let from = today - chrono::TimeDelta::days(i64::try_from(days).expect("days"));
    let backfill_from = from.to_string();
    let (server_url, _cluster) = local_postgres::server_from_env_or_throwaway(
        "bench-costs",
        ClusterOptions { durable: true },
    )
    .expect("a Postgres server");
    let mut admin = PgConnection::connect(&server_url).await.expect("connect");
    println!(
        "backfill from {backfill_from} (UTC) to today: {} days",
        days + 1
    );
    println!(
        "| scenario                 | projects |  pages |  inserted |   wall s |    rows/s | peak MiB | rows writ |"
    );
    println!(
        "|--------------------------|---------:|-------:|----------:|---------:|----------:|---------:|----------:|"
    );
    let mut month_db = None;
    for n in [10usize, projects] {
        let name = format!("ops_bench_costs_{n}");
        let db_url = fresh_database(&mut admin, &server_url, &name).await;
        let cost_days = (days + 1).to_string();
        let emulator =
            Emulator::start_with(n, 0, &["--archived-ratio", "0", "--cost-days", &cost_days]);
        run(&db_url, &emulator, "projects", &backfill_from).await;
        let backfill = run(&db_url, &emulator, "costs", &backfill_from).await;
        row("backfill", n, &backfill);
        let mut connection = PgConnection::connect(&db_url).await.expect("connect");
        for statement in [
            "vacuum (analyze) openai.costs, openai.cost_days",
            "checkpoint",
        ] {
            sqlx::query(statement)
                .execute(&mut connection)
                .await
                .expect("settle");
        }
        let rerun = run(&db_url, &emulator, "costs", &backfill_from).await;
        row("unchanged re-run", n, &rerun);
        drop(emulator);
        if n == projects {
            month_db = Some(db_url);
        }
    }
    let Some(db_url) = month_db else { return };
    let mut connection = PgConnection::connect(&db_url).await.expect("connect");
    let month_start = (today - chrono::TimeDelta::days(60))
        .with_day0(0)
        .expect("first day");
    let month_end = month_start + chrono::Months::new(1);
    let query = format!(
        "select project_name, sum(amount) as amount from openai.costs_by_project \
         where bucket_start >= '{month_start}' and bucket_start < '{month_end}' \
         group by project_name order by amount desc"
    );
    let mut best = Duration::MAX;
    let mut groups = 0;
    for _ in 0..3 {
        let started = Instant::now();
        let rows = sqlx::query(&query)
            .fetch_all(&mut connection)
            .await
            .expect("the month query");
        best = best.min(started.elapsed());
        groups = rows.len();
    }
    let (month_rows,): (i64,) = sqlx::query_as(&format!(
        "select count(*) from openai.costs where bucket_start >= '{month_start}' and bucket_start < '{month_end}'"
    ))
    .fetch_one(&mut connection)
    .await
    .expect("count");
    println!(
        "\nmonth {month_start} to {month_end}: {month_rows} cost rows summed into {groups} names in {:.0} ms (best of 3)\n",
        best.as_secs_f64() * 1000.0
    );
    let plan: Vec<(String,)> =
        sqlx::query_as(&format!("explain (analyze, buffers, costs off) {query}"))
            .fetch_all(&mut connection)
            .await
            .expect("plan");
    for (line,) in plan {
        println!("    {line}");
    }
}
