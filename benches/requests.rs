//! `cargo bench --bench requests`: insert-to-create latency of the request queue, and a burst
//! with two replicas, using the release binary against the emulator; prints a table.
//!
//! Postgres comes from `DATABASE_URL`, else a throwaway cluster from the machine's binaries.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use openai_project_sync::local_postgres::{self, ClusterOptions};
use sqlx::{Connection, PgConnection};
use support::{BINARY, Emulator, KEY, fresh_database};

struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

fn daemon(db_url: &str, base_url: &str) -> Process {
    Process(
        Command::new(BINARY)
            .arg("run")
            .env("DATABASE_URL", db_url)
            .env("OPENAI_BASE_URL", base_url)
            .env("OPENAI_ADMIN_KEY", KEY)
            .env("APP_HTTP__LISTEN", "127.0.0.1:0")
            .env("APP_LOG__LEVEL", "warn")
            .env("APP_SYNC__SCHEDULE", "0 0 0 1 1 *")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the daemon"),
    )
}

async fn wait_until(connection: &mut PgConnection, sql: &str, deadline: Duration) -> bool {
    let started = Instant::now();
    while started.elapsed() < deadline {
        let (done,): (bool,) = sqlx::query_as(sql)
            .fetch_one(&mut *connection)
            .await
            .expect("poll");
        if done {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    false
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main]
async fn main() {
    let (server_url, _cluster) = local_postgres::server_from_env_or_throwaway(
        "bench-requests",
        ClusterOptions { durable: true },
    )
    .expect("a Postgres server");
    let mut admin = PgConnection::connect(&server_url).await.expect("connect");
    let db_url = fresh_database(&mut admin, &server_url, "ops_bench_requests").await;
    let emulator = Emulator::start(100, 0);
    let base_url = emulator.base_url();
    let mut db = PgConnection::connect(&db_url).await.expect("connect");

    let first = daemon(&db_url, &base_url);
    assert!(
        wait_until(
            &mut db,
            "select count(*) = 1 from pg_stat_activity where query ilike 'listen%'",
            Duration::from_secs(20)
        )
        .await,
        "the daemon listens"
    );
    let mut latencies = Vec::with_capacity(1_000);
    for n in 0..1_000 {
        let (id,): (i64,) =
            sqlx::query_as("insert into openai.project_requests (name) values ($1) returning id")
                .bind(format!("Latency {n}"))
                .fetch_one(&mut db)
                .await
                .expect("insert");
        let done =
            format!("select status = 'created' from openai.project_requests where id = {id}");
        assert!(
            wait_until(&mut db, &done, Duration::from_secs(10)).await,
            "request {id} was created"
        );
        let (seconds,): (f64,) = sqlx::query_as("select extract(epoch from finished_at - requested_at)::float8 from openai.project_requests where id = $1")
            .bind(id)
            .fetch_one(&mut db)
            .await
            .expect("latency");
        latencies.push(seconds * 1000.0);
    }
    latencies.sort_by(f64::total_cmp);

    let _second = daemon(&db_url, &base_url);
    assert!(
        wait_until(
            &mut db,
            "select count(*) = 2 from pg_stat_activity where query ilike 'listen%'",
            Duration::from_secs(20)
        )
        .await,
        "both replicas listen"
    );
    let started = Instant::now();
    sqlx::query("insert into openai.project_requests (name) select 'Burst ' || n from generate_series(1, 1000) n")
        .execute(&mut db)
        .await
        .expect("insert the burst");
    let all_created = wait_until(
        &mut db,
        "select count(*) = 1000 from openai.project_requests where name like 'Burst %' and status = 'created'",
        Duration::from_secs(60),
    )
    .await;
    let burst = started.elapsed();
    let (creates, duplicates): (i64, i64) = sqlx::query_as(
        "select count(*), count(*) - count(distinct project_id) from openai.project_requests where status = 'created'",
    )
    .fetch_one(&mut db)
    .await
    .expect("count");
    drop(first);

    println!("| scenario                                   | figure |");
    println!("|--------------------------------------------|-------:|");
    println!(
        "| insert-to-create p50, 1,000 one by one (ms) | {:>6.1} |",
        percentile(&latencies, 0.50)
    );
    println!(
        "| insert-to-create p99, 1,000 one by one (ms) | {:>6.1} |",
        percentile(&latencies, 0.99)
    );
    println!(
        "| insert-to-create max (ms)                   | {:>6.1} |",
        percentile(&latencies, 1.0)
    );
    println!(
        "| 1,000 at once, 2 replicas, all created (s)  | {:>6.2} |",
        burst.as_secs_f64()
    );
    println!("| created / duplicated projects               | {creates} / {duplicates} |");
    assert!(all_created, "the burst did not finish within 60 s");
    sqlx::query("drop database if exists ops_bench_requests with (force)")
        .execute(&mut admin)
        .await
        .ok();
}
