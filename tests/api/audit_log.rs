//! Who changed a project and exactly when, from the organization's audit log: events applied
//! to history with their time and author, corrections of what walks saw, and an organization
//! without audit logging.

use std::time::Duration;

use chrono::{DateTime, Utc};
use openai_project_sync::audit_log::{self, AuditDeps, AuditOutcome};
use openai_project_sync::config::AuditLogEnabled;
use openai_project_sync::emulator::{
    AuditLogging, DEFAULT_PROJECT_ID, EmulatorConfig, EmulatorHandle, Endpoint, Fault, FaultRule,
    Freedoms, ListOrder,
};
use openai_project_sync::store;
use serde_json::{Value, json};

use crate::helpers::{
    TEST_KEY, TestDb, client_for, eventually, output_text, row_identities, run_binary_async,
    start_emulator_with, sync, sync_deps,
};

struct Org {
    db: TestDb,
    emulator: EmulatorHandle,
    deps: AuditDeps,
}

async fn org_with(projects: usize, logging: AuditLogging, enabled: AuditLogEnabled) -> Org {
    let db = TestDb::new().await;
    store::migrate(&db.pool).await.expect("migrations apply");
    let emulator = start_emulator_with(EmulatorConfig {
        admin_key: TEST_KEY.into(),
        projects,
        archived_ratio: 0.0,
        seed: 13,
        audit_logging: logging,
        ..EmulatorConfig::default()
    })
    .await;
    let deps = AuditDeps {
        pool: db.pool.clone(),
        client: client_for(&emulator),
        enabled,
        overlap: Duration::from_secs(3600),
    };
    Org { db, emulator, deps }
}

async fn org(projects: usize) -> Org {
    org_with(projects, AuditLogging::On, AuditLogEnabled::Auto).await
}

/// One walk, so that the organization's projects are known.
async fn walk(org: &Org) -> openai_project_sync::sync::WalkSummary {
    sync(&sync_deps(&org.db, client_for(&org.emulator), 100)).await
}

async fn pass(org: &Org) -> AuditOutcome {
    audit_log::pass(&org.deps, "manual")
        .await
        .expect("the audit-log pass succeeds")
}

fn active_ids(emulator: &EmulatorHandle) -> Vec<String> {
    emulator
        .projects()
        .into_iter()
        .filter(|p| !p.is_archived())
        .map(|p| p.id)
        .collect()
}

/// The event the emulator recorded last of `kind` about `project_id`.
fn event_of(emulator: &EmulatorHandle, kind: &str, project_id: &str) -> Value {
    emulator
        .audit_events()
        .into_iter()
        .rev()
        .find(|e| e["type"] == kind && e[kind]["id"] == project_id)
        .unwrap_or_else(|| panic!("the emulator recorded a {kind} for {project_id}"))
}

fn time_of(event: &Value) -> DateTime<Utc> {
    DateTime::from_timestamp(event["effective_at"].as_i64().expect("effective_at"), 0)
        .expect("a time")
}

#[derive(Debug, PartialEq, sqlx::FromRow)]
struct Change {
    change: String,
    changed_at: DateTime<Utc>,
    new_name: Option<String>,
    changed_by: Option<String>,
    time_source: String,
}

/// The latest change of a project, as analysts read it.
async fn last_change(db: &TestDb, project_id: &str) -> Change {
    sqlx::query_as(
        "select change, changed_at, new_name, changed_by, time_source from openai.project_changes \
         where project_id = $1 order by changed_at desc limit 1",
    )
    .bind(project_id)
    .fetch_one(&db.pool)
    .await
    .expect("a change")
}

/// Renames a project of `org` as cy@example.com with its event held back for 1.5 s, so that a
/// walk sees the rename before the audit log shows it; returns the project's id.
async fn rename_ahead_of_its_event(org: &Org) -> String {
    let id = active_ids(&org.emulator)[0].clone();
    org.emulator.set_audit_delay(Duration::from_millis(1_500));
    org.emulator
        .rename_as(&id, "Seen by a walk first", "cy@example.com")
        .expect("renamed");
    id
}

/// Polls until the late event has corrected the walk's version of `id`.
async fn await_correction(org: &Org, id: &str) {
    eventually("the late event corrects the walk's version", || async {
        audit_log::pass(&org.deps, "manual").await.expect("a pass");
        last_change(&org.db, id).await.time_source == "audit_log"
    })
    .await;
}

/// The change `rename_ahead_of_its_event` makes, dated by its event.
fn corrected_rename(event_at: DateTime<Utc>) -> Change {
    Change {
        change: "renamed".into(),
        changed_at: event_at,
        new_name: Some("Seen by a walk first".into()),
        changed_by: Some("cy@example.com".into()),
        time_source: "audit_log".into(),
    }
}

/// Audit passes against a scripted server whose log holds the one event `event` (with id
/// `event_id`), and which answers a retrieve of `project_id` with `project`.
async fn scripted_audit_passes(
    db: &TestDb,
    event_id: &str,
    event: String,
    project_id: &str,
    project: String,
) -> AuditDeps {
    let json = |body: String| {
        (
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            body,
        )
    };
    let page = format!(
        r#"{{"object":"list","data":[{event}],"first_id":"{event_id}","last_id":"{event_id}","has_more":false}}"#
    );
    let app = axum::Router::new()
        .route(
            "/v1/organization/audit_logs",
            axum::routing::get(move || {
                let page = page.clone();
                async move { json(page) }
            }),
        )
        .route(
            &format!("/v1/organization/projects/{project_id}"),
            axum::routing::get(move || {
                let project = project.clone();
                async move { json(project) }
            }),
        );
    AuditDeps {
        pool: db.pool.clone(),
        client: crate::client::serve_scripted(app).await,
        enabled: AuditLogEnabled::On,
        overlap: Duration::from_secs(3600),
    }
}

async fn watermark(db: &TestDb) -> Option<DateTime<Utc>> {
    store::audit_log_state(&db.pool)
        .await
        .expect("state")
        .watermark
}

async fn count(db: &TestDb, sql: &str) -> i64 {
    let (n,): (i64,) = sqlx::query_as(sql)
        .fetch_one(&db.pool)
        .await
        .expect("count");
    n
}

#[tokio::test]
async fn a_rename_an_archive_and_a_create_appear_with_the_events_time_and_author_before_any_walk() {
    let org = org(6).await;
    walk(&org).await;
    let ids = active_ids(&org.emulator);
    let (renamed, archived) = (&ids[0], &ids[1]);
    org.emulator
        .rename_as(renamed, "Renamed in the dashboard", "ana@example.com")
        .expect("renamed");
    // Through the API with the admin key: filed under the default project.
    org.deps
        .client
        .archive_project(archived)
        .await
        .expect("archived");
    let created = org
        .emulator
        .create_as("Made in the dashboard", "bo@example.com");

    let AuditOutcome::Applied(summary) = pass(&org).await else {
        panic!("the pass applies events");
    };

    assert_eq!(summary.projects_inserted, 1, "{summary:?}");
    assert_eq!(summary.projects_changed, 2, "{summary:?}");
    let rename = last_change(&org.db, renamed).await;
    assert_eq!(
        rename,
        Change {
            change: "renamed".into(),
            changed_at: time_of(&event_of(&org.emulator, "project.updated", renamed)),
            new_name: Some("Renamed in the dashboard".into()),
            changed_by: Some("ana@example.com".into()),
            time_source: "audit_log".into(),
        }
    );
    let archive_event = event_of(&org.emulator, "project.archived", archived);
    assert_eq!(
        archive_event["project"]["id"], DEFAULT_PROJECT_ID,
        "admin-key actions are filed under the default project"
    );
    let archive = last_change(&org.db, archived).await;
    assert_eq!(archive.change, "archived");
    assert_eq!(archive.changed_at, time_of(&archive_event));
    let key_id = org.emulator.admin_key_id();
    assert!(
        archive
            .changed_by
            .as_deref()
            .is_some_and(|by| by.starts_with(&key_id)),
        "the key's id and owner: {archive:?}"
    );
    let create = last_change(&org.db, &created.id).await;
    assert_eq!(create.change, "created");
    assert_eq!(
        create.changed_at,
        time_of(&event_of(&org.emulator, "project.created", &created.id))
    );
    assert_eq!(create.changed_by.as_deref(), Some("bo@example.com"));
    assert_eq!(
        count(
            &org.db,
            "select count(*) from openai.audit_events where type not like 'project.%'"
        )
        .await,
        0,
        "events of types not asked for are not stored"
    );

    // The walk after them finds nothing to do.
    let before = row_identities(&org.db.pool, None).await;
    let after_walk = walk(&org).await;
    assert_eq!(
        (after_walk.counts.inserted, after_walk.counts.changed),
        (0, 0),
        "{:?}",
        after_walk.counts
    );
    assert_eq!(
        row_identities(&org.db.pool, None).await,
        before,
        "0 rows written"
    );
}

#[tokio::test]
async fn a_change_first_seen_by_a_walk_is_corrected_to_the_events_time_and_author() {
    let org = org(4).await;
    walk(&org).await;
    // The event shows up only later, with its true time.
    let id = rename_ahead_of_its_event(&org).await;
    assert!(
        matches!(pass(&org).await, AuditOutcome::Idle { .. }),
        "the event is not visible yet"
    );
    walk(&org).await;
    let observed = last_change(&org.db, &id).await;
    assert_eq!(observed.time_source, "observed");
    assert_eq!(observed.changed_by, None);
    let event_at = time_of(&event_of(&org.emulator, "project.updated", &id));
    assert!(observed.changed_at > event_at);

    await_correction(&org, &id).await;

    assert_eq!(last_change(&org.db, &id).await, corrected_rename(event_at));
    let (ends_at,): (Option<DateTime<Utc>>,) = sqlx::query_as(
        "select valid_to from openai.project_versions where project_id = $1 and change = 'created'",
    )
    .bind(&id)
    .fetch_one(&org.db.pool)
    .await
    .expect("the first version");
    assert_eq!(
        ends_at,
        Some(event_at),
        "the version before ends where it begins"
    );
    let before = row_identities(&org.db.pool, None).await;
    let again = walk(&org).await;
    assert_eq!(again.counts.changed, 0);
    assert_eq!(row_identities(&org.db.pool, None).await, before);
}

#[tokio::test]
async fn duplicate_late_and_out_of_order_events_are_harmless() {
    let org = org(4).await;
    // Pages of one event in the oldest-first order: every event on a page of its own.
    org.emulator.set_freedoms(Freedoms {
        short_pages: Some(1),
        order: ListOrder::OldestFirst,
        ..Freedoms::default()
    });
    walk(&org).await;
    let id = active_ids(&org.emulator)[0].clone();
    org.emulator
        .rename_as(&id, "First", "dee@example.com")
        .expect("renamed");
    org.emulator
        .rename_as(&id, "Second", "eve@example.com")
        .expect("renamed");
    pass(&org).await;
    let applied = last_change(&org.db, &id).await;
    assert_eq!(applied.new_name.as_deref(), Some("Second"));
    assert_eq!(applied.changed_by.as_deref(), Some("eve@example.com"));
    let history = row_identities(&org.db.pool, Some(&id)).await;

    // The overlap reads the same events again: duplicates.
    assert!(matches!(pass(&org).await, AuditOutcome::Idle { .. }));
    // An event that arrives late and out of order: older than what was applied.
    let older = applied.changed_at.timestamp() - 600;
    org.emulator.record_audit_event(
        "project.updated",
        older,
        Some(&id),
        "late@example.com",
        json!({"id": id, "changes_requested": {"title": "An old name"}}),
    );
    org.emulator.record_audit_event(
        "project.updated",
        older,
        Some(&id),
        "late@example.com",
        json!({"id": id, "changes_requested": {"title": "An old name"}}),
    );
    pass(&org).await;
    pass(&org).await;

    assert_eq!(
        row_identities(&org.db.pool, Some(&id)).await,
        history,
        "late, repeated and out-of-order events change nothing"
    );
    assert_eq!(last_change(&org.db, &id).await, applied);
}

#[tokio::test]
async fn an_idle_poll_costs_one_call_and_writes_no_row_but_its_watermark() {
    let org = org(3).await;
    walk(&org).await;
    let id = active_ids(&org.emulator)[0].clone();
    org.emulator
        .rename_as(&id, "Once", "fay@example.com")
        .expect("renamed");
    pass(&org).await;
    let runs = count(&org.db, "select count(*) from openai.sync_runs").await;
    let rows = row_identities(&org.db.pool, None).await;
    let events = count(&org.db, "select count(*) from openai.audit_events").await;
    let state = store::audit_log_state(&org.db.pool).await.expect("state");
    let calls = org.emulator.stats();

    assert!(matches!(pass(&org).await, AuditOutcome::Idle { .. }));

    let after = org.emulator.stats();
    assert_eq!(after.audit_log_calls, calls.audit_log_calls + 1, "one call");
    assert_eq!(after.retrieve_calls, calls.retrieve_calls);
    assert_eq!(
        count(&org.db, "select count(*) from openai.sync_runs").await,
        runs
    );
    assert_eq!(row_identities(&org.db.pool, None).await, rows);
    assert_eq!(
        count(&org.db, "select count(*) from openai.audit_events").await,
        events
    );
    let idle = store::audit_log_state(&org.db.pool).await.expect("state");
    assert_eq!(idle.watermark, state.watermark);
    assert!(
        idle.polled_at > state.polled_at,
        "the watermark row is written"
    );
}

#[tokio::test]
async fn the_watermark_does_not_advance_past_a_window_that_failed_half_way() {
    let org = org(4).await;
    walk(&org).await;
    org.emulator.set_freedoms(Freedoms {
        short_pages: Some(1),
        ..Freedoms::default()
    });
    let ids = active_ids(&org.emulator);
    for (n, id) in ids.iter().take(3).enumerate() {
        org.emulator
            .rename_as(id, &format!("Window {n}"), "gus@example.com")
            .expect("renamed");
    }
    // The first page comes, every later one fails.
    org.emulator.push_fault(FaultRule {
        endpoint: Endpoint::AuditLogs,
        skip: 1,
        times: None,
        fault: Fault::ServerError { status: 500 },
    });

    let failed = audit_log::pass(&org.deps, "manual").await;

    assert!(failed.is_err(), "{failed:?}");
    assert_eq!(watermark(&org.db).await, None);
    assert_eq!(
        count(&org.db, "select count(*) from openai.audit_events").await,
        0,
        "nothing of a broken window is stored"
    );
    assert_eq!(
        count(&org.db, "select count(*) from openai.sync_runs where resource = 'audit_log' and status = 'failed'").await,
        1
    );
    assert_eq!(last_change(&org.db, &ids[0]).await.change, "created");

    org.emulator.clear_faults();
    pass(&org).await;
    let newest = org
        .emulator
        .audit_events()
        .iter()
        .filter(|e| e["type"] == "project.updated")
        .map(time_of)
        .max();
    assert_eq!(watermark(&org.db).await, newest);
    for id in ids.iter().take(3) {
        assert_eq!(
            last_change(&org.db, id).await.changed_by.as_deref(),
            Some("gus@example.com")
        );
    }
}

#[tokio::test]
async fn audit_logging_off_is_detected_reported_once_and_the_walks_go_on() {
    for logging in [AuditLogging::OffEmpty, AuditLogging::OffError] {
        let org = org_with(3, logging, AuditLogEnabled::Auto).await;
        walk(&org).await;
        org.emulator
            .rename_as(&active_ids(&org.emulator)[0], "Unlogged", "hal@example.com")
            .expect("renamed");

        assert_eq!(
            pass(&org).await,
            AuditOutcome::LoggingOff { newly: true },
            "{logging:?}"
        );
        let calls = org.emulator.stats().audit_log_calls;
        assert_eq!(pass(&org).await, AuditOutcome::LoggingOff { newly: false });
        assert_eq!(
            org.emulator.stats().audit_log_calls,
            calls,
            "{logging:?}: not asked again at once"
        );
        let state = store::audit_log_state(&org.db.pool).await.expect("state");
        assert_eq!(state.logging, "off");

        let walked = walk(&org).await;
        assert_eq!(
            walked.counts.changed, 1,
            "{logging:?}: the walk records the rename"
        );
    }

    // As an operator sees it: `sync` says so in plain words and succeeds; `check` too.
    let org = org_with(3, AuditLogging::OffError, AuditLogEnabled::Auto).await;
    let base = org.emulator.base_url();
    let env = [
        ("DATABASE_URL", org.db.url.as_str()),
        ("OPENAI_BASE_URL", base.as_str()),
        ("OPENAI_ADMIN_KEY", TEST_KEY),
    ];
    let output = run_binary_async(&["sync"], &env).await;
    let text = output_text(&output);
    assert_eq!(output.status.code(), Some(0), "{text}");
    assert!(text.contains("new         3"), "{text}");
    assert!(
        text.contains("audit log is off") && text.contains("Organization settings"),
        "{text}"
    );
    let output = run_binary_async(&["check"], &env).await;
    let text = output_text(&output);
    assert!(text.contains("ok    audit log: off"), "{text}");
    let on = org_with(1, AuditLogging::On, AuditLogEnabled::Auto).await;
    let base = on.emulator.base_url();
    let output = run_binary_async(
        &["check"],
        &[
            ("DATABASE_URL", on.db.url.as_str()),
            ("OPENAI_BASE_URL", base.as_str()),
            ("OPENAI_ADMIN_KEY", TEST_KEY),
        ],
    )
    .await;
    let text = output_text(&output);
    assert!(text.contains("ok    audit log: on"), "{text}");
}

#[tokio::test]
async fn sync_audit_log_runs_one_catch_up_by_hand() {
    let org = org(3).await;
    walk(&org).await;
    let id = active_ids(&org.emulator)[0].clone();
    org.emulator
        .rename_as(&id, "By hand", "ida@example.com")
        .expect("renamed");
    let base = org.emulator.base_url();
    let env = [
        ("DATABASE_URL", org.db.url.as_str()),
        ("OPENAI_BASE_URL", base.as_str()),
        ("OPENAI_ADMIN_KEY", TEST_KEY),
    ];
    let lists = org.emulator.stats().list_calls;

    let output = run_binary_async(&["sync", "audit-log"], &env).await;

    let text = output_text(&output);
    assert_eq!(output.status.code(), Some(0), "{text}");
    assert!(
        text.contains("audit log run") && text.contains("changed     1"),
        "{text}"
    );
    assert_eq!(org.emulator.stats().list_calls, lists, "no walk");
    assert_eq!(
        last_change(&org.db, &id).await.changed_by.as_deref(),
        Some("ida@example.com")
    );
    assert_eq!(
        count(&org.db, "select count(*) from openai.sync_runs where resource = 'audit_log' and status = 'succeeded'").await,
        1
    );
}

#[tokio::test]
async fn an_unknown_request_is_settled_from_its_project_created_event() {
    use crate::requests::{outcome, queue, request, tick};

    let q = queue(5).await;
    let deps = AuditDeps {
        pool: q.db.pool.clone(),
        client: client_for(&q.emulator),
        enabled: AuditLogEnabled::Auto,
        overlap: Duration::from_secs(3600),
    };
    // A create whose answer came back: its event tells the daemon which key is its own.
    let known = request(&q.db.pool, "Answered create").await;
    tick(&q).await;
    assert_eq!(outcome(&q.db.pool, known).await.0, "created");
    // The next create lands, but its answer is lost.
    q.emulator.push_fault(FaultRule {
        endpoint: Endpoint::Create,
        skip: 0,
        times: Some(1),
        fault: Fault::LostResponse {
            then: openai_project_sync::emulator::LostAs::ServerError,
        },
    });
    let lost = request(&q.db.pool, "Lost and found").await;
    tick(&q).await;
    assert_eq!(outcome(&q.db.pool, lost).await.0, "unknown");
    // Meanwhile a person makes a project of the same name: a list walk could not tell which is whose.
    let theirs = q
        .emulator
        .create_as("Lost and found", "someone@example.com");
    audit_log::pass(&deps, "manual").await.expect("a pass");

    let report = tick(&q).await;

    let ours = q
        .emulator
        .audit_events()
        .into_iter()
        .find(|e| {
            e["type"] == "project.created"
                && e["actor"]["type"] == "api_key"
                && e["project.created"]["data"]["name"] == "Lost and found"
        })
        .expect("the daemon's create is in the log");
    let (status, project_id, error) = outcome(&q.db.pool, lost).await;
    assert_eq!(status, "created", "{error:?}");
    assert_eq!(
        project_id.as_deref(),
        ours["project.created"]["id"].as_str()
    );
    assert_ne!(project_id.as_deref(), Some(theirs.id.as_str()));
    assert_eq!(report.adopted, 1);
    assert_eq!(report.walks, 0, "settled before any list walk");
    assert_eq!(q.emulator.stats().create_calls, 2, "never created twice");
}

fn daemon_settings(db: &TestDb, base_url: &str) -> openai_project_sync::config::Settings {
    let env = [
        ("DATABASE_URL", db.url.as_str()),
        ("OPENAI_BASE_URL", base_url),
        ("OPENAI_ADMIN_KEY", TEST_KEY),
        ("APP_SYNC__SCHEDULE", "0 0 0 1 1 *"),
        ("APP_HTTP__LISTEN", "127.0.0.1:0"),
        ("APP_AUDIT_LOG__POLL_INTERVAL", "200ms"),
    ];
    openai_project_sync::config::Settings::load(&openai_project_sync::config::Sources {
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

#[tokio::test]
async fn the_daemon_polls_the_audit_log_every_poll_interval() {
    let org = org(3).await;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let daemon = openai_project_sync::app::start_daemon(
        daemon_settings(&org.db, &org.emulator.base_url()),
        shutdown.clone(),
    )
    .await
    .expect("the daemon starts");
    eventually("the startup walk", || async {
        count(&org.db, "select count(*) from openai.project_current").await == 3
    })
    .await;
    let id = active_ids(&org.emulator)[0].clone();
    org.emulator
        .rename_as(&id, "Polled", "jo@example.com")
        .expect("renamed");

    eventually("the rename is in history with its author", || async {
        last_change(&org.db, &id).await.changed_by.as_deref() == Some("jo@example.com")
    })
    .await;
    let walks = count(
        &org.db,
        "select count(*) from openai.sync_runs where resource = 'projects'",
    )
    .await;
    let metrics = reqwest::get(format!("http://{}/metrics", daemon.http_addr))
        .await
        .expect("metrics answer")
        .text()
        .await
        .expect("metrics text");
    shutdown.cancel();
    assert!(
        metrics.contains("openai_project_sync_seconds_since_last_success{resource=\"audit_log\"}"),
        "{metrics}"
    );
    let stopped = tokio::time::timeout(Duration::from_secs(10), daemon.finished).await;
    assert_eq!(walks, 1, "only the startup walk ran");
    assert!(matches!(stopped, Ok(Ok(Ok(())))), "{stopped:?}");
}

#[test]
fn audit_log_settings_take_auto_true_false_and_durations() {
    use openai_project_sync::config::{Settings, Sources};
    let load = |vars: &[(&str, &str)]| {
        Settings::load(&Sources {
            config_dir: Some(std::env::temp_dir().join("ops-no-config-here")),
            file: None,
            env: Some(
                vars.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
        })
    };
    let defaults = load(&[]).expect("defaults");
    assert_eq!(defaults.audit_log.enabled, AuditLogEnabled::Auto);
    assert_eq!(defaults.audit_log.poll_interval, Duration::from_secs(30));
    assert_eq!(defaults.audit_log.overlap, Duration::from_secs(3600));
    for (given, wanted) in [
        ("true", AuditLogEnabled::On),
        ("false", AuditLogEnabled::Off),
        ("auto", AuditLogEnabled::Auto),
    ] {
        let settings = load(&[("APP_AUDIT_LOG__ENABLED", given)]).expect("valid");
        assert_eq!(settings.audit_log.enabled, wanted, "{given}");
    }
    let refused = load(&[("APP_AUDIT_LOG__ENABLED", "sometimes")]).expect_err("refused");
    assert!(
        refused.to_string().contains("auto, true or false"),
        "{refused}"
    );
    let refused = load(&[("APP_AUDIT_LOG__POLL_INTERVAL", "0s")]).expect_err("refused");
    assert!(
        refused.to_string().contains("audit_log.poll_interval"),
        "{refused}"
    );
}

#[tokio::test]
async fn the_emulated_audit_log_filters_pages_newest_first_and_can_be_late_or_off() {
    let org = org(3).await;
    let http = reqwest::Client::new();
    let base = org.emulator.base_url();
    let get = |query: &str| {
        let request = http
            .get(format!("{base}/organization/audit_logs?{query}"))
            .bearer_auth(TEST_KEY);
        async move {
            let response = request.send().await.expect("an answer");
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.expect("JSON"))
        }
    };
    let ids = active_ids(&org.emulator);
    org.emulator
        .rename_as(&ids[0], "One", "kim@example.com")
        .expect("renamed");
    org.emulator
        .rename_as(&ids[1], "Two", "kim@example.com")
        .expect("renamed");
    org.emulator.record_audit_event(
        "project.updated",
        1_000,
        Some(&ids[2]),
        "old@example.com",
        json!({"id": ids[2], "changes_requested": {"title": "Ancient"}}),
    );

    let (_, all) = get("event_types[]=project.updated&limit=100").await;
    let times: Vec<i64> = all["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|e| e["effective_at"].as_i64().expect("time"))
        .collect();
    assert_eq!(times.len(), 3);
    assert!(
        times.windows(2).all(|w| w[0] >= w[1]),
        "newest first: {times:?}"
    );
    let (_, recent) = get("event_types[]=project.updated&effective_at[gte]=2000").await;
    assert_eq!(recent["data"].as_array().map(Vec::len), Some(2));
    let (_, unbracketed) = get("event_types=project.updated&limit=100").await;
    assert!(
        unbracketed["data"]
            .as_array()
            .expect("data")
            .iter()
            .any(|e| e["type"] == "login.succeeded"),
        "an unknown filter is ignored: {unbracketed}"
    );
    let (_, first) = get("event_types[]=project.updated&limit=1").await;
    assert_eq!(first["has_more"], true);
    let after = first["last_id"].as_str().expect("a cursor").to_owned();
    let (_, second) = get(&format!(
        "event_types[]=project.updated&limit=1&after={after}"
    ))
    .await;
    assert_ne!(second["data"][0]["id"], first["data"][0]["id"]);
    let event = &second["data"][0];
    assert_eq!(
        event["project"]["id"], event["project.updated"]["id"],
        "a session's event is filed under its project: {event}"
    );

    // Late: visible only after the delay, with its true time.
    org.emulator.set_audit_delay(Duration::from_secs(3600));
    org.emulator
        .rename_as(&ids[0], "Late", "kim@example.com")
        .expect("renamed");
    let (_, now) = get("event_types[]=project.updated&limit=100").await;
    assert_eq!(now["data"].as_array().map(Vec::len), Some(3));
    assert_eq!(
        org.emulator.audit_events().len(),
        5,
        "recorded all the same"
    );

    org.emulator.set_audit_logging(AuditLogging::OffError);
    let (status, body) = get("limit=1").await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "audit_logging_disabled");
    org.emulator.set_audit_logging(AuditLogging::OffEmpty);
    let (status, body) = get("limit=1").await;
    assert_eq!(
        (status, body["data"].as_array().map(Vec::len)),
        (200, Some(0))
    );
}

#[tokio::test]
async fn a_correction_never_moves_a_version_to_or_before_the_previous_versions_start() {
    let org = org(3).await;
    org.emulator.set_audit_logging(AuditLogging::OffEmpty);
    walk(&org).await;
    let id = active_ids(&org.emulator)[0].clone();
    org.emulator.rename(&id, "Middle").expect("renamed");
    walk(&org).await;
    org.emulator.rename(&id, "Last").expect("renamed");
    walk(&org).await;
    let (middle_from,): (DateTime<Utc>,) = sqlx::query_as(
        "select valid_from from openai.project_versions where project_id = $1 and name = 'Middle'",
    )
    .bind(&id)
    .fetch_one(&org.db.pool)
    .await
    .expect("the middle version");
    // An event for the last name that claims a time before the middle version began.
    org.emulator.set_audit_logging(AuditLogging::On);
    org.emulator.record_audit_event(
        "project.updated",
        middle_from.timestamp() - 60,
        Some(&id),
        "odd@example.com",
        json!({"id": id, "changes_requested": {"title": "Last"}}),
    );

    pass(&org).await;

    let last = last_change(&org.db, &id).await;
    assert_eq!(last.new_name.as_deref(), Some("Last"));
    assert!(
        last.changed_at > middle_from,
        "{last:?} starts after {middle_from}"
    );
    let versions = count(
        &org.db,
        &format!("select count(*) from openai.project_versions where project_id = '{id}'"),
    )
    .await;
    assert_eq!(versions, 3);
}

#[tokio::test]
async fn events_wait_while_a_walk_holds_the_lock_and_apply_at_the_next_poll() {
    use sqlx::Connection;
    let org = org(3).await;
    walk(&org).await;
    let id = active_ids(&org.emulator)[0].clone();
    org.emulator
        .rename_as(&id, "After the walk", "lu@example.com")
        .expect("renamed");
    // A walk in progress holds the walk lock on a connection of its own.
    let mut walker = sqlx::PgConnection::connect(&org.db.url)
        .await
        .expect("connect");
    sqlx::query("select pg_advisory_lock(8030044989463555179)")
        .execute(&mut walker)
        .await
        .expect("the walk lock");

    let AuditOutcome::Applied(waiting) = pass(&org).await else {
        panic!("the events are stored");
    };
    assert_eq!(waiting.projects_waiting, 1, "{waiting:?}");
    assert_eq!(
        last_change(&org.db, &id).await.change,
        "created",
        "nothing applied under a walk"
    );

    sqlx::query("select pg_advisory_unlock(8030044989463555179)")
        .execute(&mut walker)
        .await
        .expect("the walk ends");
    let AuditOutcome::Applied(applied) = pass(&org).await else {
        panic!("the waiting events apply");
    };
    assert_eq!((applied.new_events, applied.projects_changed), (0, 1));
    assert_eq!(
        last_change(&org.db, &id).await.changed_by.as_deref(),
        Some("lu@example.com")
    );
}

#[tokio::test]
async fn an_event_dated_in_the_future_does_not_push_the_watermark_past_later_changes() {
    let org = org(3).await;
    walk(&org).await;
    // A server whose clock runs a day ahead for one event (or a hostile one) dates it tomorrow.
    let tomorrow = Utc::now().timestamp() + 86_400;
    org.emulator.record_audit_event(
        "user.added",
        tomorrow,
        Some("user-skewed"),
        "skew@example.com",
        json!({"id": "user-skewed", "data": {"role": "reader"}}),
    );
    pass(&org).await;
    let mark = watermark(&org.db).await.expect("a watermark");
    assert!(
        mark <= Utc::now(),
        "the watermark {mark} is never later than the poll that stored it"
    );

    let id = active_ids(&org.emulator)[0].clone();
    org.emulator
        .rename_as(&id, "After the skew", "hal@example.com")
        .expect("renamed");
    pass(&org).await;

    let applied = last_change(&org.db, &id).await;
    assert_eq!(applied.new_name.as_deref(), Some("After the skew"));
    assert_eq!(applied.changed_by.as_deref(), Some("hal@example.com"));
    assert_eq!(applied.time_source, "audit_log");
}

#[tokio::test]
async fn an_event_dated_outside_any_storable_time_is_left_out_and_the_next_poll_is_idle() {
    let org = org(3).await;
    walk(&org).await;
    let id = active_ids(&org.emulator)[0].clone();
    org.emulator
        .rename_as(&id, "Beside the odd date", "ivy@example.com")
        .expect("renamed");
    // Thirty million years from now: a number, but no time a calendar or Postgres holds.
    org.emulator.record_audit_event(
        "user.added",
        1_000_000_000_000_000,
        Some("user-odd"),
        "odd@example.com",
        json!({"id": "user-odd", "data": {"role": "reader"}}),
    );
    pass(&org).await;
    assert_eq!(
        last_change(&org.db, &id).await.changed_by.as_deref(),
        Some("ivy@example.com")
    );
    assert!(watermark(&org.db).await.is_some(), "the watermark advances");
    let runs = count(&org.db, "select count(*) from openai.sync_runs").await;

    assert!(matches!(pass(&org).await, AuditOutcome::Idle { .. }));
    assert_eq!(
        count(&org.db, "select count(*) from openai.sync_runs").await,
        runs,
        "an idle poll starts no run"
    );
}

#[tokio::test]
async fn a_project_event_dated_in_the_future_never_dates_a_version_after_now() {
    let org = org(4).await;
    walk(&org).await;
    let ids = active_ids(&org.emulator);
    let tomorrow = Utc::now().timestamp() + 86_400;
    // Applied from the events: the true rename, and a copy of it a skewed clock dates tomorrow.
    org.emulator
        .rename_as(&ids[0], "Renamed today", "jo@example.com")
        .expect("renamed");
    org.emulator.record_audit_event(
        "project.updated",
        tomorrow,
        Some(&ids[0]),
        "skew@example.com",
        json!({"id": ids[0], "changes_requested": {"title": "Renamed today"}}),
    );
    // Seen by a walk first, then corrected: only a future-dated event describes it.
    org.emulator
        .rename(&ids[1], "Walked today")
        .expect("renamed");
    walk(&org).await;
    org.emulator.record_audit_event(
        "project.updated",
        tomorrow,
        Some(&ids[1]),
        "skew@example.com",
        json!({"id": ids[1], "changes_requested": {"title": "Walked today"}}),
    );
    pass(&org).await;
    let now = Utc::now();

    let applied = last_change(&org.db, &ids[0]).await;
    assert_eq!(applied.new_name.as_deref(), Some("Renamed today"));
    assert!(applied.changed_at <= now, "{applied:?}");
    assert_eq!(applied.changed_by.as_deref(), Some("jo@example.com"));
    let walked = last_change(&org.db, &ids[1]).await;
    assert_eq!(walked.new_name.as_deref(), Some("Walked today"));
    assert!(walked.changed_at <= now, "{walked:?}");
}

#[tokio::test]
async fn a_refusal_from_a_log_that_gave_events_is_a_failed_poll_not_logging_off() {
    let org = org(3).await;
    walk(&org).await;
    let id = active_ids(&org.emulator)[0].clone();
    org.emulator
        .rename_as(&id, "Logged", "kim@example.com")
        .expect("renamed");
    pass(&org).await;
    // Audit logging cannot be turned off once on: a refusal now is the server failing.
    org.emulator.push_fault(FaultRule {
        endpoint: Endpoint::AuditLogs,
        skip: 0,
        times: Some(1),
        fault: Fault::ServerError { status: 403 },
    });

    let refused = audit_log::pass(&org.deps, "manual").await;

    assert!(refused.is_err(), "{refused:?}");
    let state = store::audit_log_state(&org.db.pool).await.expect("state");
    assert_eq!(state.logging, "on");
    org.emulator
        .rename_as(&id, "Logged again", "kim@example.com")
        .expect("renamed");
    assert!(matches!(pass(&org).await, AuditOutcome::Applied(_)));
    assert_eq!(
        last_change(&org.db, &id).await.new_name.as_deref(),
        Some("Logged again")
    );
}

#[tokio::test]
async fn a_correction_holds_when_the_server_has_since_started_leaving_null_fields_out() {
    // The walk stored the project with its null fields written; the audit pass retrieves it with
    // them left out, which the spec allows: the same object, so the same version, corrected.
    let org = org(4).await;
    walk(&org).await;
    let id = rename_ahead_of_its_event(&org).await;
    walk(&org).await;
    assert_eq!(last_change(&org.db, &id).await.time_source, "observed");
    let mut freedoms = org.emulator.freedoms();
    freedoms.omit_nulls = true;
    org.emulator.set_freedoms(freedoms);
    let event_at = time_of(&event_of(&org.emulator, "project.updated", &id));

    await_correction(&org, &id).await;

    assert_eq!(last_change(&org.db, &id).await, corrected_rename(event_at));
    let versions = count(
        &org.db,
        &format!("select count(*) from openai.project_versions where project_id = '{id}'"),
    )
    .await;
    assert_eq!(versions, 2, "created, then renamed: nothing for the nulls");
}

#[tokio::test]
async fn an_event_whose_json_holds_a_nul_escape_is_stored_with_a_replacement_character() {
    // JSON allows `\u0000` in a title; Postgres text and jsonb do not. One such event must not
    // fail every poll after it.
    let org = org(4).await;
    walk(&org).await;
    let id = active_ids(&org.emulator)[0].clone();
    org.emulator
        .rename_as(&id, "Nul\u{0}inside", "cy\u{0}@example.com")
        .expect("renamed");

    let first = pass(&org).await;
    let again = pass(&org).await;

    assert!(matches!(first, AuditOutcome::Applied(_)), "{first:?}");
    assert!(matches!(again, AuditOutcome::Idle { .. }), "{again:?}");
    let (title, email): (Option<String>, Option<String>) = sqlx::query_as(
        "select raw -> 'project.updated' -> 'changes_requested' ->> 'title', actor_email \
         from openai.audit_events where type = 'project.updated' and target_id = $1",
    )
    .bind(&id)
    .fetch_one(&org.db.pool)
    .await
    .expect("the event is stored");
    assert_eq!(
        (title.as_deref(), email.as_deref()),
        (Some("Nul\u{fffd}inside"), Some("cy\u{fffd}@example.com"))
    );
    let change = last_change(&org.db, &id).await;
    assert_eq!(
        (change.new_name.as_deref(), change.time_source.as_str()),
        (Some("Nul\u{fffd}inside"), "audit_log")
    );
}

#[tokio::test]
async fn an_event_whose_json_holds_an_unpaired_surrogate_is_stored_with_a_replacement_character() {
    // JSON allows a lone `\ud83d` (a title cut in the middle of an emoji); Rust strings and
    // Postgres text do not. One such event must not fail every poll after it.
    let db = TestDb::new().await;
    store::migrate(&db.pool).await.expect("migrations apply");
    let at = Utc::now().timestamp() - 60;
    let event = format!(
        r#"{{"id":"audit_log-cut","type":"project.updated","effective_at":{at},"actor":{{"type":"session","session":{{"user":{{"id":"user_cy","email":"cy@example.com"}}}}}},"project.updated":{{"id":"proj_cut","changes_requested":{{"title":"cut \ud83d"}}}}}}"#
    );
    let project = format!(
        r#"{{"id":"proj_cut","object":"organization.project","name":"cut \ud83d","created_at":{},"status":"active","archived_at":null}}"#,
        at - 3600
    );
    let deps = scripted_audit_passes(&db, "audit_log-cut", event, "proj_cut", project).await;

    let first = audit_log::pass(&deps, "manual").await;
    let again = audit_log::pass(&deps, "manual").await;

    assert!(matches!(first, Ok(AuditOutcome::Applied(_))), "{first:?}");
    assert!(matches!(again, Ok(AuditOutcome::Idle { .. })), "{again:?}");
    let (title,): (Option<String>,) = sqlx::query_as(
        "select raw -> 'project.updated' -> 'changes_requested' ->> 'title' \
         from openai.audit_events where id = 'audit_log-cut'",
    )
    .fetch_one(&db.pool)
    .await
    .expect("the event is stored");
    assert_eq!(title.as_deref(), Some("cut \u{fffd}"));
}

#[tokio::test]
async fn an_event_time_written_as_a_whole_float_is_read_as_the_same_seconds() {
    // JSON has one number type: `1787754034.0` is that integer, as the walk reads project times.
    let db = TestDb::new().await;
    store::migrate(&db.pool).await.expect("migrations apply");
    let at = Utc::now().timestamp() - 60;
    let event = format!(
        r#"{{"id":"audit_log-f","type":"project.archived","effective_at":{at}.0,"project.archived":{{"id":"proj_f"}}}}"#
    );
    let project = format!(
        r#"{{"id":"proj_f","object":"organization.project","name":"Floats","created_at":{},"status":"archived","archived_at":{at}}}"#,
        at - 3600
    );
    let deps = scripted_audit_passes(&db, "audit_log-f", event, "proj_f", project).await;

    let first = audit_log::pass(&deps, "manual").await;

    assert!(matches!(first, Ok(AuditOutcome::Applied(_))), "{first:?}");
    let (stored_at,): (DateTime<Utc>,) =
        sqlx::query_as("select effective_at from openai.audit_events where id = 'audit_log-f'")
            .fetch_one(&db.pool)
            .await
            .expect("the event is stored");
    assert_eq!(stored_at.timestamp(), at);
}

#[tokio::test]
async fn an_event_dated_in_a_year_no_calendar_of_the_database_holds_is_left_out_and_fails_no_poll()
{
    // -3e12 s is a year before any Postgres holds, though a 64-bit calendar still counts it.
    let db = TestDb::new().await;
    store::migrate(&db.pool).await.expect("migrations apply");
    let event = r#"{"id":"audit_log-old","type":"project.archived","effective_at":-3000000000000,"project.archived":{"id":"proj_old"}}"#;
    let project = r#"{"id":"proj_old","object":"organization.project","name":"Old","created_at":1697013376,"status":"archived","archived_at":1697013400}"#;
    let deps = scripted_audit_passes(
        &db,
        "audit_log-old",
        event.to_owned(),
        "proj_old",
        project.to_owned(),
    )
    .await;

    let first = audit_log::pass(&deps, "manual").await;
    let again = audit_log::pass(&deps, "manual").await;

    assert!(matches!(first, Ok(AuditOutcome::Idle { .. })), "{first:?}");
    assert!(matches!(again, Ok(AuditOutcome::Idle { .. })), "{again:?}");
    assert_eq!(
        count(&db, "select count(*) from openai.audit_events").await,
        0
    );
}

#[tokio::test]
async fn a_project_an_event_names_whose_creation_time_no_calendar_holds_is_stored_with_it_unknown()
{
    let db = TestDb::new().await;
    store::migrate(&db.pool).await.expect("migrations apply");
    let at = Utc::now().timestamp() - 60;
    let event = format!(
        r#"{{"id":"audit_log-far","type":"project.archived","effective_at":{at},"project.archived":{{"id":"proj_far"}}}}"#
    );
    let project = format!(
        r#"{{"id":"proj_far","object":"organization.project","name":"Far","created_at":1e13,"status":"archived","archived_at":{at}}}"#
    );
    let deps = scripted_audit_passes(&db, "audit_log-far", event, "proj_far", project).await;

    let first = audit_log::pass(&deps, "manual").await;

    assert!(matches!(first, Ok(AuditOutcome::Applied(_))), "{first:?}");
    let (created_at, archived_at): (Option<DateTime<Utc>>, Option<DateTime<Utc>>) = sqlx::query_as(
        "select created_at, archived_at from openai.projects where project_id = 'proj_far'",
    )
    .fetch_one(&db.pool)
    .await
    .expect("the project is stored");
    assert_eq!(
        (created_at, archived_at.map(|t| t.timestamp())),
        (None, Some(at))
    );
}

#[tokio::test]
async fn a_retrieve_answered_before_a_walk_that_saw_a_newer_state_never_reverts_it() {
    // The audit pass retrieves a project, and its answer is slow to arrive; meanwhile the
    // project is renamed again and a whole walk records the newer name. The slow answer is
    // older than what the walk stored: applying it would put the old name back as current.
    use std::sync::{Arc, Mutex};
    use tokio::sync::Notify;
    let db = TestDb::new().await;
    store::migrate(&db.pool).await.expect("migrations apply");
    let now = Utc::now().timestamp();
    let project = |name: &str| {
        format!(
            r#"{{"id":"proj_slow","object":"organization.project","name":"{name}","created_at":{},"status":"active","archived_at":null}}"#,
            now - 7200
        )
    };
    let state = Arc::new(Mutex::new(project("First")));
    let (arrived, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let event = format!(
        r#"{{"id":"audit_log-slow","type":"project.updated","effective_at":{},"actor":{{"type":"session","session":{{"user":{{"id":"user-1","email":"ann@example.com"}}}}}},"project.updated":{{"id":"proj_slow","changes_requested":{{"title":"Second"}}}}}}"#,
        now - 60
    );
    let json = |body: String| {
        (
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            body,
        )
    };
    let app = {
        let (list_state, get_state) = (state.clone(), state.clone());
        let (arrived, release) = (arrived.clone(), release.clone());
        axum::Router::new()
            .route(
                "/v1/organization/audit_logs",
                axum::routing::get(move || {
                    let page = format!(
                        r#"{{"object":"list","data":[{event}],"first_id":"audit_log-slow","last_id":"audit_log-slow","has_more":false}}"#
                    );
                    async move { json(page) }
                }),
            )
            .route(
                "/v1/organization/projects",
                axum::routing::get(move || {
                    let listed = list_state.lock().expect("state").clone();
                    async move {
                        json(format!(
                            r#"{{"object":"list","data":[{listed}],"first_id":"proj_slow","last_id":"proj_slow","has_more":false}}"#
                        ))
                    }
                }),
            )
            .route(
                "/v1/organization/projects/proj_slow",
                axum::routing::get(move || {
                    // The state as the request found it; the answer arrives only when released.
                    let answer = get_state.lock().expect("state").clone();
                    let (arrived, release) = (arrived.clone(), release.clone());
                    async move {
                        arrived.notify_one();
                        release.notified().await;
                        json(answer)
                    }
                }),
            )
    };
    let client = crate::client::serve_scripted(app).await;
    let walk_deps = sync_deps(&db, client.clone(), 100);
    sync(&walk_deps).await;
    *state.lock().expect("state") = project("Second");
    let deps = AuditDeps {
        pool: db.pool.clone(),
        client,
        enabled: AuditLogEnabled::On,
        overlap: Duration::from_secs(3600),
    };
    let poll = tokio::spawn(async move { audit_log::pass(&deps, "manual").await });
    arrived.notified().await;
    // Renamed again while the answer is on its way, and a walk records it.
    *state.lock().expect("state") = project("Third");
    sync(&walk_deps).await;
    release.notify_one();
    let outcome = poll.await.expect("the poll ran");

    assert!(outcome.is_ok(), "{outcome:?}");
    let (name,): (Option<String>,) =
        sqlx::query_as("select name from openai.project_current where project_id = 'proj_slow'")
            .fetch_one(&db.pool)
            .await
            .expect("the project");
    assert_eq!(
        name.as_deref(),
        Some("Third"),
        "the newer state stays current"
    );
}

#[tokio::test]
async fn two_renames_each_seen_by_a_walk_before_any_poll_both_take_their_events_times() {
    // The poller was not running (audit logging newly turned on in the config, or the log
    // refusing for a while) while walks recorded two renames at the times they saw them. The
    // first poll then reads both events: each tells the exact time of a version a walk already
    // holds, and the exact time wins over an observed one, for the earlier version too.
    let org = org(3).await;
    walk(&org).await;
    let id = active_ids(&org.emulator)[0].clone();
    org.emulator
        .rename_as(&id, "Middle", "ann@example.com")
        .expect("renamed");
    walk(&org).await;
    let middle_seen = last_change(&org.db, &id).await.changed_at;
    // Event times are whole seconds: the next rename happens in a later second than the walk.
    eventually("a new second", || async {
        Utc::now().timestamp() > middle_seen.timestamp()
    })
    .await;
    org.emulator
        .rename_as(&id, "Last", "bob@example.com")
        .expect("renamed");
    walk(&org).await;
    let events: Vec<Value> = org
        .emulator
        .audit_events()
        .into_iter()
        .filter(|e| e["type"] == "project.updated" && e["project.updated"]["id"] == id.as_str())
        .collect();
    let (first_at, last_at) = (time_of(&events[0]), time_of(&events[1]));

    pass(&org).await;

    let changes: Vec<Change> = sqlx::query_as(
        "select change, changed_at, new_name, changed_by, time_source from openai.project_changes \
         where project_id = $1 and change = 'renamed' order by changed_at",
    )
    .bind(&id)
    .fetch_all(&org.db.pool)
    .await
    .expect("changes");
    assert_eq!(
        changes,
        vec![
            Change {
                change: "renamed".into(),
                changed_at: first_at,
                new_name: Some("Middle".into()),
                changed_by: Some("ann@example.com".into()),
                time_source: "audit_log".into(),
            },
            Change {
                change: "renamed".into(),
                changed_at: last_at,
                new_name: Some("Last".into()),
                changed_by: Some("bob@example.com".into()),
                time_source: "audit_log".into(),
            },
        ]
    );
}

#[tokio::test]
async fn a_rename_then_an_archive_between_two_polls_each_take_their_events_time_and_author() {
    // A common way to retire a project: rename it, then archive it, within one poll interval.
    // Both events are in the log; the rename's event tells its exact time and author.
    let org = org(3).await;
    walk(&org).await;
    let id = active_ids(&org.emulator)[0].clone();
    org.emulator
        .rename_as(&id, "zz retired", "ann@example.com")
        .expect("renamed");
    let renamed_at = time_of(&event_of(&org.emulator, "project.updated", &id));
    eventually("a new second", || async {
        Utc::now().timestamp() > renamed_at.timestamp()
    })
    .await;
    org.emulator
        .archive_as(&id, "bob@example.com")
        .expect("archived");

    pass(&org).await;

    let changes: Vec<Change> = sqlx::query_as(
        "select change, changed_at, new_name, changed_by, time_source from openai.project_changes \
         where project_id = $1 and change <> 'created' order by changed_at",
    )
    .bind(&id)
    .fetch_all(&org.db.pool)
    .await
    .expect("changes");
    let archived_at = time_of(&event_of(&org.emulator, "project.archived", &id));
    assert_eq!(
        changes,
        vec![
            Change {
                change: "renamed".into(),
                changed_at: renamed_at,
                new_name: Some("zz retired".into()),
                changed_by: Some("ann@example.com".into()),
                time_source: "audit_log".into(),
            },
            Change {
                change: "archived".into(),
                changed_at: archived_at,
                new_name: Some("zz retired".into()),
                changed_by: Some("bob@example.com".into()),
                time_source: "api".into(),
            },
        ]
    );
}

#[tokio::test]
async fn a_create_whose_project_does_not_show_yet_still_gets_its_author_once_it_does() {
    // A new project can take a moment to show (the list lags its creates, and a retrieve
    // right after one may answer 404). The event's author must not be lost for that.
    let org = org(3).await;
    walk(&org).await;
    let fresh = org.emulator.create_as("Fresh", "fay@example.com");
    org.emulator.set_hidden(&fresh.id, true);
    pass(&org).await;
    org.emulator.set_hidden(&fresh.id, false);

    walk(&org).await;
    pass(&org).await;

    let created: Change = sqlx::query_as(
        "select change, changed_at, new_name, changed_by, time_source from openai.project_changes \
         where project_id = $1 and change = 'created'",
    )
    .bind(&fresh.id)
    .fetch_one(&org.db.pool)
    .await
    .expect("the walk recorded the project");
    assert_eq!(
        created.changed_by.as_deref(),
        Some("fay@example.com"),
        "{created:?}"
    );
}

#[tokio::test]
async fn an_event_dated_beyond_any_float_is_left_out_and_fails_no_poll() {
    // `effective_at` is an integer to the spec, and JSON bounds no number: `1e400` is one.
    let db = crate::helpers::TestDb::new().await;
    store::migrate(&db.pool).await.expect("migrations apply");
    let page = r#"{"object":"list","data":[
        {"id":"audit_vast","type":"user.added","effective_at":1e400,
         "actor":{"type":"session","session":{"user":{"id":"user-1","email":"vast@example.com"}}},
         "user.added":{"id":"user-1","data":{"role":"reader"}}}
        ],"first_id":"audit_vast","last_id":"audit_vast","has_more":false}"#;
    let client = crate::client::serve_scripted(axum::Router::new().route(
        "/v1/organization/audit_logs",
        axum::routing::get(move || async move {
            (
                [(axum::http::header::CONTENT_TYPE, "application/json")],
                page,
            )
        }),
    ))
    .await;
    let deps = AuditDeps {
        pool: db.pool.clone(),
        client,
        enabled: AuditLogEnabled::On,
        overlap: Duration::from_secs(3600),
    };

    let first = audit_log::pass(&deps, "manual").await;

    assert!(first.is_ok(), "{first:?}");
}

/// The `updated` and `renamed` changes of `id`, oldest first.
async fn later_changes(db: &TestDb, id: &str) -> Vec<Change> {
    sqlx::query_as(
        "select change, changed_at, new_name, changed_by, time_source from openai.project_changes \
         where project_id = $1 and change in ('updated', 'renamed') order by changed_at",
    )
    .bind(id)
    .fetch_all(&db.pool)
    .await
    .expect("changes")
}

/// Waits for a whole second later than `after`, and returns it (an event's time).
async fn next_second(after: DateTime<Utc>) -> DateTime<Utc> {
    eventually("a new second", || async {
        Utc::now().timestamp() > after.timestamp()
    })
    .await;
    DateTime::from_timestamp(Utc::now().timestamp(), 0).expect("a time")
}

#[tokio::test]
async fn two_key_changes_each_seen_by_a_walk_before_any_poll_each_take_their_own_events_time() {
    // A key change is a `project.updated` whose `changes_requested` holds no title (the
    // emulator writes it so). Two of them, each seen by a walk before the first poll: the first
    // version a walk saw must not take the time of the second event, a change after it was seen.
    let org = org(3).await;
    walk(&org).await;
    let id = active_ids(&org.emulator)[0].clone();
    let key_change = json!({"id": id, "changes_requested": {}});
    let first_at = next_second(Utc::now()).await;
    org.emulator
        .set_field(&id, "tier", json!("first"))
        .expect("changed");
    org.emulator.record_audit_event(
        "project.updated",
        first_at.timestamp(),
        Some(&id),
        "ann@example.com",
        key_change.clone(),
    );
    walk(&org).await;
    let first_seen = later_changes(&org.db, &id).await[0].changed_at;
    let second_at = next_second(first_seen).await;
    org.emulator
        .set_field(&id, "tier", json!("second"))
        .expect("changed");
    org.emulator.record_audit_event(
        "project.updated",
        second_at.timestamp(),
        Some(&id),
        "bob@example.com",
        key_change,
    );
    walk(&org).await;

    pass(&org).await;

    let changes = later_changes(&org.db, &id).await;
    let times: Vec<(DateTime<Utc>, Option<String>, String)> = changes
        .into_iter()
        .map(|c| (c.changed_at, c.changed_by, c.time_source))
        .collect();
    assert_eq!(
        times,
        vec![
            (first_at, Some("ann@example.com".into()), "audit_log".into()),
            (
                second_at,
                Some("bob@example.com".into()),
                "audit_log".into()
            ),
        ],
        "each version a walk saw starts at its own event (the first was seen at {first_seen})"
    );
}

#[tokio::test]
async fn a_name_a_walk_saw_keeps_its_own_events_time_when_the_project_is_renamed_away_and_back() {
    // Renamed to "Blue" (seen by a walk), then to "Red" and back to "Blue" between two walks:
    // the last walk sees no change. Two events name "Blue"; the later one is after the walk
    // that saw "Blue" and cannot be when that version began.
    let org = org(3).await;
    walk(&org).await;
    let id = active_ids(&org.emulator)[0].clone();
    org.emulator
        .rename_as(&id, "Blue", "ann@example.com")
        .expect("renamed");
    let blue_at = time_of(&event_of(&org.emulator, "project.updated", &id));
    walk(&org).await;
    let blue_seen = last_change(&org.db, &id).await.changed_at;
    next_second(blue_seen).await;
    org.emulator
        .rename_as(&id, "Red", "bob@example.com")
        .expect("renamed");
    let red_at = time_of(&event_of(&org.emulator, "project.updated", &id));
    next_second(red_at).await;
    org.emulator
        .rename_as(&id, "Blue", "bob@example.com")
        .expect("renamed");
    walk(&org).await;

    pass(&org).await;

    let (name,): (Option<String>,) =
        sqlx::query_as("select name from openai.projects_as_of($2) where project_id = $1")
            .bind(&id)
            .bind(blue_seen)
            .fetch_one(&org.db.pool)
            .await
            .expect("the project as the walk saw it");
    assert_eq!(
        name.as_deref(),
        Some("Blue"),
        "a walk saw Blue at {blue_seen}; history: {:?}",
        later_changes(&org.db, &id).await
    );
    assert_eq!(later_changes(&org.db, &id).await[0].changed_at, blue_at);
}
