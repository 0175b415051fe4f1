//! The walk into Postgres: completeness, history rules, atomicity, the guard, the lock.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use openai_project_sync::emulator::{
    EmulatorConfig, EmulatorHandle, Endpoint, Fault, FaultRates, FaultRule, ListOrder,
};
use openai_project_sync::store;
use openai_project_sync::sync::{SyncDeps, SyncError, Trigger, walk_and_apply};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::client::{scripted_list, scripted_project, serve_one_list_page, serve_scripted};
use crate::helpers::{
    TEST_KEY, TestDb, client_for, client_with, eventually, row_identities, start_emulator_with,
    sync, sync_deps,
};

pub struct Fixture {
    pub db: TestDb,
    pub emulator: EmulatorHandle,
    pub deps: SyncDeps,
}

pub async fn fixture_with(config: EmulatorConfig) -> Fixture {
    let db = TestDb::new().await;
    store::migrate(&db.pool).await.expect("migrations apply");
    let emulator = start_emulator_with(config).await;
    let deps = sync_deps(&db, client_for(&emulator), 100);
    Fixture { db, emulator, deps }
}

pub async fn fixture(projects: usize) -> Fixture {
    fixture_with(EmulatorConfig {
        admin_key: TEST_KEY.into(),
        projects,
        archived_ratio: 0.2,
        seed: 11,
        ..EmulatorConfig::default()
    })
    .await
}

fn ts(seconds: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(seconds, 0)
        .single()
        .expect("valid timestamp")
}

/// The current state per project id: (name, status, archived_at, missing).
type CurrentRow = (Option<String>, Option<String>, Option<DateTime<Utc>>, bool);

/// A row of `openai.projects` as read back: id first, then the `CurrentRow` fields.
type CurrentRecord = (
    String,
    Option<String>,
    Option<String>,
    Option<DateTime<Utc>>,
    bool,
);

/// A version as compared across list orders: id, change, name, validity.
type VersionRecord = (
    String,
    String,
    Option<String>,
    DateTime<Utc>,
    Option<DateTime<Utc>>,
);

/// The first project upstream, in creation order, whose status is `status`.
fn first_with_status(
    emulator: &EmulatorHandle,
    status: &str,
) -> openai_project_sync::emulator::EmulatedProject {
    emulator
        .projects()
        .into_iter()
        .find(|p| p.status.as_deref() == Some(status))
        .unwrap_or_else(|| panic!("an upstream project that is {status}"))
}

async fn current(pool: &PgPool) -> BTreeMap<String, CurrentRow> {
    let rows: Vec<CurrentRecord> = sqlx::query_as(
        "select project_id, name, status, archived_at, missing_since is not null from openai.projects",
    )
    .fetch_all(pool)
    .await
    .expect("read projects");
    rows.into_iter()
        .map(|(id, n, s, a, m)| (id, (n, s, a, m)))
        .collect()
}

/// The stored name of project `id`: `None` when the project is not stored.
async fn stored_name(pool: &PgPool, id: &str) -> Option<Option<String>> {
    current(pool).await.get(id).map(|r| r.0.clone())
}

/// The emulator's visible organization in the same shape.
fn upstream(emulator: &EmulatorHandle) -> BTreeMap<String, CurrentRow> {
    emulator
        .projects()
        .into_iter()
        .filter(|p| emulator.project(&p.id).is_some())
        .map(|p| (p.id, (p.name, p.status, p.archived_at.map(ts), false)))
        .collect()
}

/// Every project has exactly one open version and versions that meet end to start.
async fn assert_history_is_contiguous(pool: &PgPool) {
    let (gaps,): (i64,) = sqlx::query_as(
        "select count(*) from ( \
            select valid_to, lead(valid_from) over (partition by project_key order by valid_from) as next_from \
            from openai.project_versions) v \
         where v.next_from is not null and v.valid_to is distinct from v.next_from",
    )
    .fetch_one(pool)
    .await
    .expect("gap query");
    let (without_open,): (i64,) = sqlx::query_as(
        "select count(*) from openai.project_current c where not exists \
            (select 1 from openai.project_versions v where v.project_key = c.key and v.valid_to is null)",
    )
    .fetch_one(pool)
    .await
    .expect("open version query");
    assert_eq!(
        (gaps, without_open),
        (0, 0),
        "versions leave no gap and every project has an open version"
    );
}

async fn changes_of(
    pool: &PgPool,
    id: &str,
) -> Vec<(String, Option<String>, Option<String>, DateTime<Utc>)> {
    sqlx::query_as(
        "select change, old_name, new_name, changed_at from openai.project_changes \
         where project_id = $1 order by changed_at",
    )
    .bind(id)
    .fetch_all(pool)
    .await
    .expect("read changes")
}

/// Identity of every physical row of the two history tables; a rewrite changes it.
async fn run_rows(pool: &PgPool) -> Vec<(String, Option<String>)> {
    sqlx::query_as("select status, error from openai.sync_runs order by id")
        .fetch_all(pool)
        .await
        .expect("read runs")
}

#[tokio::test]
async fn every_project_of_a_multi_page_organization_lands_archived_ones_included() {
    let f = fixture(1_250).await;

    let summary = sync(&f.deps).await;

    assert_eq!(
        (
            summary.counts.pages,
            summary.counts.seen,
            summary.counts.inserted
        ),
        (13, 1_250, 1_250)
    );
    let stored = current(&f.db.pool).await;
    assert_eq!(stored, upstream(&f.emulator));
    let archived = stored
        .values()
        .filter(|r| r.1.as_deref() == Some("archived"))
        .count();
    assert!(
        archived > 150,
        "archived projects are synced too: {archived}"
    );
    let (raw_kept,): (bool,) = sqlx::query_as(
        "select bool_and(raw ? 'object' and raw ->> 'id' = project_id) from openai.projects",
    )
    .fetch_one(&f.db.pool)
    .await
    .expect("raw");
    assert!(raw_kept);
    assert_history_is_contiguous(&f.db.pool).await;
    assert_eq!(
        run_rows(&f.db.pool).await,
        vec![("succeeded".to_owned(), None)]
    );
}

#[tokio::test]
async fn first_versions_start_at_created_at_and_archives_at_archived_at() {
    let f = fixture(300).await;
    sync(&f.deps).await;
    let archived = first_with_status(&f.emulator, "archived");
    let active = first_with_status(&f.emulator, "active");

    let archived_history = changes_of(&f.db.pool, &archived.id).await;
    let active_history = changes_of(&f.db.pool, &active.id).await;

    assert_eq!(active_history.len(), 1);
    assert_eq!(
        (active_history[0].0.as_str(), active_history[0].3),
        ("created", ts(active.created_at))
    );
    assert_eq!(archived_history.len(), 2, "{archived_history:?}");
    assert_eq!(
        (archived_history[0].0.as_str(), archived_history[0].3),
        ("created", ts(archived.created_at))
    );
    assert_eq!(archived_history[1].0, "archived");
    assert_eq!(Some(archived_history[1].3), archived.archived_at.map(ts));
    let before_archive = archived
        .archived_at
        .map(|a| ts(a - 1))
        .expect("archived_at");
    let (status_then,): (String,) =
        sqlx::query_as("select status from openai.projects_as_of($1) where project_id = $2")
            .bind(before_archive)
            .bind(&archived.id)
            .fetch_one(&f.db.pool)
            .await
            .expect("as of");
    assert_eq!(status_then, "active");
}

#[tokio::test]
async fn renames_archives_new_projects_and_unmodelled_fields_become_versions_and_changes() {
    let f = fixture(250).await;
    sync(&f.deps).await;
    let projects: Vec<_> = f
        .emulator
        .projects()
        .into_iter()
        .filter(|p| p.status.as_deref() == Some("active"))
        .collect();
    let (renamed, archived, touched) = (&projects[0], &projects[1], &projects[2]);
    let old_name = renamed.name.clone();
    f.emulator.rename(&renamed.id, "Payments — renamed ✓");
    let archived_now = f.emulator.archive(&archived.id).expect("archive");
    f.emulator
        .set_field(&touched.id, "billing_tier", serde_json::json!("gold"));
    let created = f.emulator.create("Brand new");

    let before = Utc::now();
    let summary = sync(&f.deps).await;

    assert_eq!(
        (
            summary.counts.inserted,
            summary.counts.changed,
            summary.counts.unchanged
        ),
        (1, 3, 249 - 2)
    );
    let renames = changes_of(&f.db.pool, &renamed.id).await;
    let last = renames.last().expect("a change");
    assert_eq!(
        (last.0.as_str(), &last.1, last.2.as_deref()),
        ("renamed", &old_name, Some("Payments — renamed ✓"))
    );
    assert!(
        last.3 >= before - chrono::Duration::seconds(5),
        "a rename starts when observed"
    );
    let archive = changes_of(&f.db.pool, &archived.id).await;
    assert_eq!(
        archive.last().map(|c| (c.0.as_str(), c.3)),
        Some((
            "archived",
            ts(archived_now.archived_at.expect("archived_at"))
        ))
    );
    assert_eq!(
        changes_of(&f.db.pool, &touched.id)
            .await
            .last()
            .map(|c| c.0.clone()),
        Some("updated".to_owned())
    );
    assert_eq!(
        changes_of(&f.db.pool, &created.id)
            .await
            .first()
            .map(|c| c.0.clone()),
        Some("created".to_owned())
    );
    assert_eq!(current(&f.db.pool).await, upstream(&f.emulator));
    assert_history_is_contiguous(&f.db.pool).await;
}

#[tokio::test]
async fn an_unchanged_resync_writes_no_row_to_projects_or_versions() {
    let f = fixture(450).await;
    sync(&f.deps).await;
    let before = row_identities(&f.db.pool, None).await;

    let summary = sync(&f.deps).await;

    assert_eq!(
        (
            summary.counts.unchanged,
            summary.counts.inserted,
            summary.counts.changed
        ),
        (450, 0, 0)
    );
    assert_eq!(
        row_identities(&f.db.pool, None).await,
        before,
        "no row was inserted, updated or deleted"
    );
    assert_eq!(run_rows(&f.db.pool).await.len(), 2);
}

#[tokio::test]
async fn the_list_order_does_not_change_the_result() {
    let config = |order| EmulatorConfig {
        admin_key: TEST_KEY.into(),
        projects: 340,
        archived_ratio: 0.3,
        seed: 5,
        freedoms: openai_project_sync::emulator::Freedoms {
            order,
            ..Default::default()
        },
        ..EmulatorConfig::default()
    };
    let newest = fixture_with(config(ListOrder::NewestFirst)).await;
    let oldest = fixture_with(config(ListOrder::OldestFirst)).await;

    sync(&newest.deps).await;
    sync(&oldest.deps).await;

    let history = |pool: PgPool| async move {
        let rows: Vec<VersionRecord> = sqlx::query_as(
            "select project_id, change, name, valid_from, valid_to from openai.project_versions order by 1, 4",
        )
        .fetch_all(&pool)
        .await
        .expect("history");
        rows
    };
    assert_eq!(
        current(&newest.db.pool).await,
        current(&oldest.db.pool).await
    );
    assert_eq!(
        history(newest.db.pool.clone()).await,
        history(oldest.db.pool.clone()).await
    );
}

#[tokio::test]
async fn projects_changed_during_a_walk_converge_by_the_next_walk() {
    let f = fixture(1_250).await;
    f.emulator.set_rates(
        Endpoint::List,
        FaultRates {
            latency_ms: 30,
            ..FaultRates::default()
        },
    );
    let emulator = f.emulator.clone();
    let meddler = tokio::spawn(async move {
        eventually("the walk reaches page 6", || async {
            emulator.stats().list_calls >= 6
        })
        .await;
        let projects = emulator.projects();
        // Newest first: the newest were listed on page 1 already, the oldest are still to come.
        let listed = &projects[projects.len() - 1];
        let unlisted = &projects[0];
        emulator.rename(&listed.id, "Renamed during the walk");
        emulator.archive(&unlisted.id);
        emulator.create("Created during the walk");
    });

    sync(&f.deps).await;
    meddler.await.expect("meddler");
    f.emulator.clear_faults();
    sync(&f.deps).await;

    assert_eq!(current(&f.db.pool).await, upstream(&f.emulator));
    assert_history_is_contiguous(&f.db.pool).await;
}

#[tokio::test]
async fn a_failure_on_page_7_of_13_applies_nothing_and_marks_the_run_failed() {
    let f = fixture(1_250).await;
    sync(&f.deps).await;
    let target = f.emulator.projects()[10].id.clone();
    f.emulator.rename(&target, "Never applied");
    f.emulator.create("Never inserted");
    let before = row_identities(&f.db.pool, None).await;
    f.emulator.push_fault(FaultRule {
        endpoint: Endpoint::List,
        skip: 6,
        times: None,
        fault: Fault::ServerError { status: 500 },
    });

    let error = walk_and_apply(&f.deps, Trigger::Manual, &CancellationToken::new(), &mut ())
        .await
        .expect_err("page 7 never answers");

    assert!(
        matches!(error, SyncError::Api { pages: 6, .. }),
        "{error:?}"
    );
    assert_eq!(
        row_identities(&f.db.pool, None).await,
        before,
        "readers never see half a sync"
    );
    let runs = run_rows(&f.db.pool).await;
    assert_eq!(runs[1].0, "failed");
    assert!(
        runs[1]
            .1
            .as_deref()
            .is_some_and(|e| e.contains("after 6 page(s)") && e.contains("500")),
        "{runs:?}"
    );
}

#[tokio::test]
async fn the_guard_refuses_a_walk_that_suddenly_sees_a_tenth_of_the_projects() {
    let f = fixture(500).await;
    sync(&f.deps).await;
    let before = row_identities(&f.db.pool, None).await;
    for project in f.emulator.projects().iter().skip(50) {
        f.emulator.set_hidden(&project.id, true);
    }

    let error = walk_and_apply(&f.deps, Trigger::Manual, &CancellationToken::new(), &mut ())
        .await
        .expect_err("the guard refuses");

    assert!(matches!(error, SyncError::Guard(_)), "{error:?}");
    let message = error.to_string();
    assert!(
        message.contains("saw only 50 of the 500") && message.contains("sync.min_seen_ratio"),
        "{message}"
    );
    assert_eq!(row_identities(&f.db.pool, None).await, before);
    assert_eq!(run_rows(&f.db.pool).await[1].0, "failed");
}

#[tokio::test]
async fn a_vanished_project_is_marked_never_deleted_and_reappears_correctly() {
    let f = fixture(120).await;
    sync(&f.deps).await;
    let id = f.emulator.projects()[7].id.clone();

    f.emulator.set_hidden(&id, true);
    let vanished = sync(&f.deps).await;
    let while_missing = current(&f.db.pool).await;
    f.emulator.set_hidden(&id, false);
    let back = sync(&f.deps).await;

    assert_eq!((vanished.counts.vanished, back.counts.reappeared), (1, 1));
    assert!(
        while_missing.get(&id).is_some_and(|row| row.3),
        "kept and marked missing"
    );
    assert!(current(&f.db.pool).await.get(&id).is_some_and(|row| !row.3));
    let kinds: Vec<String> = changes_of(&f.db.pool, &id)
        .await
        .into_iter()
        .map(|c| c.0)
        .collect();
    assert_eq!(kinds.last().map(String::as_str), Some("reappeared"));
    assert!(kinds.contains(&"vanished".to_owned()));
    assert_history_is_contiguous(&f.db.pool).await;
}

#[tokio::test]
async fn a_vanished_projects_last_sighting_is_the_last_walk_not_another_resources_pass() {
    let f = fixture(20).await;
    let seen = sync(&f.deps).await;
    let id = f.emulator.projects()[3].id.clone();
    // A cost pass that succeeded after the walk that last listed the project.
    sqlx::query(
        "insert into openai.sync_runs (resource, trigger, status, started_at, finished_at) \
         values ('costs', 'schedule', 'succeeded', now(), now())",
    )
    .execute(&f.db.pool)
    .await
    .expect("a cost pass");

    f.emulator.set_hidden(&id, true);
    sync(&f.deps).await;

    let (last_seen, walk_started): (chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>) =
        sqlx::query_as(
            "select c.last_seen_at, r.started_at from openai.project_current c, openai.sync_runs r \
             where c.project_id = $1 and r.id = $2",
        )
        .bind(&id)
        .bind(seen.run_id)
        .fetch_one(&f.db.pool)
        .await
        .expect("the vanished project");
    assert_eq!(
        last_seen, walk_started,
        "last seen by the walk that listed it"
    );
}

#[tokio::test]
async fn the_database_refuses_overlapping_empty_and_second_open_versions() {
    let f = fixture(3).await;
    sync(&f.deps).await;
    let insert = |from: &'static str, to: Option<&'static str>| {
        let pool = f.db.pool.clone();
        async move {
            sqlx::query(
                "insert into openai.project_versions (project_key, project_id, created_at, raw, change, valid_from, valid_to) \
                 select key, project_id, created_at, raw, 'updated', $1::timestamptz, $2::timestamptz \
                 from openai.project_current order by key limit 1",
            )
            .bind(from)
            .bind(to)
            .execute(&pool)
            .await
            .expect_err("refused")
        }
    };

    let overlapping = insert("2001-01-01", Some("2100-01-01")).await;
    let empty = insert("1990-01-01", Some("1990-01-01")).await;
    let second_open = insert("2200-01-01", None).await;

    let code = |e: &sqlx::Error| {
        e.as_database_error()
            .and_then(|d| d.code())
            .map(|c| c.into_owned())
    };
    assert_eq!(
        code(&overlapping).as_deref(),
        Some("23P01"),
        "exclusion violation: {overlapping}"
    );
    assert_eq!(
        code(&empty).as_deref(),
        Some("23514"),
        "check violation: {empty}"
    );
    assert!(
        matches!(code(&second_open).as_deref(), Some("23505" | "23P01")),
        "{second_open}"
    );
}

/// The API's JSON for one active project, written with `name` first when `name_first`.
fn project_text(id: &str, name: &str, name_first: bool) -> String {
    let rest = format!(
        r#""id": "{id}", "object": "organization.project", "created_at": 1700000000, "status": "active", "archived_at": null"#
    );
    if name_first {
        format!(r#"{{"name": "{name}", {rest}}}"#)
    } else {
        format!(r#"{{{rest}, "name": "{name}"}}"#)
    }
}

/// One listing of an active project: its id and its JSON text.
fn listed(id: &'static str, name: &str, name_first: bool) -> (&'static str, String) {
    (id, project_text(id, name, name_first))
}

/// Stages one batch of `(id, JSON text)` listings, as the sync would.
async fn apply(session: &mut store::WalkSession, listed: &[(&str, String)]) {
    let listings: Vec<store::Listing<'_>> = listed
        .iter()
        .map(|(id, raw)| store::Listing {
            project_id: id,
            raw,
            digest: store::content_digest(raw),
        })
        .collect();
    session.stage(&listings).await.expect("batch");
}

/// Applies the staged walk and returns its figures.
async fn commit(session: store::WalkSession, pages: i32) -> store::RunCounts {
    match session.commit(pages, 0.5).await.expect("commit") {
        store::ApplyOutcome::Applied(counts) => counts,
        refused => panic!("{refused:?}"),
    }
}

async fn open_walk(f: &Fixture) -> store::WalkSession {
    let mut session = store::WalkSession::open(&f.deps.connect)
        .await
        .expect("open")
        .expect("lock is free");
    let (run_id, started) = store::start_run(&f.db.pool, store::Resource::Projects, "manual")
        .await
        .expect("run");
    session.record_as(run_id, started);
    session
}

#[tokio::test]
async fn the_exclusion_constraint_never_takes_two_projects_for_one() {
    let f = fixture(0).await;
    // The constraint's index keys on a spread of the project key: it must stay one-to-one,
    // around the point where its formula changes too.
    let (keys, distinct): (i64, i64) = sqlx::query_as(
        "with k as ( \
            select g as key from generate_series(1, 300000) g \
            union all select g from generate_series(2147483548, 2147483748) g \
            union all select g from generate_series(4294967196, 4294967396) g \
            union all select g from generate_series(6442450844, 6442451044) g \
         ) select count(*), count(distinct openai.spread_key(key)) from k",
    )
    .fetch_one(&f.db.pool)
    .await
    .expect("spread keys");
    assert_eq!(distinct, keys);

    let mut session = open_walk(&f).await;
    let listed: Vec<(String, String)> = (0..300)
        .map(|n| {
            let id = format!("proj_same_time_{n}");
            let raw = project_text(&id, "Same validity", true);
            (id, raw)
        })
        .collect();
    let listed: Vec<(&str, String)> = listed
        .iter()
        .map(|(id, raw)| (id.as_str(), raw.clone()))
        .collect();
    apply(&mut session, &listed).await;
    let counts = commit(session, 3).await;
    assert_eq!(
        counts.inserted, 300,
        "projects with identical validity are not overlaps of one another"
    );
}

#[tokio::test]
async fn duplicate_ids_within_one_walk_are_collapsed_to_the_last_listing() {
    let f = fixture(0).await;
    let mut session = open_walk(&f).await;
    let same = || listed("proj_same", "Listed twice", true);

    apply(
        &mut session,
        &[
            listed("proj_within", "First in batch", true),
            same(),
            listed("proj_within", "Last in batch", true),
        ],
    )
    .await;
    apply(&mut session, &[same()]).await;
    apply(&mut session, &[listed("proj_moved", "First listing", true)]).await;
    apply(
        &mut session,
        &[listed("proj_moved", "Second listing", true)],
    )
    .await;
    let counts = commit(session, 4).await;

    assert_eq!(
        (counts.seen, counts.inserted, counts.changed),
        (3, 3, 0),
        "each id counts once, by its last listing"
    );
    let stored = current(&f.db.pool).await;
    assert_eq!(
        stored.get("proj_within").map(|r| r.0.clone()),
        Some(Some("Last in batch".to_owned())),
        "the last listing within a batch counts"
    );
    assert_eq!(
        stored.get("proj_moved").map(|r| r.0.clone()),
        Some(Some("Second listing".to_owned()))
    );
    let versions: BTreeMap<String, i64> = sqlx::query_as(
        "select project_id, count(*) from openai.project_versions group by project_id",
    )
    .fetch_all(&f.db.pool)
    .await
    .expect("count")
    .into_iter()
    .collect();
    assert_eq!(
        versions.get("proj_same"),
        Some(&1),
        "an identical repeat writes nothing"
    );
    assert_eq!(versions.get("proj_within"), Some(&1));
    assert_history_is_contiguous(&f.db.pool).await;
}

#[tokio::test]
async fn the_same_content_written_differently_is_not_a_change() {
    let f = fixture(0).await;
    let mut session = open_walk(&f).await;
    apply(&mut session, &[listed("proj_text", "Written once", true)]).await;
    commit(session, 1).await;
    let before = row_identities(&f.db.pool, None).await;

    let mut session = open_walk(&f).await;
    apply(&mut session, &[listed("proj_text", "Written once", false)]).await;
    let reordered = commit(session, 1).await;

    assert_eq!(reordered.changed, 0, "{reordered:?}");
    assert_eq!(
        row_identities(&f.db.pool, None).await,
        before,
        "no row rewritten for a new spelling of the same object"
    );

    let mut session = open_walk(&f).await;
    apply(&mut session, &[listed("proj_text", "Renamed", false)]).await;
    let renamed = commit(session, 1).await;
    assert_eq!(
        renamed.changed, 1,
        "a real change behind a new spelling is seen"
    );
    assert_history_is_contiguous(&f.db.pool).await;
}

#[tokio::test]
async fn two_concurrent_syncs_never_both_apply() {
    let f = fixture(600).await;
    f.emulator.set_rates(
        Endpoint::List,
        FaultRates {
            latency_ms: 20,
            ..FaultRates::default()
        },
    );
    let cancel = CancellationToken::new();
    let (mut quiet_a, mut quiet_b) = ((), ());

    let (a, b) = tokio::join!(
        walk_and_apply(&f.deps, Trigger::Manual, &cancel, &mut quiet_a),
        walk_and_apply(&f.deps, Trigger::Schedule, &cancel, &mut quiet_b),
    );

    let outcomes = [a.is_ok(), b.is_ok()];
    assert_eq!(
        outcomes.iter().filter(|ok| **ok).count(),
        1,
        "exactly one walk applies"
    );
    let refused = if a.is_ok() { b } else { a };
    assert!(
        matches!(refused, Err(SyncError::AlreadyRunning)),
        "{refused:?}"
    );
    assert_eq!(
        run_rows(&f.db.pool).await,
        vec![("succeeded".to_owned(), None)]
    );
}

#[tokio::test]
async fn finance_can_name_costs_by_the_name_a_project_had_at_the_time() {
    let f = fixture(20).await;
    sync(&f.deps).await;
    let project = first_with_status(&f.emulator, "active");
    let (first_version_end,): (DateTime<Utc>,) = sqlx::query_as("select now()")
        .fetch_one(&f.db.pool)
        .await
        .expect("now");
    tokio::time::sleep(Duration::from_millis(20)).await;
    f.emulator.rename(&project.id, "Later name");
    sync(&f.deps).await;
    sqlx::query("create table costs (project_id text, incurred_at timestamptz, amount numeric)")
        .execute(&f.db.pool)
        .await
        .expect("costs");
    sqlx::query("insert into costs values ($1, $2, 10), ($1, now(), 20)")
        .bind(&project.id)
        .bind(first_version_end)
        .execute(&f.db.pool)
        .await
        .expect("cost rows");

    let named: Vec<(Option<String>, f64)> = sqlx::query_as(
        "select v.name, c.amount::float8 from costs c \
         join openai.project_versions v on v.project_id = c.project_id \
          and v.valid_from <= c.incurred_at and (v.valid_to is null or c.incurred_at < v.valid_to) \
         order by c.incurred_at",
    )
    .fetch_all(&f.db.pool)
    .await
    .expect("finance query");

    assert_eq!(
        named,
        vec![
            (project.name.clone(), 10.0),
            (Some("Later name".to_owned()), 20.0)
        ]
    );
}

#[tokio::test]
async fn every_query_in_the_readme_runs_against_a_synced_database() {
    let f = fixture(200).await;
    sync(&f.deps).await;
    f.emulator.churn(5, 2, 1);
    sync(&f.deps).await;
    sqlx::query("create table costs (project_id text, incurred_at timestamptz, amount numeric)")
        .execute(&f.db.pool)
        .await
        .expect("costs");
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README");
    let section = readme
        .split("## Querying history")
        .nth(1)
        .expect("the section");
    let block = section
        .split("```sql")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("an sql block");
    let queries: Vec<&str> = block
        .split(';')
        .map(str::trim)
        .filter(|q| {
            q.lines()
                .any(|l| !l.trim().starts_with("--") && !l.trim().is_empty())
        })
        .collect();

    assert!(
        queries.len() >= 6,
        "at least six example queries, found {}",
        queries.len()
    );
    for query in queries {
        sqlx::query(query)
            .fetch_all(&f.db.pool)
            .await
            .unwrap_or_else(|e| panic!("README query failed: {e}\n{query}"));
    }
    let (archived,): (i64,) = sqlx::query_as("select count(*) from openai.project_changes where change = 'archived' and changed_at > now() - interval '1 hour'")
        .fetch_one(&f.db.pool)
        .await
        .expect("recent archives");
    assert_eq!(archived, 2);
}

async fn missing_projects(pool: &PgPool) -> i64 {
    let (missing,): (i64,) = sqlx::query_as(
        "select count(*) from openai.project_current where missing_since is not null",
    )
    .fetch_one(pool)
    .await
    .expect("count missing");
    missing
}

#[tokio::test]
async fn a_fetcher_that_panics_mid_walk_applies_nothing_and_fails_the_run() {
    let f = fixture(450).await;
    sync(&f.deps).await;
    f.emulator.create("Never inserted");
    let before = row_identities(&f.db.pool, None).await;
    let hook: openai_project_sync::sync::FetchHook = Box::new(|page| {
        if page == 3 {
            panic!("scripted fetcher failure on page 3");
        }
    });

    let error = openai_project_sync::sync::walk_and_apply_hooked(
        &f.deps,
        Trigger::Manual,
        &CancellationToken::new(),
        &mut (),
        Some(hook),
    )
    .await
    .expect_err("a fetcher that never reached the end cannot apply");

    assert!(
        matches!(&error, SyncError::FetcherStopped { pages: 2, panic: Some(p) } if p.contains("page 3")),
        "{error:?}"
    );
    assert_eq!(
        row_identities(&f.db.pool, None).await,
        before,
        "nothing of the walk was applied"
    );
    assert_eq!(
        missing_projects(&f.db.pool).await,
        0,
        "nothing was marked vanished"
    );
    let runs = run_rows(&f.db.pool).await;
    assert_eq!(runs[1].0, "failed");
    let recorded = runs[1].1.as_deref().unwrap_or_default();
    assert!(
        recorded.contains("stopped without reaching the end of the list")
            && recorded.contains("scripted fetcher failure on page 3"),
        "{recorded}"
    );
}

#[tokio::test]
async fn an_absurd_retry_after_on_a_list_page_neither_panics_nor_applies_half_a_walk() {
    let f = fixture(450).await;
    sync(&f.deps).await;
    let before = row_identities(&f.db.pool, None).await;
    let headers = [
        (Some("1e20"), None),
        (None, Some("1e30")),
        (Some("-5"), Some("-5")),
        (Some("NaN"), Some("NaN")),
    ];

    for (retry_after, retry_after_ms) in headers {
        f.emulator.push_fault(FaultRule {
            endpoint: Endpoint::List,
            skip: 2,
            times: Some(1),
            fault: Fault::TooManyRequestsRaw {
                retry_after: retry_after.map(str::to_owned),
                retry_after_ms: retry_after_ms.map(str::to_owned),
            },
        });
        let summary = walk_and_apply(&f.deps, Trigger::Manual, &CancellationToken::new(), &mut ())
            .await
            .unwrap_or_else(|e| panic!("{retry_after:?}/{retry_after_ms:?}: {e}"));

        assert_eq!(
            (
                summary.counts.pages,
                summary.counts.seen,
                summary.counts.vanished
            ),
            (5, 450, 0),
            "{retry_after:?}/{retry_after_ms:?}: the whole walk, retried, was applied"
        );
        f.emulator.clear_faults();
    }
    assert_eq!(row_identities(&f.db.pool, None).await, before);
    assert!(
        run_rows(&f.db.pool)
            .await
            .iter()
            .all(|r| r.0 == "succeeded")
    );
}

/// A database with the schema and a walk against a hand-written list API.
async fn scripted_fixture(app: axum::Router) -> (TestDb, SyncDeps) {
    let db = TestDb::new().await;
    store::migrate(&db.pool).await.expect("migrations apply");
    let deps = sync_deps(&db, serve_scripted(app).await, 2);
    (db, deps)
}

#[tokio::test]
async fn a_list_page_without_has_more_fails_the_walk_and_applies_nothing() {
    let first = serde_json::json!({
        "object": "list", "data": [scripted_project("proj_a"), scripted_project("proj_b")],
        "first_id": "proj_a", "last_id": "proj_b", "has_more": true,
    });
    let rest = serde_json::json!({"object": "list", "data": [scripted_project("proj_c")], "first_id": "proj_c", "last_id": "proj_c"});
    let (db, deps) = scripted_fixture(scripted_list(first, rest)).await;

    let error = walk_and_apply(&deps, Trigger::Manual, &CancellationToken::new(), &mut ())
        .await
        .expect_err("a page that does not say whether more follow ends nothing");

    assert!(
        matches!(&error, SyncError::Api { pages: 1, cause } if cause.to_string().contains("has_more")),
        "{error:?}"
    );
    assert!(row_identities(&db.pool, None).await.is_empty());
    assert_eq!(run_rows(&db.pool).await[0].0, "failed");
}

#[tokio::test]
async fn a_last_id_that_is_not_the_last_projects_id_fails_the_walk_and_applies_nothing() {
    let first = serde_json::json!({
        "object": "list", "data": [scripted_project("proj_a"), scripted_project("proj_b")],
        "first_id": "proj_a", "last_id": "proj_a", "has_more": true,
    });
    let rest = serde_json::json!({"object": "list", "data": [scripted_project("proj_c")], "first_id": "proj_c", "last_id": "proj_c", "has_more": false});
    let (db, deps) = scripted_fixture(scripted_list(first, rest)).await;

    let error = walk_and_apply(&deps, Trigger::Manual, &CancellationToken::new(), &mut ())
        .await
        .expect_err("pagination that contradicts itself ends nothing");

    let message = error.to_string();
    assert!(
        message.contains("last_id proj_a") && message.contains("proj_b"),
        "{message}"
    );
    assert!(row_identities(&db.pool, None).await.is_empty());
    assert_eq!(run_rows(&db.pool).await[0].0, "failed");
}

#[test]
fn a_walk_that_cannot_reach_postgres_is_counted_as_failed_every_time() {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr")
    };
    let url = format!("postgres://postgres@{closed}/postgres");

    let errors = metrics::with_local_recorder(&recorder, || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let deps = SyncDeps {
                pool: sqlx::postgres::PgPoolOptions::new()
                    .connect_lazy(&url)
                    .expect("lazy pool"),
                connect: url.parse().expect("URL parses"),
                client: client_with("http://127.0.0.1:9/v1", TEST_KEY, Duration::from_secs(1)),
                page_size: 100,
                min_seen_ratio: 0.5,
                after_failure: "the test goes on",
            };
            let mut errors = Vec::new();
            for _ in 0..2 {
                errors.push(
                    walk_and_apply(&deps, Trigger::Schedule, &CancellationToken::new(), &mut ())
                        .await
                        .expect_err("Postgres is down"),
                );
            }
            errors
        })
    });

    assert!(
        errors.iter().all(|e| matches!(e, SyncError::Store(_))),
        "{errors:?}"
    );
    let rendered = handle.render();
    assert!(
        rendered
            .contains("openai_project_sync_runs_total{resource=\"projects\",status=\"failed\"} 2"),
        "{rendered}"
    );
}

// In a process of its own: tracing caches per call site whether anyone listens, and tests
// running beside one with a thread-local subscriber can leave a span's call site switched off.
#[tokio::test]
async fn the_fetch_tasks_log_lines_carry_the_walks_run_id() {
    let f = fixture(1_250).await;
    // Page 7 is fetched only once the writer took pages, so after the run was recorded.
    f.emulator.push_fault(FaultRule {
        endpoint: Endpoint::List,
        skip: 6,
        times: Some(1),
        fault: Fault::ServerError { status: 503 },
    });
    let base_url = f.emulator.base_url();
    let (code, output) = crate::helpers::wait_for_exit(crate::helpers::spawn_binary(
        &["sync", "projects"],
        &[
            ("DATABASE_URL", f.db.url.as_str()),
            ("OPENAI_BASE_URL", base_url.as_str()),
            ("OPENAI_ADMIN_KEY", TEST_KEY),
            ("APP_LOG__FORMAT", "json"),
            ("APP_OPENAI__RETRY_BASE_DELAY", "10ms"),
        ],
    ))
    .await;
    assert_eq!(code, Some(0), "{output}");
    let (run_id,): (i64,) = sqlx::query_as("select max(id) from openai.sync_runs")
        .fetch_one(&f.db.pool)
        .await
        .expect("the run");

    let lines: Vec<serde_json::Value> = output
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let run_of = |line: &serde_json::Value| line["span"]["run_id"].as_i64();
    let retry = lines
        .iter()
        .find(|l| l["message"] == "API call failed; retrying")
        .unwrap_or_else(|| panic!("the fetch task logged its retry: {output}"));
    assert_eq!(run_of(retry), Some(run_id), "{retry}");
    for line in lines
        .iter()
        .filter(|l| l["message"] == "walk started" || l["message"] == "walk applied")
    {
        assert_eq!(run_of(line), Some(run_id), "{line}");
    }
}

#[tokio::test]
async fn a_change_reverted_later_in_the_same_walk_writes_nothing_and_counts_once() {
    let f = fixture(0).await;
    let mut session = open_walk(&f).await;
    apply(
        &mut session,
        &[
            listed("proj_reverted", "Original", true),
            listed("proj_twice", "Original", true),
        ],
    )
    .await;
    session.commit(1, 0.5).await.expect("first walk");
    let reverted_before = row_identities(&f.db.pool, Some("proj_reverted")).await;

    let mut session = open_walk(&f).await;
    apply(
        &mut session,
        &[
            listed("proj_reverted", "Changed for a moment", true),
            listed("proj_twice", "First change", true),
        ],
    )
    .await;
    apply(
        &mut session,
        &[
            listed("proj_reverted", "Original", true),
            listed("proj_twice", "Second change", true),
        ],
    )
    .await;
    let outcome = session.commit(2, 0.5).await.expect("second walk");

    let store::ApplyOutcome::Applied(counts) = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(
        (counts.seen, counts.changed, counts.unchanged),
        (2, 1, 1),
        "each project counts once, by its last listing"
    );
    assert_eq!(
        row_identities(&f.db.pool, Some("proj_reverted")).await,
        reverted_before,
        "the last listing equals the stored state: no version pair written"
    );
    let twice: Vec<_> = changes_of(&f.db.pool, "proj_twice")
        .await
        .into_iter()
        .map(|c| (c.0, c.2))
        .collect();
    assert_eq!(
        twice,
        vec![
            ("created".to_owned(), Some("Original".to_owned())),
            ("renamed".to_owned(), Some("Second change".to_owned())),
        ]
    );
    assert_history_is_contiguous(&f.db.pool).await;
}

// A project that comes back archived is recorded as `archived` at its `archived_at`: the
// archive is the fact analysts ask for, and `reappeared` would hide it. The run still counts
// it among the reappeared, and its `vanished` version stays in history.
#[tokio::test]
async fn a_project_that_reappears_archived_is_recorded_as_archived_at_archived_at() {
    let f = fixture(120).await;
    sync(&f.deps).await;
    let project = first_with_status(&f.emulator, "active");
    f.emulator.set_hidden(&project.id, true);
    sync(&f.deps).await;
    let archived = f.emulator.archive(&project.id).expect("archive");
    f.emulator.set_hidden(&project.id, false);

    let back = sync(&f.deps).await;

    assert_eq!(back.counts.reappeared, 1);
    let kinds: Vec<(String, DateTime<Utc>)> = changes_of(&f.db.pool, &project.id)
        .await
        .into_iter()
        .map(|c| (c.0, c.3))
        .collect();
    assert_eq!(
        kinds.iter().map(|k| k.0.as_str()).collect::<Vec<_>>(),
        vec!["created", "vanished", "archived"]
    );
    let archived_at = archived.archived_at.map(ts).expect("archived_at");
    // At archived_at, unless that is before the project was found missing (whole seconds
    // against an instant): versions never overlap, so then just after.
    assert_eq!(
        kinds[2].1,
        archived_at.max(kinds[1].1 + chrono::Duration::microseconds(1)),
        "the archive starts at archived_at"
    );
    assert_eq!(
        current(&f.db.pool).await.get(&project.id),
        Some(&(
            project.name.clone(),
            Some("archived".to_owned()),
            Some(archived_at),
            false
        ))
    );
    assert_history_is_contiguous(&f.db.pool).await;
}

/// A row of `project_changes`: change, old name, new name, new status, when.
type ChangeRecord = (
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    DateTime<Utc>,
);

#[tokio::test]
async fn a_rename_seen_together_with_an_archive_is_two_changes_neither_lost() {
    let f = fixture(60).await;
    sync(&f.deps).await;
    let project = first_with_status(&f.emulator, "active");
    f.emulator.rename(&project.id, "Renamed, then archived");
    let archived = f.emulator.archive(&project.id).expect("archive");
    let archived_at = archived.archived_at.map(ts).expect("archived_at");

    let summary = sync(&f.deps).await;

    assert_eq!(summary.counts.changed, 1, "one project changed");
    let changes: Vec<ChangeRecord> =
        sqlx::query_as(
            "select change, old_name, new_name, new_status, changed_at from openai.project_changes              where project_id = $1 order by changed_at",
        )
        .bind(&project.id)
        .fetch_all(&f.db.pool)
        .await
        .expect("changes");
    assert_eq!(changes.len(), 3, "{changes:?}");
    let renamed = &changes[1];
    let archive = &changes[2];
    assert_eq!(
        (
            renamed.0.as_str(),
            &renamed.1,
            renamed.2.as_deref(),
            renamed.3.as_deref()
        ),
        (
            "renamed",
            &project.name,
            Some("Renamed, then archived"),
            Some("active")
        ),
        "the rename, before the archive (an archived project cannot be renamed)"
    );
    assert!(renamed.4 < archived_at, "{changes:?}");
    assert_eq!(
        (archive.0.as_str(), archive.3.as_deref(), archive.4),
        ("archived", Some("archived"), archived_at)
    );
    assert_history_is_contiguous(&f.db.pool).await;
}

#[tokio::test]
async fn a_project_whose_json_holds_a_nul_escape_is_stored_with_a_replacement_character() {
    let f = fixture(30).await;
    let project = f.emulator.projects()[3].clone();
    f.emulator.rename(&project.id, "Nul\u{0}inside");
    f.emulator
        .set_field(&project.id, "note", serde_json::json!("a\u{0}b"));

    let first = sync(&f.deps).await;
    let second = sync(&f.deps).await;

    assert_eq!(first.counts.seen, 30);
    assert_eq!(
        (second.counts.changed, second.counts.unchanged),
        (0, 30),
        "the stored text is compared with the same replacement: no change every walk"
    );
    let (name, note): (Option<String>, Option<String>) =
        sqlx::query_as("select name, raw ->> 'note' from openai.projects where project_id = $1")
            .bind(&project.id)
            .fetch_one(&f.db.pool)
            .await
            .expect("stored");
    assert_eq!(
        (name.as_deref(), note.as_deref()),
        (Some("Nul\u{fffd}inside"), Some("a\u{fffd}b"))
    );
}

#[tokio::test]
async fn the_walk_connection_bounds_statements_idle_transactions_and_dead_peers() {
    let db = TestDb::new().await;
    let options = store::walk_connect_options(&db.url.parse().expect("URL parses"));
    let mut connection = <sqlx::PgConnection as sqlx::Connection>::connect_with(&options)
        .await
        .expect("connect");

    let mut settings = Vec::new();
    for name in [
        "statement_timeout",
        "idle_in_transaction_session_timeout",
        "tcp_keepalives_idle",
    ] {
        let (value,): (String,) = sqlx::query_as(&format!("show {name}"))
            .fetch_one(&mut connection)
            .await
            .expect("show");
        settings.push(value);
    }

    assert_eq!(settings[..2], ["5min", "1min"]);
    assert!(
        ["60", "1min", "0"].contains(&settings[2].as_str()),
        "keepalives set (a Unix socket reads 0): {}",
        settings[2]
    );
}

/// Tells a test how far a walk has got.
struct PagesStaged(tokio::sync::watch::Sender<u64>);

impl openai_project_sync::sync::Progress for PagesStaged {
    fn page_staged(&mut self, pages: u64, _projects: u64) {
        let _ = self.0.send(pages);
    }
}

/// A walk of 30 slow pages in a task of its own, and how many pages it has staged so far.
fn slow_walk(
    f: &Fixture,
) -> (
    tokio::task::JoinHandle<Result<openai_project_sync::sync::WalkSummary, SyncError>>,
    tokio::sync::watch::Receiver<u64>,
) {
    f.emulator.set_rates(
        Endpoint::List,
        FaultRates {
            latency_ms: 200,
            ..FaultRates::default()
        },
    );
    let (staged, pages) = tokio::sync::watch::channel(0);
    let deps = SyncDeps {
        page_size: 10,
        ..f.deps.clone()
    };
    let walk = tokio::spawn(async move {
        walk_and_apply(
            &deps,
            Trigger::Manual,
            &CancellationToken::new(),
            &mut PagesStaged(staged),
        )
        .await
    });
    (walk, pages)
}

#[tokio::test]
async fn terminating_the_walks_connection_mid_walk_fails_the_run_cleanly() {
    let f = fixture(300).await;
    let (walk, mut pages) = slow_walk(&f);
    pages
        .wait_for(|&p| p >= 2)
        .await
        .expect("the walk stages pages");

    let (terminated,): (i64,) = sqlx::query_as(
        "select count(pg_terminate_backend(pid)) from pg_locks \
         where locktype = 'advisory' and granted \
           and database = (select oid from pg_database where datname = current_database())",
    )
    .fetch_one(&f.db.pool)
    .await
    .expect("terminate the walk's backend");
    assert_eq!(terminated, 1, "the walk's connection holds the walk lock");

    let outcome = walk.await.expect("the walk task");
    assert!(outcome.is_err(), "{outcome:?}");
    assert_eq!(run_rows(&f.db.pool).await[0].0, "failed");
    let (projects,): (i64,) = sqlx::query_as("select count(*) from openai.project_current")
        .fetch_one(&f.db.pool)
        .await
        .expect("count");
    assert_eq!(projects, 0, "nothing of the walk was applied");
    f.emulator.clear_faults();
    sync(&f.deps).await;
}

#[tokio::test]
async fn pages_are_staged_without_holding_a_transaction_or_showing_readers_anything() {
    let f = fixture(300).await;
    let (walk, mut pages) = slow_walk(&f);
    pages
        .wait_for(|&p| p >= 3)
        .await
        .expect("the walk stages pages");

    let (state, in_transaction, holds_snapshot): (Option<String>, bool, bool) = sqlx::query_as(
        "select a.state, a.xact_start is not null, a.backend_xmin is not null \
         from pg_stat_activity a join pg_locks l on l.pid = a.pid \
         where l.locktype = 'advisory' and l.granted \
           and l.database = (select oid from pg_database where datname = current_database())",
    )
    .fetch_one(&f.db.pool)
    .await
    .expect("the walk's backend");
    let (visible,): (i64,) = sqlx::query_as("select count(*) from openai.project_current")
        .fetch_one(&f.db.pool)
        .await
        .expect("count");

    assert_eq!(
        (state.as_deref(), in_transaction, holds_snapshot),
        (Some("idle"), false, false),
        "between pages the walk's connection is idle, outside any transaction"
    );
    assert_eq!(
        visible, 0,
        "readers see nothing of a walk before it applies"
    );
    let summary = walk
        .await
        .expect("the walk task")
        .expect("the walk applies");
    assert_eq!(summary.counts.inserted, 300);
}

#[tokio::test]
async fn a_change_written_after_its_page_was_staged_is_compared_again_at_the_apply() {
    let f = fixture(0).await;
    let mut session = open_walk(&f).await;
    apply(&mut session, &[listed("proj_edited", "Original", true)]).await;
    commit(session, 1).await;

    let mut session = open_walk(&f).await;
    apply(&mut session, &[listed("proj_edited", "Original", true)]).await;
    // Another writer records a change between the staging and the apply.
    let elsewhere = project_text("proj_edited", "Edited elsewhere", true);
    sqlx::query(
        "with closed as ( \
            update openai.project_versions set valid_to = now() \
            where project_id = 'proj_edited' and valid_to is null returning * \
         ) \
         insert into openai.project_versions \
            (project_key, project_id, name, status, created_at, archived_at, external_key_id, residency, \
             raw, change, valid_from, opened_by_run) \
         select project_key, project_id, 'Edited elsewhere', status, created_at, archived_at, \
                external_key_id, residency, $1::jsonb, 'renamed', valid_to, opened_by_run from closed",
    )
    .bind(&elsewhere)
    .execute(&f.db.pool)
    .await
    .expect("a version written elsewhere");
    sqlx::query(
        "update openai.project_current set name = 'Edited elsewhere', raw = $1::jsonb, raw_digest = $2 \
         where project_id = 'proj_edited'",
    )
    .bind(&elsewhere)
    .bind(store::content_digest(&elsewhere))
    .execute(&f.db.pool)
    .await
    .expect("current state written elsewhere");
    let counts = commit(session, 1).await;

    assert_eq!(
        (counts.changed, counts.unchanged),
        (1, 0),
        "the listing is compared with the state at the apply, not at the staging"
    );
    assert_eq!(
        stored_name(&f.db.pool, "proj_edited").await,
        Some(Some("Original".to_owned())),
        "the complete walk's listing is the truth"
    );
    assert_history_is_contiguous(&f.db.pool).await;
}

/// Records a project as the request worker does after creating it, in a transaction left open:
/// nobody sees the project until it commits, but its id is taken.
async fn worker_storing(
    pool: &PgPool,
    id: &str,
    name: &str,
) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let raw = project_text(id, name, true);
    let mut tx = pool.begin().await.expect("begin");
    sqlx::query(
        "with fresh as ( \
            insert into openai.project_current \
                (project_id, name, status, created_at, raw, raw_digest, first_seen_at, last_seen_at) \
            select $1, $2, 'active', to_timestamp(1700000000), $3::jsonb, $4, now(), now() \
            returning key, project_id, name, status, created_at, raw \
         ) \
         insert into openai.project_versions \
            (project_key, project_id, name, status, created_at, raw, change, valid_from) \
         select key, project_id, name, status, created_at, raw, 'created', created_at from fresh",
    )
    .bind(id)
    .bind(name)
    .bind(&raw)
    .bind(store::content_digest(&raw))
    .execute(&mut *tx)
    .await
    .expect("the worker's insert");
    tx
}

/// The worker storing `id` (uncommitted) and the walk's apply started behind it, returned once
/// the apply's insert waits on the worker's.
async fn commit_behind_the_worker(
    pool: &PgPool,
    session: store::WalkSession,
    id: &str,
) -> (
    sqlx::Transaction<'static, sqlx::Postgres>,
    tokio::task::JoinHandle<Result<store::ApplyOutcome, store::StoreError>>,
) {
    let worker = worker_storing(pool, id, "As created").await;
    let applying = tokio::spawn(async move { session.commit(1, 0.5).await });
    eventually("the walk's insert waits on the worker's", || async {
        let (waiting,): (bool,) = sqlx::query_as(
            "select exists (select 1 from pg_stat_activity \
             where datname = current_database() and wait_event_type = 'Lock')",
        )
        .fetch_one(pool)
        .await
        .expect("activity");
        waiting
    })
    .await;
    (worker, applying)
}

#[tokio::test]
async fn a_listing_of_a_project_the_worker_stored_during_the_apply_is_applied_like_any_other() {
    let f = fixture(0).await;
    let mut session = open_walk(&f).await;
    apply(&mut session, &[listed("proj_stays", "Unchanged", true)]).await;
    commit(session, 1).await;

    let mut session = open_walk(&f).await;
    apply(
        &mut session,
        &[
            listed("proj_stays", "Unchanged", true),
            listed("proj_raced", "Renamed since it was created", true),
        ],
    )
    .await;
    // The worker records the project it created; the apply classifies the listing as new, then
    // waits on the worker's insert of the same id, which commits before the walk's insert ends.
    let (worker, applying) = commit_behind_the_worker(&f.db.pool, session, "proj_raced").await;
    worker.commit().await.expect("the worker commits");
    let outcome = applying
        .await
        .expect("the apply task")
        .expect("the walk applies");
    let store::ApplyOutcome::Applied(counts) = outcome else {
        panic!("{outcome:?}")
    };

    assert_eq!(
        (counts.seen, counts.inserted),
        (2, 0),
        "the project is stored once, by the worker"
    );
    assert_eq!(
        stored_name(&f.db.pool, "proj_raced").await,
        Some(Some("Renamed since it was created".to_owned())),
        "the complete walk's listing is compared and applied, even with no other change in the walk"
    );
    assert_history_is_contiguous(&f.db.pool).await;
}

#[tokio::test]
async fn terminating_the_walks_connection_during_its_apply_applies_nothing_and_frees_the_lock() {
    let f = fixture(0).await;
    let mut session = open_walk(&f).await;
    apply(&mut session, &[listed("proj_kept", "Kept", true)]).await;
    commit(session, 1).await;
    let before = row_identities(&f.db.pool, None).await;

    let mut session = open_walk(&f).await;
    apply(
        &mut session,
        &[
            listed("proj_kept", "Renamed by the cut walk", true),
            listed("proj_new", "New in the cut walk", true),
            listed("proj_raced", "Listed", true),
        ],
    )
    .await;
    // The apply has classified and is inserting when it waits on the worker's insert.
    let (worker, applying) = commit_behind_the_worker(&f.db.pool, session, "proj_raced").await;
    let (terminated,): (i64,) = sqlx::query_as(
        "select count(pg_terminate_backend(pid)) from pg_locks \
         where locktype = 'advisory' and granted \
           and database = (select oid from pg_database where datname = current_database())",
    )
    .fetch_one(&f.db.pool)
    .await
    .expect("terminate the walk's backend");
    assert_eq!(terminated, 1);
    let outcome = applying.await.expect("the apply task");
    worker.rollback().await.expect("the worker gives up");

    assert!(outcome.is_err(), "{outcome:?}");
    assert_eq!(
        row_identities(&f.db.pool, None).await,
        before,
        "nothing of the cut apply was written"
    );
    let next = store::WalkSession::open(&f.deps.connect)
        .await
        .expect("open");
    assert!(next.is_some(), "the walk lock died with the connection");
}

/// A project created upstream under `name`, its request `creating` (id 1), and a slow walk that
/// has already staged the page holding the project: the walk's transaction holds its row.
struct CreatedDuringAWalk {
    project: openai_project_sync::emulator::EmulatedProject,
    attempt_id: String,
    raw: String,
    walk: tokio::task::JoinHandle<Result<openai_project_sync::sync::WalkSummary, SyncError>>,
}

async fn created_during_a_walk(f: &Fixture, name: &str) -> CreatedDuringAWalk {
    let project = f.emulator.create(name);
    let (attempt_id,): (String,) = sqlx::query_as(
        "insert into openai.project_requests (name, status, attempts, attempt_id, attempt_started_at, lease_until) \
         values ($1, 'creating', 1, gen_random_uuid(), now(), now() + interval '1 hour') \
         returning attempt_id::text",
    )
    .bind(name)
    .fetch_one(&f.db.pool)
    .await
    .expect("a request being created");
    let (walk, mut pages) = slow_walk(f);
    // Newest first: the new project is on the first page, in the walk's open transaction.
    pages
        .wait_for(|&p| p >= 1)
        .await
        .expect("the walk stages pages");
    // What the worker records: the API's own JSON for the project, as its create answered.
    let raw = client_for(&f.emulator)
        .retrieve_project_raw(&project.id)
        .await
        .expect("the project as the API writes it");
    CreatedDuringAWalk {
        project,
        attempt_id,
        raw,
        walk,
    }
}

#[tokio::test]
async fn a_created_project_is_recorded_at_once_while_a_long_walk_writes_the_same_project() {
    let f = fixture(290).await;
    let CreatedDuringAWalk {
        project: made,
        attempt_id: attempt,
        raw,
        walk,
    } = created_during_a_walk(&f, "Made while a walk runs").await;

    let started = std::time::Instant::now();
    let linked = store::finish_created(
        &f.db.pool,
        1,
        &attempt,
        &made.id,
        &raw,
        store::RowWait::UntilFree,
    )
    .await
    .expect("recorded");

    assert_eq!(linked, store::Linked::Done);
    assert!(!walk.is_finished(), "recorded while the walk still runs");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "waited {:?} behind the walk",
        started.elapsed()
    );
    walk.await
        .expect("the walk task")
        .expect("the walk applies");
    let (versions,): (i64,) =
        sqlx::query_as("select count(*) from openai.project_versions where project_id = $1")
            .bind(&made.id)
            .fetch_one(&f.db.pool)
            .await
            .expect("count");
    assert_eq!(versions, 1, "the walk recorded its history, once");
}

#[tokio::test]
async fn a_project_whose_name_holds_an_unpaired_surrogate_does_not_fail_every_walk() {
    let db = TestDb::new().await;
    store::migrate(&db.pool).await.expect("migrations apply");
    let page = r#"{"object":"list","data":[
        {"id":"proj_ok","object":"organization.project","name":"fine","created_at":1700000000,"status":"active"},
        {"id":"proj_odd","object":"organization.project","name":"emoji cut \ud83d","created_at":1700000000,"status":"active"}
        ],"first_id":"proj_ok","last_id":"proj_odd","has_more":false}"#;
    let deps = sync_deps(&db, serve_one_list_page(page).await, 100);

    sync(&deps).await;
    let summary = sync(&deps).await;

    assert_eq!(summary.counts.changed, 0);
    let (name,): (String,) =
        sqlx::query_as("select name from openai.projects where project_id = 'proj_odd'")
            .fetch_one(&db.pool)
            .await
            .expect("stored");
    assert_eq!(name, "emoji cut \u{fffd}");
}

#[tokio::test]
async fn a_created_project_whose_walk_rolled_back_still_stops_a_second_request_of_its_name() {
    let f = fixture(290).await;
    let CreatedDuringAWalk {
        project: made,
        attempt_id: attempt,
        raw,
        walk,
    } = created_during_a_walk(&f, "Guarded name").await;
    let linked = store::finish_created(
        &f.db.pool,
        1,
        &attempt,
        &made.id,
        &raw,
        store::RowWait::UntilFree,
    )
    .await
    .expect("recorded");
    assert_eq!(linked, store::Linked::Done);
    // The walk that holds the project's history row then fails, and takes the row with it.
    sqlx::query(
        "select count(pg_terminate_backend(pid)) from pg_locks where locktype = 'advisory' and granted \
         and database = (select oid from pg_database where datname = current_database())",
    )
    .execute(&f.db.pool)
    .await
    .expect("terminate the walk");
    assert!(walk.await.expect("the walk task").is_err());

    let (second,): (i64,) = sqlx::query_as(
        "insert into openai.project_requests (name) values ('Guarded name') returning id",
    )
    .fetch_one(&f.db.pool)
    .await
    .expect("a second request");
    let claimed = store::claim_next_request(
        &f.db.pool,
        Duration::from_secs(60),
        Utc::now() + chrono::Duration::seconds(5),
    )
    .await
    .expect("claim")
    .expect("the second request is due");
    assert_eq!(claimed.id, second);
    let clash = store::find_same_name(&f.db.pool, &claimed)
        .await
        .expect("look for the name");
    assert!(
        clash.as_deref().is_some_and(|c| c.contains(&made.id)),
        "{clash:?}"
    );
}

/// A TCP relay to the test's Postgres that can stop relaying without closing either side, as
/// a server that vanished behind a network that drops packets looks to the walk.
struct FreezableRelay {
    port: u16,
    frozen: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

async fn freezable_relay(db: &TestDb) -> FreezableRelay {
    use std::sync::atomic::Ordering;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let upstream = reqwest::Url::parse(&db.url).expect("the test URL parses");
    let target = format!(
        "{}:{}",
        upstream.host_str().expect("a host"),
        upstream.port().unwrap_or(5432)
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the relay");
    let port = listener.local_addr().expect("relay address").port();
    let frozen = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let relay_frozen = frozen.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(&target).await else {
                continue;
            };
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            for (mut from, mut to) in [
                (
                    Box::new(client_read) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
                    Box::new(server_write) as Box<dyn tokio::io::AsyncWrite + Unpin + Send>,
                ),
                (Box::new(server_read), Box::new(client_write)),
            ] {
                let frozen = relay_frozen.clone();
                tokio::spawn(async move {
                    let mut buffer = vec![0u8; 16 * 1024];
                    while let Ok(read) = from.read(&mut buffer).await {
                        if read == 0 {
                            break;
                        }
                        if frozen.load(Ordering::SeqCst) {
                            // Keep both sockets open and never relay again.
                            std::future::pending::<()>().await;
                        }
                        if to.write_all(&buffer[..read]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        }
    });
    FreezableRelay { port, frozen }
}

#[tokio::test]
async fn a_walk_whose_database_stops_answering_fails_instead_of_waiting_forever() {
    let f = fixture(0).await;
    let relay = freezable_relay(&f.db).await;
    let through_relay = f.deps.connect.clone().host("127.0.0.1").port(relay.port);
    let mut session = store::WalkSession::open(&through_relay)
        .await
        .expect("open through the relay")
        .expect("lock is free");
    session.wait_for_answers_at_most(Duration::from_secs(2));
    apply(&mut session, &[listed("proj_before", "Before", true)]).await;

    relay
        .frozen
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let raw = project_text("proj_after", "After", true);
    let listings = [store::Listing {
        project_id: "proj_after",
        raw: &raw,
        digest: store::content_digest(&raw),
    }];
    let staged = tokio::time::timeout(Duration::from_secs(30), session.stage(&listings))
        .await
        .expect("staging gives up instead of waiting forever");
    let abandoned = tokio::time::timeout(Duration::from_secs(30), session.rollback())
        .await
        .expect("abandoning the walk does not wait forever either");

    assert!(
        staged
            .as_ref()
            .is_err_and(|e| e.to_string().contains("did not answer")),
        "{staged:?}"
    );
    assert!(abandoned.is_err(), "{abandoned:?}");
    let (stored,): (i64,) = sqlx::query_as("select count(*) from openai.project_current")
        .fetch_one(&f.db.pool)
        .await
        .expect("count");
    assert_eq!(stored, 0, "nothing was applied");
}

#[tokio::test]
async fn an_apply_whose_database_stops_answering_fails_instead_of_waiting_forever() {
    let f = fixture(0).await;
    let relay = freezable_relay(&f.db).await;
    let through_relay = f.deps.connect.clone().host("127.0.0.1").port(relay.port);
    let mut session = store::WalkSession::open(&through_relay)
        .await
        .expect("open through the relay")
        .expect("lock is free");
    let (run_id, started) = store::start_run(&f.db.pool, store::Resource::Projects, "manual")
        .await
        .expect("run");
    session.record_as(run_id, started);
    session.wait_for_answers_at_most(Duration::from_secs(2));
    apply(&mut session, &[listed("proj_staged", "Staged", true)]).await;

    relay
        .frozen
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let applied = tokio::time::timeout(Duration::from_secs(30), session.commit(1, 0.5))
        .await
        .expect("the apply gives up instead of waiting forever");

    assert!(
        applied
            .as_ref()
            .is_err_and(|e| e.to_string().contains("did not answer")),
        "{applied:?}"
    );
}

#[tokio::test]
async fn a_walk_whose_commit_is_refused_applies_nothing_and_releases_the_walk_lock_at_once() {
    let f = fixture(0).await;
    // A check a DBA added, deferred to the commit, refuses every walk that succeeds.
    sqlx::raw_sql(
        "create function public.refuse_walks() returns trigger language plpgsql as $$ \
         begin raise exception 'walks are refused today'; end $$; \
         create constraint trigger refuse_walks after update on openai.sync_runs \
         deferrable initially deferred for each row \
         when (new.status = 'succeeded') execute function public.refuse_walks();",
    )
    .execute(&f.db.pool)
    .await
    .expect("a deferred check");
    let mut session = open_walk(&f).await;
    apply(&mut session, &[listed("proj_refused", "Refused", true)]).await;

    let refused = session.commit(1, 0.5).await;
    let (locks,): (i64,) = sqlx::query_as(
        "select count(*) from pg_locks where locktype = 'advisory' and granted \
         and database = (select oid from pg_database where datname = current_database())",
    )
    .fetch_one(&f.db.pool)
    .await
    .expect("locks");

    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.to_string().contains("walks are refused today")),
        "{refused:?}"
    );
    assert_eq!(locks, 0, "the walk lock outlived the refused commit");
    let (stored,): (i64,) = sqlx::query_as("select count(*) from openai.project_current")
        .fetch_one(&f.db.pool)
        .await
        .expect("count");
    assert_eq!(stored, 0, "nothing was applied");
}

#[tokio::test]
async fn a_server_that_starts_leaving_null_fields_out_changes_nothing() {
    // The spec lets an optional field be absent or null: the same object, spelled another way.
    let f = fixture(30).await;
    sync(&f.deps).await;
    let before = row_identities(&f.db.pool, None).await;

    let mut freedoms = f.emulator.freedoms();
    freedoms.omit_nulls = true;
    f.emulator.set_freedoms(freedoms.clone());
    let omitted = sync(&f.deps).await;
    freedoms.omit_nulls = false;
    f.emulator.set_freedoms(freedoms);
    let written = sync(&f.deps).await;

    assert_eq!(
        (omitted.counts.changed, omitted.counts.unchanged),
        (0, 30),
        "{omitted:?}"
    );
    assert_eq!(
        (written.counts.changed, written.counts.unchanged),
        (0, 30),
        "{written:?}"
    );
    assert_eq!(
        row_identities(&f.db.pool, None).await,
        before,
        "no project row and no version written for nulls left out or written back"
    );
}

#[tokio::test]
async fn unix_times_written_as_whole_floats_are_read_as_the_same_seconds() {
    // JSON has one number type; 1697013376.0 is the integer 1697013376 to a JSON Schema.
    let db = TestDb::new().await;
    store::migrate(&db.pool).await.expect("migrations apply");
    let page = r#"{"object":"list","data":[
        {"id":"proj_float","object":"organization.project","name":"Floats","created_at":1697013376.0,"status":"archived","archived_at":1.6971e9}
        ],"first_id":"proj_float","last_id":"proj_float","has_more":false}"#;
    let client = serve_one_list_page(page).await;
    let typed = client
        .walk_projects(100, true)
        .next_page()
        .await
        .expect("the typed page decodes")
        .expect("a page");
    assert_eq!(
        (typed.data[0].created_at, typed.data[0].archived_at),
        (1697013376, Some(1697100000))
    );
    let deps = sync_deps(&db, client, 100);

    let first = walk_and_apply(&deps, Trigger::Manual, &CancellationToken::new(), &mut ())
        .await
        .expect("the walk applies");
    let again = sync(&deps).await;

    assert_eq!(first.counts.inserted, 1);
    assert_eq!(again.counts.unchanged, 1);
    let (created_at, archived_at): (DateTime<Utc>, Option<DateTime<Utc>>) = sqlx::query_as(
        "select created_at, archived_at from openai.projects where project_id = 'proj_float'",
    )
    .fetch_one(&db.pool)
    .await
    .expect("stored");
    assert_eq!(
        (created_at, archived_at),
        (ts(1697013376), Some(ts(1697100000)))
    );
}

#[tokio::test]
async fn a_unix_time_no_calendar_of_the_database_holds_is_stored_as_unknown_and_fails_no_walk() {
    // The spec says only "integer". 1e13 s is past the last year Postgres holds, 1e20 past any
    // 64-bit integer, and 3e11 s (year 11476) past what a year of four digits writes, which most
    // clients of the database (Python's datetime among them) cannot read back. One such project
    // must not fail every walk: it is stored, its time unknown, its history starting when seen.
    let db = TestDb::new().await;
    store::migrate(&db.pool).await.expect("migrations apply");
    let page = r#"{"object":"list","data":[
        {"id":"proj_far","object":"organization.project","name":"Far","created_at":1e13,"status":"active"},
        {"id":"proj_huge","object":"organization.project","name":"Huge","created_at":100000000000000000000,"status":"active"},
        {"id":"proj_y11476","object":"organization.project","name":"Five digits","created_at":300000000000,"status":"active"},
        {"id":"proj_early","object":"organization.project","name":"Early","created_at":-300000000000,"status":"active"},
        {"id":"proj_arch","object":"organization.project","name":"Archived","created_at":1697013376,"status":"archived","archived_at":9300000000000}
        ],"first_id":"proj_far","last_id":"proj_arch","has_more":false}"#;
    let deps = sync_deps(&db, serve_one_list_page(page).await, 100);

    let first = walk_and_apply(&deps, Trigger::Manual, &CancellationToken::new(), &mut ())
        .await
        .expect("the walk applies");
    let again = sync(&deps).await;

    assert_eq!((first.counts.inserted, again.counts.unchanged), (5, 5));
    type Times = (String, Option<DateTime<Utc>>, Option<DateTime<Utc>>, bool);
    let stored: Vec<Times> = sqlx::query_as(
        "select project_id, created_at, archived_at, raw -> 'created_at' = $1::jsonb \
             from openai.projects where project_id <> 'proj_arch' order by project_id",
    )
    .bind(serde_json::json!(1e13))
    .fetch_all(&db.pool)
    .await
    .expect("stored");
    let unknown = |id: &str, as_written: bool| (id.to_owned(), None, None, as_written);
    assert_eq!(
        stored,
        vec![
            unknown("proj_early", false),
            unknown("proj_far", true),
            unknown("proj_huge", false),
            unknown("proj_y11476", false),
        ]
    );
    let (archived_at, status): (Option<DateTime<Utc>>, Option<String>) = sqlx::query_as(
        "select archived_at, status from openai.projects where project_id = 'proj_arch'",
    )
    .fetch_one(&db.pool)
    .await
    .expect("stored");
    assert_eq!((archived_at, status.as_deref()), (None, Some("archived")));
    // Each history starts once: when the walk saw it, where its creation time is unknown. An
    // archive of unknown time is no change of its own, as for an archived project without one.
    let starts: Vec<(String, String, String, bool)> = sqlx::query_as(
        "select c.project_id, c.change, c.time_source, c.changed_at = p.first_seen_at \
         from openai.project_changes c join openai.projects p using (project_id) \
         order by c.project_id, c.changed_at",
    )
    .fetch_all(&db.pool)
    .await
    .expect("history");
    let created = |id: &str, source: &str, when_seen: bool| {
        (
            id.to_owned(),
            "created".to_owned(),
            source.to_owned(),
            when_seen,
        )
    };
    assert_eq!(
        starts,
        vec![
            created("proj_arch", "api", false),
            created("proj_early", "observed", true),
            created("proj_far", "observed", true),
            created("proj_huge", "observed", true),
            created("proj_y11476", "observed", true),
        ]
    );
    // Nor does an unknown creation time rule the project out for a request of its name.
    let candidates = store::stored_candidates(&db.pool, "Far", Utc::now(), ts(0))
        .await
        .expect("candidates");
    assert_eq!(
        candidates
            .iter()
            .map(|c| c.project_id.as_str())
            .collect::<Vec<_>>(),
        ["proj_far"]
    );
}

#[tokio::test]
async fn a_unix_time_beyond_any_float_fails_no_walk() {
    // JSON has no bound on a number: `1e400` is an integer to a JSON Schema, and Postgres's
    // jsonb keeps it. As with 1e20, one such project is stored with its time unknown.
    let db = TestDb::new().await;
    store::migrate(&db.pool).await.expect("migrations apply");
    let page = r#"{"object":"list","data":[
        {"id":"proj_ok","object":"organization.project","name":"Fine","created_at":1700000000,"status":"active"},
        {"id":"proj_vast","object":"organization.project","name":"Vast","created_at":1e400,"status":"active"}
        ],"first_id":"proj_ok","last_id":"proj_vast","has_more":false}"#;
    let deps = sync_deps(&db, serve_one_list_page(page).await, 100);

    let walked = walk_and_apply(&deps, Trigger::Manual, &CancellationToken::new(), &mut ()).await;

    let walked = walked.map(|s| s.counts.inserted).map_err(|e| e.to_string());
    assert_eq!(walked, Ok(2), "one absurd time fails every walk");
}

#[tokio::test]
async fn a_database_reaping_idle_sessions_does_not_cut_a_walk_waiting_for_its_next_page() {
    // A DBA's idle_session_timeout would end the walk's connection, outside any transaction,
    // while a page is slow to come (a 429's retry-after, say): every such walk would fail.
    let db = TestDb::new().await;
    sqlx::raw_sql(
        "do $$ begin execute format('alter database %I set idle_session_timeout = ''1s''', current_database()); end $$",
    )
    .execute(&db.pool)
    .await
    .expect("the database reaps idle sessions");
    let options = store::walk_connect_options(&db.url.parse().expect("URL parses"));
    let mut connection = <sqlx::PgConnection as sqlx::Connection>::connect_with(&options)
        .await
        .expect("connect");

    let (idle,): (String,) = sqlx::query_as("show idle_session_timeout")
        .fetch_one(&mut connection)
        .await
        .expect("show");

    assert_eq!(
        idle, "0",
        "the walk's connection waits for pages as long as they take"
    );
}
