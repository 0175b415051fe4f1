//! Wires configuration, Postgres, the API client, the schedule, the HTTP listener and shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use chrono::Utc;
use secrecy::SecretString;
use tokio::sync::mpsc;
use tokio_cron_scheduler::{Job, JobScheduler};
use tokio_util::sync::CancellationToken;

use crate::client::{AdminClient, ClientOptions, RetryPolicy};
use crate::config::{ConfigError, Settings};
use crate::costs::{self, CostDeps, CostSummary};
use crate::store;
use crate::sync::{self, Progress, SyncDeps, Trigger, WalkSummary};
use crate::worker::{self, TickReport, WorkerDeps};

/// Builds the API client the configuration describes.
pub fn build_client(settings: &Settings) -> Result<AdminClient, ConfigError> {
    AdminClient::new(ClientOptions {
        base_url: settings.base_url()?,
        admin_key: settings.admin_key()?,
        timeout: settings.openai.timeout,
        retry: RetryPolicy {
            max_retries: settings.openai.max_retries,
            base_delay: settings.openai.retry_base_delay,
            max_delay: settings.openai.retry_max_delay,
        },
    })
    .map_err(|e| ConfigError::Invalid {
        key: "openai.admin_key",
        problem: e.to_string(),
        fix: "set the key again without quotes or line breaks",
    })
}

/// Connects to Postgres and applies pending migrations.
pub async fn connect_and_migrate(settings: &Settings) -> anyhow::Result<sqlx::PgPool> {
    let url = settings.database_url()?;
    let pool = store::connect(&url, settings.database.max_connections).await?;
    store::migrate(&pool)
        .await
        .context("could not apply migrations")?;
    Ok(pool)
}

/// `connect_and_migrate`, given up once `stop` is cancelled: a signal while another replica
/// holds the migration lock ends a command instead of leaving it waiting. A migration cut short
/// is rolled back by its transaction.
pub async fn connect_and_migrate_until(
    settings: &Settings,
    stop: &CancellationToken,
) -> anyhow::Result<sqlx::PgPool> {
    tokio::select! {
        pool = connect_and_migrate(settings) => pool,
        () = stop.cancelled() => Err(anyhow::anyhow!(
            "stopped by a signal while connecting to Postgres and applying migrations"
        )),
    }
}

/// Everything a walk needs, from configuration; configuration problems come first. Gives up
/// waiting for Postgres once `stop` is cancelled.
pub async fn sync_deps(settings: &Settings, stop: &CancellationToken) -> anyhow::Result<SyncDeps> {
    let client = build_client(settings)?;
    let url: SecretString = settings.database_url()?;
    let connect = store::connect_options(&url)?;
    let pool = connect_and_migrate_until(settings, stop).await?;
    Ok(SyncDeps {
        pool,
        connect,
        client,
        page_size: settings.openai.page_size,
        min_seen_ratio: settings.sync.min_seen_ratio,
        after_failure: "the command exits 1",
    })
}

/// One walk now, for the `sync` command.
pub async fn sync_once(
    settings: &Settings,
    cancel: &CancellationToken,
    progress: &mut dyn Progress,
) -> anyhow::Result<WalkSummary> {
    let deps = sync_deps(settings, cancel).await?;
    let summary = sync::walk_and_apply(&deps, Trigger::Manual, cancel, progress).await;
    deps.pool.close().await;
    Ok(summary?)
}

/// Everything a cost pass needs, from configuration and the walk's connections.
pub fn cost_deps(settings: &Settings, deps: &SyncDeps) -> Result<CostDeps, ConfigError> {
    Ok(CostDeps {
        pool: deps.pool.clone(),
        connect: deps.connect.clone(),
        client: deps.client.clone(),
        lookback_days: settings.costs.lookback_days,
        backfill_from: settings.cost_backfill_from()?,
    })
}

/// One cost pass now, for the `sync` command.
pub async fn sync_costs(
    settings: &Settings,
    cancel: &CancellationToken,
) -> anyhow::Result<CostSummary> {
    let walk_deps = sync_deps(settings, cancel).await?;
    let deps = cost_deps(settings, &walk_deps)?;
    let summary = costs::run_pass(&deps, Trigger::Manual, cancel).await;
    walk_deps.pool.close().await;
    Ok(summary?)
}

/// The audit-log poll's dependencies, from configuration.
pub fn audit_deps(
    settings: &Settings,
    pool: sqlx::PgPool,
    client: AdminClient,
) -> Result<crate::audit_log::AuditDeps, ConfigError> {
    Ok(crate::audit_log::AuditDeps {
        pool,
        client,
        enabled: settings.audit_log.enabled,
        overlap: settings.audit_log.overlap,
    })
}

/// One audit-log catch-up now, for the `sync` command; gives up waiting for Postgres once `stop`
/// is cancelled.
pub async fn audit_log_once(
    settings: &Settings,
    stop: &CancellationToken,
) -> anyhow::Result<crate::audit_log::AuditOutcome> {
    let client = build_client(settings)?;
    let pool = connect_and_migrate_until(settings, stop).await?;
    let deps = audit_deps(settings, pool.clone(), client)?;
    let outcome = crate::audit_log::pass(&deps, "manual").await;
    pool.close().await;
    Ok(outcome?)
}

/// The request worker's dependencies, from configuration.
pub fn worker_deps(
    settings: &Settings,
    pool: sqlx::PgPool,
    client: AdminClient,
) -> Result<WorkerDeps, ConfigError> {
    let reconcile_grace = settings.requests.reconcile_grace;
    if reconcile_grace < Duration::from_secs(60) {
        tracing::warn!(
            grace_s = reconcile_grace.as_secs_f64(),
            "requests.reconcile_grace is under a minute: a create that lands or shows in the list later than that could be made twice; the default is 5m"
        );
    }
    Ok(WorkerDeps {
        pool,
        client,
        page_size: settings.openai.page_size,
        // Longer than any create call can take, so a live attempt never loses its request.
        lease: settings
            .openai
            .timeout
            .saturating_mul(2)
            .saturating_add(Duration::from_secs(1)),
        max_attempts: settings.requests.max_attempts,
        retry_base_delay: settings.openai.retry_base_delay,
        retry_max_delay: settings.openai.retry_max_delay,
        reconcile_grace,
        unresolved: settings.requests.unresolved,
        before_create: None,
    })
}

/// Processes the request queue until nothing is due, for the `requests` command.
pub async fn drain_requests(
    settings: &Settings,
    stop: &CancellationToken,
) -> anyhow::Result<TickReport> {
    let client = build_client(settings)?;
    let pool = connect_and_migrate_until(settings, stop).await?;
    let deps = worker_deps(settings, pool.clone(), client)?;
    let report = worker::drain(&deps, stop).await;
    pool.close().await;
    Ok(report?)
}

/// The interval between two consecutive fire times of a schedule.
pub fn schedule_period(schedule: &str) -> Result<Duration, ConfigError> {
    let invalid = |problem: String| ConfigError::Invalid {
        key: "sync.schedule",
        problem,
        fix: "give 6 fields, seconds first, in UTC, e.g. \"0 */10 * * * *\"",
    };
    let cron = crate::config::schedule_of("sync.schedule", schedule)?;
    let first = cron
        .find_next_occurrence(&Utc::now(), false)
        .map_err(|e| invalid(e.to_string()))?;
    let second = cron
        .find_next_occurrence(&first, false)
        .map_err(|e| invalid(e.to_string()))?;
    Ok((second - first)
        .to_std()
        .unwrap_or(Duration::from_secs(600)))
}

/// A running daemon's listener address, known once it is bound.
pub struct Daemon {
    pub http_addr: SocketAddr,
    pub finished: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// Starts the daemon: migrations, listener, schedule, and the sync loop; `shutdown` stops it all.
pub async fn start_daemon(
    settings: Settings,
    shutdown: CancellationToken,
) -> anyhow::Result<Daemon> {
    let deps = SyncDeps {
        after_failure: "the daemon keeps running and walks again at the next scheduled tick",
        ..sync_deps(&settings, &shutdown).await?
    };
    let period = schedule_period(&settings.sync.schedule)?;
    let worker_deps = worker_deps(&settings, deps.pool.clone(), deps.client.clone())?;
    let audit = tokio::spawn(crate::audit_log::run(
        audit_deps(&settings, deps.pool.clone(), deps.client.clone())?,
        settings.audit_log.poll_interval,
        shutdown.clone(),
    ));
    let worker_running = Arc::new(AtomicBool::new(true));
    let worker = tokio::spawn(supervise_worker(
        worker_deps,
        settings.requests.poll_interval,
        shutdown.clone(),
        worker_running.clone(),
    ));
    let metrics = crate::http::metrics_handle();
    let listener = tokio::net::TcpListener::bind(settings.listen_addr()?)
        .await
        .with_context(|| format!("could not listen on {} (http.listen)", settings.http.listen))?;
    let http_addr = listener.local_addr()?;
    let router = crate::http::router(crate::http::HealthState {
        pool: deps.pool.clone(),
        metrics,
        // Unready once two scheduled walks were missed, however unevenly the schedule's fire
        // times are spaced (business hours wait a night and a weekend).
        sync_deadline: crate::http::SyncDeadline::Schedule(Box::new(crate::config::schedule_of(
            "sync.schedule",
            &settings.sync.schedule,
        )?)),
        worker_running,
    });
    let http_shutdown = shutdown.clone();
    let http = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move { http_shutdown.cancelled().await })
            .await
    });

    // Capacity 1: a tick while a walk runs waits as the next walk; further ticks are dropped.
    let (ticks, mut due) = mpsc::channel::<Trigger>(1);
    let mut scheduler = JobScheduler::new()
        .await
        .context("could not start the scheduler")?;
    let tick = ticks.clone();
    let job = Job::new_async(settings.sync.schedule.as_str(), move |_, _| {
        let tick = tick.clone();
        Box::pin(async move {
            let _ = tick.try_send(Trigger::Schedule);
        })
    })
    .context("could not schedule the sync")?;
    scheduler
        .add(job)
        .await
        .context("could not schedule the sync")?;

    let cost_loop = if settings.costs.enabled {
        Some(start_cost_schedule(&settings, &deps, &mut scheduler, shutdown.clone()).await?)
    } else {
        None
    };
    scheduler
        .start()
        .await
        .context("could not start the scheduler")?;

    let last = store::last_success_started_at(&deps.pool, store::Resource::Projects).await?;
    let stale = last.is_none_or(|at| (Utc::now() - at).to_std().unwrap_or_default() > period);
    if stale {
        let _ = ticks.try_send(Trigger::Startup);
    }
    tracing::info!(listen = %http_addr, schedule = %settings.sync.schedule, period_s = period.as_secs(), "daemon started");

    let finished = tokio::spawn(async move {
        loop {
            let trigger = tokio::select! {
                _ = shutdown.cancelled() => break,
                trigger = due.recv() => match trigger { Some(t) => t, None => break },
            };
            match sync::walk_and_apply(&deps, trigger, &shutdown, &mut ()).await {
                Ok(_) => {}
                Err(sync::SyncError::AlreadyRunning) => {
                    tracing::info!("another replica is walking; skipping this tick");
                }
                // Logged once, by the walk itself, with what happens next.
                Err(_) => {}
            }
        }
        if worker.await.is_err() {
            tracing::warn!("the request worker ended abnormally");
        }
        if audit.await.is_err() {
            tracing::warn!("the audit-log poll ended abnormally");
        }
        if let Some(cost_loop) = cost_loop
            && cost_loop.await.is_err()
        {
            tracing::warn!("the cost pass loop ended abnormally");
        }
        if let Err(e) = scheduler.shutdown().await {
            tracing::warn!(error = %e, "scheduler did not stop cleanly");
        }
        http.await
            .context("the HTTP listener task failed")?
            .context("the HTTP listener failed")?;
        deps.pool.close().await;
        tracing::info!("daemon stopped");
        Ok(())
    });
    Ok(Daemon {
        http_addr,
        finished,
    })
}

/// Schedules cost passes on `costs.schedule` (and one at start when the last success is older
/// than a period) and runs them, one at a time, until `shutdown`.
async fn start_cost_schedule(
    settings: &Settings,
    deps: &SyncDeps,
    scheduler: &mut JobScheduler,
    shutdown: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let cost_deps = cost_deps(settings, deps)?;
    let period = crate::config::schedule_period_of("costs.schedule", &settings.costs.schedule)?;
    let (ticks, mut due) = mpsc::channel::<Trigger>(1);
    let tick = ticks.clone();
    let job = Job::new_async(settings.costs.schedule.as_str(), move |_, _| {
        let tick = tick.clone();
        Box::pin(async move {
            let _ = tick.try_send(Trigger::Schedule);
        })
    })
    .context("could not schedule the cost passes")?;
    scheduler
        .add(job)
        .await
        .context("could not schedule the cost passes")?;
    let last = store::last_success_started_at(&deps.pool, store::Resource::Costs).await?;
    if last.is_none_or(|at| (Utc::now() - at).to_std().unwrap_or_default() > period) {
        let _ = ticks.try_send(Trigger::Startup);
    }
    tracing::info!(schedule = %settings.costs.schedule, "cost passes scheduled");
    Ok(tokio::spawn(async move {
        // Keeps the channel open while the loop runs.
        let _ticks = ticks;
        loop {
            let trigger = tokio::select! {
                _ = shutdown.cancelled() => break,
                trigger = due.recv() => match trigger { Some(t) => t, None => break },
            };
            let (pass_deps, pass_shutdown) = (cost_deps.clone(), shutdown.clone());
            let pass = crate::panics::caught_pass(store::Resource::Costs, async move {
                costs::run_pass(&pass_deps, trigger, &pass_shutdown).await
            });
            match pass.await {
                Ok(Ok(_)) => {}
                Ok(Err(costs::CostError::AlreadyRunning)) => {
                    tracing::info!("another replica is running a cost pass; skipping this tick");
                }
                Ok(Err(error)) => tracing::error!(
                    error = %error,
                    "the cost pass failed; the daemon keeps running and tries again at the next scheduled tick"
                ),
                Err(panic) => tracing::error!(
                    panic = %panic,
                    "the cost pass panicked; the daemon keeps running and tries again at the next scheduled tick"
                ),
            }
        }
    }))
}

/// Runs the request worker until `shutdown`, restarting it if it ever ends abnormally;
/// `running` is false while it is down, which makes the daemon unready.
async fn supervise_worker(
    deps: WorkerDeps,
    poll_interval: Duration,
    shutdown: CancellationToken,
    running: Arc<AtomicBool>,
) {
    let mut restarts = 0u32;
    loop {
        running.store(true, Ordering::Relaxed);
        let ended = tokio::spawn(worker::run(deps.clone(), poll_interval, shutdown.clone())).await;
        if shutdown.is_cancelled() {
            return;
        }
        running.store(false, Ordering::Relaxed);
        restarts += 1;
        let pause = Duration::from_secs(u64::from(restarts.min(30)));
        match ended {
            Err(e) => {
                tracing::error!(error = %e, restart_in_s = pause.as_secs(), "the request worker died; restarting it")
            }
            Ok(()) => tracing::error!(
                restart_in_s = pause.as_secs(),
                "the request worker stopped unexpectedly; restarting it"
            ),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}
