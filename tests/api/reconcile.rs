//! Settling unknown outcomes against a server that uses the spec's freedoms: never a second
//! project, and "could not confirm" never read as "nothing was made".

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use openai_project_sync::emulator::{
    Endpoint, Fault, FaultRates, FaultRule, Freedoms, GeographyAnswer, LostAs,
};
use openai_project_sync::store::{self, ClaimedRequest};
use openai_project_sync::worker::{self, WorkerDeps};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::helpers::{TEST_KEY, client_with, eventually, row_identities, sync, sync_deps};
use crate::requests::{Queue, outcome, queue, request, settle, tick, upstream_named};

fn lose_next_create(q: &Queue) {
    q.emulator.push_fault(FaultRule {
        endpoint: Endpoint::Create,
        skip: 0,
        times: Some(1),
        fault: Fault::LostResponse {
            then: LostAs::ServerError,
        },
    });
}

/// A request named `name` whose first attempt began `began` ago (an interval) and whose outcome
/// became unknown `unknown_for` ago; returns its id.
async fn unknown_request(pool: &PgPool, name: &str, began: &str, unknown_for: &str) -> i64 {
    let (id,): (i64,) = sqlx::query_as(
        "insert into openai.project_requests (name, status, attempts, attempt_id, attempt_started_at, \
            unknown_since, candidates_since, error) \
         values ($1, 'unknown', 1, gen_random_uuid(), now() - $2::interval, now() - $3::interval, \
            now() - $2::interval, 'the create may have reached the API') \
         returning id",
    )
    .bind(name)
    .bind(began)
    .bind(unknown_for)
    .fetch_one(pool)
    .await
    .expect("an unknown request");
    id
}

/// Creates land `ms` after they arrive, whatever the caller does meanwhile.
fn creates_land_after(q: &Queue, ms: u64) {
    q.emulator.set_rates(
        Endpoint::Create,
        FaultRates {
            latency_ms: ms,
            ..FaultRates::default()
        },
    );
}

async fn insert(pool: &PgPool, sql: &str) -> i64 {
    let (id,): (i64,) = sqlx::query_as(sql)
        .fetch_one(pool)
        .await
        .expect("insert a request");
    id
}

async fn status_of(pool: &PgPool, id: i64) -> String {
    outcome(pool, id).await.0
}

#[tokio::test]
async fn a_lost_answer_ends_with_exactly_one_project_whatever_the_request_asks() {
    let cases = [
        ("Lost plain", "(name) values ('Lost plain')"),
        (
            "Lost geography",
            "(name, geography) values ('Lost geography', 'EU')",
        ),
        (
            "Lost residency",
            "(name, residency) values ('Lost residency', 'EU_STORAGE_PROCESSING')",
        ),
        (
            "Lost key",
            "(name, external_key_id) values ('Lost key', 'key_placeholder')",
        ),
    ];
    for answer in [GeographyAnswer::NewVocabulary, GeographyAnswer::Omitted] {
        for (name, columns) in cases {
            let q = queue(20).await;
            q.emulator.set_freedoms(Freedoms {
                geography_answer: answer,
                ..Freedoms::hostile()
            });
            lose_next_create(&q);
            let id = insert(
                &q.db.pool,
                &format!("insert into openai.project_requests {columns} returning id"),
            )
            .await;

            let (status, project_id, error) = settle(&q, id).await;

            let case = format!("{name}, geography answered {answer:?}");
            assert_eq!(status, "created", "{case}: {error:?}");
            assert_eq!(upstream_named(&q.emulator, name), 1, "{case}: one project");
            assert_eq!(q.emulator.stats().create_calls, 1, "{case}: one create");
            assert!(
                project_id.is_some_and(|p| q.emulator.project(&p).is_some()),
                "{case}: the linked project exists"
            );
        }
    }
}

#[tokio::test]
async fn a_create_that_lands_after_the_client_gave_up_is_adopted_never_repeated_with_the_default_grace()
 {
    let mut q = queue(10).await;
    q.deps.reconcile_grace = Duration::from_secs(300);
    q.deps.client = client_with(&q.emulator.base_url(), TEST_KEY, Duration::from_millis(300));
    creates_land_after(&q, 1_500);
    let id = request(&q.db.pool, "Lands late").await;

    tick(&q).await;
    assert_eq!(status_of(&q.db.pool, id).await, "unknown");
    let report = tick(&q).await;
    assert_eq!(
        report.walks, 1,
        "one walk as soon as the outcome is unknown, too early to find it"
    );
    eventually("the create lands upstream", || async {
        upstream_named(&q.emulator, "Lands late") == 1
    })
    .await;
    for _ in 0..5 {
        tick(&q).await;
    }
    assert_eq!(
        status_of(&q.db.pool, id).await,
        "unknown",
        "within the grace no conclusion is drawn"
    );
    // The scheduled walk stores the project; the next tick finds it without walking itself, but
    // adopts it only once the grace has passed: until then it may be someone else's.
    q.emulator.clear_faults();
    sync(&sync_deps(&q.db, q.deps.client.clone(), 100)).await;
    let within = tick(&q).await;
    sqlx::query(
        "update openai.project_requests set unknown_since = unknown_since - interval '300 seconds' where id = $1",
    )
    .bind(id)
    .execute(&q.db.pool)
    .await
    .expect("the grace has passed");
    let report = tick(&q).await;

    assert_eq!((within.adopted, report.adopted), (0, 1));
    assert_eq!(status_of(&q.db.pool, id).await, "created");
    assert_eq!(q.emulator.stats().create_calls, 1);
    assert_eq!(upstream_named(&q.emulator, "Lands late"), 1);
}

#[tokio::test]
async fn a_create_that_lands_after_the_grace_since_the_attempt_began_is_still_found_with_a_short_grace()
 {
    // The attempt times out after 1 s and its project lands at 2.2 s. A grace of 2 s counted
    // from the attempt's start would have concluded "nothing" at 2 s and created again.
    let mut q = queue(10).await;
    q.deps.reconcile_grace = Duration::from_secs(2);
    q.deps.lease = Duration::from_secs(10);
    q.deps.client = client_with(&q.emulator.base_url(), TEST_KEY, Duration::from_secs(1));
    creates_land_after(&q, 2_200);
    let id = request(&q.db.pool, "Lands after the grace").await;

    let (status, _, error) = settle(&q, id).await;

    assert_eq!(status, "created", "{error:?}");
    assert_eq!(q.emulator.stats().create_calls, 1);
    assert_eq!(upstream_named(&q.emulator, "Lands after the grace"), 1);
}

#[tokio::test]
async fn a_same_name_project_that_does_not_fit_ends_failed_naming_it_and_is_never_created_again() {
    let q = queue(10).await;
    q.emulator.push_fault(FaultRule {
        endpoint: Endpoint::Create,
        skip: 0,
        times: Some(1),
        fault: Fault::Drop,
    });
    let id = insert(
        &q.db.pool,
        "insert into openai.project_requests (name, external_key_id) values ('Keyed', 'key_ours') returning id",
    )
    .await;
    tick(&q).await;
    assert_eq!(status_of(&q.db.pool, id).await, "unknown");
    let theirs: serde_json::Value = reqwest::Client::new()
        .post(format!("http://{}/_emulator/projects", q.emulator.addr()))
        .bearer_auth(TEST_KEY)
        .json(&serde_json::json!({"name": "Keyed", "external_key_id": "key_theirs"}))
        .send()
        .await
        .expect("create behind the back")
        .json()
        .await
        .expect("the project");
    let theirs = theirs["id"].as_str().expect("an id").to_owned();

    let (status, project_id, error) = settle(&q, id).await;

    assert_eq!((status.as_str(), project_id), ("failed", None));
    let error = error.unwrap_or_default();
    assert!(
        error.starts_with("could not tell") && error.contains(&theirs),
        "{error}"
    );
    assert!(!error.contains("insert a new request"), "{error}");
    assert_eq!(q.emulator.stats().create_calls, 1, "never a second create");
    let (next_step,): (String,) =
        sqlx::query_as("select next_step from openai.project_request_status where id = $1")
            .bind(id)
            .fetch_one(&q.db.pool)
            .await
            .expect("status view");
    assert!(next_step.contains("candidate"), "{next_step}");
}

#[tokio::test]
async fn two_fitting_candidates_end_failed_naming_both_and_nothing_is_created_again() {
    let q = queue(10).await;
    lose_next_create(&q);
    let id = request(&q.db.pool, "Twice made").await;
    tick(&q).await;
    let other = q.emulator.create("Twice made");

    let (status, _, error) = settle(&q, id).await;

    assert_eq!(status, "failed");
    let error = error.unwrap_or_default();
    let ours = q
        .emulator
        .projects()
        .into_iter()
        .find(|p| p.name.as_deref() == Some("Twice made") && p.id != other.id)
        .expect("the lost create landed");
    assert!(
        error.contains(&other.id) && error.contains(&ours.id),
        "{error}"
    );
    assert_eq!(q.emulator.stats().create_calls, 1);
}

#[tokio::test]
async fn an_adopted_archived_project_gets_the_two_versions_a_walk_gives_it_and_the_next_walk_writes_nothing()
 {
    let q = queue(10).await;
    lose_next_create(&q);
    let id = request(&q.db.pool, "Archived before adoption").await;
    tick(&q).await;
    let made = q
        .emulator
        .projects()
        .into_iter()
        .find(|p| p.name.as_deref() == Some("Archived before adoption"))
        .expect("the lost create landed");
    eventually("a second has passed since the create", || async {
        chrono::Utc::now().timestamp() > made.created_at
    })
    .await;
    q.emulator.archive(&made.id);

    let (status, project_id, _) = settle(&q, id).await;

    assert_eq!(
        (status.as_str(), project_id.as_deref()),
        ("created", Some(made.id.as_str()))
    );
    let changes: Vec<(String,)> = sqlx::query_as(
        "select change from openai.project_changes where project_id = $1 order by changed_at",
    )
    .bind(&made.id)
    .fetch_all(&q.db.pool)
    .await
    .expect("changes");
    assert_eq!(
        changes,
        vec![("created".to_owned(),), ("archived".to_owned(),)]
    );
    let before = row_identities(&q.db.pool, Some(&made.id)).await;
    let summary = sync(&sync_deps(&q.db, q.deps.client.clone(), 100)).await;
    assert_eq!(summary.counts.changed, 0);
    assert_eq!(row_identities(&q.db.pool, Some(&made.id)).await, before);
}

static PANICKED: AtomicBool = AtomicBool::new(false);

fn panic_once(request: &ClaimedRequest) {
    if request.name == "Panics once" && !PANICKED.swap(true, Ordering::SeqCst) {
        panic!("injected by the test");
    }
}

#[tokio::test]
async fn a_worker_panic_is_recorded_on_its_request_which_still_ends_with_one_project() {
    let mut q = queue(5).await;
    q.deps.before_create = Some(panic_once);
    let panics = request(&q.db.pool, "Panics once").await;
    let calm = request(&q.db.pool, "Calm neighbour").await;

    tick(&q).await;

    let (status, _, error) = outcome(&q.db.pool, panics).await;
    assert_eq!(status, "unknown");
    assert!(
        error
            .as_deref()
            .is_some_and(|e| e.contains("panic: injected by the test")),
        "{error:?}"
    );
    assert_eq!(
        status_of(&q.db.pool, calm).await,
        "created",
        "the worker went on"
    );
    let (status, _, error) = settle(&q, panics).await;
    assert_eq!(status, "created", "{error:?}");
    assert_eq!(upstream_named(&q.emulator, "Panics once"), 1);
    assert_eq!(q.emulator.stats().create_calls, 2, "one each");
}

#[tokio::test]
async fn two_replicas_racing_on_same_name_requests_never_link_one_project_twice_or_make_a_second() {
    let q = queue(0).await;
    q.emulator.set_rates(
        Endpoint::Create,
        FaultRates {
            latency_ms: 5,
            lost_response: 0.4,
            ..FaultRates::default()
        },
    );
    sqlx::query(
        "insert into openai.project_requests (name, allow_duplicate_name) \
         select 'Same name', true from generate_series(1, 12)",
    )
    .execute(&q.db.pool)
    .await
    .expect("insert");
    let other = WorkerDeps {
        pool: sqlx::PgPool::connect(&q.db.url).await.expect("second pool"),
        ..q.deps.clone()
    };
    let stop = CancellationToken::new();

    eventually("every request ends", || async {
        let (a, b) = tokio::join!(worker::tick(&q.deps, &stop), worker::tick(&other, &stop));
        a.expect("replica a");
        b.expect("replica b");
        let (open,): (i64,) = sqlx::query_as(
            "select count(*) from openai.project_requests where status not in ('created', 'failed')",
        )
        .fetch_one(&q.db.pool)
        .await
        .expect("count");
        open == 0
    })
    .await;

    let (created, linked, distinct, failed_for_a_person): (i64, i64, i64, i64) = sqlx::query_as(
        "select count(*) filter (where status = 'created'), count(project_id), count(distinct project_id), \
                count(*) filter (where status = 'failed' and error like 'could not tell%') \
         from openai.project_requests",
    )
    .fetch_one(&q.db.pool)
    .await
    .expect("count");
    assert_eq!(linked, distinct, "no project linked twice");
    assert_eq!(
        created + failed_for_a_person,
        12,
        "every request created or for a person"
    );
    let stats = q.emulator.stats();
    assert_eq!(
        stats.projects_created, stats.create_calls,
        "every create landed (lost answers included)"
    );
    assert_eq!(stats.create_calls, 12, "no request was created twice");
}

#[tokio::test]
async fn names_that_cannot_be_compared_safely_are_refused_at_insert_with_the_reason() {
    let q = queue(0).await;
    let cases = [
        ("Cafe\u{301} ops", "request_name_is_not_nfc_normalized"),
        ("Pay\u{200B}ments", "request_name_has_zero_width_characters"),
        ("\u{3000}Payments", "request_name_has_surrounding_spaces"),
        ("Payments\u{00A0}", "request_name_has_surrounding_spaces"),
        ("\u{2003}", "request_name_is_blank"),
    ];
    for (name, constraint) in cases {
        let refused = sqlx::query("insert into openai.project_requests (name) values ($1)")
            .bind(name)
            .execute(&q.db.pool)
            .await
            .expect_err("refused");
        let refused_by = refused
            .as_database_error()
            .and_then(|e| e.constraint())
            .unwrap_or_default()
            .to_owned();
        assert_eq!(refused_by, constraint, "{name:?}");
    }
    request(&q.db.pool, "Café  ops, two spaces inside").await;
}

#[tokio::test]
async fn the_database_and_the_worker_compare_names_the_same_way() {
    let q = queue(0).await;
    let names = [
        "Café Ops",
        "Cafe\u{301}  Ops",
        "\u{3000}Zürich\u{200B}\tTeam\u{00A0}",
        "数据平台 Search 7",
        "🚀 launch\u{200D}",
        "  ",
        "O'Brien's \"Labs\"",
        "a\u{2028}b\u{205F}c",
        "Pay\u{200E}ments \u{2066}EU\u{2069}\u{00AD}\u{202E}x\u{2064}",
    ];
    for name in names {
        let in_sql = store::comparable_name(&q.db.pool, name)
            .await
            .expect("sql")
            .unwrap_or_default();
        assert_eq!(in_sql, worker::comparable_name(name), "{name:?}");
    }
}

#[tokio::test]
async fn a_new_row_is_claimed_while_reconciliation_walks_a_large_organization_and_shutdown_cancels_the_walk()
 {
    let q = queue(3_000).await;
    q.emulator.set_rates(
        Endpoint::List,
        FaultRates {
            latency_ms: 200,
            ..FaultRates::default()
        },
    );
    let mut deps = q.deps.clone();
    deps.page_size = 100;
    lose_next_create(&q);
    let unknown = request(&q.db.pool, "Settled by a slow walk").await;
    let stop = CancellationToken::new();
    let daemon_worker = tokio::spawn(worker::run(deps, Duration::from_millis(100), stop.clone()));
    eventually(
        "the first request is unknown and a walk is under way",
        || async {
            status_of(&q.db.pool, unknown).await == "unknown" && q.emulator.stats().list_calls > 0
        },
    )
    .await;

    let fresh = request(&q.db.pool, "Inserted during the walk").await;
    eventually("the new row is created", || async {
        status_of(&q.db.pool, fresh).await == "created"
    })
    .await;

    assert!(
        q.emulator.stats().list_calls < 30,
        "created before the 30-page walk ended ({} pages listed)",
        q.emulator.stats().list_calls
    );
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(3), daemon_worker)
        .await
        .expect("the worker stops without finishing the walk")
        .expect("the worker task");
    assert!(q.emulator.stats().list_calls < 30, "the walk was abandoned");
}

#[tokio::test]
async fn a_listing_that_lags_the_create_gets_no_second_project() {
    let mut q = queue(20).await;
    q.deps.reconcile_grace = Duration::from_secs(2);
    q.emulator.set_freedoms(Freedoms {
        list_lag_ms: 1_500,
        ..Freedoms::hostile()
    });
    lose_next_create(&q);
    let id = request(&q.db.pool, "Listed late").await;

    let (status, _, error) = settle(&q, id).await;

    assert_eq!(status, "created", "{error:?}");
    assert_eq!(q.emulator.stats().create_calls, 1);
    assert_eq!(upstream_named(&q.emulator, "Listed late"), 1);
}

#[tokio::test]
async fn a_project_whose_name_the_server_stored_in_another_form_is_still_the_requests() {
    let q = queue(20).await;
    q.emulator.set_freedoms(Freedoms {
        rewrite_names: true,
        ..Freedoms::hostile()
    });
    lose_next_create(&q);
    let asked = "Café  Ops\u{3000}Zürich";
    let id = request(&q.db.pool, asked).await;

    let (status, project_id, error) = settle(&q, id).await;

    assert_eq!(status, "created", "{error:?}");
    assert_eq!(q.emulator.stats().create_calls, 1);
    let stored = q
        .emulator
        .project(&project_id.expect("linked"))
        .and_then(|p| p.name)
        .expect("a name upstream");
    assert_ne!(stored, asked, "the server did store another form");
    assert_eq!(
        worker::comparable_name(&stored),
        worker::comparable_name(asked)
    );
}

#[tokio::test]
async fn a_retry_is_never_sent_while_a_project_from_an_earlier_attempt_is_stored() {
    for rewrite_names in [false, true] {
        let q = queue(5).await;
        q.emulator.set_freedoms(Freedoms {
            rewrite_names,
            ..Freedoms::hostile()
        });
        // Lands long after the grace: two walks find nothing and the request is put back.
        creates_land_after(&q, 2_500);
        let id = request(&q.db.pool, "Café  Retry").await;
        eventually(
            "two fruitless walks put the request back to pending",
            || async {
                tick(&q).await;
                status_of(&q.db.pool, id).await == "pending"
            },
        )
        .await;
        q.emulator.clear_faults();
        eventually("the first attempt's create lands", || async {
            q.emulator.projects().len() == 6
        })
        .await;
        // The scheduled walk stores it before the retry is claimed.
        sync(&sync_deps(&q.db, q.deps.client.clone(), 100)).await;

        let (status, project_id, error) = settle(&q, id).await;

        let case = format!("names rewritten: {rewrite_names}");
        assert_eq!(
            q.emulator.stats().create_calls,
            1,
            "{case}: never a second create"
        );
        assert_eq!(status, "created", "{case}: {error:?}");
        assert!(
            project_id.is_some_and(|p| q.emulator.project(&p).is_some()),
            "{case}"
        );
    }
}

#[tokio::test]
async fn a_create_answered_409_is_looked_up_not_ended_as_refused() {
    let q = queue(5).await;
    q.emulator.push_fault(FaultRule {
        endpoint: Endpoint::Create,
        skip: 0,
        times: Some(1),
        fault: Fault::ServerError { status: 409 },
    });
    let id = request(&q.db.pool, "Conflicted").await;

    tick(&q).await;

    assert_eq!(status_of(&q.db.pool, id).await, "unknown");
}

#[tokio::test]
async fn a_project_the_queue_created_that_the_list_does_not_show_yet_is_not_marked_vanished() {
    let q = queue(20).await;
    let deps = sync_deps(&q.db, q.deps.client.clone(), 100);
    sync(&deps).await;
    q.emulator.set_freedoms(Freedoms {
        list_lag_ms: 60_000,
        ..Freedoms::hostile()
    });
    let id = request(&q.db.pool, "Not listed yet").await;
    tick(&q).await;
    assert_eq!(status_of(&q.db.pool, id).await, "created");

    let walk = sync(&deps).await;

    assert_eq!(walk.counts.vanished, 0);
}

static PAUSED_BEFORE_SENDING: AtomicBool = AtomicBool::new(false);
static RESUME_SENDING: AtomicBool = AtomicBool::new(false);

/// Holds the first create of "Paused before sending" until the test lets it go, as a process
/// stopped between its claim and its call (SIGSTOP, a frozen VM, a long stall) would be.
fn pause_before_sending(request: &ClaimedRequest) {
    if request.name != "Paused before sending" || PAUSED_BEFORE_SENDING.swap(true, Ordering::SeqCst)
    {
        return;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !RESUME_SENDING.load(Ordering::SeqCst) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[tokio::test]
async fn a_replica_stalled_between_its_claim_and_its_create_past_its_lease_sends_no_second_create()
{
    let mut q = queue(5).await;
    q.deps.lease = Duration::from_secs(1);
    let id = request(&q.db.pool, "Paused before sending").await;
    // The stalled replica is a process of its own: a runtime, a pool and connections of its own.
    let (url, deps) = (q.db.url.clone(), q.deps.clone());
    let stalled_replica = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        runtime.block_on(async move {
            let stalled = WorkerDeps {
                pool: sqlx::PgPool::connect(&url).await.expect("own pool"),
                client: deps.client.with_own_connections().expect("own client"),
                before_create: Some(pause_before_sending),
                ..deps
            };
            worker::tick(&stalled, &CancellationToken::new())
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
    });
    eventually("the stalled replica has claimed the request", || async {
        PAUSED_BEFORE_SENDING.load(Ordering::SeqCst)
    })
    .await;

    // Another replica: the lease runs out, two walks find nothing, the request is tried again.
    let (status, _, error) = settle(&q, id).await;
    assert_eq!(status, "created", "{error:?}");
    RESUME_SENDING.store(true, Ordering::SeqCst);
    let stalled = tokio::task::spawn_blocking(move || stalled_replica.join())
        .await
        .expect("join")
        .expect("the stalled replica's thread");
    stalled.expect("the stalled replica's tick");

    assert_eq!(
        upstream_named(&q.emulator, "Paused before sending"),
        1,
        "the stalled attempt, whose lease had run out, sent its create after all"
    );
    assert_eq!(q.emulator.stats().create_calls, 1);
}

#[tokio::test]
async fn a_same_name_project_appearing_while_our_create_is_still_landing_is_not_adopted_in_its_place()
 {
    let mut q = queue(10).await;
    q.deps.reconcile_grace = Duration::from_secs(3);
    q.deps.client = client_with(&q.emulator.base_url(), TEST_KEY, Duration::from_millis(300));
    creates_land_after(&q, 1_500);
    let id = request(&q.db.pool, "Landing while another appears").await;
    tick(&q).await;
    assert_eq!(status_of(&q.db.pool, id).await, "unknown");
    // Someone else makes a project of the same name while ours is still on its way.
    let theirs = q.emulator.create("Landing while another appears");

    tick(&q).await;
    eventually("our create lands too", || async {
        upstream_named(&q.emulator, "Landing while another appears") == 2
    })
    .await;
    let (status, project_id, error) = settle(&q, id).await;

    let ours = q
        .emulator
        .projects()
        .into_iter()
        .find(|p| p.name.as_deref() == Some("Landing while another appears") && p.id != theirs.id)
        .expect("our create landed");
    let error = error.unwrap_or_default();
    assert!(
        project_id.as_deref() == Some(ours.id.as_str())
            || (status == "failed" && error.contains(&ours.id) && error.contains(&theirs.id)),
        "the request ended {status} with {project_id:?} ({error}): our own project {} is linked to \
         nothing, and the other one ({}) was taken as the request's",
        ours.id,
        theirs.id
    );
    assert_eq!(q.emulator.stats().create_calls, 1);
}

#[tokio::test]
async fn a_same_name_project_a_walk_stored_while_our_create_was_landing_is_not_adopted_once_the_grace_has_passed()
 {
    let mut q = queue(5).await;
    q.deps.reconcile_grace = Duration::from_secs(4);
    let name = "Stored while ours was landing";
    let id = unknown_request(&q.db.pool, name, "1 second", "0 seconds").await;
    // Someone else's project of the name, stored by a walk within the grace, before ours lands.
    let theirs = q.emulator.create(name);
    sync(&sync_deps(&q.db, q.deps.client.clone(), 100)).await;
    let ours = q.emulator.create(name);

    let (status, project_id, error) = settle(&q, id).await;

    let error = error.unwrap_or_default();
    assert!(
        project_id.as_deref() == Some(ours.id.as_str())
            || (status == "failed" && error.contains(&ours.id) && error.contains(&theirs.id)),
        "the request ended {status} with {project_id:?} ({error}): our own project {} is linked to \
         nothing, and the stored one ({}) was taken as the request's without a listing taken after \
         the grace",
        ours.id,
        theirs.id
    );
    assert_eq!(q.emulator.stats().create_calls, 0, "no create is sent");
}

#[tokio::test]
async fn a_request_put_back_after_an_unconfirmed_attempt_is_not_cancelled_as_if_nothing_was_made() {
    let mut q = queue(5).await;
    // Put back to pending, it stays there: its next attempt is an hour away.
    q.deps.retry_base_delay = Duration::from_secs(3_600);
    creates_land_after(&q, 2_500);
    let id = request(&q.db.pool, "Cancelled after a lost create").await;
    eventually(
        "two fruitless walks put the request back to pending",
        || async {
            tick(&q).await;
            status_of(&q.db.pool, id).await == "pending"
        },
    )
    .await;

    let cancelled =
        sqlx::query("update openai.project_requests set status = 'cancelled' where id = $1")
            .bind(id)
            .execute(&q.db.pool)
            .await;
    eventually("the first attempt's create lands", || async {
        upstream_named(&q.emulator, "Cancelled after a lost create") == 1
    })
    .await;

    let (status, next_step): (String, String) =
        sqlx::query_as("select status, next_step from openai.project_request_status where id = $1")
            .bind(id)
            .fetch_one(&q.db.pool)
            .await
            .expect("status view");
    assert!(
        cancelled.is_err() || !next_step.contains("nothing was created"),
        "cancelled: {cancelled:?}; the row is {status}: {next_step:?}, yet its first attempt made a project"
    );
}

#[tokio::test]
async fn names_holding_invisible_direction_marks_or_overrides_are_refused_at_insert() {
    let q = queue(0).await;
    // Each shows exactly as "Payments", or as a reordered spoof of it, and compares as another name.
    let names = [
        "Payments\u{200E}",
        "Pay\u{200F}ments",
        "Pay\u{202E}stnem",
        "Pay\u{2066}ments\u{2069}",
        "Pay\u{2061}ments",
    ];
    let mut accepted = Vec::new();
    for name in names {
        let refused = sqlx::query("insert into openai.project_requests (name) values ($1)")
            .bind(name)
            .execute(&q.db.pool)
            .await;
        if refused.is_ok() {
            accepted.push(name.escape_unicode().to_string());
        }
    }
    assert!(accepted.is_empty(), "accepted at insert: {accepted:?}");
}

#[tokio::test]
#[ignore = "open: Postgres 15 normalizes with Unicode 14 tables and the worker with Unicode 16; \
            each look-up is consistent in itself, but a near-match in a script added since is a \
            candidate in the list walk and not in the stored look-up"]
async fn the_database_and_the_worker_compare_names_of_recent_unicode_the_same_way() {
    let q = queue(0).await;
    // Kirat Rai and Tulu-Tigalari vowel signs written as the two signs they compose from.
    let names = [
        "Team \u{16D63}\u{16D67}",
        "Team \u{16D67}\u{16D67}",
        "Team \u{113C2}\u{113C2}",
    ];
    for name in names {
        let in_sql = store::comparable_name(&q.db.pool, name)
            .await
            .expect("sql")
            .unwrap_or_default();
        assert_eq!(
            in_sql.escape_unicode().to_string(),
            worker::comparable_name(name).escape_unicode().to_string(),
            "{}",
            name.escape_unicode()
        );
    }
}

#[tokio::test]
async fn a_new_row_is_created_within_seconds_while_the_project_an_audit_event_names_cannot_be_read()
{
    use openai_project_sync::audit_log::{self, AuditDeps};
    use openai_project_sync::config::AuditLogEnabled;

    let mut q = queue(5).await;
    q.deps.client = client_with(
        &q.emulator.base_url(),
        TEST_KEY,
        Duration::from_millis(1_500),
    );
    let audit = AuditDeps {
        pool: q.db.pool.clone(),
        client: q.deps.client.clone(),
        enabled: AuditLogEnabled::Auto,
        overlap: Duration::from_secs(3600),
    };
    // An answered create teaches the daemon its own key; the next create's answer is lost.
    let known = request(&q.db.pool, "Answered create").await;
    tick(&q).await;
    assert_eq!(status_of(&q.db.pool, known).await, "created");
    lose_next_create(&q);
    let lost = request(&q.db.pool, "Lost, named by its event").await;
    tick(&q).await;
    assert_eq!(status_of(&q.db.pool, lost).await, "unknown");
    audit_log::pass(&audit, "manual")
        .await
        .expect("an audit pass");
    // Retrieving that project now hangs, as a slow or stuck server would.
    q.emulator.push_fault(FaultRule {
        endpoint: Endpoint::Retrieve,
        skip: 0,
        times: None,
        fault: Fault::Hang,
    });
    let stop = CancellationToken::new();
    let daemon_worker = tokio::spawn(worker::run(
        q.deps.clone(),
        Duration::from_millis(100),
        stop.clone(),
    ));
    eventually("the worker is retrieving the event's project", || async {
        q.emulator.stats().retrieve_calls > 0
    })
    .await;

    let fresh = request(&q.db.pool, "Inserted while a retrieve hangs").await;
    let created_in_time = tokio::time::timeout(Duration::from_secs(2), async {
        while status_of(&q.db.pool, fresh).await != "created" {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    stop.cancel();
    daemon_worker.abort();

    assert!(
        created_in_time.is_ok(),
        "the new row waited behind the retrieve: still {} after 2 s",
        status_of(&q.db.pool, fresh).await
    );
}

#[tokio::test]
async fn a_project_already_stored_before_the_attempt_began_is_never_adopted_as_its_result() {
    let q = queue(5).await;
    // A person made "Twin" a minute ago and a walk stored it; ops ask for a second "Twin".
    let theirs = q.emulator.create("Twin");
    sync(&sync_deps(&q.db, q.deps.client.clone(), 100)).await;
    // The create fails with a 500 before it takes effect: no project is made.
    q.emulator.push_fault(FaultRule {
        endpoint: Endpoint::Create,
        skip: 0,
        times: Some(1),
        fault: Fault::ServerError { status: 500 },
    });
    let id = insert(
        &q.db.pool,
        "insert into openai.project_requests (name, allow_duplicate_name) values ('Twin', true) returning id",
    )
    .await;

    let (status, project_id, error) = settle(&q, id).await;

    assert_ne!(
        project_id.as_deref(),
        Some(theirs.id.as_str()),
        "the request ended {status} with the project that existed before it ({error:?})"
    );
}

#[tokio::test]
async fn a_listed_project_holding_a_number_beyond_any_float_is_still_a_candidate() {
    // A field the spec does not name, holding a number serde's floats cannot: the list is read,
    // and that project must still count, by its name, as the lost create's candidate.
    let mut q = queue(0).await;
    let created_at = chrono::Utc::now().timestamp() - 30;
    let page: &'static str = Box::leak(
        format!(
            r#"{{"object":"list","data":[
            {{"id":"proj_vast","object":"organization.project","name":"Vast field","created_at":{created_at},"status":"active","spend_limit":1e400}}
            ],"first_id":"proj_vast","last_id":"proj_vast","has_more":false}}"#
        )
        .into_boxed_str(),
    );
    let creates = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = creates.clone();
    let app = axum::Router::new().route(
        "/v1/organization/projects",
        axum::routing::get(move || async move {
            (
                [(axum::http::header::CONTENT_TYPE, "application/json")],
                page,
            )
        })
        .post(move || {
            let counted = counted.clone();
            async move {
                counted.fetch_add(1, Ordering::SeqCst);
                (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "{}")
            }
        }),
    );
    q.deps.client = crate::client::serve_scripted(app).await;
    // Its create was lost a minute ago; the project it made is listed, not stored yet.
    let id = unknown_request(&q.db.pool, "Vast field", "1 minute", "1 minute").await;

    eventually("the request leaves unknown", || async {
        tick(&q).await;
        status_of(&q.db.pool, id).await != "unknown"
    })
    .await;
    for _ in 0..3 {
        tick(&q).await;
    }

    let (status, _, error) = outcome(&q.db.pool, id).await;
    assert_eq!(
        creates.load(Ordering::SeqCst),
        0,
        "a second create was sent for a request whose project is listed; it is now {status} ({error:?})"
    );
}

#[tokio::test]
async fn a_lone_candidate_found_within_the_grace_is_not_walked_for_again_at_every_tick() {
    // The outcome became unknown just now; a same-name project is listed but not stored yet.
    let mut q = queue(20).await;
    q.deps.reconcile_grace = Duration::from_secs(300);
    q.emulator.create("Waiting out the grace");
    unknown_request(
        &q.db.pool,
        "Waiting out the grace",
        "10 seconds",
        "0 seconds",
    )
    .await;

    let mut walks = 0;
    for _ in 0..5 {
        walks += tick(&q).await.walks;
    }

    assert_eq!(
        walks, 1,
        "each tick within the grace walked the whole list again for the same lone candidate"
    );
}

#[tokio::test]
async fn a_project_listed_without_its_name_is_never_taken_for_no_project_at_all() {
    // The spec marks a project's name optional: a server may leave it out of every answer. The
    // project of a lost create then cannot be matched by its name, but that is no proof that
    // nothing was made: it goes to a person, never to a second create.
    let q = queue(5).await;
    q.emulator.set_freedoms(Freedoms {
        omit_names: true,
        ..Freedoms::hostile()
    });
    lose_next_create(&q);
    let id = request(&q.db.pool, "Shown without a name").await;

    let (status, project_id, error) = settle(&q, id).await;

    let error = error.unwrap_or_default();
    assert_eq!(
        q.emulator.stats().create_calls,
        1,
        "a second create: the request ended {status} with {project_id:?} ({error})"
    );
    assert_eq!(status, "failed", "{error}");
    assert!(error.contains("its name not shown"), "{error}");
}

#[tokio::test]
async fn a_lost_create_listed_without_its_name_is_adopted_once_the_audit_log_names_it_within_the_grace()
 {
    // The list leaves every name out; the audit log, the authoritative answer, names the create
    // a moment later. A nameless candidate tells nothing yet: within the grace the request waits
    // for the log, rather than going to a person at the first walk.
    use openai_project_sync::audit_log::{self, AuditDeps};
    use openai_project_sync::config::AuditLogEnabled;

    let mut q = queue(5).await;
    q.deps.reconcile_grace = Duration::from_secs(300);
    q.emulator.set_freedoms(Freedoms {
        omit_names: true,
        ..Freedoms::hostile()
    });
    let audit = AuditDeps {
        pool: q.db.pool.clone(),
        client: q.deps.client.clone(),
        enabled: AuditLogEnabled::Auto,
        overlap: Duration::from_secs(3600),
    };
    // An answered create, polled from the log, teaches the daemon its own key.
    let known = request(&q.db.pool, "Answered create").await;
    tick(&q).await;
    assert_eq!(status_of(&q.db.pool, known).await, "created");
    audit_log::pass(&audit, "manual")
        .await
        .expect("an audit pass");
    lose_next_create(&q);
    let lost = request(&q.db.pool, "Lost, listed without a name").await;
    tick(&q).await;

    // The reconciler walks before the audit log is polled again.
    tick(&q).await;
    let (early, _, early_error) = outcome(&q.db.pool, lost).await;
    audit_log::pass(&audit, "manual")
        .await
        .expect("an audit pass");
    tick(&q).await;
    let (status, project_id, error) = outcome(&q.db.pool, lost).await;

    assert_eq!(q.emulator.stats().create_calls, 2);
    assert_eq!(
        status, "created",
        "the request went to a person at the first walk ({early}: {early_error:?}) though the \
         audit log names its project; now {status} ({error:?})"
    );
    assert!(project_id.is_some());
}

#[tokio::test]
async fn a_nameless_project_another_request_is_still_creating_does_not_send_a_lost_create_to_a_person()
 {
    // "Alpha"'s create was lost; its project is listed with its name. "Beta" is being created
    // by another replica right now, and the server lists Beta's project without a name (the spec
    // lets it). Once Beta's answer links that project, Alpha has one fitting candidate.
    let mut q = queue(0).await;
    let created_at = chrono::Utc::now().timestamp() - 30;
    let page: &'static str = Box::leak(
        format!(
            r#"{{"object":"list","data":[
            {{"id":"proj_alpha","object":"organization.project","name":"Alpha","created_at":{created_at},"status":"active"}},
            {{"id":"proj_beta","object":"organization.project","created_at":{created_at},"status":"active"}}
            ],"first_id":"proj_alpha","last_id":"proj_beta","has_more":false}}"#
        )
        .into_boxed_str(),
    );
    q.deps.client = crate::client::serve_one_list_page(page).await;
    let alpha = unknown_request(&q.db.pool, "Alpha", "1 minute", "1 minute").await;
    let beta = insert(
        &q.db.pool,
        "insert into openai.project_requests (name, status, attempts, attempt_id, attempt_started_at, lease_until) \
         values ('Beta', 'creating', 1, gen_random_uuid(), now() - interval '1 minute', now() + interval '1 hour') \
         returning id",
    )
    .await;

    tick(&q).await;
    let (while_beta_in_flight, _, early_error) = outcome(&q.db.pool, alpha).await;
    // Beta's answer arrives: its project is linked to it.
    sqlx::query(
        "update openai.project_requests set status = 'created', project_id = 'proj_beta', \
            lease_until = null, finished_at = now() where id = $1",
    )
    .bind(beta)
    .execute(&q.db.pool)
    .await
    .expect("Beta is created");
    let (status, project_id, error) = settle(&q, alpha).await;

    assert_eq!(
        (status.as_str(), project_id.as_deref()),
        ("created", Some("proj_alpha")),
        "while Beta was being created Alpha became {while_beta_in_flight} ({early_error:?}); \
         now {status} ({error:?})"
    );
}
