//! The database itself keeps each project's history contiguous, and history queries read by index.

use crate::helpers::{TestDb, client_for, start_emulator, sync, sync_deps};

async fn synced(projects: usize) -> TestDb {
    let db = TestDb::new().await;
    openai_project_sync::store::migrate(&db.pool)
        .await
        .expect("migrations apply");
    let emulator = start_emulator(projects).await;
    sync(&sync_deps(&db, client_for(&emulator), 100)).await;
    emulator.shutdown();
    db
}

/// The error of a statement the database must refuse: its code and its whole text.
async fn refused(db: &TestDb, sql: &str) -> (String, String) {
    let error = sqlx::query(sql)
        .execute(&db.pool)
        .await
        .expect_err("the database refuses it");
    let database = error.as_database_error().expect("a database error");
    let code = database.code().unwrap_or_default().into_owned();
    (code, error.to_string())
}

#[tokio::test]
async fn a_hand_made_gap_in_a_projects_history_is_refused_with_a_clear_error() {
    let db = synced(5).await;
    let first: (String,) =
        sqlx::query_as("select project_id from openai.project_current order by key limit 1")
            .fetch_one(&db.pool)
            .await
            .expect("a project");
    let id = first.0;

    // A rename recorded by hand with a gap before it: close the open version, open the next later.
    let (code, message) = refused(
        &db,
        &format!(
            "with closed as ( \
                update openai.project_versions set valid_to = now() - interval '1 hour' \
                where project_id = '{id}' and valid_to is null returning * \
             ) \
             insert into openai.project_versions \
                (project_key, project_id, name, status, created_at, raw, change, valid_from) \
             select project_key, project_id, 'Renamed by hand', status, created_at, raw, 'renamed', now() from closed"
        ),
    )
    .await;
    assert_eq!(code, "23000", "{message}");
    assert!(
        message.contains(&format!("the history of project {id} would have a gap")),
        "{message}"
    );

    // Closing the open version alone leaves its project without a current version.
    let (code, _) = refused(
        &db,
        &format!("update openai.project_versions set valid_to = now() where project_id = '{id}' and valid_to is null"),
    )
    .await;
    assert_eq!(code, "23000");

    // Removing a version is refused too.
    let (code, message) = refused(
        &db,
        &format!("delete from openai.project_versions where project_id = '{id}'"),
    )
    .await;
    assert_eq!(code, "23000", "{message}");
}

#[tokio::test]
async fn a_history_split_across_two_keys_is_refused() {
    let db = synced(5).await;
    let (code, message) = refused(
        &db,
        "with victim as (select project_id from openai.project_current order by key limit 1), \
         closed as ( \
            update openai.project_versions v set valid_to = now() \
            from victim where v.project_id = victim.project_id and v.valid_to is null returning v.* \
         ) \
         insert into openai.project_versions \
            (project_key, project_id, name, status, created_at, raw, change, valid_from) \
         select project_key + 1000000, project_id, name, status, created_at, raw, 'updated', now() from closed",
    )
    .await;
    assert_eq!(code, "23000", "{message}");
    assert!(message.contains("would have a gap"), "{message}");
}

#[tokio::test]
async fn one_projects_changes_and_the_changes_since_a_time_are_read_by_index() {
    let db = synced(300).await;
    let mut connection = db.pool.acquire().await.expect("a connection");
    // A small table is cheapest to scan whole; the question is whether an index path exists.
    sqlx::query("set enable_seqscan = off")
        .execute(&mut *connection)
        .await
        .expect("set");
    let mut plan = async |sql: &str| {
        let rows: Vec<(String,)> = sqlx::query_as(sql)
            .fetch_all(&mut *connection)
            .await
            .expect("explain");
        rows.into_iter()
            .map(|(line,)| line)
            .collect::<Vec<_>>()
            .join("\n")
    };

    let one =
        plan("explain select * from openai.project_changes where project_id = 'proj_x'").await;
    let since = plan(
        "explain select * from openai.project_changes where changed_at >= now() - interval '1 day'",
    )
    .await;

    for (what, plan) in [("one project", one), ("since a time", since)] {
        assert!(
            !plan.contains("WindowAgg"),
            "{what}: no window over all history\n{plan}"
        );
        assert!(!plan.contains("Seq Scan"), "{what}: no full scan\n{plan}");
    }
}

#[tokio::test]
async fn moving_a_version_to_another_project_a_version_under_another_key_before_the_rest_and_truncating_are_refused()
 {
    let db = synced(5).await;
    let ids: Vec<(String,)> =
        sqlx::query_as("select project_id from openai.project_current order by key")
            .fetch_all(&db.pool)
            .await
            .expect("ids");
    let (a, b) = (&ids[0].0, &ids[1].0);

    let moved = refused(
        &db,
        &format!(
            "update openai.project_versions set project_id = 'proj_elsewhere' \
             where project_id = '{a}' and valid_to is null"
        ),
    )
    .await;
    let split = refused(
        &db,
        &format!(
            "insert into openai.project_versions (project_key, project_id, name, status, created_at, raw, change, valid_from) \
             select project_key + 1000000, project_id, name, status, created_at, raw, 'created', valid_from - interval '1 day' \
             from openai.project_versions where project_id = '{b}' order by valid_from limit 1"
        ),
    )
    .await;
    let truncated = refused(&db, "truncate openai.project_versions").await;

    for (what, (code, message)) in [("moved", moved), ("split", split), ("truncated", truncated)] {
        assert_eq!(code, "23000", "{what}: {message}");
    }
}

#[tokio::test]
async fn a_version_added_before_a_projects_first_is_accepted_only_when_it_ends_where_the_first_begins()
 {
    let db = synced(5).await;
    let (id,): (String,) =
        sqlx::query_as("select project_id from openai.project_current order by key limit 1")
            .fetch_one(&db.pool)
            .await
            .expect("a project");
    let before_first = |starts: &str, ends: &str| {
        format!(
            "insert into openai.project_versions \
                (project_key, project_id, name, status, created_at, raw, change, valid_from, valid_to) \
             select project_key, project_id, 'Earlier', status, created_at, raw, 'created', \
                    valid_from - interval '{starts}', valid_from - interval '{ends}' \
             from openai.project_versions where project_id = '{id}' order by valid_from limit 1"
        )
    };

    let (code, message) = refused(&db, &before_first("2 days", "1 day")).await;
    assert_eq!(code, "23000", "a day missing before the first: {message}");
    assert!(message.contains("would have a gap"), "{message}");

    sqlx::query(&before_first("1 day", "0 days"))
        .execute(&db.pool)
        .await
        .expect("a version ending where the first begins leaves no gap");
    let (versions,): (i64,) =
        sqlx::query_as("select count(*) from openai.project_versions where project_id = $1")
            .bind(&id)
            .fetch_one(&db.pool)
            .await
            .expect("count");
    assert_eq!(versions, 2);
}

#[tokio::test]
async fn a_gap_made_in_a_statement_touching_over_a_thousand_projects_is_refused_too() {
    let db = synced(1_100).await;
    // Closing every open version at once leaves each project without a current version.
    let (code, message) = refused(
        &db,
        "update openai.project_versions set valid_to = now() where valid_to is null",
    )
    .await;
    assert_eq!(code, "23000", "{message}");
    assert!(message.contains("would have a gap"), "{message}");
}
