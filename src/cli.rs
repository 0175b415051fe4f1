//! Command-line parsing and dispatch; maps failures to exit codes (1 runtime, 2 usage or configuration).

#[cfg(feature = "dev-tools")]
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
#[cfg(feature = "dev-tools")]
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::config::{ConfigError, Settings, Sources};
#[cfg(feature = "dev-tools")]
use crate::emulator::{
    self, EmulatorConfig, Endpoint, FaultRates, Freedoms, GeographyAnswer, ListOrder,
};

#[derive(Debug, Parser)]
#[command(
    name = "openai-project-sync",
    version,
    about = "Keeps an organization's OpenAI projects in Postgres, with full change history"
)]
pub struct Cli {
    /// A configuration file read after config/default.toml and config/local.toml.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The folder holding default.toml and local.toml [default: config, which may be absent].
    #[arg(long, global = true, value_name = "DIR")]
    pub config_dir: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The daemon: migrations, scheduled sync, request worker, health and metrics.
    Run,
    /// One pass now of every enabled resource (or the one named); prints a summary per resource.
    Sync(SyncArgs),
    /// Processes the request queue until nothing is due, then exits.
    Requests,
    /// Applies database migrations.
    Migrate,
    /// Validates configuration and reaches Postgres and the API.
    Check,
    #[cfg(feature = "dev-tools")]
    /// Serves a local, stateful emulator of the Admin API's project endpoints.
    Emulator(EmulatorArgs),
    #[cfg(feature = "dev-tools")]
    /// Emulator, local Postgres and daemon in one command, for a first look.
    Demo(DemoArgs),
}

#[derive(Debug, clap::Args)]
pub struct SyncArgs {
    /// The one resource to sync; without it, every enabled one in turn.
    #[arg(value_enum)]
    pub resource: Option<SyncResource>,
}

/// What `sync` can be asked to sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SyncResource {
    /// A full walk of the project list.
    Projects,
    /// One cost pass: the lookback window, and any backfill still due.
    Costs,
    /// One catch-up of the organization's audit log.
    AuditLog,
}

#[cfg(feature = "dev-tools")]
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Where the local Postgres keeps its data when DATABASE_URL is not set.
    #[arg(long, default_value = ".demo/postgres")]
    pub data_dir: PathBuf,
    /// Projects in the emulated organization.
    #[arg(long, default_value_t = 1250)]
    pub projects: usize,
    /// The sync schedule (6 fields, seconds first, UTC).
    #[arg(long, default_value = "*/15 * * * * *")]
    pub schedule: String,
    /// Seconds between two rounds of changes in the emulated organization.
    #[arg(long, default_value_t = 5)]
    pub churn_secs: u64,
}

#[cfg(feature = "dev-tools")]
#[derive(Debug, clap::Args)]
pub struct EmulatorArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8787")]
    pub listen: SocketAddr,
    /// The only admin key accepted (default: OPENAI_ADMIN_KEY).
    #[arg(long, env = "OPENAI_ADMIN_KEY", hide_env_values = true)]
    pub admin_key: Option<secrecy::SecretString>,
    /// Projects generated at start.
    #[arg(long, default_value_t = 1250)]
    pub projects: usize,
    /// Share of generated projects that are archived (0 to 1).
    #[arg(long, default_value_t = 0.2)]
    pub archived_ratio: f64,
    /// Seed of the generated organization, of the arbitrary order and of random faults.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Starts from the faithful-but-hostile freedoms (geography answered as residency, nulls
    /// omitted, unknown fields, default residency GLOBAL, pages of at most 7, arbitrary order);
    /// the flags below add to them.
    #[arg(long)]
    pub hostile: bool,
    /// Order of the project list [default: newest-first; arbitrary with --hostile].
    #[arg(long, value_enum)]
    pub order: Option<ListOrder>,
    /// Leaves null-valued optional project fields out of the JSON instead of writing null.
    #[arg(long)]
    pub omit_nulls: bool,
    /// Adds fields the client does not model to every project and every list page.
    #[arg(long)]
    pub unknown_fields: bool,
    /// How a create's geography is answered: as a residency of the new vocabulary, or not at
    /// all (write-only); never as geography [default: new-vocabulary].
    #[arg(long, value_enum, value_name = "ANSWER")]
    pub geography_answer: Option<GeographyAnswer>,
    /// The residency assigned to a create that asks for none (e.g. GLOBAL).
    #[arg(long, value_name = "RESIDENCY")]
    pub default_residency: Option<String>,
    /// Milliseconds a create takes to land; it lands even after the caller gave up.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub create_delay_ms: u64,
    /// Milliseconds after its create before a new project appears in the list (retrieve finds it at once).
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub list_lag_ms: u64,
    /// The most projects a list page holds, whatever limit asks for.
    #[arg(long, value_name = "N")]
    pub short_pages: Option<usize>,
    /// Stores names NFD-decomposed with whitespace runs folded to one space.
    #[arg(long)]
    pub rewrite_names: bool,
    /// Gives a 429's retry-after as an HTTP date, without retry-after-ms.
    #[arg(long)]
    pub retry_after_date: bool,
    /// Latency added to every call, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// Share of calls answered 429.
    #[arg(long, default_value_t = 0.0)]
    pub rate_429: f64,
    /// The retry-after of those 429s, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub retry_after_ms: u64,
    /// Share of calls answered 500.
    #[arg(long, default_value_t = 0.0)]
    pub rate_5xx: f64,
    /// Share of calls that hang until --hang-secs, then answer 500.
    #[arg(long, default_value_t = 0.0)]
    pub rate_hang: f64,
    /// How long a hanging call hangs.
    #[arg(long, default_value_t = 600)]
    pub hang_secs: u64,
    /// Days of cost history before today (earlier days have no spend).
    #[arg(long, default_value_t = crate::emulator::DEFAULT_COST_DAYS)]
    pub cost_days: u32,
    /// How cost amounts are written [default: number].
    #[arg(long, value_enum, value_name = "FORM")]
    pub cost_amounts: Option<crate::emulator::CostAmountForm>,
    /// Share of calls whose connection is dropped without an answer.
    #[arg(long, default_value_t = 0.0)]
    pub rate_drop: f64,
    /// Share of creates that create the project but answer 500.
    #[arg(long, default_value_t = 0.0)]
    pub rate_lost: f64,
    /// Whether the organization has audit logging on; off answers an empty log or an error.
    #[arg(long, value_enum, default_value = "on")]
    pub audit_logging: emulator::AuditLogging,
    /// Milliseconds after a change before its audit-log event shows (effective_at stays true).
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub audit_delay_ms: u64,
}

/// Why a command did not succeed, and so which exit code it ends with.
#[derive(Debug)]
pub enum Failure {
    /// Bad usage or configuration: exit 2.
    Usage(String),
    /// Anything that went wrong while running: exit 1.
    Runtime(anyhow::Error),
}

impl From<ConfigError> for Failure {
    fn from(error: ConfigError) -> Self {
        Failure::Usage(error.to_string())
    }
}

impl From<anyhow::Error> for Failure {
    fn from(error: anyhow::Error) -> Self {
        Failure::Runtime(error)
    }
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: could not start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(Failure::Usage(message)) => {
            eprintln!("error: {message}");
            ExitCode::from(2)
        }
        Err(Failure::Runtime(error)) => {
            eprintln!("error: {error:#}");
            ExitCode::from(1)
        }
    }
}

fn load_settings(cli: &Cli) -> Result<Settings, Failure> {
    // The default folder may be absent (the binary run from elsewhere); a folder given is not.
    if let Some(dir) = &cli.config_dir
        && !dir.is_dir()
    {
        return Err(Failure::from(ConfigError::Load(format!(
            "the folder given with --config-dir, {}, does not exist or is not a folder",
            dir.display()
        ))));
    }
    let settings = Settings::load(&Sources {
        config_dir: cli.config_dir.clone(),
        file: cli.config.clone(),
        env: None,
    })?;
    crate::telemetry::init(settings.log.format, &settings.log.level);
    settings.warn_ignored();
    Ok(settings)
}

async fn dispatch(cli: Cli) -> Result<ExitCode, Failure> {
    match &cli.command {
        Command::Check => {
            let settings = load_settings(&cli)?;
            let lines = crate::check::run_checks(&settings).await;
            for line in &lines {
                println!("{line}");
            }
            let failed = lines.iter().filter(|l| l.outcome.is_err()).count();
            if failed == 0 {
                println!("all checks passed");
                Ok(ExitCode::SUCCESS)
            } else {
                println!("{failed} check(s) failed");
                Ok(ExitCode::from(1))
            }
        }
        #[cfg(feature = "dev-tools")]
        Command::Emulator(args) => {
            crate::telemetry::init(crate::config::LogFormat::Text, "info");
            serve_emulator(args).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Migrate => {
            let settings = load_settings(&cli)?;
            let pool = crate::app::connect_and_migrate(&settings).await?;
            pool.close().await;
            println!("migrations applied");
            Ok(ExitCode::SUCCESS)
        }
        Command::Sync(args) => sync(&cli, args.resource).await,
        Command::Run => {
            let settings = load_settings(&cli)?;
            let shutdown = crate::shutdown::on_signal();
            // Starting waits on Postgres (another replica's migration, say): a signal meanwhile
            // stops it; a migration cut short is rolled back by its transaction.
            // The start itself gives up waiting for Postgres on a signal; once it has spawned
            // the worker, the daemon's tasks see the signal and are drained below, so that a
            // create in flight is recorded.
            let started = crate::app::start_daemon(settings, shutdown.clone()).await;
            if started.is_err() && shutdown.is_cancelled() {
                tracing::info!("stopped before the daemon had started");
                return Ok(ExitCode::SUCCESS);
            }
            let daemon = started.map_err(|e| match e.downcast::<ConfigError>() {
                Ok(config) => Failure::from(config),
                Err(other) => Failure::Runtime(other),
            })?;
            daemon
                .finished
                .await
                .context("the daemon's task failed")??;
            Ok(ExitCode::SUCCESS)
        }
        #[cfg(feature = "dev-tools")]
        Command::Demo(args) => {
            crate::config::validate_schedule(&args.schedule)?;
            let options = crate::demo::DemoOptions {
                data_dir: args.data_dir.clone(),
                projects: args.projects,
                schedule: args.schedule.clone(),
                churn_every: Duration::from_secs(args.churn_secs.max(1)),
            };
            crate::demo::run(options, crate::shutdown::on_signal())
                .await
                .map_err(|e| match e.downcast::<ConfigError>() {
                    Ok(config) => Failure::from(config),
                    Err(other) => Failure::Runtime(other),
                })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Requests => {
            let settings = load_settings(&cli)?;
            let stop = crate::shutdown::on_signal();
            let report = crate::app::drain_requests(&settings, &stop)
                .await
                .map_err(|e| match e.downcast::<ConfigError>() {
                    Ok(config) => Failure::from(config),
                    Err(other) => Failure::Runtime(other),
                })?;
            println!(
                "requests: {} claimed, {} created, {} failed, {} to retry later, {} unknown (checking), {} adopted after a lost answer, {} tried again",
                report.claimed,
                report.created,
                report.failed,
                report.deferred,
                report.unknown,
                report.adopted,
                report.retried
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// A configuration error as exit 2, anything else as exit 1.
fn config_or_runtime(error: anyhow::Error) -> Failure {
    match error.downcast::<ConfigError>() {
        Ok(config) => Failure::from(config),
        Err(other) => Failure::Runtime(other),
    }
}

/// `sync [resource]`: the project walk, the cost pass and the audit-log catch-up (each when
/// enabled), or the one named.
async fn sync(cli: &Cli, resource: Option<SyncResource>) -> Result<ExitCode, Failure> {
    let settings = load_settings(cli)?;
    let cancel = crate::shutdown::on_signal();
    let named = resource.is_some();
    let mut failed: Option<Failure> = None;
    // The first failure is the exit's message; later ones are said as they happen.
    let note = |failed: &mut Option<Failure>, what: &str, error: anyhow::Error| match failed {
        Some(_) => eprintln!("{what}: {error:#}"),
        None => *failed = Some(config_or_runtime(error)),
    };
    if resource.is_none_or(|r| r == SyncResource::Projects) {
        let mut progress = TerminalProgress::new();
        let result = crate::app::sync_once(&settings, &cancel, &mut progress).await;
        progress.finish();
        match result {
            Ok(summary) => print_summary(&summary),
            // A configuration problem would only be said again by every pass after this one.
            Err(e) if named || e.downcast_ref::<ConfigError>().is_some() => {
                return Err(config_or_runtime(e));
            }
            Err(e) => note(&mut failed, "projects", e),
        }
    }
    let costs_wanted = resource == Some(SyncResource::Costs)
        || (resource.is_none() && settings.costs.enabled && !cancel.is_cancelled());
    if costs_wanted {
        match crate::app::sync_costs(&settings, &cancel).await {
            Ok(summary) => print_cost_summary(&summary),
            Err(e) if named || e.downcast_ref::<ConfigError>().is_some() => {
                return Err(config_or_runtime(e));
            }
            Err(e) => note(&mut failed, "costs", e),
        }
    }
    let audit_wanted = resource == Some(SyncResource::AuditLog)
        || (resource.is_none()
            && settings.audit_log.enabled != crate::config::AuditLogEnabled::Off
            && !cancel.is_cancelled());
    if audit_wanted {
        match crate::app::audit_log_once(&settings, &cancel).await {
            Ok(outcome) => print_audit_summary(&outcome),
            Err(e) if named => return Err(config_or_runtime(e)),
            Err(e) => note(&mut failed, "audit log", e),
        }
    }
    match failed {
        Some(failure) => Err(failure),
        None => Ok(ExitCode::SUCCESS),
    }
}

fn print_cost_summary(summary: &crate::costs::CostSummary) {
    let c = &summary.counts;
    println!(
        "cost pass {} succeeded in {:.2} s\n  window      {} to {} (UTC, end exclusive)\n  backfilled  {} day(s)\n  pages       {}\n  days read   {}\n  inserted    {}\n  updated     {}\n  unchanged   {}\n  removed     {}\n  revisions   {}\n  days kept   {}",
        summary.run_id,
        summary.duration.as_secs_f64(),
        summary.window.0.date_naive(),
        summary.window.1.date_naive(),
        summary.backfilled_days,
        c.pages,
        c.days_read,
        c.inserted,
        c.updated,
        c.unchanged,
        c.removed,
        c.revisions,
        c.days_kept
    );
    if let Some(peak) = peak_rss_kib() {
        println!("  peak memory {:.1} MiB", peak as f64 / 1024.0);
    }
}

/// Shows pages and projects on one updating line while stderr is a terminal.
struct TerminalProgress {
    enabled: bool,
    shown: bool,
}

impl TerminalProgress {
    fn new() -> Self {
        use std::io::IsTerminal;
        TerminalProgress {
            enabled: std::io::stderr().is_terminal(),
            shown: false,
        }
    }

    fn finish(&mut self) {
        if self.shown {
            eprintln!();
        }
    }
}

impl crate::sync::Progress for TerminalProgress {
    fn page_staged(&mut self, pages: u64, projects: u64) {
        if self.enabled {
            self.shown = true;
            eprint!("\r  walking: {pages} page(s), {projects} project(s) staged");
        }
    }
}

fn print_summary(summary: &crate::sync::WalkSummary) {
    let c = &summary.counts;
    println!(
        "sync run {} succeeded in {:.2} s\n  pages       {}\n  seen        {}\n  new         {}\n  changed     {}\n  unchanged   {}\n  vanished    {}\n  reappeared  {}",
        summary.run_id,
        summary.duration.as_secs_f64(),
        c.pages,
        c.seen,
        c.inserted,
        c.changed,
        c.unchanged,
        c.vanished,
        c.reappeared
    );
    if let Some(peak) = peak_rss_kib() {
        println!("  peak memory {:.1} MiB", peak as f64 / 1024.0);
    }
}

fn print_audit_summary(outcome: &crate::audit_log::AuditOutcome) {
    use crate::audit_log::AuditOutcome;
    match outcome {
        AuditOutcome::Disabled => println!("audit log: not read (audit_log.enabled = false)"),
        AuditOutcome::LoggingOff { .. } => {
            println!("audit log: {}", crate::audit_log::LOGGING_OFF_ADVICE)
        }
        AuditOutcome::Idle {
            events_in_window, ..
        } => println!(
            "audit log: nothing new ({events_in_window} event(s) in the window were stored already)"
        ),
        AuditOutcome::Applied(s) => println!(
            "audit log run {} succeeded in {:.2} s\n  pages       {}\n  events      {}\n  new         {}\n  inserted    {}\n  changed     {}\n  corrected   {}\n  waiting     {}",
            s.run_id,
            s.duration.as_secs_f64(),
            s.pages,
            s.events_in_window,
            s.new_events,
            s.projects_inserted,
            s.projects_changed,
            s.versions_corrected,
            s.projects_waiting
        ),
    }
}

/// The process's peak resident memory, from /proc where there is one.
pub fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(feature = "dev-tools")]
fn share(name: &str, value: f64) -> Result<f64, Failure> {
    if (0.0..=1.0).contains(&value) {
        Ok(value)
    } else {
        Err(Failure::Usage(format!(
            "--{name} is {value}; give a share between 0 and 1"
        )))
    }
}

/// Turns the emulator flags into its configuration and fault rates.
#[cfg(feature = "dev-tools")]
pub fn emulator_setup(
    args: &EmulatorArgs,
) -> Result<(EmulatorConfig, Vec<(Endpoint, FaultRates)>), Failure> {
    let admin_key = args
        .admin_key
        .clone()
        .filter(|k| !secrecy::ExposeSecret::expose_secret(k).trim().is_empty())
        .ok_or_else(|| Failure::Usage("the emulator needs the admin key it should accept: pass --admin-key or set OPENAI_ADMIN_KEY".into()))?;
    let config = EmulatorConfig {
        admin_key,
        projects: args.projects,
        archived_ratio: share("archived-ratio", args.archived_ratio)?,
        seed: args.seed,
        hang_for: Duration::from_secs(args.hang_secs),
        freedoms: emulator_freedoms(args)?,
        audit_logging: args.audit_logging,
        cost_days: args.cost_days,
    };
    let rates = FaultRates {
        latency_ms: args.latency_ms,
        too_many_requests: share("rate-429", args.rate_429)?,
        retry_after_ms: args.retry_after_ms,
        server_error: share("rate-5xx", args.rate_5xx)?,
        hang: share("rate-hang", args.rate_hang)?,
        drop: share("rate-drop", args.rate_drop)?,
        lost_response: 0.0,
    };
    let create_rates = FaultRates {
        lost_response: share("rate-lost", args.rate_lost)?,
        ..rates.clone()
    };
    let per_endpoint = Endpoint::ALL
        .into_iter()
        .map(|e| {
            (
                e,
                if e == Endpoint::Create {
                    create_rates.clone()
                } else {
                    rates.clone()
                },
            )
        })
        .collect();
    Ok((config, per_endpoint))
}

/// The freedoms the emulator flags ask for: the hostile set or the defaults, then each flag.
#[cfg(feature = "dev-tools")]
fn emulator_freedoms(args: &EmulatorArgs) -> Result<Freedoms, Failure> {
    let mut freedoms = if args.hostile {
        Freedoms::hostile()
    } else {
        Freedoms::default()
    };
    freedoms.omit_nulls |= args.omit_nulls;
    freedoms.unknown_fields |= args.unknown_fields;
    freedoms.rewrite_names |= args.rewrite_names;
    freedoms.retry_after_as_date |= args.retry_after_date;
    if let Some(order) = args.order {
        freedoms.order = order;
    }
    if let Some(answer) = args.geography_answer {
        freedoms.geography_answer = answer;
    }
    if let Some(residency) = &args.default_residency {
        freedoms.default_residency = Some(residency.clone());
    }
    if args.short_pages.is_some() {
        freedoms.short_pages = args.short_pages;
    }
    if let Some(form) = args.cost_amounts {
        freedoms.cost_amounts = form;
    }
    freedoms.create_delay_ms = args.create_delay_ms;
    freedoms.list_lag_ms = args.list_lag_ms;
    freedoms
        .check()
        .map_err(|why| Failure::Usage(format!("emulator freedoms: {why}")))?;
    Ok(freedoms)
}

#[cfg(feature = "dev-tools")]
async fn serve_emulator(args: &EmulatorArgs) -> Result<(), Failure> {
    let (config, rates) = emulator_setup(args)?;
    if !args.listen.ip().is_loopback() {
        tracing::warn!(listen = %args.listen, "the emulator listens beyond loopback; it is a development tool");
    }
    let handle = emulator::start(args.listen, config)
        .await
        .with_context(|| format!("could not listen on {}", args.listen))?;
    for (endpoint, rates) in rates {
        handle.set_rates(endpoint, rates);
    }
    handle.set_audit_delay(Duration::from_millis(args.audit_delay_ms));
    let stats = handle.stats();
    println!(
        "emulator listening on {} with {} projects; set OPENAI_BASE_URL={} (Ctrl-C stops it)",
        handle.addr(),
        stats.projects,
        handle.base_url()
    );
    let freedoms = handle.freedoms();
    if freedoms != Freedoms::default()
        && let Ok(json) = serde_json::to_string(&freedoms)
    {
        println!("freedoms taken: {json} (change them with POST /_emulator/freedoms)");
    }
    crate::shutdown::on_signal().cancelled().await;
    handle.shutdown();
    Ok(())
}
