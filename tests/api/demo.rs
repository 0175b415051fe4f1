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
    let mut command = Command::new(env!("CARGO_BIN_EXE_openai-project-sync"));
    command
        .args([
            "demo",
            "--projects",
            "300",
            "--schedule",
            "*/1 * * * * *",
            "--churn-secs",
            "1",
            "--data-dir",
        ])
        .arg(&data_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for var in ["DATABASE_URL", "OPENAI_ADMIN_KEY", "OPENAI_BASE_URL"] {
        command.env_remove(var);
    }
    let mut demo = command.spawn().expect("start the demo");
    let printed = Arc::new(Mutex::new(String::new()));
    let sink = printed.clone();
    let stdout = demo.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let mut text = sink.lock().expect("lock");
            text.push_str(&line);
            text.push('\n');
        }
    });
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
    let interrupted = Command::new("kill")
        .args(["-INT", &demo.id().to_string()])
        .status()
        .expect("kill");
    let status = tokio::task::spawn_blocking(move || {
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
    .expect("waiter");

    assert!(interrupted.success());
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
