//! The daemon and the sync command as processes: schedule, probes, metrics, signals, the lock.

use std::process::Command;
use std::time::Duration;

use openai_project_sync::config::{Settings, Sources};
use openai_project_sync::emulator::{EmulatorConfig, Endpoint, FaultRates};
use tokio_util::sync::CancellationToken;

use crate::helpers::{
    TEST_KEY, TestDb, eventually, spawn_binary, start_emulator, start_emulator_with, wait_for_exit,
};

fn settings(db: &TestDb, base_url: &str, schedule: &str) -> Settings {
    let env = [
        ("DATABASE_URL", db.url.as_str()),
        ("OPENAI_BASE_URL", base_url),
        ("OPENAI_ADMIN_KEY", TEST_KEY),
        ("APP_SYNC__SCHEDULE", schedule),
        ("APP_HTTP__LISTEN", "127.0.0.1:0"),
        ("APP_OPENAI__RETRY_BASE_DELAY", "10ms"),
    ];
    Settings::load(&Sources {
        config_dir: Some(std::env::temp_dir().join("ops-no-config-here")),
        file: None,
        env: Some(
            env.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ),
    })
    .expect("valid settings")
}

async fn count_runs(db: &TestDb, status: &str) -> i64 {
    let (n,): (i64,) = sqlx::query_as(
        "select count(*) from openai.sync_runs where status = $1 and resource = 'projects'",
    )
    .bind(status)
    .fetch_one(&db.pool)
    .await
    .unwrap_or((0,));
    n
}

async fn get(url: &str) -> (u16, String) {
    let response = reqwest::get(url).await.expect("probe answers");
    let status = response.status().as_u16();
    (status, response.text().await.expect("body"))
}

#[tokio::test]
async fn the_daemon_syncs_at_start_and_on_schedule_serves_probes_and_metrics_and_stops_cleanly() {
    let db = TestDb::new().await;
    let emulator = start_emulator(150).await;
    let shutdown = CancellationToken::new();

    let daemon = openai_project_sync::app::start_daemon(
        settings(&db, &emulator.base_url(), "*/2 * * * * *"),
        shutdown.clone(),
    )
    .await
    .expect("the daemon starts");
    let base = format!("http://{}", daemon.http_addr);

    assert_eq!(get(&format!("{base}/healthz")).await.0, 200);
    sqlx::query("insert into openai.project_requests (name) values ('Waiting in the queue')")
        .execute(&db.pool)
        .await
        .expect("a request");
    eventually("two successful walks", || async {
        count_runs(&db, "succeeded").await >= 2
    })
    .await;
    let (ready, why) = get(&format!("{base}/readyz")).await;
    let (_, metrics) = get(&format!("{base}/metrics")).await;
    shutdown.cancel();
    let stopped = tokio::time::timeout(Duration::from_secs(10), daemon.finished).await;

    assert_eq!(ready, 200, "{why}");
    for needle in [
        "openai_project_sync_runs_total{resource=\"projects\",status=\"succeeded\"}",
        "openai_project_sync_api_requests_total{endpoint=\"list\",status=\"200\",error=\"none\"}",
        "openai_project_sync_projects{status=\"active\"}",
        "openai_project_sync_seconds_since_last_success{resource=\"projects\"}",
        "# TYPE openai_project_sync_run_duration_seconds histogram",
        "openai_project_sync_run_duration_seconds_bucket{resource=\"projects\",status=\"succeeded\",le=\"0.5\"}",
        "openai_project_sync_requests{status=",
        "openai_project_sync_oldest_unsettled_request_age_seconds ",
    ] {
        assert!(
            metrics.contains(needle),
            "{needle} missing from:\n{metrics}"
        );
    }
    assert!(
        matches!(stopped, Ok(Ok(Ok(())))),
        "stopped within 10 s: {stopped:?}"
    );
}

#[tokio::test]
async fn readiness_fails_until_a_sync_has_succeeded() {
    let db = TestDb::new().await;
    let emulator = start_emulator_with(EmulatorConfig {
        admin_key: "sk-admin-other-placeholder".into(),
        projects: 5,
        ..EmulatorConfig::default()
    })
    .await;
    let shutdown = CancellationToken::new();
    let daemon = openai_project_sync::app::start_daemon(
        settings(&db, &emulator.base_url(), "0 0 0 1 1 *"),
        shutdown.clone(),
    )
    .await
    .expect("the daemon starts");

    eventually("the start-up walk fails on the refused key", || async {
        count_runs(&db, "failed").await >= 1
    })
    .await;
    let (status, body) = get(&format!("http://{}/readyz", daemon.http_addr)).await;
    shutdown.cancel();
    let _ = daemon.finished.await;

    assert_eq!(status, 503);
    assert!(body.contains("no sync has succeeded yet"), "{body}");
}

#[tokio::test]
async fn sigterm_during_a_walk_stops_the_daemon_and_leaves_no_partial_state() {
    let db = TestDb::new().await;
    let emulator = start_emulator(1_250).await;
    emulator.set_rates(
        Endpoint::List,
        FaultRates {
            latency_ms: 150,
            ..FaultRates::default()
        },
    );
    let base = emulator.base_url();
    let daemon = spawn_binary(
        &["run"],
        &[
            ("DATABASE_URL", &db.url),
            ("OPENAI_BASE_URL", &base),
            ("OPENAI_ADMIN_KEY", TEST_KEY),
            ("APP_HTTP__LISTEN", "127.0.0.1:0"),
            // A platform-injected variable naming no key: warned about, never fatal.
            ("APP_SERVICE_HOST", "10.0.0.7"),
        ],
    );
    let pid = daemon.id().to_string();

    eventually("the walk is under way", || async {
        emulator.stats().list_calls >= 4
    })
    .await;
    let signalled = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    let (code, output) = wait_for_exit(daemon).await;

    assert!(signalled.success());
    assert_eq!(code, Some(0), "{output}");
    assert!(
        output.contains("APP_SERVICE_HOST")
            && output.contains("ignored")
            && !output.contains("10.0.0.7"),
        "the stray variable is warned about by name:\n{output}"
    );
    let (projects,): (i64,) = sqlx::query_as("select count(*) from openai.project_current")
        .fetch_one(&db.pool)
        .await
        .expect("count");
    let runs: Vec<(String, Option<String>)> =
        sqlx::query_as("select status, error from openai.sync_runs where resource = 'projects'")
            .fetch_all(&db.pool)
            .await
            .expect("runs");
    assert_eq!(projects, 0, "nothing of the abandoned walk was applied");
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].0, "failed");
    assert!(
        runs[0].1.as_deref().is_some_and(|e| e.contains("shutdown")),
        "{runs:?}"
    );
    assert!(
        emulator.stats().list_calls < 13,
        "the walk did not run to its end"
    );
}

#[tokio::test]
async fn a_second_sync_while_one_runs_says_so_and_exits_1() {
    let db = TestDb::new().await;
    let emulator = start_emulator(1_000).await;
    emulator.set_rates(
        Endpoint::List,
        FaultRates {
            latency_ms: 100,
            ..FaultRates::default()
        },
    );
    let base = emulator.base_url();
    let env = [
        ("DATABASE_URL", db.url.as_str()),
        ("OPENAI_BASE_URL", base.as_str()),
        ("OPENAI_ADMIN_KEY", TEST_KEY),
    ];
    let first = spawn_binary(&["sync", "projects"], &env);

    eventually("the first walk is under way", || async {
        emulator.stats().list_calls >= 2
    })
    .await;
    let second = crate::helpers::run_binary_async(&["sync", "projects"], &env).await;
    let (first_code, first_output) = wait_for_exit(first).await;

    let second_output = crate::helpers::output_text(&second);
    assert_eq!(second.status.code(), Some(1), "{second_output}");
    assert!(
        second_output.contains("another sync is running"),
        "{second_output}"
    );
    assert_eq!(first_code, Some(0), "{first_output}");
    assert!(
        first_output.contains("succeeded") && first_output.contains("new         1000"),
        "{first_output}"
    );
}

#[tokio::test]
async fn readyz_is_unready_while_the_request_worker_is_not_running() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use tower::ServiceExt;

    let db = TestDb::new().await;
    openai_project_sync::store::migrate(&db.pool)
        .await
        .expect("migrations apply");
    sqlx::query("insert into openai.sync_runs (trigger, status, finished_at) values ('manual', 'succeeded', now())")
        .execute(&db.pool)
        .await
        .expect("a recent successful walk");
    let worker_running = Arc::new(AtomicBool::new(false));
    let router = openai_project_sync::http::router(openai_project_sync::http::HealthState {
        pool: db.pool.clone(),
        metrics: openai_project_sync::http::metrics_handle(),
        sync_deadline: openai_project_sync::http::SyncDeadline::Age(Duration::from_secs(600)),
        worker_running: worker_running.clone(),
    });
    let probe = |router: axum::Router| async move {
        let response = router
            .oneshot(
                axum::http::Request::get("/readyz")
                    .body(axum::body::Body::empty())
                    .expect("request"),
            )
            .await
            .expect("answer");
        let status = response.status().as_u16();
        let body = axum::body::to_bytes(response.into_body(), 4096)
            .await
            .expect("body");
        (status, String::from_utf8_lossy(&body).into_owned())
    };

    let (status, body) = probe(router.clone()).await;
    assert_eq!(status, 503);
    assert!(body.contains("request worker is not running"), "{body}");

    worker_running.store(true, Ordering::Relaxed);
    assert_eq!(probe(router).await.0, 200);
}

/// The metric names an alert rule or dashboard text uses, with histogram suffixes removed.
fn metric_names_in(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("openai_project_sync_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .unwrap_or(name);
        names.insert(base.to_owned());
        rest = &tail[end..];
    }
    names
}

#[test]
fn the_shipped_alerts_and_dashboard_use_only_metrics_the_daemon_exports() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    let alerts = std::fs::read_to_string(root.join("prometheus/alerts.yml")).expect("alerts.yml");
    let dashboard = std::fs::read_to_string(root.join("grafana/openai-project-sync.json"))
        .expect("the dashboard");
    serde_json::from_str::<serde_json::Value>(&dashboard).expect("the dashboard is JSON");

    let exported: std::collections::BTreeSet<String> = openai_project_sync::metric::ALL
        .iter()
        .map(|name| (*name).to_owned())
        .collect();
    for (file, text) in [("alerts.yml", &alerts), ("dashboard", &dashboard)] {
        let used = metric_names_in(text);
        assert!(!used.is_empty(), "{file} uses metrics");
        let unknown: Vec<_> = used.difference(&exported).collect();
        assert!(
            unknown.is_empty(),
            "{file} uses metrics nobody exports: {unknown:?}"
        );
    }
    for name in [
        "seconds_since_last_success",
        "oldest_unsettled_request_age_seconds",
    ] {
        assert!(alerts.contains(name), "an alert watches {name}");
    }
}

#[tokio::test]
async fn a_status_that_disappeared_is_gone_from_the_next_scrape_and_the_queue_age_shows() {
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;
    use tower::ServiceExt;

    let db = TestDb::new().await;
    openai_project_sync::store::migrate(&db.pool)
        .await
        .expect("migrations apply");
    let router = openai_project_sync::http::router(openai_project_sync::http::HealthState {
        pool: db.pool.clone(),
        metrics: openai_project_sync::http::metrics_handle(),
        sync_deadline: openai_project_sync::http::SyncDeadline::Age(Duration::from_secs(600)),
        worker_running: Arc::new(AtomicBool::new(true)),
    });
    let scrape = |router: axum::Router| async move {
        let response = router
            .oneshot(
                axum::http::Request::get("/metrics")
                    .body(axum::body::Body::empty())
                    .expect("request"),
            )
            .await
            .expect("answer");
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .expect("body");
        String::from_utf8_lossy(&body).into_owned()
    };
    sqlx::query(
        "insert into openai.project_requests (name, requested_at) values ('Waiting', now() - interval '2 hours')",
    )
    .execute(&db.pool)
    .await
    .expect("a request waiting for two hours");

    let waiting = scrape(router.clone()).await;
    sqlx::query("update openai.project_requests set status = 'cancelled', finished_at = now()")
        .execute(&db.pool)
        .await
        .expect("cancelled");
    let after = scrape(router).await;

    assert!(
        waiting.contains("openai_project_sync_requests{status=\"pending\"} 1"),
        "{waiting}"
    );
    let age: f64 = waiting
        .lines()
        .find_map(|l| l.strip_prefix("openai_project_sync_oldest_unsettled_request_age_seconds "))
        .and_then(|v| v.trim().parse().ok())
        .expect("the queue's age gauge");
    assert!((7200.0..7300.0).contains(&age), "{age}");
    assert!(
        !after.contains("openai_project_sync_requests{status=\"pending\"}"),
        "a status no request has any more is dropped: {after}"
    );
    assert!(
        after.contains("openai_project_sync_requests{status=\"cancelled\"} 1"),
        "{after}"
    );
    assert!(
        after.contains("openai_project_sync_oldest_unsettled_request_age_seconds 0"),
        "{after}"
    );
}

#[tokio::test]
async fn each_failed_walk_the_daemon_survives_is_logged_once_with_what_happens_next() {
    let db = TestDb::new().await;
    let emulator = start_emulator(30).await;
    emulator.push_fault(openai_project_sync::emulator::FaultRule {
        endpoint: Endpoint::List,
        skip: 0,
        times: None,
        fault: openai_project_sync::emulator::Fault::ServerError { status: 500 },
    });
    let base = emulator.base_url();
    let daemon = spawn_binary(
        &["run"],
        &[
            ("DATABASE_URL", &db.url),
            ("OPENAI_BASE_URL", &base),
            ("OPENAI_ADMIN_KEY", TEST_KEY),
            ("APP_HTTP__LISTEN", "127.0.0.1:0"),
            ("APP_SYNC__SCHEDULE", "*/1 * * * * *"),
            ("APP_OPENAI__MAX_RETRIES", "0"),
            ("APP_LOG__FORMAT", "json"),
            ("RUST_LOG", "error"),
        ],
    );
    let pid = daemon.id().to_string();

    eventually("two walks failed", || async {
        count_runs(&db, "failed").await >= 2
    })
    .await;
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    let (code, output) = wait_for_exit(daemon).await;
    let failed = count_runs(&db, "failed").await;

    assert_eq!(code, Some(0), "{output}");
    let lines: Vec<serde_json::Value> = output
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let failure_lines: Vec<_> = lines
        .iter()
        .filter(|l| l["message"] == "walk failed; nothing was applied")
        .collect();
    assert_eq!(
        i64::try_from(failure_lines.len()).expect("a count"),
        failed,
        "one line per failed walk:\n{output}"
    );
    for line in &failure_lines {
        assert!(
            line["next"]
                .as_str()
                .is_some_and(|n| n.contains("next scheduled tick")),
            "{line}"
        );
    }
    let other_errors: Vec<_> = lines
        .iter()
        .filter(|l| l["message"] != "walk failed; nothing was applied")
        .collect();
    assert!(
        other_errors.is_empty(),
        "nothing else logged as an error: {other_errors:?}"
    );
}

/// `/readyz` of a daemon on `schedule` once its start-up walk succeeded, and again after that
/// walk was made three hours older.
async fn readiness_when_the_last_walk_is_three_hours_older(
    schedule: &str,
) -> ((u16, String), (u16, String)) {
    let db = TestDb::new().await;
    let emulator = start_emulator(5).await;
    let shutdown = CancellationToken::new();
    let daemon = openai_project_sync::app::start_daemon(
        settings(&db, &emulator.base_url(), schedule),
        shutdown.clone(),
    )
    .await
    .expect("the daemon starts");
    eventually("the start-up walk succeeds", || async {
        count_runs(&db, "succeeded").await >= 1
    })
    .await;
    let fresh = get(&format!("http://{}/readyz", daemon.http_addr)).await;
    sqlx::query(
        "update openai.sync_runs set started_at = started_at - interval '3 hours', \
         finished_at = finished_at - interval '3 hours'",
    )
    .execute(&db.pool)
    .await
    .expect("age the walk");
    let aged = get(&format!("http://{}/readyz", daemon.http_addr)).await;
    shutdown.cancel();
    let _ = daemon.finished.await;
    (fresh, aged)
}

#[tokio::test]
async fn readiness_follows_a_schedule_whose_fire_times_are_unevenly_spaced() {
    use chrono::Datelike;
    // Twice an hour apart once a year (like business hours: hourly, then a night and a weekend
    // of nothing), in a month six away from this one: no walk is due for months, so three hours
    // without one miss nothing the schedule asked for.
    let month = (chrono::Utc::now().month() + 5) % 12 + 1;

    let (_, (status, body)) =
        readiness_when_the_last_walk_is_three_hours_older(&format!("0 0 0,1 1 {month} *")).await;

    assert_eq!(
        status, 200,
        "every walk the schedule asked for was made: {body}"
    );
}

#[tokio::test]
async fn a_daemon_whose_schedule_fired_twice_since_its_last_successful_walk_is_unready() {
    // Hourly: three hours without a successful walk missed two.
    let ((fresh, _), (status, body)) =
        readiness_when_the_last_walk_is_three_hours_older("0 0 * * * *").await;

    assert_eq!(fresh, 200);
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("the last successful sync started"), "{body}");
}

/// The key sqlx's migrator takes its advisory lock on for database `name`.
fn migration_lock_id(name: &str) -> i64 {
    let mut crc = 0xFFFF_FFFFu32;
    for byte in name.bytes() {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    0x3d32ad9e * i64::from(!crc)
}

/// Starts the binary with `args` while another connection holds the migration lock, sends
/// SIGTERM once it waits for that lock, and returns its exit code (none when it had to be
/// killed) and output.
async fn sigterm_while_migrations_wait_for_another_replica(args: &[&str]) -> (Option<i32>, String) {
    use sqlx::Connection;
    let db = TestDb::new().await;
    let name = db
        .url
        .rsplit('/')
        .next()
        .expect("a database name")
        .to_owned();
    // Another replica is migrating (its migration waits behind a long query, say).
    let mut other = sqlx::PgConnection::connect(&db.url).await.expect("connect");
    sqlx::query("select pg_advisory_lock($1)")
        .bind(migration_lock_id(&name))
        .execute(&mut other)
        .await
        .expect("hold the migration lock");
    let emulator = start_emulator(1).await;
    let base = emulator.base_url();
    let process = spawn_binary(
        args,
        &[
            ("DATABASE_URL", &db.url),
            ("OPENAI_BASE_URL", &base),
            ("OPENAI_ADMIN_KEY", TEST_KEY),
            ("APP_HTTP__LISTEN", "127.0.0.1:0"),
        ],
    );
    let pid = process.id().to_string();
    eventually("the process waits for the migration lock", || async {
        let (waiting,): (i64,) = sqlx::query_as(
            "select count(*) from pg_locks where locktype = 'advisory' and not granted",
        )
        .fetch_one(&db.pool)
        .await
        .expect("locks");
        waiting >= 1
    })
    .await;

    let signalled = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(signalled.success());
    let exit = wait_for_exit(process).await;
    let _ = other.close().await;
    exit
}

#[tokio::test]
async fn sigterm_while_migrations_wait_for_another_replica_stops_the_daemon() {
    let (code, output) = sigterm_while_migrations_wait_for_another_replica(&["run"]).await;

    assert_eq!(
        code,
        Some(0),
        "the daemon ignored SIGTERM while waiting to migrate, or failed:\n{output}"
    );
}

#[tokio::test]
async fn sigterm_while_migrations_wait_for_another_replica_stops_a_sync_and_says_why() {
    let (code, output) = sigterm_while_migrations_wait_for_another_replica(&["sync"]).await;

    assert_eq!(
        code,
        Some(1),
        "sync ignored SIGTERM while waiting to migrate:\n{output}"
    );
    assert!(output.contains("stopped by a signal"), "{output}");
}

#[tokio::test]
async fn sigterm_while_migrations_wait_for_another_replica_stops_the_requests_command() {
    let (code, output) = sigterm_while_migrations_wait_for_another_replica(&["requests"]).await;

    assert_eq!(
        code,
        Some(1),
        "requests ignored SIGTERM while waiting to migrate:\n{output}"
    );
    assert!(output.contains("stopped by a signal"), "{output}");
}

#[tokio::test]
async fn a_daemon_whose_walk_just_succeeded_is_ready_however_long_the_walk_took() {
    // Every second: walks run back to back, each as long as the organization makes it (here
    // seventy seconds). One has just succeeded and the next is under way: nothing was missed.
    let db = TestDb::new().await;
    let emulator = start_emulator(5).await;
    let shutdown = CancellationToken::new();
    let daemon = openai_project_sync::app::start_daemon(
        settings(&db, &emulator.base_url(), "* * * * * *"),
        shutdown.clone(),
    )
    .await
    .expect("the daemon starts");
    eventually("a walk succeeds", || async {
        count_runs(&db, "succeeded").await >= 1
    })
    .await;
    // The next walk is slow: it is still listing while the probe asks.
    emulator.push_fault(openai_project_sync::emulator::FaultRule {
        endpoint: Endpoint::List,
        skip: 0,
        times: None,
        fault: openai_project_sync::emulator::Fault::Hang,
    });
    eventually("a walk is under way that no longer succeeds", || async {
        let (running,): (bool,) = sqlx::query_as(
            "select exists (select 1 from openai.sync_runs where resource = 'projects' \
               and status = 'running' and started_at > \
                 (select max(finished_at) from openai.sync_runs where status = 'succeeded'))",
        )
        .fetch_one(&db.pool)
        .await
        .expect("runs");
        running
    })
    .await;
    // The last successful walk took seventy seconds and finished a moment ago.
    sqlx::query(
        "update openai.sync_runs set started_at = now() - interval '70 seconds', \
            finished_at = now() - interval '1 second' \
         where id = (select id from openai.sync_runs where status = 'succeeded' \
                     order by started_at desc limit 1)",
    )
    .execute(&db.pool)
    .await
    .expect("lengthen the last walk");
    let (status, body) = get(&format!("http://{}/readyz", daemon.http_addr)).await;
    shutdown.cancel();
    let _ = daemon.finished.await;

    assert_eq!(status, 200, "a walk succeeded a second ago: {body}");
}

#[tokio::test]
async fn readiness_reads_a_schedule_naming_both_a_day_of_month_and_a_weekday_as_the_scheduler_does()
{
    // The scheduler fires only when both match: on a Friday the 13th, some months apart, never
    // twice in three weeks. Read as "the 13th or any Friday" it would fire weekly.
    let db = TestDb::new().await;
    let emulator = start_emulator(5).await;
    let shutdown = CancellationToken::new();
    let daemon = openai_project_sync::app::start_daemon(
        settings(&db, &emulator.base_url(), "0 0 0 13 * FRI"),
        shutdown.clone(),
    )
    .await
    .expect("the daemon starts");
    eventually("the start-up walk succeeds", || async {
        count_runs(&db, "succeeded").await >= 1
    })
    .await;

    // Three weeks pass: the schedule asked for one walk at most.
    sqlx::query(
        "update openai.sync_runs set started_at = started_at - interval '21 days', \
         finished_at = finished_at - interval '21 days'",
    )
    .execute(&db.pool)
    .await
    .expect("age the walk");
    let (status, body) = get(&format!("http://{}/readyz", daemon.http_addr)).await;
    shutdown.cancel();
    let _ = daemon.finished.await;

    assert_eq!(
        status, 200,
        "the scheduler fired at most once in three weeks: {body}"
    );
}
