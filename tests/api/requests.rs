//! The request queue: every status, every fault, replicas, the listener, bad input, roles.

use std::time::Duration;

use openai_project_sync::emulator::{
    EmulatorConfig, EmulatorHandle, Endpoint, Fault, FaultRates, FaultRule, Freedoms, LostAs,
};
use openai_project_sync::store;
use openai_project_sync::worker::{self, TickReport, Unresolved, WorkerDeps};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::helpers::{
    TEST_KEY, TestDb, client_with, eventually, row_identities, start_emulator_with, sync, sync_deps,
};

pub struct Queue {
    pub db: TestDb,
    pub emulator: EmulatorHandle,
    pub deps: WorkerDeps,
}

pub async fn queue(projects: usize) -> Queue {
    let db = TestDb::new().await;
    store::migrate(&db.pool).await.expect("migrations apply");
    let emulator = start_emulator_with(EmulatorConfig {
        admin_key: TEST_KEY.into(),
        projects,
        seed: 21,
        // The queue's guarantees must hold against a server that takes every freedom the spec leaves it.
        freedoms: Freedoms::hostile(),
        ..EmulatorConfig::default()
    })
    .await;
    let deps = WorkerDeps {
        pool: db.pool.clone(),
        client: client_with(&emulator.base_url(), TEST_KEY, Duration::from_millis(400)),
        page_size: 100,
        lease: Duration::from_secs(5),
        max_attempts: 5,
        retry_base_delay: Duration::from_millis(10),
        retry_max_delay: Duration::from_millis(50),
        reconcile_grace: Duration::from_millis(200),
        unresolved: Unresolved::Retry,
        before_create: None,
    };
    Queue { db, emulator, deps }
}

pub async fn request(pool: &PgPool, name: &str) -> i64 {
    let (id,): (i64,) =
        sqlx::query_as("insert into openai.project_requests (name) values ($1) returning id")
            .bind(name)
            .fetch_one(pool)
            .await
            .expect("insert a request");
    id
}

/// Inserts `count` requests named `prefix 1` to `prefix count` in one statement.
async fn insert_requests(pool: &PgPool, prefix: &str, count: i32) {
    sqlx::query("insert into openai.project_requests (name) select $1 || ' ' || n from generate_series(1, $2) n")
        .bind(prefix)
        .bind(count)
        .execute(pool)
        .await
        .expect("insert requests");
}

/// Gives every create call `ms` of latency.
pub fn slow_creates(emulator: &EmulatorHandle, ms: u64) {
    emulator.set_rates(
        Endpoint::Create,
        FaultRates {
            latency_ms: ms,
            ..FaultRates::default()
        },
    );
}

pub type Outcome = (String, Option<String>, Option<String>);

pub async fn outcome(pool: &PgPool, id: i64) -> Outcome {
    sqlx::query_as("select status, project_id, error from openai.project_requests where id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .expect("read a request")
}

pub async fn tick(q: &Queue) -> TickReport {
    worker::tick(&q.deps, &CancellationToken::new())
        .await
        .expect("a tick")
}

/// Ticks until the request is terminal; the reconciliation grace makes this take a few ticks.
pub async fn settle(q: &Queue, id: i64) -> Outcome {
    eventually("the request ends", || async {
        tick(q).await;
        matches!(
            outcome(&q.db.pool, id).await.0.as_str(),
            "created" | "failed" | "cancelled"
        )
    })
    .await;
    outcome(&q.db.pool, id).await
}

pub fn upstream_named(emulator: &EmulatorHandle, name: &str) -> usize {
    emulator
        .projects()
        .iter()
        .filter(|p| p.name.as_deref() == Some(name))
        .count()
}

async fn seed(pool: &PgPool, name: &str, status: &str, extra: &str) -> i64 {
    let (id,): (i64,) = sqlx::query_as(&format!(
        "insert into openai.project_requests (name, status, attempts, attempt_id, attempt_started_at, lease_until, \
            reconcile_walks, unknown_since, candidates_since, first_fruitless_walk_at, project_id, error, finished_at) \
         select $1, $2, 1, gen_random_uuid(), now() - interval '1 minute', {extra}, \
            case when $2 = 'unknown' then 1 else 0 end, \
            case when $2 = 'unknown' then now() - interval '1 minute' end, \
            case when $2 = 'unknown' then now() - interval '1 minute' end, \
            case when $2 = 'unknown' then now() - interval '1 minute' end, \
            case when $2 = 'created' then 'proj_seeded_' || $1 end, \
            case when $2 in ('failed', 'cancelled', 'unknown') then 'seeded' end, \
            case when $2 in ('created', 'failed', 'cancelled') then now() end \
         returning id"
    ))
    .bind(name)
    .bind(status)
    .fetch_one(pool)
    .await
    .expect("seed a request");
    id
}

#[tokio::test]
async fn a_project_the_queue_created_is_not_rewritten_by_the_next_walk() {
    let q = queue(120).await;
    let id = request(&q.db.pool, "Made by the queue").await;
    tick(&q).await;
    let (status, project_id, _) = outcome(&q.db.pool, id).await;
    assert_eq!(status, "created");
    let before = row_identities(&q.db.pool, project_id.as_deref()).await;

    let summary = sync(&sync_deps(&q.db, q.deps.client.clone(), 100)).await;

    assert_eq!(
        (
            summary.counts.seen,
            summary.counts.inserted,
            summary.counts.changed
        ),
        (121, 120, 0),
        "the queue's project is seen, unchanged"
    );
    assert_eq!(before.len(), 2, "one current row and one version");
    assert_eq!(
        row_identities(&q.db.pool, project_id.as_deref()).await,
        before,
        "the walk compared it and wrote nothing"
    );
}

#[tokio::test]
async fn one_tick_takes_each_seeded_status_one_step_with_the_exact_number_of_creates() {
    let q = queue(5).await;
    let pending = request(&q.db.pool, "Seeded pending").await;
    let live = seed(
        &q.db.pool,
        "Seeded live lease",
        "creating",
        "now() + interval '1 hour'",
    )
    .await;
    let expired = seed(
        &q.db.pool,
        "Seeded expired lease",
        "creating",
        "now() - interval '1 second'",
    )
    .await;
    let adoptable = seed(&q.db.pool, "Seeded unknown, exists", "unknown", "null").await;
    let vanished = seed(&q.db.pool, "Seeded unknown, nothing", "unknown", "null").await;
    let created = seed(&q.db.pool, "Seeded created", "created", "null").await;
    let failed = seed(&q.db.pool, "Seeded failed", "failed", "null").await;
    let cancelled = seed(&q.db.pool, "Seeded cancelled", "cancelled", "null").await;
    let made_upstream = q.emulator.create("Seeded unknown, exists");

    let report = tick(&q).await;

    assert_eq!(
        q.emulator.stats().create_calls,
        1,
        "only the pending request was sent"
    );
    assert_eq!(outcome(&q.db.pool, pending).await.0, "created");
    assert_eq!(
        outcome(&q.db.pool, live).await.0,
        "creating",
        "a live lease is left alone"
    );
    assert_eq!(
        outcome(&q.db.pool, expired).await.0,
        "unknown",
        "a dead worker's attempt is looked up, not retried"
    );
    assert_eq!(
        outcome(&q.db.pool, adoptable).await,
        ("created".to_owned(), Some(made_upstream.id.clone()), None)
    );
    assert_eq!(
        outcome(&q.db.pool, vanished).await.0,
        "pending",
        "two fruitless walks and the grace let it try again"
    );
    assert_eq!(outcome(&q.db.pool, created).await.0, "created");
    assert_eq!(outcome(&q.db.pool, failed).await.0, "failed");
    assert_eq!(outcome(&q.db.pool, cancelled).await.0, "cancelled");
    assert_eq!(
        (
            report.claimed,
            report.adopted,
            report.expired,
            report.retried
        ),
        (1, 1, 1, 1)
    );
    let (in_history,): (i64,) = sqlx::query_as("select count(*) from openai.projects where name in ('Seeded pending', 'Seeded unknown, exists')")
        .fetch_one(&q.db.pool)
        .await
        .expect("history");
    assert_eq!(
        in_history, 2,
        "created projects are visible to analysts before the next sync"
    );
}

#[tokio::test]
async fn every_fault_of_the_emulator_ends_with_exactly_one_project_per_request() {
    let faults = [
        ("429", Fault::TooManyRequests { retry_after_ms: 20 }),
        ("500", Fault::ServerError { status: 500 }),
        ("503", Fault::ServerError { status: 503 }),
        ("hang", Fault::Hang),
        ("drop", Fault::Drop),
        (
            "lost as 500",
            Fault::LostResponse {
                then: LostAs::ServerError,
            },
        ),
        ("lost as drop", Fault::LostResponse { then: LostAs::Drop }),
        ("lost as hang", Fault::LostResponse { then: LostAs::Hang }),
    ];
    for (label, fault) in faults {
        let q = queue(30).await;
        q.emulator.push_fault(FaultRule {
            endpoint: Endpoint::Create,
            skip: 0,
            times: Some(1),
            fault,
        });
        let name = format!("Fault {label}");
        let id = request(&q.db.pool, &name).await;

        let (status, project_id, error) = settle(&q, id).await;

        assert_eq!(status, "created", "{label}: {error:?}");
        assert_eq!(
            upstream_named(&q.emulator, &name),
            1,
            "{label}: exactly one project upstream"
        );
        let project = project_id.expect("linked");
        assert!(
            q.emulator.project(&project).is_some(),
            "{label}: the linked project exists"
        );
    }
}

#[tokio::test]
async fn a_rejected_request_ends_failed_with_the_apis_message_and_no_project() {
    let q = queue(0).await;
    let (id,): (i64,) = sqlx::query_as("insert into openai.project_requests (name, geography) values ('Mars base', 'MARS') returning id")
        .fetch_one(&q.db.pool)
        .await
        .expect("insert");

    let (status, project, error) = settle(&q, id).await;

    assert_eq!((status.as_str(), project), ("failed", None));
    assert!(
        error
            .as_deref()
            .is_some_and(|e| e.contains("the API refused it") && e.contains("MARS")),
        "{error:?}"
    );
    assert_eq!(q.emulator.stats().projects_created, 0);
}

#[tokio::test]
async fn requests_refused_for_now_every_time_end_failed_after_the_attempt_budget() {
    let q = queue(0).await;
    q.emulator.push_fault(FaultRule {
        endpoint: Endpoint::Create,
        skip: 0,
        times: None,
        fault: Fault::TooManyRequests { retry_after_ms: 5 },
    });
    let id = request(&q.db.pool, "Always throttled").await;

    let (status, _, error) = settle(&q, id).await;

    assert_eq!(status, "failed");
    assert!(
        error
            .as_deref()
            .is_some_and(|e| e.contains("gave up after 5 attempts")),
        "{error:?}"
    );
    assert_eq!(q.emulator.stats().create_calls, 5);
}

#[tokio::test]
async fn two_replicas_racing_over_200_requests_send_exactly_one_create_per_request() {
    let q = queue(0).await;
    slow_creates(&q.emulator, 2);
    insert_requests(&q.db.pool, "Replica race", 200).await;
    let other = WorkerDeps {
        pool: sqlx::PgPool::connect(&q.db.url).await.expect("second pool"),
        ..q.deps.clone()
    };
    let stop = CancellationToken::new();

    let (a, b) = tokio::join!(worker::drain(&q.deps, &stop), worker::drain(&other, &stop));

    let (a, b) = (a.expect("replica a"), b.expect("replica b"));
    assert_eq!(a.created + b.created, 200);
    assert!(
        a.created > 0 && b.created > 0,
        "both replicas worked: {a:?} {b:?}"
    );
    let stats = q.emulator.stats();
    assert_eq!((stats.create_calls, stats.projects_created), (200, 200));
    let (created, distinct): (i64, i64) = sqlx::query_as("select count(*) filter (where status = 'created'), count(distinct project_id) from openai.project_requests")
        .fetch_one(&q.db.pool)
        .await
        .expect("count");
    assert_eq!((created, distinct), (200, 200));
}

#[tokio::test]
async fn a_row_inserted_while_the_listener_is_down_is_still_picked_up_within_seconds() {
    let q = queue(0).await;
    let stop = CancellationToken::new();
    let daemon_worker = tokio::spawn(worker::run(
        q.deps.clone(),
        Duration::from_secs(3600),
        stop.clone(),
    ));
    let listening = || async {
        let (n,): (i64,) = sqlx::query_as("select count(*) from pg_stat_activity where datname = current_database() and query ilike 'listen%'")
            .fetch_one(&q.db.pool)
            .await
            .expect("activity");
        n == 1
    };
    eventually("the worker listens", listening).await;
    let first = request(&q.db.pool, "Announced").await;
    eventually("a notified row is created at once", || async {
        outcome(&q.db.pool, first).await.0 == "created"
    })
    .await;

    sqlx::query("select pg_terminate_backend(pid) from pg_stat_activity where datname = current_database() and query ilike 'listen%'")
        .execute(&q.db.pool)
        .await
        .expect("kill the listener's connection");
    let second = request(&q.db.pool, "Inserted while nobody listened").await;

    eventually(
        "the row is picked up although polling is an hour away",
        || async { outcome(&q.db.pool, second).await.0 == "created" },
    )
    .await;
    eventually("the worker listens again", listening).await;
    stop.cancel();
    daemon_worker.await.expect("the worker stops");
}

#[tokio::test]
async fn duplicate_names_end_failed_naming_the_project_or_request_unless_allowed() {
    let q = queue(0).await;
    let existing = request(&q.db.pool, "Payments staging").await;
    assert_eq!(settle(&q, existing).await.0, "created");
    let again = request(&q.db.pool, "Payments staging").await;
    let (allowed,): (i64,) = sqlx::query_as("insert into openai.project_requests (name, allow_duplicate_name) values ('Payments staging', true) returning id")
        .fetch_one(&q.db.pool)
        .await
        .expect("insert");
    let twin_a = request(&q.db.pool, "Twins").await;
    let twin_b = request(&q.db.pool, "Twins").await;
    // The first twin's create goes unanswered, so it is still live when the second is checked.
    q.emulator.push_fault(FaultRule {
        endpoint: Endpoint::Create,
        skip: 1,
        times: Some(1),
        fault: Fault::ServerError { status: 502 },
    });

    worker::drain(&q.deps, &CancellationToken::new())
        .await
        .expect("drain");

    let (status, _, error) = outcome(&q.db.pool, again).await;
    assert_eq!(status, "failed");
    assert!(error.as_deref().is_some_and(|e| e.contains("duplicate name") && e.contains("is active with this name")), "{error:?}");
    assert_eq!(outcome(&q.db.pool, allowed).await.0, "created");
    let (status, _, error) = outcome(&q.db.pool, twin_b).await;
    assert_eq!(status, "failed");
    assert!(
        error
            .as_deref()
            .is_some_and(|e| e.contains(&format!("request {twin_a} (unknown)"))),
        "{error:?}"
    );
    assert_eq!(settle(&q, twin_a).await.0, "created");
    assert_eq!(upstream_named(&q.emulator, "Twins"), 1);
    assert_eq!(upstream_named(&q.emulator, "Payments staging"), 2);
}

#[tokio::test]
async fn a_repeated_name_is_refused_as_a_duplicate_also_when_the_server_answers_it_in_another_form()
{
    let q = queue(0).await;
    // A freedom of the spec: the server stores names NFD with runs of spaces folded, and
    // answers them so; the project is stored as answered.
    let mut freedoms = q.emulator.freedoms();
    freedoms.rewrite_names = true;
    q.emulator.set_freedoms(freedoms);
    let first = request(&q.db.pool, "Zürich ops").await;
    assert_eq!(settle(&q, first).await.0, "created");
    let ascii = request(&q.db.pool, "Team A").await;
    assert_eq!(settle(&q, ascii).await.0, "created");

    // The same insert again, byte for byte; and a name equal but for a run of spaces.
    let again = request(&q.db.pool, "Zürich ops").await;
    let near = request(&q.db.pool, "Team  A").await;
    worker::drain(&q.deps, &CancellationToken::new())
        .await
        .expect("drain");

    for (id, name) in [(again, "Zürich ops"), (near, "Team  A")] {
        let (status, _, error) = outcome(&q.db.pool, id).await;
        assert!(
            status == "failed"
                && error.as_deref().is_some_and(
                    |e| e.contains("duplicate name") && e.contains("is active with this name")
                ),
            "{name:?} again must end failed as a duplicate; it ended {status} ({error:?})"
        );
    }
    let upstream = |name: &str| {
        q.emulator
            .projects()
            .iter()
            .filter(|p| {
                p.name.as_deref().map(worker::comparable_name)
                    == Some(worker::comparable_name(name))
            })
            .count()
    };
    assert_eq!(upstream("Zürich ops"), 1);
    assert_eq!(upstream("Team A"), 1);
}

#[tokio::test]
async fn bad_input_is_refused_at_insert_ended_with_a_reason_or_created_faithfully() {
    let q = queue(0).await;
    let long = "x".repeat(10_000);
    // (what, name, geography, residency, the constraint that must refuse it)
    type Refused<'a> = (&'a str, String, Option<&'a str>, Option<&'a str>, &'a str);
    let refused: Vec<Refused> = vec![
        ("blank", String::new(), None, None, "request_name_is_blank"),
        (
            "spaces only",
            "    ".into(),
            None,
            None,
            "request_name_is_blank",
        ),
        (
            "leading space",
            " Payments".into(),
            None,
            None,
            "request_name_has_surrounding_spaces",
        ),
        (
            "trailing space",
            "Payments ".into(),
            None,
            None,
            "request_name_has_surrounding_spaces",
        ),
        (
            "10,000 characters",
            long,
            None,
            None,
            "request_name_is_longer_than_256_characters",
        ),
        (
            "control character",
            "Pay\u{1}ments".into(),
            None,
            None,
            "request_name_has_control_characters",
        ),
        (
            "newline",
            "Pay\nments".into(),
            None,
            None,
            "request_name_has_control_characters",
        ),
        (
            "tab",
            "Pay\tments".into(),
            None,
            None,
            "request_name_has_control_characters",
        ),
        (
            "both regions",
            "Regions".into(),
            Some("EU"),
            Some("EU"),
            "request_gives_both_geography_and_residency",
        ),
        (
            "blank geography",
            "Regions".into(),
            Some(""),
            None,
            "request_geography_is_blank",
        ),
        (
            "geography with spaces around it",
            "Regions".into(),
            Some(" EU "),
            None,
            "request_geography_has_surrounding_spaces",
        ),
        (
            "blank residency",
            "Regions".into(),
            None,
            Some("  "),
            "request_residency_is_blank",
        ),
        (
            "residency with a space after it",
            "Regions".into(),
            None,
            Some("eu "),
            "request_residency_has_surrounding_spaces",
        ),
    ];
    for (label, name, geography, residency, constraint) in refused {
        let error = sqlx::query(
            "insert into openai.project_requests (name, geography, residency) values ($1, $2, $3)",
        )
        .bind(&name)
        .bind(geography)
        .bind(residency)
        .execute(&q.db.pool)
        .await
        .expect_err(label);
        let reported = error
            .as_database_error()
            .and_then(|e| e.constraint())
            .map(str::to_owned);
        assert_eq!(reported.as_deref(), Some(constraint), "{label}: {error}");
    }
    let null_name = sqlx::query("insert into openai.project_requests (name) values (null)")
        .execute(&q.db.pool)
        .await
        .expect_err("null name");
    assert!(
        null_name
            .to_string()
            .contains("null value in column \"name\""),
        "{null_name}"
    );
    let blank_key = sqlx::query(
        "insert into openai.project_requests (name, external_key_id) values ('K', ' ')",
    )
    .execute(&q.db.pool)
    .await
    .expect_err("blank key");
    assert!(
        blank_key
            .to_string()
            .contains("request_external_key_id_is_blank"),
        "{blank_key}"
    );
    let bad_status =
        sqlx::query("insert into openai.project_requests (name, status) values ('S', 'done')")
            .execute(&q.db.pool)
            .await
            .expect_err("status");
    assert!(
        bad_status.to_string().contains("request_status_is_unknown"),
        "{bad_status}"
    );

    let faithful = [
        "🚀 Launch",
        "O'Brien \"quoted\" project",
        "'); drop table openai.projects; --",
        "Zürich 数据 Москва",
    ];
    let mut ids = Vec::new();
    for name in faithful {
        ids.push((name, request(&q.db.pool, name).await));
    }
    let (mars,): (i64,) = sqlx::query_as("insert into openai.project_requests (name, geography) values ('Unknown region', 'MARS') returning id")
        .fetch_one(&q.db.pool)
        .await
        .expect("insert");
    let duplicate = request(&q.db.pool, "🚀 Launch").await;
    worker::drain(&q.deps, &CancellationToken::new())
        .await
        .expect("drain");

    for (name, id) in ids {
        let (status, project, _) = outcome(&q.db.pool, id).await;
        assert_eq!(status, "created", "{name}");
        let upstream = q
            .emulator
            .project(&project.expect("linked"))
            .and_then(|p| p.name);
        assert_eq!(
            upstream.as_deref(),
            Some(name),
            "the name reached the API unchanged"
        );
    }
    assert!(
        outcome(&q.db.pool, mars)
            .await
            .2
            .is_some_and(|e| e.contains("MARS"))
    );
    assert!(
        outcome(&q.db.pool, duplicate)
            .await
            .2
            .is_some_and(|e| e.contains("duplicate name"))
    );
    let (unfinished,): (i64,) =
        sqlx::query_as("select count(*) from openai.project_requests where finished_at is null")
            .fetch_one(&q.db.pool)
            .await
            .expect("count");
    assert_eq!(unfinished, 0, "no row is left without an outcome");
    let (silent,): (i64,) = sqlx::query_as("select count(*) from openai.project_requests where status = 'failed' and coalesce(error, '') = ''")
        .fetch_one(&q.db.pool)
        .await
        .expect("count");
    assert_eq!(silent, 0, "every failure says why");
}

/// Acts as the login `role` on this connection from now on (its session user too, as if it had
/// logged in); `none` goes back to the connecting user.
async fn set_role(connection: &mut sqlx::PgConnection, role: &str) {
    let statement = if role == "none" {
        "reset session authorization".to_owned()
    } else {
        format!("set session authorization {role}")
    };
    sqlx::query(&statement)
        .execute(connection)
        .await
        .expect("set role");
}

#[tokio::test]
async fn ops_may_request_and_cancel_their_own_pending_requests_and_nothing_else() {
    let q = queue(0).await;
    let suffix = q.db.url.rsplit('/').next().unwrap_or("x").to_owned();
    let (ops, other, analyst) = (
        format!("ops_{suffix}"),
        format!("ops2_{suffix}"),
        format!("analyst_{suffix}"),
    );
    for (role, group) in [
        (&ops, "openai_ops"),
        (&other, "openai_ops"),
        (&analyst, "openai_analyst"),
    ] {
        sqlx::query(&format!("create role {role} login in role {group}"))
            .execute(&q.db.pool)
            .await
            .expect("create role");
    }
    let mut c = q.db.pool.acquire().await.expect("connection");

    set_role(&mut c, &other).await;
    let (theirs,): (i64,) =
        sqlx::query_as("insert into openai.project_requests (name) values ('Theirs') returning id")
            .fetch_one(&mut *c)
            .await
            .expect("insert");
    set_role(&mut c, &ops).await;
    let (mine,): (i64,) =
        sqlx::query_as("insert into openai.project_requests (name) values ('Mine') returning id")
            .fetch_one(&mut *c)
            .await
            .expect("ops inserts");
    let (by,): (String,) =
        sqlx::query_as("select requested_by from openai.project_requests where id = $1")
            .bind(mine)
            .fetch_one(&mut *c)
            .await
            .expect("ops reads");
    let rename = sqlx::query("update openai.project_requests set name = 'Other' where id = $1")
        .bind(mine)
        .execute(&mut *c)
        .await;
    let delete = sqlx::query("delete from openai.project_requests where id = $1")
        .bind(mine)
        .execute(&mut *c)
        .await;
    let projects = sqlx::query("insert into openai.project_current (project_id, created_at, raw, first_seen_at, last_seen_at) values ('p', now(), '{}', now(), now())").execute(&mut *c).await;
    let read_projects = sqlx::query("select count(*) from openai.projects")
        .execute(&mut *c)
        .await;
    let cancel_theirs =
        sqlx::query("update openai.project_requests set status = 'cancelled' where id = $1")
            .bind(theirs)
            .execute(&mut *c)
            .await
            .expect("filtered, not refused");
    let cancel_mine =
        sqlx::query("update openai.project_requests set status = 'cancelled' where id = $1")
            .bind(mine)
            .execute(&mut *c)
            .await
            .expect("cancel");
    let impersonate = sqlx::query(
        "insert into openai.project_requests (name, requested_by) values ('Spoof', 'someone')",
    )
    .execute(&mut *c)
    .await;
    set_role(&mut c, "none").await;
    let (busy,): (i64,) = sqlx::query_as(&format!("insert into openai.project_requests (name, requested_by) values ('Busy', '{ops}') returning id")).fetch_one(&mut *c).await.expect("insert");
    sqlx::query("update openai.project_requests set status = 'creating', attempt_id = gen_random_uuid(), attempt_started_at = now(), lease_until = now() + interval '1 hour' where id = $1").bind(busy).execute(&mut *c).await.expect("claim");
    set_role(&mut c, &ops).await;
    let cancel_busy =
        sqlx::query("update openai.project_requests set status = 'cancelled' where id = $1")
            .bind(busy)
            .execute(&mut *c)
            .await;
    set_role(&mut c, &analyst).await;
    let (visible,): (i64,) = sqlx::query_as("select count(*) from openai.projects")
        .fetch_one(&mut *c)
        .await
        .expect("analyst reads projects");
    let (requests_seen,): (i64,) = sqlx::query_as("select count(*) from openai.project_requests")
        .fetch_one(&mut *c)
        .await
        .expect("analyst reads requests");
    let analyst_insert = sqlx::query("insert into openai.project_requests (name) values ('Nope')")
        .execute(&mut *c)
        .await;
    let analyst_update = sqlx::query("update openai.project_current set name = 'x'")
        .execute(&mut *c)
        .await;
    set_role(&mut c, "none").await;

    assert_eq!(by, ops);
    for (what, result) in [
        ("rename", &rename),
        ("delete", &delete),
        ("write projects", &projects),
        ("read projects", &read_projects),
        ("set requested_by", &impersonate),
        ("analyst insert", &analyst_insert),
        ("analyst update", &analyst_update),
    ] {
        let error = result
            .as_ref()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            error.contains("permission denied"),
            "{what} must be refused: {result:?}"
        );
    }
    assert_eq!(
        cancel_theirs.rows_affected(),
        0,
        "another user's request is out of reach"
    );
    assert_eq!(cancel_mine.rows_affected(), 1);
    let (status, _, error) = outcome(&q.db.pool, mine).await;
    assert_eq!(
        (status.as_str(), error.as_deref()),
        ("cancelled", Some(format!("cancelled by {ops}").as_str()))
    );
    let refusal = cancel_busy
        .expect_err("a creating request cannot be cancelled")
        .to_string();
    assert!(
        refusal.contains("is creating, so it can no longer be cancelled"),
        "{refusal}"
    );
    assert_eq!(
        (visible, requests_seen),
        (0, 3),
        "the analyst reads every request"
    );
    assert_eq!(outcome(&q.db.pool, theirs).await.0, "pending");
    // Roles outlive the test database; leave a shared server as it was.
    drop(c);
    for role in [&ops, &other, &analyst] {
        sqlx::query(&format!("drop role {role}"))
            .execute(&q.db.pool)
            .await
            .expect("drop the test role");
    }
}

#[tokio::test]
async fn sigkilling_the_daemon_20_times_over_200_requests_duplicates_nothing_and_leaves_nothing_behind()
 {
    let q = queue(0).await;
    slow_creates(&q.emulator, 25);
    insert_requests(&q.db.pool, "Kill", 200).await;
    let base = q.emulator.base_url();
    let env = [
        ("DATABASE_URL", q.db.url.as_str()),
        ("OPENAI_BASE_URL", base.as_str()),
        ("OPENAI_ADMIN_KEY", TEST_KEY),
        ("APP_HTTP__LISTEN", "127.0.0.1:0"),
        ("APP_OPENAI__TIMEOUT", "500ms"),
        ("APP_OPENAI__RETRY_BASE_DELAY", "10ms"),
        ("APP_REQUESTS__RECONCILE_GRACE", "200ms"),
        ("APP_REQUESTS__POLL_INTERVAL", "500ms"),
        ("APP_SYNC__SCHEDULE", "0 0 0 1 1 *"),
    ];
    let seed = 20_261_123;
    let mut rng = fastrand::Rng::with_seed(seed);

    for round in 0..20 {
        let daemon = crate::helpers::spawn_binary(&["run"], &env);
        let target = q.emulator.stats().create_calls + rng.u64(1..=12);
        eventually("the daemon sends more creates", || async {
            q.emulator.stats().create_calls >= target
        })
        .await;
        std::process::Command::new("kill")
            .args(["-KILL", &daemon.id().to_string()])
            .status()
            .expect("kill");
        let (code, _) = crate::helpers::wait_for_exit(daemon).await;
        assert_eq!(
            code, None,
            "round {round} (seed {seed}): killed by a signal"
        );
    }
    let survivor = crate::helpers::spawn_binary(&["run"], &env);
    eventually("every request ends", || async {
        let (open,): (i64,) = sqlx::query_as(
            "select count(*) from openai.project_requests where finished_at is null",
        )
        .fetch_one(&q.db.pool)
        .await
        .expect("count");
        open == 0
    })
    .await;
    std::process::Command::new("kill")
        .args(["-TERM", &survivor.id().to_string()])
        .status()
        .expect("kill");
    let (code, output) = crate::helpers::wait_for_exit(survivor).await;

    assert_eq!(code, Some(0), "{output}");
    let (created, linked): (i64, i64) = sqlx::query_as(
        "select count(*) filter (where status = 'created'), count(distinct project_id) from openai.project_requests",
    )
    .fetch_one(&q.db.pool)
    .await
    .expect("count");
    assert_eq!((created, linked), (200, 200), "seed {seed}");
    for n in 1..=200 {
        assert_eq!(
            upstream_named(&q.emulator, &format!("Kill {n}")),
            1,
            "seed {seed}: Kill {n} exists exactly once"
        );
    }
    assert_eq!(q.emulator.stats().projects_created, 200, "seed {seed}");
}

#[tokio::test]
async fn with_unresolved_hold_a_request_that_left_no_project_ends_failed_for_a_person() {
    let mut q = queue(0).await;
    q.deps.unresolved = Unresolved::Hold;
    q.emulator.push_fault(FaultRule {
        endpoint: Endpoint::Create,
        skip: 0,
        times: Some(1),
        fault: Fault::ServerError { status: 500 },
    });
    let id = request(&q.db.pool, "Held").await;

    let (status, project, error) = settle(&q, id).await;

    assert_eq!((status.as_str(), project), ("failed", None));
    assert!(
        error
            .as_deref()
            .is_some_and(|e| e.contains("held for a person")),
        "{error:?}"
    );
    assert_eq!(q.emulator.stats().create_calls, 1, "never sent again");
}

#[tokio::test]
async fn the_requests_command_drains_what_is_due_and_exits() {
    let db = TestDb::new().await;
    let emulator = start_emulator_with(EmulatorConfig {
        admin_key: TEST_KEY.into(),
        ..EmulatorConfig::default()
    })
    .await;
    let base = emulator.base_url();
    let env = [
        ("DATABASE_URL", db.url.as_str()),
        ("OPENAI_BASE_URL", base.as_str()),
        ("OPENAI_ADMIN_KEY", TEST_KEY),
    ];
    let migrated = crate::helpers::run_binary_async(&["migrate"], &env).await;
    insert_requests(&db.pool, "Drained", 3).await;
    let later: (i64,) = sqlx::query_as(
        "insert into openai.project_requests (name) values ('Not yet') returning id",
    )
    .fetch_one(&db.pool)
    .await
    .expect("insert");
    sqlx::query("update openai.project_requests set next_attempt_at = now() + interval '1 hour' where id = $1")
        .bind(later.0)
        .execute(&db.pool)
        .await
        .expect("postpone");

    let drained = crate::helpers::run_binary_async(&["requests"], &env).await;

    assert_eq!(
        migrated.status.code(),
        Some(0),
        "{}",
        crate::helpers::output_text(&migrated)
    );
    let text = crate::helpers::output_text(&drained);
    assert_eq!(drained.status.code(), Some(0), "{text}");
    assert!(text.contains("3 claimed, 3 created"), "{text}");
    assert_eq!(emulator.stats().projects_created, 3);
    assert_eq!(
        outcome(&db.pool, later.0).await.0,
        "pending",
        "what is not due yet waits"
    );
}

#[tokio::test]
async fn an_operator_editing_a_creating_request_in_an_open_transaction_does_not_stop_the_queue_for_everyone()
 {
    let q = queue(0).await;
    let suffix = q.db.url.rsplit('/').next().unwrap_or("x").to_owned();
    let ops = format!("ops_lock_{suffix}");
    sqlx::query(&format!("create role {ops} login in role openai_ops"))
        .execute(&q.db.pool)
        .await
        .expect("create role");
    // The operator's request, whose worker died mid-call: its lease has run out.
    let (stuck,): (i64,) = sqlx::query_as(&format!(
        "insert into openai.project_requests (name, requested_by) values ('Worker died', '{ops}') returning id"
    ))
    .fetch_one(&q.db.pool)
    .await
    .expect("insert");
    sqlx::query(
        "update openai.project_requests set status = 'creating', attempts = 1, attempt_id = gen_random_uuid(), \
            attempt_started_at = now() - interval '1 minute', lease_until = now() - interval '1 second' \
         where id = $1",
    )
    .bind(stuck)
    .execute(&q.db.pool)
    .await
    .expect("claim");
    // The operator opens it for editing in a client that locks what it edits (SELECT ... FOR
    // UPDATE, which the status column's update grant allows) and leaves the transaction open.
    let mut operator = q.db.pool.acquire().await.expect("connection");
    set_role(&mut operator, &ops).await;
    sqlx::query("begin")
        .execute(&mut *operator)
        .await
        .expect("begin");
    let locked = sqlx::query("select * from openai.project_requests where id = $1 for update")
        .bind(stuck)
        .execute(&mut *operator)
        .await
        .expect("ops may lock their own request");
    assert_eq!(locked.rows_affected(), 1, "the operator holds the row");

    let fresh = request(&q.db.pool, "Someone else's request").await;
    let ticked = tokio::time::timeout(Duration::from_secs(5), tick(&q)).await;
    let fresh_status = outcome(&q.db.pool, fresh).await.0;
    sqlx::query("rollback")
        .execute(&mut *operator)
        .await
        .expect("the operator rolls back");
    set_role(&mut operator, "none").await;
    drop(operator);
    sqlx::query(&format!("drop role {ops}"))
        .execute(&q.db.pool)
        .await
        .expect("drop the test role");

    assert!(
        ticked.is_ok() && fresh_status == "created",
        "a tick waited on the operator's lock ({}), and the new request is {fresh_status}",
        if ticked.is_ok() {
            "it ended"
        } else {
            "still waiting after 5 s"
        }
    );
}

// An operator's row lock on their own request, beyond the expired-lease case above.

/// A login in `openai_ops` for this test, connected on a connection of its own.
async fn ops_login(q: &Queue, prefix: &str) -> (String, sqlx::PgConnection) {
    let suffix = q.db.url.rsplit('/').next().unwrap_or("x").to_owned();
    let ops = format!("{prefix}_{suffix}");
    sqlx::query(&format!("create role {ops} login in role openai_ops"))
        .execute(&q.db.pool)
        .await
        .expect("create role");
    let connection = <sqlx::PgConnection as sqlx::Connection>::connect(&q.db.url_as(&ops))
        .await
        .expect("the operator logs in");
    (ops, connection)
}

async fn drop_login(q: &Queue, ops: &str, mut connection: sqlx::PgConnection) {
    let _ = sqlx::query("rollback").execute(&mut connection).await;
    drop(connection);
    eventually("the operator's backend is gone", || async {
        let (left,): (i64,) =
            sqlx::query_as("select count(*) from pg_stat_activity where usename = $1")
                .bind(ops)
                .fetch_one(&q.db.pool)
                .await
                .expect("activity");
        left == 0
    })
    .await;
    sqlx::query(&format!("drop role {ops}"))
        .execute(&q.db.pool)
        .await
        .expect("drop the test role");
}

/// Makes request `id` one that login `ops` inserted.
async fn owned_by(pool: &PgPool, id: i64, ops: &str) {
    sqlx::query("update openai.project_requests set requested_by = $2 where id = $1")
        .bind(id)
        .bind(ops)
        .execute(pool)
        .await
        .expect("the operator's request");
}

/// Opens a transaction on the operator's connection and locks request `id` in it, as a client
/// that locks what it shows does (FOR SHARE; the status column's update grant allows it).
async fn hold_for_share(operator: &mut sqlx::PgConnection, id: i64) {
    sqlx::query("begin")
        .execute(&mut *operator)
        .await
        .expect("begin");
    let locked = sqlx::query("select * from openai.project_requests where id = $1 for share")
        .bind(id)
        .execute(&mut *operator)
        .await
        .expect("ops may lock their own request");
    assert_eq!(locked.rows_affected(), 1, "the operator holds the row");
}

/// Whether some session of the test's database has waited for a lock for longer than the
/// queue's bounded waits (2 s).
async fn a_lock_wait_outlasted_the_bound(pool: &PgPool) -> bool {
    let (waiting,): (i64,) = sqlx::query_as(
        "select count(*) from pg_stat_activity where wait_event_type = 'Lock' \
         and datname = current_database() and now() - query_start > interval '2500 ms'",
    )
    .fetch_one(pool)
    .await
    .expect("activity");
    waiting > 0
}

#[tokio::test]
async fn a_created_projects_outcome_waits_for_a_row_an_operator_holds_and_is_written_once_they_let_go()
 {
    let q = queue(0).await;
    let (ops, mut operator) = ops_login(&q, "ops_inflight").await;
    let (theirs,): (i64,) = sqlx::query_as(
        "insert into openai.project_requests (name) values ('Slow one') returning id",
    )
    .fetch_one(&mut operator)
    .await
    .expect("ops inserts");
    let now = store::database_now(&q.db.pool).await.expect("now");
    let claimed = store::claim_next_request(&q.db.pool, q.deps.lease, now)
        .await
        .expect("claim")
        .expect("the operator's request is claimed");
    let attempt = claimed.attempt_id.clone().expect("an attempt");
    // Its create is sent and made the project; meanwhile the operator looks at the request in
    // a client that locks what it shows (FOR SHARE is enough; the status column's update grant
    // allows it) and leaves the transaction open.
    let project = q.emulator.create("Slow one");
    let raw = q
        .deps
        .client
        .retrieve_project_raw(&project.id)
        .await
        .expect("the project's JSON");
    hold_for_share(&mut operator, theirs).await;
    let finishing = {
        let (pool, id) = (q.db.pool.clone(), project.id.clone());
        tokio::spawn(async move {
            store::finish_created(
                &pool,
                theirs,
                &attempt,
                &id,
                &raw,
                store::RowWait::UntilFree,
            )
            .await
        })
    };

    // The outcome is the only record that the project was made: it waits past any bound.
    eventually(
        "the outcome has waited for the row longer than any bound",
        || a_lock_wait_outlasted_the_bound(&q.db.pool),
    )
    .await;
    assert_eq!(outcome(&q.db.pool, theirs).await.0, "creating");
    sqlx::query("rollback")
        .execute(&mut operator)
        .await
        .expect("the operator lets go");
    let finished = finishing.await.expect("join");
    drop_login(&q, &ops, operator).await;

    assert!(matches!(finished, Ok(store::Linked::Done)), "{finished:?}");
    let (status, linked, _) = outcome(&q.db.pool, theirs).await;
    assert_eq!(status, "created");
    assert_eq!(linked.as_deref(), Some(project.id.as_str()));
    assert_eq!(upstream_named(&q.emulator, "Slow one"), 1);
}

#[tokio::test]
async fn an_operator_locking_their_unknown_request_does_not_stop_other_unknown_requests_settling() {
    let q = queue(0).await;
    let (ops, mut operator) = ops_login(&q, "ops_unknown").await;
    // Two requests whose creates were lost long ago: the operator's, and someone else's. Each has
    // had one fruitless walk a minute ago, so the next walk decides both.
    let theirs = seed(&q.db.pool, "Operator's lost one", "unknown", "null").await;
    let other = seed(&q.db.pool, "Someone else's lost one", "unknown", "null").await;
    owned_by(&q.db.pool, theirs, &ops).await;
    // The operator keeps their 'unknown' request open in a locking client (it stays unknown
    // for at least the grace, 5 minutes by default: a wide window).
    hold_for_share(&mut operator, theirs).await;

    let ticked = tokio::time::timeout(Duration::from_secs(5), tick(&q)).await;
    let other_status = outcome(&q.db.pool, other).await.0;
    drop_login(&q, &ops, operator).await;
    assert!(
        ticked.is_ok() && other_status != "unknown",
        "the reconciliation pass waits on the operator's lock ({}); someone else's request stays {other_status}",
        if ticked.is_ok() {
            "it ended"
        } else {
            "still blocked after 5 s"
        }
    );
}

#[tokio::test]
async fn an_operator_locking_their_unknown_request_with_a_stored_candidate_does_not_stop_the_worker()
 {
    let mut q = queue(0).await;
    // The default grace's order of magnitude: the candidate is found within it.
    q.deps.reconcile_grace = Duration::from_secs(60);
    let (ops, mut operator) = ops_login(&q, "ops_cand").await;
    let theirs = seed(&q.db.pool, "Landed late", "unknown", "null").await;
    sqlx::query(
        "update openai.project_requests set requested_by = $2, unknown_since = now(), \
            first_fruitless_walk_at = null, reconcile_walks = 0 where id = $1",
    )
    .bind(theirs)
    .bind(&ops)
    .execute(&q.db.pool)
    .await
    .expect("the operator's request, unknown just now");
    // Its project did land, and a sync stored it: a lone candidate within the grace.
    let created = q
        .deps
        .client
        .create_project(&openai_project_sync::client::CreateProject {
            name: "Landed late".into(),
            external_key_id: None,
            geography: None,
            residency: None,
        })
        .await;
    assert!(matches!(
        created,
        openai_project_sync::client::CreateOutcome::Created(_)
    ));
    sync(&sync_deps(&q.db, q.deps.client.clone(), 100)).await;
    let fresh = request(&q.db.pool, "Someone else's request").await;
    hold_for_share(&mut operator, theirs).await;

    // The stored-candidate step runs before any list walk, so the daemon's worker loop
    // (Lookup::StoredOnly) takes the same path as this tick.
    let ticked = tokio::time::timeout(Duration::from_secs(5), tick(&q)).await;
    let fresh_status = outcome(&q.db.pool, fresh).await.0;
    drop_login(&q, &ops, operator).await;
    assert!(
        ticked.is_ok() && fresh_status == "created",
        "the worker waits on the operator's lock noting the candidate ({}); someone else's new request is {fresh_status}",
        if ticked.is_ok() {
            "it ended"
        } else {
            "still blocked after 5 s"
        }
    );
}

#[tokio::test]
async fn a_project_another_session_is_linking_is_answered_as_taken_however_long_that_session_takes_whatever_timeout_the_database_sets()
 {
    use sqlx::Connection;
    let q = queue(0).await;
    // Whatever the database sets for its sessions (here a lock timeout shorter than the wait).
    let database =
        q.db.url
            .rsplit('/')
            .next()
            .expect("a database name")
            .to_owned();
    sqlx::query(&format!(
        "alter database \"{database}\" set lock_timeout = '1s'"
    ))
    .execute(&q.db.pool)
    .await
    .expect("a database-wide lock timeout");
    let pool = PgPool::connect(&q.db.url)
        .await
        .expect("a pool of new sessions");
    let (timeout,): (String,) = sqlx::query_as("show lock_timeout")
        .fetch_one(&pool)
        .await
        .expect("show");
    assert_eq!(timeout, "1s");
    // Each way of waiting for a request's row: only the wait for the row itself is bounded,
    // never the wait for another session's uncommitted link of the same project.
    for wait in [store::RowWait::UntilFree, store::RowWait::Bounded] {
        let name = format!("Linked elsewhere {wait:?}");
        let other_request = seed(&q.db.pool, &name, "unknown", "null").await;
        let ours = seed(&q.db.pool, &name, "creating", "now() + interval '1 hour'").await;
        let (attempt,): (String,) =
            sqlx::query_as("select attempt_id::text from openai.project_requests where id = $1")
                .bind(ours)
                .fetch_one(&q.db.pool)
                .await
                .expect("attempt");
        let project = q.emulator.create(&name);
        let raw = q
            .deps
            .client
            .retrieve_project_raw(&project.id)
            .await
            .expect("the project's JSON");
        // Another session links the project to the other request and takes its time.
        let mut other = sqlx::PgConnection::connect(&q.db.url)
            .await
            .expect("connect");
        sqlx::query("begin")
            .execute(&mut other)
            .await
            .expect("begin");
        sqlx::query(
            "update openai.project_requests set status = 'created', project_id = $2, \
                lease_until = null, finished_at = now() where id = $1",
        )
        .bind(other_request)
        .bind(&project.id)
        .execute(&mut other)
        .await
        .expect("the other session links the project");
        let finishing = {
            let (pool, id) = (pool.clone(), project.id.clone());
            tokio::spawn(async move {
                store::finish_created(&pool, ours, &attempt, &id, &raw, wait).await
            })
        };
        eventually("our write has waited past the row's bound", || {
            a_lock_wait_outlasted_the_bound(&q.db.pool)
        })
        .await;
        sqlx::query("commit")
            .execute(&mut other)
            .await
            .expect("commit");

        let finished = finishing.await.expect("join");
        assert!(
            matches!(finished, Ok(store::Linked::ProjectTaken)),
            "{wait:?}: a wait for another session's link ended {finished:?}, not as the project taken"
        );
    }
}

#[tokio::test]
async fn a_request_left_locked_keeps_its_project_from_a_same_name_request_settled_in_the_same_pass()
{
    let q = queue(0).await;
    let (ops, mut operator) = ops_login(&q, "ops_peer").await;
    // Two requests of one name whose creates were lost a minute ago; one project of that name
    // has appeared since, and a walk stored it: a lone candidate for each.
    let theirs = seed(&q.db.pool, "Shared name", "unknown", "null").await;
    let peer = seed(&q.db.pool, "Shared name", "unknown", "null").await;
    owned_by(&q.db.pool, theirs, &ops).await;
    q.emulator.create("Shared name");
    sync(&sync_deps(&q.db, q.deps.client.clone(), 100)).await;
    hold_for_share(&mut operator, theirs).await;

    let ticked = tokio::time::timeout(Duration::from_secs(10), tick(&q)).await;
    let peer_outcome = outcome(&q.db.pool, peer).await;
    drop_login(&q, &ops, operator).await;

    assert!(ticked.is_ok(), "the tick waited on the operator's lock");
    assert_eq!(
        peer_outcome.0, "unknown",
        "a request of the same name settled while the first was locked: {peer_outcome:?}"
    );
}

#[tokio::test]
async fn a_lease_renewed_before_sending_counts_from_when_the_row_was_free_not_from_the_wait() {
    use sqlx::Connection;
    let q = queue(0).await;
    let id = request(&q.db.pool, "Renewed late").await;
    let now = store::database_now(&q.db.pool).await.expect("now");
    let claimed = store::claim_next_request(&q.db.pool, q.deps.lease, now)
        .await
        .expect("claim")
        .expect("the request is claimed");
    let attempt = claimed.attempt_id.clone().expect("an attempt");
    // Someone holds the row while the attempt renews its lease just before sending.
    let mut other = sqlx::PgConnection::connect(&q.db.url)
        .await
        .expect("connect");
    hold_for_share(&mut other, id).await;
    let renewing = {
        let pool = q.db.pool.clone();
        tokio::spawn(async move {
            store::renew_lease_before_sending(&pool, id, &attempt, Duration::from_secs(3)).await
        })
    };
    eventually("the renewal has waited for the row", || {
        a_lock_wait_outlasted_the_bound(&q.db.pool)
    })
    .await;
    sqlx::query("rollback")
        .execute(&mut other)
        .await
        .expect("let go");
    let renewed = renewing.await.expect("join").expect("renew");

    let (left,): (f64,) = sqlx::query_as(
        "select extract(epoch from lease_until - clock_timestamp())::float8 \
         from openai.project_requests where id = $1",
    )
    .bind(id)
    .fetch_one(&q.db.pool)
    .await
    .expect("lease");
    assert!(renewed, "the attempt still owns its request");
    assert!(
        left > 2.0,
        "the lease of a create about to be sent has {left:.1} s left of 3 s: the wait came off it"
    );
}
