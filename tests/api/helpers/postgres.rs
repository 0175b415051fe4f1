//! One Postgres server per test binary, one fresh database per test.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

use openai_project_sync::local_postgres::{self, ClusterOptions, LocalPostgres};
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool};

/// Where the server for this run came from, and how to reach its maintenance database.
struct Server {
    admin_url: String,
    // Kept alive for the whole run; the cluster's watcher or the container's owner removes it.
    _cluster: Option<LocalPostgres>,
}

static SERVER: OnceLock<Result<Server, String>> = OnceLock::new();
static NEXT_DB: AtomicU32 = AtomicU32::new(0);

fn server() -> &'static Server {
    let server = SERVER.get_or_init(|| {
        // Started on a plain thread: the container fallback blocks and tests run inside a runtime.
        std::thread::spawn(start_server)
            .join()
            .unwrap_or_else(|_| Err("starting Postgres panicked".into()))
    });
    match server {
        Ok(server) => server,
        Err(message) => panic!("{message}"),
    }
}

fn start_server() -> Result<Server, String> {
    let has_url = std::env::var("DATABASE_URL").is_ok_and(|url| !url.trim().is_empty());
    if has_url || local_postgres::find_bin_dir().is_some() {
        let (admin_url, cluster) =
            local_postgres::server_from_env_or_throwaway("test", ClusterOptions { durable: false })
                .map_err(|e| format!("could not start a throwaway Postgres: {e}"))?;
        return Ok(Server {
            admin_url,
            _cluster: cluster,
        });
    }
    if docker_engine_runs() {
        return start_container();
    }
    Err("tests need Postgres: set DATABASE_URL, or install the server binaries (apt-get install postgresql), or run a Docker engine".into())
}

fn docker_engine_runs() -> bool {
    std::process::Command::new("docker")
        .arg("info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn start_container() -> Result<Server, String> {
    use testcontainers::core::{IntoContainerPort, WaitFor};
    use testcontainers::runners::SyncRunner;
    use testcontainers::{GenericImage, ImageExt};

    let container = GenericImage::new("postgres", "15")
        .with_exposed_port(5432.tcp())
        .with_wait_for(WaitFor::message_on_stderr(
            "database system is ready to accept connections",
        ))
        .with_env_var("POSTGRES_HOST_AUTH_METHOD", "trust")
        .start()
        .map_err(|e| format!("could not start a Postgres container: {e}"))?;
    let port = container
        .get_host_port_ipv4(5432)
        .map_err(|e| e.to_string())?;
    // The container lives as long as the test process.
    std::mem::forget(container);
    Ok(Server {
        admin_url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
        _cluster: None,
    })
}

/// A database of its own for one test.
pub struct TestDb {
    pub pool: PgPool,
    pub url: String,
}

impl TestDb {
    /// Creates an empty database on the shared server.
    pub async fn new() -> TestDb {
        let server = server();
        let name = format!(
            "ops_test_{}_{}",
            std::process::id(),
            NEXT_DB.fetch_add(1, Ordering::Relaxed)
        );
        let mut admin = PgConnection::connect(&server.admin_url)
            .await
            .expect("connect to the test server's maintenance database");
        drop_databases_of_dead_runs(&mut admin).await;
        sqlx::query(&format!("create database {name}"))
            .execute(&mut admin)
            .await
            .expect("create a test database");
        let url = with_database(&server.admin_url, &name);
        let pool = PgPoolOptions::new()
            .max_connections(10)
            .connect(&url)
            .await
            .expect("connect to the test database");
        TestDb { pool, url }
    }
}

impl TestDb {
    /// This database's URL for the login `role` (trust authentication, no password).
    pub fn url_as(&self, role: &str) -> String {
        let mut parsed = reqwest::Url::parse(&self.url).expect("the test URL parses");
        let _ = parsed.set_username(role);
        let _ = parsed.set_password(None);
        parsed.to_string()
    }
}

fn with_database(url: &str, database: &str) -> String {
    let mut parsed = reqwest::Url::parse(url).expect("the server URL parses");
    parsed.set_path(&format!("/{database}"));
    parsed.to_string()
}

/// Drops test databases left by runs whose process is gone, so a shared server does not fill up.
async fn drop_databases_of_dead_runs(admin: &mut PgConnection) {
    static ONCE: AtomicU32 = AtomicU32::new(0);
    if ONCE.fetch_add(1, Ordering::Relaxed) > 0 {
        return;
    }
    let names: Vec<(String,)> =
        sqlx::query_as("select datname from pg_database where datname like 'ops\\_test\\_%'")
            .fetch_all(&mut *admin)
            .await
            .unwrap_or_default();
    for (name,) in names {
        let pid = name.split('_').nth(2).and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid
            && !std::path::Path::new(&format!("/proc/{pid}")).exists()
        {
            let _ = sqlx::query(&format!("drop database if exists {name} with (force)"))
                .execute(&mut *admin)
                .await;
        }
    }
}
