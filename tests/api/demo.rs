//! `demo` on a bare machine: its own Postgres, the emulator, the daemon; Ctrl-C stops it all.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::{Connection, PgConnection};

use crate::helpers::eventually;

#[tokio::test]
async fn demo_starts_its_own_postgres_syncs_prints_how_to_connect_and_stops_on_ctrl_c() {
    let data_dir = std::env::temp_dir().join(format!("ops-demo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data_dir);
    let data_arg = data_dir.to_string_lossy().to_string();
    let (demo, printed) = spawn_demo(
        &[
            "--projects",
            "300",
            "--schedule",
            "*/1 * * * * *",
            "--churn-secs",
            "1",
            "--data-dir",
            &data_arg,
        ],
        &[],
    );
    let text = || printed.lock().expect("lock").clone();

    eventually("the demo prints how to connect", || async {
        text().contains("psql \"")
    })
    .await;
    let url = text()
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("psql \"")
                .and_then(|rest| rest.strip_suffix('"'))
                .map(str::to_owned)
        })
        .expect("a psql line");
    let mut connection = PgConnection::connect(&url)
        .await
        .expect("the printed URL connects");
    eventually("a sync succeeds and a later one records changes", || {
        let url = url.clone();
        async move {
            let Ok(mut c) = PgConnection::connect(&url).await else { return false };
            let changed: Result<(i64,), _> = sqlx::query_as(
                "select count(*) from openai.project_changes where change in ('renamed', 'created') and sync_run_id > 1",
            )
            .fetch_one(&mut c)
            .await;
            changed.is_ok_and(|(n,)| n > 0)
        }
    })
    .await;
    let (projects,): (i64,) = sqlx::query_as("select count(*) from openai.projects")
        .fetch_one(&mut connection)
        .await
        .expect("count");
    drop(connection);
    let status = interrupt(demo).await;

    assert!(projects >= 300, "{projects}");
    for query in [
        "openai.projects group by status",
        "openai.project_changes",
        "openai.projects_as_of",
    ] {
        assert!(
            text().contains(query),
            "the demo suggests a query on {query}"
        );
    }
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "Ctrl-C stops the demo cleanly:\n{}",
        text()
    );
    assert!(
        !data_dir.join("postmaster.pid").exists(),
        "the demo's Postgres was stopped"
    );
    let _ = std::fs::remove_dir_all(&data_dir);
}

/// The demo started with `args` and `env` (and none of this process's configuration), and
/// what it prints, as it prints it.
fn spawn_demo(args: &[&str], env: &[(&str, &str)]) -> (std::process::Child, Arc<Mutex<String>>) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_openai-project-sync"));
    command
        .arg("demo")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for var in ["DATABASE_URL", "OPENAI_ADMIN_KEY", "OPENAI_BASE_URL"] {
        command.env_remove(var);
    }
    command.envs(env.iter().copied());
    let mut demo = command.spawn().expect("start the demo");
    let printed = Arc::new(Mutex::new(String::new()));
    for stream in [
        demo.stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        demo.stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let sink = printed.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                let mut text = sink.lock().expect("lock");
                text.push_str(&line);
                text.push('\n');
            }
        });
    }
    (demo, printed)
}

/// Sends Ctrl-C and waits up to 20 seconds for the exit.
async fn interrupt(mut demo: std::process::Child) -> Option<std::process::ExitStatus> {
    let _ = Command::new("kill")
        .args(["-INT", &demo.id().to_string()])
        .status();
    tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = demo.try_wait() {
                return Some(status);
            }
            if std::time::Instant::now() > deadline {
                let _ = demo.kill();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    })
    .await
    .expect("waiter")
}

#[tokio::test]
async fn demo_with_database_url_uses_a_database_of_its_own_and_leaves_the_named_one_untouched() {
    let db = crate::helpers::TestDb::new().await;
    let (demo, printed) = spawn_demo(
        &["--projects", "50", "--schedule", "*/1 * * * * *"],
        &[("DATABASE_URL", db.url.as_str())],
    );
    let text = || printed.lock().expect("lock").clone();

    eventually("the demo prints how to connect", || async {
        text().contains("psql \"")
    })
    .await;
    let url = text()
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("psql \"")
                .and_then(|rest| rest.strip_suffix('"'))
                .map(str::to_owned)
        })
        .expect("a psql line");
    eventually("the demo's walk lands in its own database", || {
        let url = url.clone();
        async move {
            let Ok(mut c) = PgConnection::connect(&url).await else {
                return false;
            };
            let projects: Result<(i64,), _> =
                sqlx::query_as("select count(*) from openai.projects")
                    .fetch_one(&mut c)
                    .await;
            projects.is_ok_and(|(n,)| n >= 50)
        }
    })
    .await;
    let status = interrupt(demo).await;
    let (schemas,): (i64,) =
        sqlx::query_as("select count(*) from pg_namespace where nspname = 'openai'")
            .fetch_one(&db.pool)
            .await
            .expect("look at the named database");
    let (tables,): (i64,) = sqlx::query_as(
        "select count(*) from pg_tables where schemaname not in ('pg_catalog', 'information_schema')",
    )
    .fetch_one(&db.pool)
    .await
    .expect("look at the named database");
    sqlx::query("drop database if exists openai_demo with (force)")
        .execute(&db.pool)
        .await
        .expect("drop the demo's database");

    assert!(url.ends_with("/openai_demo"), "{url}");
    assert_eq!(
        (schemas, tables),
        (0, 0),
        "the named database was not written"
    );
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{}", text());
}

#[tokio::test]
async fn demo_never_takes_over_a_data_folder_it_did_not_create() {
    use std::os::unix::fs::MetadataExt;

    let folder = std::env::temp_dir().join(format!("ops-demo-theirs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&folder);
    std::fs::create_dir_all(&folder).expect("someone's folder");
    std::fs::write(folder.join("notes.txt"), "mine").expect("someone's file");
    let owner_before = std::fs::metadata(&folder).expect("metadata").uid();
    let folder_arg = folder.to_string_lossy().to_string();

    let (demo, printed) = spawn_demo(&["--projects", "5", "--data-dir", &folder_arg], &[]);
    let status = tokio::task::spawn_blocking(move || {
        let mut demo = demo;
        demo.wait()
    })
    .await
    .expect("waiter")
    .expect("the demo ends");
    let text = printed.lock().expect("lock").clone();
    let owner_after = std::fs::metadata(&folder).expect("metadata").uid();
    let file_owner = std::fs::metadata(folder.join("notes.txt"))
        .expect("metadata")
        .uid();
    let _ = std::fs::remove_dir_all(&folder);

    assert_eq!(
        (owner_after, file_owner),
        (owner_before, owner_before),
        "ownership unchanged:\n{text}"
    );
    if owner_before == 0 {
        assert_eq!(status.code(), Some(1), "{text}");
        assert!(
            text.contains("does not belong to the postgres user"),
            "{text}"
        );
    }
}
