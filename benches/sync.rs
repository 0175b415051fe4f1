//! `cargo bench --bench sync`: the release binary walks emulated organizations of 1,000 to
//! 100,000 projects into a fresh database; prints a table and writes nothing to the repository.
//!
//! Postgres comes from `DATABASE_URL`, else a throwaway cluster from the machine's binaries.
//!
//! With latency, two ratios: the wall against pages × latency (the target), and against the
//! floor, the time a bare client takes to read the same pages from the same emulator one after
//! the other (what the server itself costs, its own work and wake-ups included).

mod support;

use std::time::{Duration, Instant};

use openai_project_sync::local_postgres::{self, ClusterOptions};
use sqlx::{Connection, PgConnection};
use support::{
    Emulator, churn, fresh_database, read_every_page, rows_written, summary_figure, sync_command,
};

/// The sync's page size, as configured by default.
const PAGE_SIZE: u32 = 100;

/// The tables whose writes the benchmark counts.
const TABLES: &[&str] = &["project_current", "project_versions"];

struct Measured {
    wall: Duration,
    pages: u64,
    peak_mib: f64,
    rows_written: i64,
}

async fn run_sync(db_url: &str, emulator: &Emulator) -> Measured {
    // Table statistics are per database: read them in the benchmark's own.
    let mut stats = PgConnection::connect(db_url)
        .await
        .expect("connect to the benchmark database");
    let before = rows_written(&mut stats, TABLES).await;
    let started = Instant::now();
    let output = sync_command(db_url, emulator).output().expect("run sync");
    let wall = started.elapsed();
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(
        output.status.success(),
        "sync failed: {text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let field = |name: &str| summary_figure(&text, name);
    let after = rows_written(&mut stats, TABLES).await;
    Measured {
        wall,
        pages: field("pages") as u64,
        peak_mib: field("peak memory"),
        rows_written: after - before,
    }
}

/// Vacuums and analyzes the history tables, as autovacuum does within a minute of a large write,
/// then checkpoints.
///
/// Scheduled syncs are minutes apart, so a re-sync never runs beside the vacuum of the sync
/// before it; measured back to back, whichever scenario that vacuum landed on would pay for it.
/// The checkpoint starts every scenario alike: otherwise the timed checkpoint falls in the
/// middle of whichever scenario runs about five minutes into the benchmark.
async fn settle(db_url: &str) {
    let mut connection = PgConnection::connect(db_url)
        .await
        .expect("connect to the benchmark database");
    for statement in [
        "vacuum (analyze) openai.project_current, openai.project_versions",
        "checkpoint",
    ] {
        sqlx::query(statement)
            .execute(&mut connection)
            .await
            .expect("settle the database");
    }
}

/// Settles the database, then runs one sync and prints its row.
async fn measure(
    label: &str,
    projects: usize,
    db_url: &str,
    emulator: &Emulator,
    latency: Option<Latency>,
) {
    settle(db_url).await;
    row(label, projects, &run_sync(db_url, emulator).await, latency);
}

/// A latency scenario's server: its latency per page, and the floor measured against it.
#[derive(Clone, Copy)]
struct Latency {
    per_page: Duration,
    floor: Duration,
}

fn row(label: &str, projects: usize, m: &Measured, latency: Option<Latency>) {
    let per_second = projects as f64 / m.wall.as_secs_f64();
    let wall = m.wall.as_secs_f64();
    let ratio = |of: fn(&Latency, u64) -> f64| {
        latency
            .map(|l| format!("{:.3}", wall / of(&l, m.pages)))
            .unwrap_or_else(|| "-".into())
    };
    let against_latency = ratio(|l, pages| pages as f64 * l.per_page.as_secs_f64());
    let against_floor = ratio(|l, _| l.floor.as_secs_f64());
    println!(
        "| {label:<29} | {projects:>8} | {:>7} | {:>8.2} | {:>10.0} | {:>8.1} | {:>9} | {against_latency:>10} | {against_floor:>10} |",
        m.pages, wall, per_second, m.peak_mib, m.rows_written
    );
}

#[tokio::main]
async fn main() {
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let (server_url, _cluster) = local_postgres::server_from_env_or_throwaway(
        "bench-sync",
        ClusterOptions { durable: true },
    )
    .expect("a Postgres server");
    let mut admin = PgConnection::connect(&server_url).await.expect("connect");
    println!(
        "| scenario                      | projects |   pages |   wall s | projects/s | peak MiB | rows writ | wall/(p×L) | wall/floor |"
    );
    println!(
        "|-------------------------------|---------:|--------:|---------:|-----------:|---------:|----------:|-----------:|-----------:|"
    );
    for projects in [1_000usize, 10_000, 100_000] {
        if filter.as_deref().is_some_and(|f| f != projects.to_string()) {
            continue;
        }
        let db_url =
            fresh_database(&mut admin, &server_url, &format!("ops_bench_{projects}")).await;
        let emulator = Emulator::start(projects, 0);
        measure("cold sync", projects, &db_url, &emulator, None).await;
        measure("unchanged re-sync", projects, &db_url, &emulator, None).await;
        churn(&emulator, projects / 100, 0, 0).await;
        measure("re-sync, 1% changed", projects, &db_url, &emulator, None).await;
        drop(emulator);
        sqlx::query(&format!(
            "drop database if exists ops_bench_{projects} with (force)"
        ))
        .execute(&mut admin)
        .await
        .expect("drop");
    }
    if filter.is_none() || filter.as_deref() == Some("latency") {
        let projects = 10_000;
        let per_page = Duration::from_millis(50);
        let db_url = fresh_database(&mut admin, &server_url, "ops_bench_latency").await;
        let emulator = Emulator::start(projects, per_page.as_millis() as u64);
        let latency = Latency {
            per_page,
            floor: read_every_page(&emulator, PAGE_SIZE).await,
        };
        for label in ["cold sync, 50 ms/page", "unchanged re-sync, 50 ms/page"] {
            measure(label, projects, &db_url, &emulator, Some(latency)).await;
        }
        drop(emulator);
        sqlx::query("drop database if exists ops_bench_latency with (force)")
            .execute(&mut admin)
            .await
            .expect("drop");
    }
}
