//! Shared test fixtures: databases, emulators, clients, the binary.

mod postgres;

use std::time::Duration;

use openai_project_sync::client::{AdminClient, ClientOptions, Project, ProjectWalk, RetryPolicy};
use openai_project_sync::emulator::{self, EmulatorConfig, EmulatorHandle};
use secrecy::SecretString;

pub use postgres::TestDb;

/// What a walk needs against `db` through `client`: pages of `page_size`, the default guard.
pub fn sync_deps(
    db: &TestDb,
    client: AdminClient,
    page_size: u32,
) -> openai_project_sync::sync::SyncDeps {
    openai_project_sync::sync::SyncDeps {
        pool: db.pool.clone(),
        connect: db.url.parse().expect("test URL parses"),
        client,
        page_size,
        min_seen_ratio: 0.5,
        after_failure: "the test goes on",
    }
}

/// The physical identity (ctid and xmin) of every current and version row, or of one project's:
/// equal before and after means nothing was written.
pub async fn row_identities(pool: &sqlx::PgPool, project_id: Option<&str>) -> Vec<String> {
    let rows: Vec<(String,)> = sqlx::query_as(
        "select 'c' || ctid::text || xmin::text from openai.project_current \
         where $1::text is null or project_id = $1 \
         union all select 'v' || ctid::text || xmin::text from openai.project_versions \
         where $1::text is null or project_id = $1 \
         order by 1",
    )
    .bind(project_id)
    .fetch_all(pool)
    .await
    .expect("read row identities");
    rows.into_iter().map(|(r,)| r).collect()
}

/// One manual walk that must apply.
pub async fn sync(
    deps: &openai_project_sync::sync::SyncDeps,
) -> openai_project_sync::sync::WalkSummary {
    openai_project_sync::sync::walk_and_apply(
        deps,
        openai_project_sync::sync::Trigger::Manual,
        &tokio_util::sync::CancellationToken::new(),
        &mut (),
    )
    .await
    .expect("the walk applies")
}

/// The key every test emulator accepts; an obvious placeholder.
pub const TEST_KEY: &str = "sk-admin-test-placeholder";

/// Starts an emulator on a free loopback port with `projects` generated projects.
pub async fn start_emulator(projects: usize) -> EmulatorHandle {
    start_emulator_with(EmulatorConfig {
        admin_key: TEST_KEY.into(),
        projects,
        ..EmulatorConfig::default()
    })
    .await
}

/// Starts an emulator with a configuration of the test's choosing.
pub async fn start_emulator_with(config: EmulatorConfig) -> EmulatorHandle {
    emulator::start("127.0.0.1:0".parse().expect("loopback address"), config)
        .await
        .expect("start the emulator")
}

/// A retry policy with short delays, so retried tests run fast.
pub fn fast_retries() -> RetryPolicy {
    RetryPolicy {
        max_retries: 6,
        base_delay: Duration::from_millis(5),
        max_delay: Duration::from_millis(50),
    }
}

/// A client for `emulator` with the given key and timeout.
pub fn client_with(base_url: &str, key: &str, timeout: Duration) -> AdminClient {
    AdminClient::new(ClientOptions {
        base_url: base_url.parse().expect("base URL parses"),
        admin_key: SecretString::from(key.to_owned()),
        timeout,
        retry: fast_retries(),
    })
    .expect("build the client")
}

/// A client for `emulator` with the right key.
pub fn client_for(emulator: &EmulatorHandle) -> AdminClient {
    client_with(&emulator.base_url(), TEST_KEY, Duration::from_secs(5))
}

/// Walks every page, returning the projects and the page count.
pub async fn walk_all(
    mut walk: ProjectWalk,
) -> Result<(Vec<Project>, u64), openai_project_sync::client::ApiError> {
    let mut projects = Vec::new();
    while let Some(page) = walk.next_page().await? {
        projects.extend(page.data);
    }
    Ok((projects, walk.pages()))
}

/// The real binary with `args` and `env`, and none of this process's configuration variables.
fn binary(args: &[&str], env: &[(&str, &str)]) -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_openai-project-sync"));
    command.args(args);
    for var in [
        "DATABASE_URL",
        "OPENAI_ADMIN_KEY",
        "OPENAI_BASE_URL",
        "RUST_LOG",
    ] {
        command.env_remove(var);
    }
    for (key, _) in std::env::vars() {
        if key.starts_with("APP_") {
            command.env_remove(key);
        }
    }
    command.envs(env.iter().copied());
    command
}

/// Runs the real binary to its end.
pub fn run_binary(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    binary(args, env).output().expect("run the binary")
}

/// Runs the binary on a blocking thread so the test's emulator keeps serving.
pub async fn run_binary_async(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        run_binary(&args, &env)
    })
    .await
    .expect("the binary's thread")
}

/// Stdout and stderr of a finished process, as one text.
pub fn output_text(output: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Waits until `condition` holds, polling briefly; panics with `what` after 20 seconds.
pub async fn eventually<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Starts the real binary with `args` and `env`, its output captured.
pub fn spawn_binary(args: &[&str], env: &[(&str, &str)]) -> std::process::Child {
    binary(args, env)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn the binary")
}

/// Waits up to 20 seconds for a spawned binary to exit; its exit code and output.
pub async fn wait_for_exit(mut child: std::process::Child) -> (Option<i32>, String) {
    tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let output = child.wait_with_output().expect("collect output");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        (output.status.code(), text)
    })
    .await
    .expect("waiter")
}
