//! Roles a DBA can live with: a daemon that does not own the tables, grants for roles created
//! after migrating, and "own request" meaning the login that inserted it.

use crate::helpers::{TEST_KEY, TestDb, output_text, run_binary_async, start_emulator};

/// A login role of this test's own, dropped (with what it owns here) when the test ends.
struct Login {
    name: String,
    admin: sqlx::PgPool,
}

impl Login {
    async fn create(db: &TestDb, prefix: &str, member_of: &[&str]) -> Login {
        let suffix = db.url.rsplit('/').next().unwrap_or("x").to_owned();
        let name = format!("{prefix}_{suffix}");
        let groups = if member_of.is_empty() {
            String::new()
        } else {
            format!(" in role {}", member_of.join(", "))
        };
        sqlx::query(&format!("create role {name} login{groups}"))
            .execute(&db.pool)
            .await
            .expect("create a login");
        Login {
            name,
            admin: db.pool.clone(),
        }
    }

    /// Drops the login; roles outlive the test database.
    async fn drop_now(&self) {
        sqlx::query(&format!("drop owned by {}", self.name))
            .execute(&self.admin)
            .await
            .expect("drop owned");
        sqlx::query(&format!("drop role {}", self.name))
            .execute(&self.admin)
            .await
            .expect("drop the login");
    }
}

async fn migrated() -> TestDb {
    let db = TestDb::new().await;
    openai_project_sync::store::migrate(&db.pool)
        .await
        .expect("migrations apply");
    db
}

#[tokio::test]
async fn a_daemon_role_that_does_not_own_the_tables_processes_requests_and_walks() {
    let db = migrated().await;
    let daemon = Login::create(&db, "daemon", &["openai_daemon"]).await;
    let emulator = start_emulator(40).await;
    let base = emulator.base_url();
    let url = db.url_as(&daemon.name);
    sqlx::query(
        "insert into openai.project_requests (name) values ('Made by a least-privilege daemon')",
    )
    .execute(&db.pool)
    .await
    .expect("a request");
    let env = [
        ("DATABASE_URL", url.as_str()),
        ("OPENAI_BASE_URL", base.as_str()),
        ("OPENAI_ADMIN_KEY", TEST_KEY),
    ];

    let check = run_binary_async(&["check"], &env).await;
    let requests = run_binary_async(&["requests"], &env).await;
    let sync = run_binary_async(&["sync"], &env).await;

    let check_text = output_text(&check);
    assert_eq!(check.status.code(), Some(0), "{check_text}");
    assert!(
        check_text.contains("may claim requests, write outcomes and run walks"),
        "{check_text}"
    );
    assert_eq!(
        requests.status.code(),
        Some(0),
        "{}",
        output_text(&requests)
    );
    assert_eq!(sync.status.code(), Some(0), "{}", output_text(&sync));
    let (status,): (String,) = sqlx::query_as("select status from openai.project_requests")
        .fetch_one(&db.pool)
        .await
        .expect("the request");
    assert_eq!(status, "created", "row security did not hide the queue");
    let (walks, cost_passes): (i64, i64) = sqlx::query_as(
        "select count(*) filter (where resource = 'projects'), count(*) filter (where resource = 'costs') \
         from openai.sync_runs where status = 'succeeded'",
    )
    .fetch_one(&db.pool)
    .await
    .expect("walks");
    assert_eq!(
        (walks, cost_passes),
        (1, 1),
        "the daemon role runs walks and cost passes"
    );
    daemon.drop_now().await;
}

#[tokio::test]
async fn check_names_the_grant_a_daemon_role_is_missing() {
    let db = migrated().await;
    let bare = Login::create(&db, "bare", &[]).await;
    sqlx::raw_sql(&format!(
        "grant usage on schema openai to {0}; grant select, update on openai.project_requests to {0}",
        bare.name
    ))
    .execute(&db.pool)
    .await
    .expect("some rights");
    let emulator = start_emulator(1).await;
    let base = emulator.base_url();
    let url = db.url_as(&bare.name);

    let check = run_binary_async(
        &["check"],
        &[
            ("DATABASE_URL", url.as_str()),
            ("OPENAI_BASE_URL", base.as_str()),
            ("OPENAI_ADMIN_KEY", TEST_KEY),
        ],
    )
    .await;

    let text = output_text(&check);
    assert_eq!(check.status.code(), Some(1), "{text}");
    assert!(
        text.contains("FAIL  database")
            && text.contains(&format!("grant openai_daemon to {}", bare.name))
            && text.contains(&format!(
                "grant select, insert, update on openai.project_current to {}",
                bare.name
            ))
            && text.contains(&format!(
                "grant select on public._sqlx_migrations to {}",
                bare.name
            ))
            && text.contains("row security"),
        "{text}"
    );
    bare.drop_now().await;
}

#[tokio::test]
async fn a_role_that_lost_or_never_had_its_grants_gets_them_from_grant_roles_idempotently() {
    let db = migrated().await;
    let analyst = Login::create(&db, "reader", &["openai_analyst"]).await;
    // As if openai_analyst had been created after the migrations ran.
    sqlx::raw_sql(
        "revoke all on all tables in schema openai from openai_analyst; \
         revoke usage on schema openai from openai_analyst",
    )
    .execute(&db.pool)
    .await
    .expect("revoke");
    let url = db.url_as(&analyst.name);
    let read = |url: String| async move {
        let mut connection = <sqlx::PgConnection as sqlx::Connection>::connect(&url)
            .await
            .expect("the analyst logs in");
        sqlx::query("select count(*) from openai.project_changes")
            .execute(&mut connection)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    };

    let before = read(url.clone()).await;
    for _ in 0..2 {
        sqlx::query("select openai.grant_roles()")
            .execute(&db.pool)
            .await
            .expect("grant_roles runs, again and again");
    }
    let after = read(url).await;

    assert!(
        before
            .as_ref()
            .is_err_and(|e| e.contains("permission denied")),
        "{before:?}"
    );
    assert_eq!(after, Ok(()));
    analyst.drop_now().await;
}

#[tokio::test]
async fn a_table_a_later_migration_adds_is_writable_by_the_daemon_role_and_readable_by_analysts() {
    let db = migrated().await;
    // As a later migration would, run by the role that ran the earlier ones.
    sqlx::query(
        "create table openai.added_later (id bigint generated always as identity, note text)",
    )
    .execute(&db.pool)
    .await
    .expect("a later table");
    let (daemon_writes, daemon_uses_sequence, analyst_reads): (bool, bool, bool) = sqlx::query_as(
        "select has_table_privilege('openai_daemon', 'openai.added_later', 'SELECT, INSERT, UPDATE'), \
                has_sequence_privilege('openai_daemon', \
                    pg_get_serial_sequence('openai.added_later', 'id'), 'USAGE'), \
                has_table_privilege('openai_analyst', 'openai.added_later', 'SELECT')",
    )
    .fetch_one(&db.pool)
    .await
    .expect("privileges");

    assert!(
        daemon_writes,
        "the daemon role cannot write a table added later"
    );
    assert!(
        daemon_uses_sequence,
        "the daemon role cannot use its sequence"
    );
    assert!(analyst_reads, "analysts cannot read a table added later");
}

#[tokio::test]
async fn a_daemon_role_that_cannot_apply_a_pending_migration_says_who_must_run_migrate() {
    let db = migrated().await;
    let daemon = Login::create(&db, "upgraded", &["openai_daemon"]).await;
    // As if this version brought a migration the schema's owner has not applied yet.
    sqlx::query(
        "delete from public._sqlx_migrations \
         where version = (select max(version) from public._sqlx_migrations)",
    )
    .execute(&db.pool)
    .await
    .expect("forget the newest migration");
    let pool = sqlx::PgPool::connect(&db.url_as(&daemon.name))
        .await
        .expect("the daemon logs in");

    let refused = openai_project_sync::store::migrate(&pool)
        .await
        .expect_err("the daemon role cannot migrate")
        .to_string();
    pool.close().await;

    assert!(
        refused.contains("1 migration(s)")
            && refused.contains(&daemon.name)
            && refused.contains("`openai-project-sync migrate` as the owner"),
        "{refused}"
    );
    daemon.drop_now().await;
}

#[tokio::test]
async fn a_daemon_role_without_temporary_fails_its_walk_and_leaves_no_walk_lock_behind() {
    let db = migrated().await;
    let daemon = Login::create(&db, "notemp", &["openai_daemon"]).await;
    let (database,): (String,) = sqlx::query_as("select current_database()::text")
        .fetch_one(&db.pool)
        .await
        .expect("name");
    sqlx::query(&format!(
        "revoke temporary on database {database} from public"
    ))
    .execute(&db.pool)
    .await
    .expect("revoke temporary");
    let options: sqlx::postgres::PgConnectOptions =
        db.url_as(&daemon.name).parse().expect("URL parses");

    let opened = openai_project_sync::store::WalkSession::open(&options).await;
    let (locks,): (i64,) = sqlx::query_as(
        "select count(*) from pg_locks where locktype = 'advisory' and granted \
         and database = (select oid from pg_database where datname = current_database())",
    )
    .fetch_one(&db.pool)
    .await
    .expect("locks");

    assert!(
        opened
            .as_ref()
            .is_err_and(|e| e.to_string().contains("permission denied")),
        "{:?}",
        opened.as_ref().map(|_| "opened")
    );
    assert_eq!(locks, 0, "the walk lock outlived the failed start");
    daemon.drop_now().await;
}

#[tokio::test]
async fn tables_a_lower_numbered_migration_added_after_the_roles_migration_are_granted_on_upgrade()
{
    let db = migrated().await;
    // As a database that had the roles migration before the audit log's lower-numbered one
    // arrived: the audit tables were made after grant_roles() last ran.
    sqlx::raw_sql(
        "revoke all on openai.audit_events, openai.audit_log_state from openai_daemon; \
         delete from public._sqlx_migrations where version = 13",
    )
    .execute(&db.pool)
    .await
    .expect("as before the upgrade");

    openai_project_sync::store::migrate(&db.pool)
        .await
        .expect("the upgrade migrates");

    let (daemon_writes,): (bool,) = sqlx::query_as(
        "select has_table_privilege('openai_daemon', 'openai.audit_events', 'SELECT, INSERT, UPDATE') \
            and has_table_privilege('openai_daemon', 'openai.audit_log_state', 'SELECT, INSERT, UPDATE')",
    )
    .fetch_one(&db.pool)
    .await
    .expect("privileges");
    assert!(
        daemon_writes,
        "the daemon role cannot write the audit log's tables"
    );
}

#[tokio::test]
async fn two_logins_sharing_openai_ops_cannot_cancel_each_others_requests() {
    let db = migrated().await;
    let alice = Login::create(&db, "alice", &["openai_ops"]).await;
    let bob = Login::create(&db, "bob", &["openai_ops"]).await;
    let as_ops = |login: String| {
        let url = db.url_as(&login);
        async move {
            let mut connection = <sqlx::PgConnection as sqlx::Connection>::connect(&url)
                .await
                .expect("log in");
            sqlx::query("set role openai_ops")
                .execute(&mut connection)
                .await
                .expect("act as the shared ops role");
            connection
        }
    };
    let mut alices = as_ops(alice.name.clone()).await;
    let mut bobs = as_ops(bob.name.clone()).await;

    let (hers, by): (i64, String) = sqlx::query_as(
        "insert into openai.project_requests (name) values ('Alice''s') returning id, requested_by",
    )
    .fetch_one(&mut alices)
    .await
    .expect("alice requests");
    let bob_cancels =
        sqlx::query("update openai.project_requests set status = 'cancelled' where id = $1")
            .bind(hers)
            .execute(&mut bobs)
            .await
            .expect("filtered, not refused");
    let bob_spoofs = sqlx::query(
        "insert into openai.project_requests (name, requested_by) values ('Spoof', $1)",
    )
    .bind(&alice.name)
    .execute(&mut bobs)
    .await;
    let alice_cancels =
        sqlx::query("update openai.project_requests set status = 'cancelled' where id = $1")
            .bind(hers)
            .execute(&mut alices)
            .await
            .expect("alice cancels");
    drop((alices, bobs));

    assert_eq!(by, alice.name, "the login, not the shared role");
    assert_eq!(
        bob_cancels.rows_affected(),
        0,
        "bob cannot reach alice's request"
    );
    assert!(bob_spoofs.is_err(), "bob cannot insert as alice");
    assert_eq!(alice_cancels.rows_affected(), 1);
    let (error,): (Option<String>,) =
        sqlx::query_as("select error from openai.project_requests where id = $1")
            .bind(hers)
            .fetch_one(&db.pool)
            .await
            .expect("the request");
    assert_eq!(error, Some(format!("cancelled by {}", alice.name)));
    alice.drop_now().await;
    bob.drop_now().await;
}

#[tokio::test]
async fn check_fails_while_the_daemon_roles_queue_policy_is_missing_since_no_request_would_be_claimed()
 {
    let db = migrated().await;
    // As when the schema was migrated before a DBA created openai_daemon: the policy that lets
    // it see the queue through row security was never made (grant_roles() makes it).
    sqlx::query("drop policy requests_daemon_works_the_queue on openai.project_requests")
        .execute(&db.pool)
        .await
        .expect("drop the policy");
    let daemon = Login::create(&db, "nopolicy", &["openai_daemon"]).await;
    let emulator = start_emulator(1).await;
    let base = emulator.base_url();
    let url = db.url_as(&daemon.name);
    let env = [
        ("DATABASE_URL", url.as_str()),
        ("OPENAI_BASE_URL", base.as_str()),
        ("OPENAI_ADMIN_KEY", TEST_KEY),
    ];

    let check = run_binary_async(&["check"], &env).await;

    let text = output_text(&check);
    daemon.drop_now().await;
    assert_eq!(check.status.code(), Some(1), "{text}");
    assert!(
        text.contains("FAIL  database") && text.contains("grant_roles"),
        "{text}"
    );
}

/// A login made with a name that needs quoting; dropped by `Login::drop_now`.
async fn quoted_login(db: &TestDb, name: &str) -> Login {
    sqlx::query(&format!("create role \"{name}\" login bypassrls"))
        .execute(&db.pool)
        .await
        .expect("create a login");
    Login {
        name: format!("\"{name}\""),
        admin: db.pool.clone(),
    }
}

/// Runs `check`, then as the schema's owner the statements its fix line gives; the output.
/// A migrated database, a login of its own whose name starts `prefix` (quoted where it must
/// be), and an emulator of `projects`: what a command run as that login needs.
struct AsLogin {
    db: TestDb,
    login: Login,
    url: String,
    base: String,
    _emulator: openai_project_sync::emulator::EmulatorHandle,
}

impl AsLogin {
    async fn new(prefix: &str, projects: usize) -> AsLogin {
        let db = migrated().await;
        let suffix = db.url.rsplit('/').next().unwrap_or("x").to_owned();
        let login = quoted_login(&db, &format!("{prefix}{suffix}")).await;
        let emulator = start_emulator(projects).await;
        AsLogin {
            url: db.url_as(login.name.trim_matches('"')),
            base: emulator.base_url(),
            db,
            login,
            _emulator: emulator,
        }
    }

    /// The environment a command run as the login gets.
    fn env(&self) -> [(&'static str, &str); 3] {
        [
            ("DATABASE_URL", self.url.as_str()),
            ("OPENAI_BASE_URL", self.base.as_str()),
            ("OPENAI_ADMIN_KEY", TEST_KEY),
        ]
    }
}

async fn follow_checks_advice(db: &TestDb, env: &[(&str, &str)]) -> String {
    let check = run_binary_async(&["check"], env).await;
    let text = output_text(&check);
    let fix = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("fix: as the schema's owner, run: "))
        .unwrap_or_else(|| panic!("check names grants to run:\n{text}"));
    sqlx::raw_sql(fix)
        .execute(&db.pool)
        .await
        .unwrap_or_else(|e| panic!("check's advice runs ({fix}): {e}"));
    text
}

#[tokio::test]
async fn a_role_given_exactly_what_check_asks_for_runs_every_pass() {
    let run = AsLogin::new("svc_", 5).await;
    let (db, login, env) = (&run.db, &run.login, run.env());

    // The DBA has let it into the schema; check names every other grant.
    sqlx::query(&format!("grant usage on schema openai to {}", login.name))
        .execute(&db.pool)
        .await
        .expect("schema usage");
    follow_checks_advice(db, &env).await;
    let check = run_binary_async(&["check"], &env).await;
    let sync = run_binary_async(&["sync"], &env).await;

    let check_text = output_text(&check);
    let sync_text = output_text(&sync);
    login.drop_now().await;
    assert_eq!(check.status.code(), Some(0), "{check_text}");
    assert_eq!(
        sync.status.code(),
        Some(0),
        "check passed, so every pass should run:\n{sync_text}"
    );
}

#[tokio::test]
async fn checks_grant_advice_quotes_a_role_name_that_needs_it() {
    let run = AsLogin::new("svc-openai-", 1).await;
    let (db, login, env) = (&run.db, &run.login, run.env());

    sqlx::query(&format!("grant usage on schema openai to {}", login.name))
        .execute(&db.pool)
        .await
        .expect("schema usage");
    follow_checks_advice(db, &env).await;
    let check = run_binary_async(&["check"], &env).await;

    let text = output_text(&check);
    login.drop_now().await;
    assert!(text.contains("ok    database"), "{text}");
}

#[tokio::test]
async fn check_gives_a_login_with_no_rights_yet_the_grants_to_run() {
    let run = AsLogin::new("fresh_", 1).await;
    let (login, env) = (&run.login, run.env());

    let check = run_binary_async(&["check"], &env).await;

    let text = output_text(&check);
    login.drop_now().await;
    assert!(
        text.contains(&format!(
            "grant usage on schema openai to {}",
            login.name.trim_matches('"')
        )),
        "{text}"
    );
}
