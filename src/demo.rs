//! The `demo` command: emulator, Postgres and daemon in one process, for a first look.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use tokio_util::sync::CancellationToken;

use crate::config::{Settings, Sources};
use crate::emulator::{self, EmulatorConfig, EmulatorHandle};
use crate::local_postgres::{self, ClusterOptions, LocalPostgres};

/// The placeholder key the demo's emulator accepts; it works nowhere else.
const DEMO_KEY: &str = "sk-admin-demo-placeholder";
const DEMO_DATABASE: &str = "openai_demo";
const DEMO_POSTGRES_PORT: u16 = 55432;

/// What the demo runs with.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Where a local Postgres keeps its data when `DATABASE_URL` is not set.
    pub data_dir: PathBuf,
    pub projects: usize,
    pub schedule: String,
    pub churn_every: Duration,
}

/// Runs the demo until `shutdown`, then stops everything it started.
pub async fn run(options: DemoOptions, shutdown: CancellationToken) -> anyhow::Result<()> {
    let (database_url, cluster) = match std::env::var("DATABASE_URL") {
        // A database of its own on that server: the one the URL names is never written.
        Ok(url) if !url.trim().is_empty() => {
            let demo_url = with_database(&url, DEMO_DATABASE)?;
            crate::store::ensure_database(&url, DEMO_DATABASE)
                .await
                .context(
                    "could not create the demo's own database on the server DATABASE_URL names",
                )?;
            (demo_url, None)
        }
        _ => {
            let cluster = start_local_postgres(&options.data_dir)?;
            let url = cluster.url(DEMO_DATABASE);
            crate::store::ensure_database(&cluster.url("postgres"), DEMO_DATABASE)
                .await
                .context("could not prepare the demo's database")?;
            (url, Some(cluster))
        }
    };
    let outcome = run_with_database(&options, &database_url, cluster.is_some(), shutdown).await;
    if let Some(cluster) = cluster
        && let Err(e) = cluster.stop()
    {
        eprintln!("warning: the demo's Postgres did not stop cleanly: {e}");
    }
    outcome
}

async fn run_with_database(
    options: &DemoOptions,
    database_url: &str,
    local: bool,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let config = EmulatorConfig {
        admin_key: DEMO_KEY.into(),
        projects: options.projects,
        archived_ratio: 0.2,
        seed: 1,
        ..EmulatorConfig::default()
    };
    // The usual port when it is free; another demo may take it first, then any free one.
    let emulator = match emulator::start(loopback(8787), config.clone()).await {
        Ok(emulator) => emulator,
        Err(_) => emulator::start(SocketAddr::from(([127, 0, 0, 1], 0)), config)
            .await
            .context("could not start the emulator")?,
    };
    let mut env: Vec<(String, String)> = std::env::vars().collect();
    env.extend(
        [
            ("DATABASE_URL", database_url.to_owned()),
            ("OPENAI_BASE_URL", emulator.base_url()),
            ("OPENAI_ADMIN_KEY", DEMO_KEY.to_owned()),
            ("APP_DATABASE__URL", database_url.to_owned()),
            ("APP_OPENAI__BASE_URL", emulator.base_url()),
            ("APP_OPENAI__ADMIN_KEY", DEMO_KEY.to_owned()),
            ("APP_SYNC__SCHEDULE", options.schedule.clone()),
            // Any free port, printed below: a fixed one could be taken by the time it is bound.
            ("APP_HTTP__LISTEN", "127.0.0.1:0".to_owned()),
        ]
        .map(|(k, v)| (k.to_owned(), v)),
    );
    let settings = Settings::load(&Sources {
        config_dir: None,
        file: None,
        env: Some(env),
    })?;
    crate::telemetry::init(settings.log.format, &settings.log.level);
    let daemon = crate::app::start_daemon(settings, shutdown.clone()).await?;
    let churn = tokio::spawn(churn_until(
        emulator.clone(),
        options.churn_every,
        shutdown.clone(),
    ));

    println!(
        "\nopenai-project-sync demo: Ctrl-C stops everything\n\
         \n  emulator  {} ({} projects; renames, archives and creates a few every {}s)\n  \
         daemon    syncs on \"{}\" (UTC); health http://{addr}/readyz, metrics http://{addr}/metrics\n  \
         postgres  {}\n\
         \nconnect:\n  psql \"{}\"\n\
         \nthree queries to try:\n  \
         select status, count(*) from openai.projects group by status;\n  \
         select project_id, changed_at, change, old_name, new_name from openai.project_changes order by changed_at desc limit 10;\n  \
         select project_id, name, status from openai.projects_as_of(now() - interval '1 minute') order by name limit 10;\n\
         \nand to request a project the way ops do:\n  \
         insert into openai.project_requests (name) values ('My first project');\n  \
         select id, status, project_id, next_step from openai.project_request_status;\n",
        emulator.base_url(),
        options.projects,
        options.churn_every.as_secs(),
        options.schedule,
        if local {
            format!(
                "local cluster, data kept in {} (delete it to start over)",
                options.data_dir.display()
            )
        } else {
            format!(
                "database {DEMO_DATABASE} of its own, on the server DATABASE_URL names (the database it names is untouched)"
            )
        },
        redact_password(database_url),
        addr = daemon.http_addr,
    );

    let finished = daemon.finished.await.context("the daemon's task failed")?;
    let _ = churn.await;
    emulator.shutdown();
    finished
}

/// Changes the emulated organization now and then, so every sync has something to record.
async fn churn_until(emulator: EmulatorHandle, every: Duration, shutdown: CancellationToken) {
    let mut ticker = tokio::time::interval(every);
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {
                let report = emulator.churn(3, 1, 2);
                tracing::debug!(?report, "the emulated organization changed");
            }
        }
    }
}

/// `port` on loopback when it is free, else any free loopback port.
fn loopback(port: u16) -> SocketAddr {
    let preferred = SocketAddr::from(([127, 0, 0, 1], port));
    if std::net::TcpListener::bind(preferred).is_ok() {
        return preferred;
    }
    let free = local_postgres::free_port().unwrap_or(0);
    SocketAddr::from(([127, 0, 0, 1], free))
}

fn start_local_postgres(data_dir: &Path) -> anyhow::Result<LocalPostgres> {
    if local_postgres::find_bin_dir().is_none() {
        bail!(
            "the demo needs Postgres: set DATABASE_URL to a database it may write, or install the server binaries (e.g. apt-get install postgresql)"
        );
    }
    let data_dir =
        std::path::absolute(data_dir).context("could not resolve the demo's data folder")?;
    let port = loopback(DEMO_POSTGRES_PORT).port();
    println!(
        "starting a local Postgres on 127.0.0.1:{port}, data in {}",
        data_dir.display()
    );
    LocalPostgres::stop_stale(&data_dir);
    LocalPostgres::start(&data_dir, port, ClusterOptions { durable: true })
        .context("could not start the demo's Postgres")
}

/// `url` with its database replaced by `database`; refused when `url` names `database` itself,
/// since the demo must never write into the database the URL names.
///
/// A `dbname` parameter overrides the URL's path, so it is removed along with the path.
fn with_database(url: &str, database: &str) -> anyhow::Result<String> {
    let database_of = |url: &str| {
        url.parse::<sqlx::postgres::PgConnectOptions>()
            .map(|options| options.get_database().map(str::to_owned))
            .context("DATABASE_URL is not a postgres URL")
    };
    if database_of(url)?.as_deref() == Some(database) {
        bail!(
            "DATABASE_URL names the database {database}, which demo makes for itself and fills \
             with demo projects; point DATABASE_URL at another database on that server (e.g. \
             postgres) and demo uses {database} beside it"
        );
    }
    let mut parsed = reqwest::Url::parse(url).context("DATABASE_URL is not a URL")?;
    parsed.set_path(&format!("/{database}"));
    let kept: Vec<(String, String)> = parsed
        .query_pairs()
        .filter(|(name, _)| name != "dbname")
        .map(|(name, value)| (name.into_owned(), value.into_owned()))
        .collect();
    parsed.set_query(None);
    if !kept.is_empty() {
        parsed.query_pairs_mut().extend_pairs(kept);
    }
    let rewritten = parsed.to_string();
    if database_of(&rewritten)?.as_deref() != Some(database) {
        bail!("could not point DATABASE_URL at the demo's own database {database}");
    }
    Ok(rewritten)
}

fn redact_password(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("****"));
            parsed.to_string()
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::with_database;

    fn database_of(url: &str) -> Option<String> {
        url.parse::<sqlx::postgres::PgConnectOptions>()
            .expect("a postgres URL")
            .get_database()
            .map(str::to_owned)
    }

    #[test]
    fn the_demo_url_names_only_the_demos_database_whatever_the_given_url_says() {
        for given in [
            "postgres://u:pw@db.example:5432/production",
            "postgres://u@db.example/?dbname=production",
            "postgres://u@db.example/postgres?sslmode=disable&dbname=production",
            "postgres://u@db.example",
        ] {
            let demo = with_database(given, "openai_demo").expect("rewritten");
            assert_eq!(
                database_of(&demo).as_deref(),
                Some("openai_demo"),
                "{given} -> {demo}"
            );
        }
        let kept = with_database("postgres://u@h/x?sslmode=disable&dbname=x", "openai_demo")
            .expect("rewritten");
        assert!(
            kept.contains("sslmode=disable") && !kept.contains("dbname"),
            "{kept}"
        );
    }

    #[test]
    fn a_url_that_names_the_demos_database_already_is_refused() {
        for given in [
            "postgres://u@h/openai_demo",
            "postgres://u@h/postgres?dbname=openai_demo",
        ] {
            let refused = with_database(given, "openai_demo").expect_err("refused");
            assert!(
                refused.to_string().contains("DATABASE_URL names"),
                "{refused}"
            );
        }
    }
}
