//! A local, stateful emulator of the Admin API's project endpoints, for tests, benchmarks and the demo.
//!
//! It speaks the wire format with types of its own and takes the freedoms the spec leaves a
//! server (see `Freedoms`), so a client that leans on one server's habits fails here first.

mod audit_log;
mod costs;
mod faults;
mod freedoms;
mod regions;
mod routes;
mod store;
mod wire;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tower::ServiceExt;

pub use audit_log::{
    ADMIN_KEY_OWNER_EMAIL, AuditLogging, DEFAULT_PROJECT_ID, DEFAULT_SESSION_EMAIL, key_tracking_id,
};
pub use costs::{EmulatedCost, Restatement};
pub use faults::{Endpoint, Fault, FaultRates, FaultRule, LostAs};
pub use freedoms::{CostAmountForm, Freedoms, GeographyAnswer, HOSTILE_PAGE_CAP, ListOrder};
pub use regions::{GEOGRAPHIES, RESIDENCIES, residency_of_geography};
pub use store::ChurnReport;
use store::ProjectStore;
pub use wire::EmulatedProject;

/// How the emulated organization starts out.
#[derive(Debug, Clone)]
pub struct EmulatorConfig {
    /// The only bearer token accepted.
    pub admin_key: SecretString,
    /// How many projects are generated at start.
    pub projects: usize,
    /// The share of generated projects that are archived, 0 to 1.
    pub archived_ratio: f64,
    /// The seed of the generated organization, of the arbitrary order and of random faults.
    pub seed: u64,
    /// How long a `Hang` fault holds a call before answering 500.
    pub hang_for: Duration,
    /// The freedoms the server takes from the start; `set_freedoms` changes them later.
    pub freedoms: Freedoms,
    /// Whether the organization has audit logging on from the start.
    pub audit_logging: AuditLogging,
    /// Days of cost history before today; earlier days answer `results: []`.
    pub cost_days: u32,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        EmulatorConfig {
            admin_key: "sk-admin-emulator-placeholder".into(),
            projects: 0,
            archived_ratio: 0.2,
            seed: 1,
            hang_for: Duration::from_secs(600),
            freedoms: Freedoms::default(),
            audit_logging: AuditLogging::On,
            cost_days: DEFAULT_COST_DAYS,
        }
    }
}

/// Days of cost history an emulator has unless told otherwise.
pub const DEFAULT_COST_DAYS: u32 = 30;

/// Calls received per endpoint, and projects created through the API.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct EmulatorStats {
    /// List calls received, refused ones included.
    pub list_calls: u64,
    /// Create calls received, refused ones included.
    pub create_calls: u64,
    /// Retrieve calls received, refused ones included.
    pub retrieve_calls: u64,
    /// Modify calls received, refused ones included.
    pub modify_calls: u64,
    /// Archive calls received, refused ones included.
    pub archive_calls: u64,
    /// Audit-log list calls received, refused ones included.
    pub audit_log_calls: u64,
    /// Costs calls received, refused ones included.
    pub cost_calls: u64,
    /// Projects that landed through API creates, late ones included once they land.
    pub projects_created: u64,
    /// Projects in the organization, however they came.
    pub projects: u64,
}

/// Tells a connection's task to close the socket without answering.
#[derive(Clone)]
struct ConnectionKill(Arc<Notify>);

struct Shared {
    admin_key: SecretString,
    hang_for: Duration,
    store: Mutex<ProjectStore>,
    faults: Mutex<faults::FaultPlan>,
    counters: [AtomicU64; Endpoint::ALL.len()],
    /// The seed the organization and its costs are generated from.
    seed: u64,
    /// Days of cost history before today.
    cost_days: u32,
    /// Restatements of past days' costs.
    costs: Mutex<costs::CostBook>,
    projects_created: AtomicU64,
    request_counter: AtomicU64,
}

impl Shared {
    fn store(&self) -> MutexGuard<'_, ProjectStore> {
        // A panic while holding the lock cannot leave the store half-written: every change is one assignment.
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn stats(&self) -> EmulatorStats {
        let count = |e: Endpoint| self.counters[e.slot()].load(Ordering::Relaxed);
        EmulatorStats {
            list_calls: count(Endpoint::List),
            create_calls: count(Endpoint::Create),
            retrieve_calls: count(Endpoint::Retrieve),
            modify_calls: count(Endpoint::Modify),
            archive_calls: count(Endpoint::Archive),
            audit_log_calls: count(Endpoint::AuditLogs),
            cost_calls: count(Endpoint::Costs),
            projects_created: self.projects_created.load(Ordering::Relaxed),
            projects: self.store().len() as u64,
        }
    }
}

/// A running emulator; dropping the last handle does not stop it, `shutdown` does.
#[derive(Clone)]
pub struct EmulatorHandle {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
}

/// Starts the emulator on `listen` (port 0 picks a free one) and serves until `shutdown`.
///
/// Fails when it cannot listen, or when `config.freedoms` cannot be served.
pub async fn start(listen: SocketAddr, config: EmulatorConfig) -> std::io::Result<EmulatorHandle> {
    config
        .freedoms
        .check()
        .map_err(|why| std::io::Error::new(std::io::ErrorKind::InvalidInput, why))?;
    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let store = ProjectStore::seeded(
        config.projects,
        config.archived_ratio,
        config.seed,
        config.freedoms,
        audit_log::AuditLog::new(config.admin_key.expose_secret(), config.audit_logging),
    );
    let shared = Arc::new(Shared {
        admin_key: config.admin_key,
        hang_for: config.hang_for,
        store: Mutex::new(store),
        faults: Mutex::new(faults::FaultPlan::new(config.seed)),
        counters: Default::default(),
        seed: config.seed,
        cost_days: config.cost_days,
        costs: Mutex::new(costs::CostBook::default()),
        projects_created: AtomicU64::new(0),
        request_counter: AtomicU64::new(0),
    });
    let (stop, stopped) = watch::channel(false);
    let router = routes::router(shared.clone());
    tokio::spawn(accept_loop(listener, router, stopped));
    Ok(EmulatorHandle { addr, shared, stop })
}

async fn accept_loop(
    listener: TcpListener,
    router: axum::Router,
    mut stopped: watch::Receiver<bool>,
) {
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    // Answers are small and latency is what tests measure: no Nagle delays.
                    let _ = stream.set_nodelay(true);
                    stream
                }
                Err(_) => continue,
            },
            _ = stopped.changed() => return,
        };
        let router = router.clone();
        let mut stopped = stopped.clone();
        tokio::spawn(async move {
            let kill = ConnectionKill(Arc::new(Notify::new()));
            let killer = kill.clone();
            let service = hyper::service::service_fn(
                move |mut request: hyper::Request<hyper::body::Incoming>| {
                    request.extensions_mut().insert(killer.clone());
                    router.clone().oneshot(request)
                },
            );
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            // Dropping the connection future closes the socket with no answer: a dropped connection.
            tokio::select! {
                _ = connection => {}
                _ = kill.0.notified() => {}
                _ = stopped.changed() => {}
            }
        });
    }
}

impl EmulatorHandle {
    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL to give a client, ending in `/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Stops accepting and closes open connections.
    pub fn shutdown(&self) {
        let _ = self.stop.send(true);
    }

    /// Calls received so far and projects created through the API.
    pub fn stats(&self) -> EmulatorStats {
        self.shared.stats()
    }

    /// Adds a scripted fault.
    pub fn push_fault(&self, rule: FaultRule) {
        self.shared
            .faults
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(rule);
    }

    /// Sets random faults and latency on one endpoint.
    pub fn set_rates(&self, endpoint: Endpoint, rates: FaultRates) {
        self.shared
            .faults
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .set_rates(endpoint, rates);
    }

    /// Removes every fault and latency.
    pub fn clear_faults(&self) {
        self.shared
            .faults
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// Changes the order the list answers in, leaving the other freedoms as they are.
    pub fn set_order(&self, order: ListOrder) {
        self.shared.store().set_order(order);
    }

    /// Replaces the freedoms the server takes; every project's JSON follows at once.
    ///
    /// A page cap of 0 is served as 1; the control channel refuses what `Freedoms::check` refuses.
    pub fn set_freedoms(&self, freedoms: Freedoms) {
        self.shared.store().set_freedoms(freedoms);
    }

    /// The freedoms the server takes now.
    pub fn freedoms(&self) -> Freedoms {
        self.shared.store().freedoms().clone()
    }

    /// One project as the server holds it now, found at once even while the list lags.
    pub fn project(&self, id: &str) -> Option<EmulatedProject> {
        self.shared.store().get(id).cloned()
    }

    /// Every project, oldest first.
    pub fn projects(&self) -> Vec<EmulatedProject> {
        self.shared.store().all().to_vec()
    }

    /// Renames a project behind the daemon's back; the name is stored the server's way.
    pub fn rename(&self, id: &str, name: &str) -> Option<EmulatedProject> {
        self.shared.store().rename(id, name)
    }

    /// Archives a project behind the daemon's back.
    pub fn archive(&self, id: &str) -> Option<EmulatedProject> {
        self.shared.store().archive(id)
    }

    /// Creates a project behind the daemon's back (not counted as an API create), with the
    /// default residency if one is set, listed after the list lag.
    pub fn create(&self, name: &str) -> EmulatedProject {
        let mut store = self.shared.store();
        let residency = store.freedoms().default_residency.clone();
        store.create(name, None, residency)
    }

    /// Makes a project vanish from every answer, or come back; `false` if no such project.
    pub fn set_hidden(&self, id: &str, hidden: bool) -> bool {
        self.shared.store().set_hidden(id, hidden)
    }

    /// Sets a field the product does not model on one project.
    pub fn set_field(&self, id: &str, key: &str, value: Value) -> Option<EmulatedProject> {
        self.shared.store().set_extra(id, key, value)
    }

    /// Renames, archives and creates projects at random, as a living organization does.
    pub fn churn(&self, renames: usize, archives: usize, creates: usize) -> ChurnReport {
        self.shared.store().churn(renames, archives, creates)
    }

    /// Changes a past day's costs from now on: new figures, a line item no longer listed, or
    /// a day answered empty.
    pub fn restate_costs(&self, restatement: Restatement) {
        self.shared
            .costs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .restate(restatement);
    }

    /// Every cost result served now for the days in `[from, until)` (unix seconds).
    pub fn cost_rows(&self, from: i64, until: i64) -> Vec<EmulatedCost> {
        costs::cost_rows(&self.shared, from, until)
    }

    /// Renames a project in the dashboard as the person with `email`.
    pub fn rename_as(&self, id: &str, name: &str, email: &str) -> Option<EmulatedProject> {
        self.shared.store().as_person(email).rename(id, name)
    }

    /// Archives a project in the dashboard as the person with `email`.
    pub fn archive_as(&self, id: &str, email: &str) -> Option<EmulatedProject> {
        self.shared.store().as_person(email).archive(id)
    }

    /// Creates a project in the dashboard as the person with `email`.
    pub fn create_as(&self, name: &str, email: &str) -> EmulatedProject {
        let mut store = self.shared.store();
        let residency = store.freedoms().default_residency.clone();
        store.as_person(email).create(name, None, residency)
    }

    /// Turns the organization's audit logging on or off (off: an empty log, or an error).
    pub fn set_audit_logging(&self, logging: AuditLogging) {
        self.shared.store().audit.set_logging(logging);
    }

    /// Makes events recorded from now on show in the audit log only `delay` after they
    /// happened; their `effective_at` stays the true time.
    pub fn set_audit_delay(&self, delay: Duration) {
        self.shared.store().audit.set_delay(delay);
    }

    /// Every event recorded so far, shown yet or not, in recording order.
    pub fn audit_events(&self) -> Vec<Value> {
        self.shared.store().audit.all()
    }

    /// The tracking id the audit log shows for the emulator's admin key.
    pub fn admin_key_id(&self) -> String {
        self.shared.store().audit.admin_key_id().to_owned()
    }

    /// Records an event of `kind` about `resource_id` at `effective_at` (unix seconds) as done
    /// by the person with `email`, with the payload given: late, odd or out-of-order events.
    pub fn record_audit_event(
        &self,
        kind: &str,
        effective_at: i64,
        resource_id: Option<&str>,
        email: &str,
        payload: Value,
    ) {
        self.shared.store().audit.record_raw(
            kind,
            effective_at,
            resource_id,
            &audit_log::AuditActor::session(email),
            payload,
        );
    }
}
