//! Upgrading a database that an earlier release migrated and wrote.

use std::path::PathBuf;

use openai_project_sync::emulator::EmulatorConfig;
use openai_project_sync::store;

use crate::helpers::{
    TEST_KEY, TestDb, client_for, row_identities, start_emulator_with, sync, sync_deps,
};

/// Applies the migrations up to `last` only, as an earlier release would have.
async fn migrate_up_to(db: &TestDb, last: i64) {
    let source = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("migrations");
    let folder = std::env::temp_dir().join(format!(
        "ops-migrations-{}-{}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::create_dir_all(&folder).expect("a folder for the old migrations");
    for entry in std::fs::read_dir(&source).expect("the migrations folder") {
        let path = entry.expect("a migration").path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let version: i64 = name
            .split('_')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(i64::MAX);
        if version <= last {
            std::fs::copy(&path, folder.join(name)).expect("copy a migration");
        }
    }
    let migrator = sqlx::migrate::Migrator::new(folder.as_path())
        .await
        .expect("read the old migrations");
    migrator
        .run(&db.pool)
        .await
        .expect("the old migrations apply");
    let _ = std::fs::remove_dir_all(&folder);
}

#[tokio::test]
async fn upgrading_a_synced_database_keeps_its_history_and_its_guarantees() {
    let db = TestDb::new().await;
    migrate_up_to(&db, 2).await;
    let emulator = start_emulator_with(EmulatorConfig {
        admin_key: TEST_KEY.into(),
        projects: 40,
        seed: 5,
        ..EmulatorConfig::default()
    })
    .await;
    let client = client_for(&emulator);
    let mut walk = client.walk_projects(100, true);
    let mut projects = Vec::new();
    while let Some(page) = walk.next_raw_page().await.expect("list") {
        projects.extend(page.projects);
    }
    // As the first release wrote them: every project current with one version, one of them
    // renamed once before.
    for project in &projects {
        sqlx::query(
            "with c as ( \
                insert into openai.project_current \
                    (project_id, name, status, created_at, archived_at, external_key_id, residency, raw, \
                     first_seen_at, last_seen_at) \
                select $1::jsonb ->> 'id', f.name, f.status, f.created_at, f.archived_at, \
                       f.external_key_id, f.residency, $1::jsonb, now(), now() \
                from openai.project_fields($1::jsonb) f \
                returning * \
             ) \
             insert into openai.project_versions \
                (project_key, project_id, name, status, created_at, archived_at, external_key_id, \
                 residency, raw, change, valid_from) \
             select key, project_id, name, status, created_at, archived_at, external_key_id, residency, \
                    raw, 'created', created_at from c",
        )
        .bind(project.raw.get())
        .execute(&db.pool)
        .await
        .expect("write as the first release did");
    }
    let renamed = &projects[0].id;
    sqlx::query(
        "with old as ( \
            update openai.project_versions set valid_from = created_at + interval '1 day', change = 'renamed' \
            where project_id = $1 returning * \
         ) \
         insert into openai.project_versions \
            (project_key, project_id, name, status, created_at, raw, change, valid_from, valid_to) \
         select project_key, project_id, 'Its first name', 'active', created_at, \
                raw || '{\"name\": \"Its first name\"}', 'created', created_at, valid_from from old",
    )
    .bind(renamed)
    .execute(&db.pool)
    .await
    .expect("an earlier rename");
    let rows_before = row_identities(&db.pool, None).await;

    store::migrate(&db.pool).await.expect("the upgrade applies");
    let summary = sync(&sync_deps(&db, client, 10)).await;

    assert_eq!(
        (
            summary.counts.seen,
            summary.counts.inserted,
            summary.counts.changed
        ),
        (40, 0, 0),
        "what the earlier release wrote is recognised, not duplicated"
    );
    let rows_after = row_identities(&db.pool, None).await;
    assert_eq!(
        rows_after, rows_before,
        "history and current rows are kept as they were"
    );
    let names: Vec<(String,)> = sqlx::query_as(
        "select name from openai.project_versions where project_id = $1 order by valid_from",
    )
    .bind(renamed)
    .fetch_all(&db.pool)
    .await
    .expect("names");
    assert_eq!(names.len(), 2);
    assert_eq!(names[0].0, "Its first name");

    let overlap = sqlx::query(
        "insert into openai.project_versions \
            (project_key, project_id, name, created_at, raw, change, valid_from) \
         select project_key, project_id, 'Overlapping', created_at, raw, 'updated', created_at + interval '1 hour' \
         from openai.project_versions where project_id = $1 limit 1",
    )
    .bind(renamed)
    .execute(&db.pool)
    .await
    .expect_err("an overlapping version is still refused after the upgrade");
    assert_eq!(
        overlap
            .as_database_error()
            .and_then(|e| e.code())
            .as_deref(),
        Some("23P01"),
        "{overlap}"
    );
}

#[tokio::test]
async fn requests_written_before_the_name_rules_keep_moving_through_the_queue() {
    let db = TestDb::new().await;
    migrate_up_to(&db, 4).await;
    // Names the earlier release accepted and this one refuses at insert.
    for name in ["Cafe\u{301} Ops", "Pay\u{200B}ments", "Trailing\u{00A0}"] {
        sqlx::query("insert into openai.project_requests (name) values ($1)")
            .bind(name)
            .execute(&db.pool)
            .await
            .expect("the earlier release accepted it");
    }
    store::migrate(&db.pool).await.expect("the upgrade applies");
    let emulator = start_emulator_with(EmulatorConfig {
        admin_key: TEST_KEY.into(),
        seed: 5,
        ..EmulatorConfig::default()
    })
    .await;
    let deps = openai_project_sync::worker::WorkerDeps {
        pool: db.pool.clone(),
        client: client_for(&emulator),
        page_size: 100,
        lease: std::time::Duration::from_secs(5),
        max_attempts: 5,
        retry_base_delay: std::time::Duration::from_millis(10),
        retry_max_delay: std::time::Duration::from_millis(50),
        reconcile_grace: std::time::Duration::from_millis(200),
        unresolved: openai_project_sync::worker::Unresolved::Retry,
        before_create: None,
    };

    let report =
        openai_project_sync::worker::tick(&deps, &tokio_util::sync::CancellationToken::new())
            .await
            .expect("the worker is not stopped by rows of an earlier release");

    assert_eq!(report.created, 3);
    let refused = sqlx::query("insert into openai.project_requests (name) values ($1)")
        .bind("Cafe\u{301} Ops")
        .execute(&db.pool)
        .await
        .expect_err("new rows follow the new rules");
    assert_eq!(
        refused.as_database_error().and_then(|e| e.constraint()),
        Some("request_name_is_not_nfc_normalized")
    );
}

#[tokio::test]
async fn upgrading_keeps_the_days_known_read_after_they_ended_and_reads_the_rest_again() {
    // Before 0015 a day counted as read from its first reading, taken while it filled up or not.
    let db = TestDb::new().await;
    migrate_up_to(&db, 14).await;
    let day = |n: i64| format!("2026-03-{n:02} 00:00:00+00");
    for (start, first_read) in [
        (day(1), "2026-03-02 01:00:00+00"),
        (day(2), "2026-03-02 10:00:00+00"),
        (day(3), "2026-03-03 10:00:00+00"),
    ] {
        sqlx::query(
            "insert into openai.cost_days (bucket_start, first_read_at, first_run) \
             values ($1::timestamptz, $2::timestamptz, 1)",
        )
        .bind(start)
        .bind(first_read)
        .execute(&db.pool)
        .await
        .expect("a read day");
    }
    // Day 2 was read at 10:00 while it filled up, then rewritten by a pass the morning after.
    sqlx::query(
        "insert into openai.costs (bucket_start, bucket_end, project_id, line_item, currency, amount, \
         raw, first_fetched_at, last_fetched_at, first_run, last_run) \
         values ($1::timestamptz, $1::timestamptz + interval '24 hours', 'proj_a', 'input', 'usd', 2, \
         '{}', '2026-03-02 10:00:00+00', '2026-03-03 09:00:00+00', 1, 2)",
    )
    .bind(day(2))
    .execute(&db.pool)
    .await
    .expect("a cost row");

    store::migrate(&db.pool)
        .await
        .expect("the new migrations apply");

    let days: Vec<(String, Option<String>)> = sqlx::query_as(
        "select to_char(bucket_start at time zone 'UTC', 'DD'), \
         to_char(read_after_end_at at time zone 'UTC', 'DD HH24:MI') \
         from openai.cost_days order by bucket_start",
    )
    .fetch_all(&db.pool)
    .await
    .expect("days");
    assert_eq!(
        days,
        vec![
            ("01".into(), Some("02 01:00".into())),
            ("02".into(), Some("03 09:00".into())),
            ("03".into(), None),
        ],
        "first read after its end; written after its end; read only while in progress"
    );
}

#[tokio::test]
async fn upgrading_a_database_with_audit_events_and_waiting_requests_keeps_the_look_ups_by_name() {
    let db = TestDb::new().await;
    migrate_up_to(&db, 13).await;
    // An event of a create whose name holds a direction mark, which this release drops in
    // comparisons, and a project stored before the upgrade.
    sqlx::query(
        "insert into openai.audit_events (id, type, effective_at, target_id, actor_type, actor_id, raw) \
         values ('audit_old', 'project.created', now() - interval '1 minute', 'proj_old', 'api_key', 'key_own', \
                 jsonb_build_object('project.created', jsonb_build_object('id', 'proj_old', \
                     'data', jsonb_build_object('name', U&'Ops\\200E'))))",
    )
    .execute(&db.pool)
    .await
    .expect("an event as the earlier release stored it");
    sqlx::query(
        "insert into openai.project_current \
            (project_id, name, status, created_at, raw, raw_digest, first_seen_at, last_seen_at) \
         values ('proj_kept', 'Kept', 'active', now() - interval '1 day', \
                 '{\"id\":\"proj_kept\",\"name\":\"Kept\",\"created_at\":1}', 0, now(), now())",
    )
    .execute(&db.pool)
    .await
    .expect("a stored project");

    store::migrate(&db.pool).await.expect("the upgrade applies");

    let since = chrono::Utc::now() - chrono::Duration::hours(1);
    let found = store::created_by_keys(&db.pool, "Ops", since, &["key_own".to_owned()])
        .await
        .expect("look up by name");
    assert_eq!(found, ["proj_old"]);
    // The same look-up through the index on the comparable name, as a large table would run it.
    let mut tx = db.pool.begin().await.expect("a transaction");
    sqlx::query("set local enable_seqscan = off")
        .execute(&mut *tx)
        .await
        .expect("prefer the index");
    let (by_index,): (i64,) = sqlx::query_as(
        "select count(*) from openai.audit_events where type = 'project.created' \
           and openai.comparable_name(raw -> 'project.created' -> 'data' ->> 'name') = openai.comparable_name('Ops')",
    )
    .fetch_one(&mut *tx)
    .await
    .expect("look up by index");
    assert_eq!(
        by_index, 1,
        "the index still holds the names as the earlier release compared them"
    );
    tx.rollback().await.expect("rollback");
    let (stored_at_known,): (bool,) = sqlx::query_as(
        "select stored_at is not null from openai.project_current where project_id = 'proj_kept'",
    )
    .fetch_one(&db.pool)
    .await
    .expect("stored_at");
    assert!(stored_at_known);
}

#[tokio::test]
async fn upgrading_keeps_a_day_read_after_it_ended_whose_only_trace_is_a_removal() {
    // Read at 10:00 while it filled up with two rows; the pass the morning after found one of
    // them gone: it removed that row with a revision and left the other as it was. The day was
    // read after it ended then, though no stored cost row says so.
    let db = TestDb::new().await;
    migrate_up_to(&db, 14).await;
    let day = "2026-03-02 00:00:00+00";
    sqlx::query(
        "insert into openai.cost_days (bucket_start, first_read_at, first_run) \
         values ($1::timestamptz, '2026-03-02 10:00:00+00', 1)",
    )
    .bind(day)
    .execute(&db.pool)
    .await
    .expect("a read day");
    sqlx::query(
        "insert into openai.costs (bucket_start, bucket_end, project_id, line_item, currency, amount, \
         raw, first_fetched_at, last_fetched_at, first_run, last_run) \
         values ($1::timestamptz, $1::timestamptz + interval '24 hours', 'proj_a', 'input', 'usd', 2, \
         '{}', '2026-03-02 10:00:00+00', '2026-03-02 10:00:00+00', 1, 1)",
    )
    .bind(day)
    .execute(&db.pool)
    .await
    .expect("the row that stayed");
    sqlx::query(
        "insert into openai.cost_revisions (bucket_start, project_id, line_item, currency, \
         old_amount, new_amount, provisional, observed_at, run_id) \
         values ($1::timestamptz, 'proj_b', 'input', 'usd', 1, null, true, '2026-03-03 09:00:00+00', 2)",
    )
    .bind(day)
    .execute(&db.pool)
    .await
    .expect("the removal");

    store::migrate(&db.pool)
        .await
        .expect("the new migrations apply");

    let (read_after_end,): (Option<String>,) = sqlx::query_as(
        "select to_char(read_after_end_at at time zone 'UTC', 'DD HH24:MI') from openai.cost_days",
    )
    .fetch_one(&db.pool)
    .await
    .expect("the day");
    assert_eq!(read_after_end.as_deref(), Some("03 09:00"));
}
