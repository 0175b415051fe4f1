//! `cargo bench --bench history`: builds a long history through the product (the release binary
//! walking an emulated organization of 100,000 projects with heavy churn between walks), then
//! times the analysts' history queries against a full scan of the versions in the same run.
//!
//! Postgres comes from `DATABASE_URL`, else a throwaway cluster from the machine's binaries.

mod support;

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use openai_project_sync::local_postgres::{self, ClusterOptions};
use sqlx::{Connection, PgConnection};
use support::{Emulator, churn, fresh_database, sync_command};

const PROJECTS: usize = 100_000;
/// Walks with heavy churn before them, then one last walk with about a thousand changes.
const CHURNED_WALKS: usize = 9;

fn sync(db_url: &str, emulator: &Emulator) -> Duration {
    let started = Instant::now();
    let output = sync_command(db_url, emulator)
        .env("APP_SYNC__MIN_SEEN_RATIO", "0")
        .output()
        .expect("run sync");
    assert!(
        output.status.success(),
        "sync failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    started.elapsed()
}

/// What a timed query is given: a time (bound first, when given), then a project id.
struct Binds<'a> {
    at: Option<DateTime<Utc>>,
    project_id: Option<&'a str>,
}

/// The median of five runs of `sql`, and the rows it returned.
async fn time_query(
    connection: &mut PgConnection,
    sql: &str,
    binds: &Binds<'_>,
) -> (Duration, usize) {
    let mut times = Vec::new();
    let mut rows = 0;
    for _ in 0..5 {
        let started = Instant::now();
        let mut query = sqlx::query(sql);
        if let Some(at) = binds.at {
            query = query.bind(at);
        }
        if let Some(project_id) = binds.project_id {
            query = query.bind(project_id);
        }
        rows = query
            .fetch_all(&mut *connection)
            .await
            .expect("query")
            .len();
        times.push(started.elapsed());
    }
    times.sort();
    (times[2], rows)
}

#[tokio::main]
async fn main() {
    let (server_url, _cluster) = local_postgres::server_from_env_or_throwaway(
        "bench-history",
        ClusterOptions { durable: true },
    )
    .expect("a Postgres server");
    let mut admin = PgConnection::connect(&server_url).await.expect("connect");
    let db_url = fresh_database(&mut admin, &server_url, "ops_bench_history").await;
    let emulator = Emulator::start(PROJECTS, 0);

    let built = Instant::now();
    sync(&db_url, &emulator);
    for walk in 0..CHURNED_WALKS {
        churn(&emulator, 45_000, 300, 500).await;
        let took = sync(&db_url, &emulator);
        eprintln!(
            "walk {} after heavy churn: {:.1} s",
            walk + 2,
            took.as_secs_f64()
        );
    }
    let mut connection = PgConnection::connect(&db_url).await.expect("connect");
    let (last_walk_started,): (DateTime<Utc>,) = sqlx::query_as("select now()")
        .fetch_one(&mut connection)
        .await
        .expect("now");
    churn(&emulator, 1_000, 0, 0).await;
    sync(&db_url, &emulator);
    sqlx::query("vacuum (analyze) openai.project_current, openai.project_versions")
        .execute(&mut connection)
        .await
        .expect("vacuum");
    let (versions, busiest, middle): (i64, String, DateTime<Utc>) = sqlx::query_as(
        "select (select count(*) from openai.project_versions), \
                (select project_id from openai.project_versions group by 1 order by count(*) desc limit 1), \
                (select min(valid_from) + (max(valid_from) - min(valid_from)) / 2 from openai.project_versions)",
    )
    .fetch_one(&mut connection)
    .await
    .expect("history size");
    println!(
        "history: {PROJECTS} projects, {versions} versions, built in {:.0} s",
        built.elapsed().as_secs_f64()
    );

    let (scan, scanned) = time_query(
        &mut connection,
        "select version_id, name from openai.project_versions where raw is not null",
        &Binds {
            at: None,
            project_id: None,
        },
    )
    .await;
    println!(
        "| query                                   |     rows |   median ms | × full scan | target |"
    );
    println!(
        "|-----------------------------------------|---------:|------------:|------------:|-------:|"
    );
    println!(
        "| full scan of the versions               | {scanned:>8} | {:>11.2} | {:>11.3} |      - |",
        scan.as_secs_f64() * 1e3,
        1.0
    );
    let one = Some(busiest.as_str());
    let queries = [
        (
            "one project's changes",
            "select * from openai.project_changes where project_id = $1",
            Binds {
                at: None,
                project_id: one,
            },
            0.01,
        ),
        (
            "changes since the last walk began",
            "select * from openai.project_changes where changed_at >= $1",
            Binds {
                at: Some(last_walk_started),
                project_id: None,
            },
            0.05,
        ),
        (
            "one project as of a time",
            "select * from openai.projects_as_of($1) where project_id = $2",
            Binds {
                at: Some(middle),
                project_id: one,
            },
            0.01,
        ),
        (
            "all projects as of a time",
            "select project_id, name from openai.projects_as_of($1)",
            Binds {
                at: Some(middle),
                project_id: None,
            },
            1.0,
        ),
    ];
    for (label, sql, binds, target) in queries {
        let (took, rows) = time_query(&mut connection, sql, &binds).await;
        println!(
            "| {label:<39} | {rows:>8} | {:>11.2} | {:>11.4} | {target:>6} |",
            took.as_secs_f64() * 1e3,
            took.as_secs_f64() / scan.as_secs_f64()
        );
    }
    drop(emulator);
    drop(connection);
    sqlx::query("drop database if exists ops_bench_history with (force)")
        .execute(&mut admin)
        .await
        .expect("drop");
}
