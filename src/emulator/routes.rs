//! The emulated `/v1/organization/projects` endpoints and the `/_emulator` control side channel.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::{Value, json};

use super::audit_log::{AuditAnswer, AuditLogging, AuditQuery};
use super::faults::{Endpoint, Fault, FaultRates, FaultRule, LostAs};
use super::freedoms::{Freedoms, ListOrder};
use super::wire::{self, Rendering};
use super::{ConnectionKill, Shared};

pub(super) fn router(shared: Arc<Shared>) -> Router {
    let api = Router::new()
        .route("/organization/projects", get(list).post(create))
        .route("/organization/projects/{id}", get(retrieve).post(modify))
        .route("/organization/projects/{id}/archive", post(archive))
        .route("/organization/audit_logs", get(list_audit_logs))
        .route("/organization/costs", get(super::costs::list_costs));
    let control = Router::new()
        .route("/stats", get(stats))
        .route("/faults", post(push_fault).delete(clear_faults))
        .route("/rates/{endpoint}", post(set_rates))
        .route("/order", post(set_order))
        .route("/freedoms", get(freedoms).post(set_freedoms))
        .route("/projects", post(create_behind_back))
        .route("/churn", post(churn))
        .route("/costs/restate", post(super::costs::restate))
        .route("/projects/{id}", post(change_behind_back))
        .route("/audit_log", get(audit_events).post(set_audit_log));
    Router::new()
        .nest("/v1", api)
        .nest("/_emulator", control)
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            authenticate,
        ))
        .with_state(shared)
}

/// The OpenAI error envelope.
fn api_error(
    status: StatusCode,
    message: &str,
    kind: &str,
    param: Option<&str>,
    code: Option<&str>,
) -> Response {
    let body = json!({"error": {"message": message, "type": kind, "param": param, "code": code}});
    (status, Json(body)).into_response()
}

pub(super) fn invalid(message: &str, param: Option<&str>, code: Option<&str>) -> Response {
    api_error(
        StatusCode::BAD_REQUEST,
        message,
        "invalid_request_error",
        param,
        code,
    )
}

/// A 200 answer whose body is JSON the store already rendered.
pub(super) fn json_body(body: String) -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

fn no_such_project(id: &str) -> Response {
    api_error(
        StatusCode::NOT_FOUND,
        &format!("No project found with id '{id}'."),
        "invalid_request_error",
        Some("project_id"),
        Some("not_found"),
    )
}

async fn not_found() -> Response {
    api_error(
        StatusCode::NOT_FOUND,
        "Unknown request URL.",
        "invalid_request_error",
        None,
        Some("unknown_url"),
    )
}

async fn authenticate(State(shared): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    let number = shared.request_counter.fetch_add(1, Ordering::Relaxed);
    if let Some(endpoint) = endpoint_of(request.method(), request.uri().path()) {
        shared.counters[endpoint.slot()].fetch_add(1, Ordering::Relaxed);
    }
    let presented = request
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let mut response = if presented == Some(shared.admin_key.expose_secret()) {
        next.run(request).await
    } else {
        // As the real API does, the refusal echoes the presented key, masked.
        let message = match presented {
            Some(key) => format!(
                "Incorrect API key provided: {}. You can find your API key at https://platform.openai.com/account/api-keys.",
                masked(key)
            ),
            None => "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).".to_owned(),
        };
        api_error(
            StatusCode::UNAUTHORIZED,
            &message,
            "invalid_request_error",
            None,
            Some("invalid_api_key"),
        )
    };
    if let Ok(id) = HeaderValue::from_str(&format!("req_emu{number:012x}")) {
        response.headers_mut().insert("x-request-id", id);
    }
    response
}

/// A key as the API's refusal shows it: its first characters, stars, its last four.
fn masked(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    if chars.len() <= 12 {
        return "sk-****".to_owned();
    }
    let head: String = chars[..8].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!(
        "{head}{}{tail}",
        "*".repeat(chars.len().saturating_sub(12).min(20))
    )
}

/// Which emulated endpoint a call is for, so refused calls are counted too.
fn endpoint_of(method: &axum::http::Method, path: &str) -> Option<Endpoint> {
    if path == "/v1/organization/costs" {
        return Some(Endpoint::Costs);
    }
    if path == "/v1/organization/audit_logs" && method == axum::http::Method::GET {
        return Some(Endpoint::AuditLogs);
    }
    let rest = path.strip_prefix("/v1/organization/projects")?;
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let post = method == axum::http::Method::POST;
    match (segments.as_slice(), post) {
        ([], false) => Some(Endpoint::List),
        ([], true) => Some(Endpoint::Create),
        ([_], false) => Some(Endpoint::Retrieve),
        ([_], true) => Some(Endpoint::Modify),
        ([_, "archive"], true) => Some(Endpoint::Archive),
        _ => None,
    }
}

/// Plays the call's latency and fault; `Some` is the fault to answer with.
pub(super) async fn intercept(
    shared: &Shared,
    endpoint: Endpoint,
    kill: &ConnectionKill,
) -> Option<Fault> {
    let (latency, fault) = shared
        .faults
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .decide(endpoint);
    if !latency.is_zero() {
        wait_exactly(latency).await;
    }
    match fault {
        Some(Fault::LostResponse { .. }) | None => fault,
        Some(other) => {
            fail(shared, &other, kill).await;
            Some(other)
        }
    }
}

/// Waits `latency`, to within a fraction of a millisecond.
///
/// Tokio's timer counts whole milliseconds and wakes up to two late: over a hundred pages of a
/// benchmark that would be the emulator's slack, not the caller's. The last stretch is slept on
/// a blocking thread, whose timer is precise.
async fn wait_exactly(latency: std::time::Duration) {
    let deadline = std::time::Instant::now() + latency;
    let slack = std::time::Duration::from_millis(3);
    if latency > slack {
        tokio::time::sleep(latency - slack).await;
    }
    let rest = deadline.saturating_duration_since(std::time::Instant::now());
    if !rest.is_zero() {
        let _ = tokio::task::spawn_blocking(move || std::thread::sleep(rest)).await;
    }
}

/// Plays a failure on the wire; `Hang` and `Drop` never return a response worth sending.
async fn fail(shared: &Shared, fault: &Fault, kill: &ConnectionKill) {
    match fault {
        Fault::Hang | Fault::LostResponse { then: LostAs::Hang } => {
            tokio::time::sleep(shared.hang_for).await;
        }
        Fault::Drop | Fault::LostResponse { then: LostAs::Drop } => {
            kill.0.notify_one();
            // Long enough for the connection's task to close the socket before any answer;
            // bounded, so a create finishing in a task of its own does not linger.
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
        _ => {}
    }
}

/// The failure answer for every fault but a lost response, which first lets the call take effect.
pub(super) fn answered_early(shared: &Shared, fault: &Option<Fault>) -> Option<Response> {
    match fault {
        None
        | Some(Fault::LostResponse { .. } | Fault::IgnoreCursor | Fault::EmptyPageWithMore) => None,
        Some(other) => Some(fault_response(shared, other)),
    }
}

fn fault_response(shared: &Shared, fault: &Fault) -> Response {
    match fault {
        Fault::TooManyRequests { retry_after_ms } => {
            let mut response = api_error(
                StatusCode::TOO_MANY_REQUESTS,
                "Rate limit reached for requests. Please try again later.",
                "requests",
                None,
                Some("rate_limit_exceeded"),
            );
            let as_date = shared.store().freedoms().retry_after_as_date;
            let headers = response.headers_mut();
            if as_date {
                if let Ok(v) = HeaderValue::from_str(&retry_after_date(*retry_after_ms)) {
                    headers.insert("retry-after", v);
                }
            } else {
                if let Ok(v) = HeaderValue::from_str(&retry_after_ms.to_string()) {
                    headers.insert("retry-after-ms", v);
                }
                if let Ok(v) = HeaderValue::from_str(&retry_after_ms.div_ceil(1000).to_string()) {
                    headers.insert("retry-after", v);
                }
            }
            response
        }
        Fault::ServerError { status } => api_error(
            StatusCode::from_u16(*status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            "The server had an error while processing your request. Sorry about that!",
            "server_error",
            None,
            None,
        ),
        _ => api_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "The server had an error while processing your request. Sorry about that!",
            "server_error",
            None,
            None,
        ),
    }
}

/// An HTTP date at least `retry_after_ms` from now, whole seconds as the format has them.
fn retry_after_date(retry_after_ms: u64) -> String {
    let wait = i64::try_from(retry_after_ms.saturating_add(999)).unwrap_or(i64::MAX / 2);
    let at = chrono::Utc::now()
        .checked_add_signed(chrono::TimeDelta::milliseconds(wait))
        .unwrap_or_else(chrono::Utc::now);
    at.format("%a, %d %b %Y %H:%M:%S GMT").to_string()
}

/// Answers with `ok`, unless the call's fault says the answer is lost.
pub(super) async fn deliver(
    shared: &Shared,
    fault: Option<Fault>,
    kill: &ConnectionKill,
    ok: Response,
) -> Response {
    match fault {
        None | Some(Fault::IgnoreCursor | Fault::EmptyPageWithMore) => ok,
        Some(lost @ Fault::LostResponse { .. }) => {
            fail(shared, &lost, kill).await;
            fault_response(shared, &lost)
        }
        Some(other) => fault_response(shared, &other),
    }
}

async fn list(
    State(shared): State<Arc<Shared>>,
    Extension(kill): Extension<ConnectionKill>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let fault = intercept(&shared, Endpoint::List, &kill).await;
    if let Some(Fault::TooManyRequestsRaw {
        retry_after,
        retry_after_ms,
    }) = &fault
    {
        let mut response = fault_response(&shared, &Fault::TooManyRequests { retry_after_ms: 0 });
        let headers = response.headers_mut();
        for (name, value) in [
            ("retry-after", retry_after),
            ("retry-after-ms", retry_after_ms),
        ] {
            headers.remove(name);
            if let Some(v) = value.as_deref().and_then(|v| HeaderValue::from_str(v).ok()) {
                headers.insert(name, v);
            }
        }
        return response;
    }
    if let Some(early) = answered_early(&shared, &fault) {
        return early;
    }
    let limit = match query.get("limit").map(|v| v.parse::<i64>()) {
        None => 20,
        Some(Ok(n)) if (1..=100).contains(&n) => n as usize,
        Some(_) => {
            return invalid(
                "Invalid 'limit': must be an integer between 1 and 100.",
                Some("limit"),
                Some("integer_out_of_range"),
            );
        }
    };
    let include_archived = match query.get("include_archived").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => {
            return invalid(
                "Invalid 'include_archived': expected a boolean.",
                Some("include_archived"),
                None,
            );
        }
    };
    let after = query
        .get("after")
        .filter(|a| !a.is_empty() && fault != Some(Fault::IgnoreCursor));
    let page = {
        let store = shared.store();
        if fault == Some(Fault::EmptyPageWithMore) {
            let rendering = Rendering::of(store.freedoms());
            return json_body(wire::list_body(
                std::iter::empty(),
                None,
                None,
                true,
                rendering,
            ));
        }
        if let Some(after) = after
            && !store.contains(after)
        {
            return invalid(
                &format!("Invalid 'after': no project with id '{after}'."),
                Some("after"),
                None,
            );
        }
        store.list(
            limit,
            after.map(String::as_str),
            include_archived,
            std::time::Instant::now(),
        )
    };
    deliver(&shared, fault, &kill, json_body(page)).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    name: Option<String>,
    #[serde(default)]
    external_key_id: Option<String>,
    #[serde(default)]
    geography: Option<String>,
    #[serde(default)]
    residency: Option<String>,
}

async fn create(
    State(shared): State<Arc<Shared>>,
    Extension(kill): Extension<ConnectionKill>,
    body: axum::body::Bytes,
) -> Response {
    // A server finishes what it received: a caller that disconnects (or dies) mid-call
    // does not undo the create, which is exactly what makes a lost answer dangerous.
    let work = tokio::spawn(create_to_completion(shared, kill, body));
    work.await.unwrap_or_else(|_| {
        api_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "The server had an error.",
            "server_error",
            None,
            None,
        )
    })
}

async fn create_to_completion(
    shared: Arc<Shared>,
    kill: ConnectionKill,
    body: axum::body::Bytes,
) -> Response {
    let fault = intercept(&shared, Endpoint::Create, &kill).await;
    if let Some(early) = answered_early(&shared, &fault) {
        return early;
    }
    let body: CreateBody = match serde_json::from_slice(&body) {
        Ok(body) => body,
        Err(e) => return invalid(&format!("Invalid request body: {e}."), None, None),
    };
    let name = match body.name {
        Some(name) if !name.trim().is_empty() => name,
        _ => return invalid("Project name must not be empty.", Some("name"), None),
    };
    let (residency, delay) = {
        let store = shared.store();
        let freedoms = store.freedoms();
        let residency =
            freedoms.residency_for_create(body.geography.as_deref(), body.residency.as_deref());
        (residency, freedoms.create_delay())
    };
    let residency = match residency {
        Ok(residency) => residency,
        Err(refusal) => {
            return invalid(
                &refusal.message,
                Some(refusal.param),
                Some("invalid_region"),
            );
        }
    };
    // A late create: the server holds the work, then lands it even if the caller is long gone.
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let json = {
        let mut store = shared.store();
        let project = store
            .as_admin_key()
            .create(&name, body.external_key_id, residency);
        project.to_json(Rendering::of(store.freedoms()))
    };
    shared.projects_created.fetch_add(1, Ordering::Relaxed);
    deliver(&shared, fault, &kill, json_body(json)).await
}

async fn retrieve(
    State(shared): State<Arc<Shared>>,
    Extension(kill): Extension<ConnectionKill>,
    Path(id): Path<String>,
) -> Response {
    let fault = intercept(&shared, Endpoint::Retrieve, &kill).await;
    if let Some(early) = answered_early(&shared, &fault) {
        return early;
    }
    let found = shared.store().get_json(&id).map(str::to_owned);
    match found {
        Some(json) => deliver(&shared, fault, &kill, json_body(json)).await,
        None => no_such_project(&id),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ModifyBody {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    external_key_id: Option<String>,
}

async fn modify(
    State(shared): State<Arc<Shared>>,
    Extension(kill): Extension<ConnectionKill>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let fault = intercept(&shared, Endpoint::Modify, &kill).await;
    if let Some(early) = answered_early(&shared, &fault) {
        return early;
    }
    let body: ModifyBody = match serde_json::from_slice(&body) {
        Ok(body) => body,
        Err(e) => return invalid(&format!("Invalid request body: {e}."), None, None),
    };
    if body.name.as_ref().is_some_and(|n| n.trim().is_empty()) {
        return invalid("Project name must not be empty.", Some("name"), None);
    }
    let outcome = {
        let mut store = shared.store();
        match store.get(&id) {
            None => Err(no_such_project(&id)),
            Some(p) if p.is_archived() => Err(invalid(
                &format!("Project '{id}' is archived. You can only update an active project."),
                None,
                Some("project_archived"),
            )),
            Some(_) => {
                if let Some(name) = body.name {
                    store.as_admin_key().rename(&id, &name);
                }
                if let Some(key) = body.external_key_id {
                    store.as_admin_key().set_external_key(&id, key);
                }
                store
                    .get_json(&id)
                    .map(str::to_owned)
                    .ok_or_else(|| no_such_project(&id))
            }
        }
    };
    match outcome {
        Ok(json) => deliver(&shared, fault, &kill, json_body(json)).await,
        Err(response) => response,
    }
}

async fn archive(
    State(shared): State<Arc<Shared>>,
    Extension(kill): Extension<ConnectionKill>,
    Path(id): Path<String>,
) -> Response {
    let fault = intercept(&shared, Endpoint::Archive, &kill).await;
    if let Some(early) = answered_early(&shared, &fault) {
        return early;
    }
    let archived = {
        let mut store = shared.store();
        store
            .as_admin_key()
            .archive(&id)
            .and_then(|_| store.get_json(&id).map(str::to_owned))
    };
    match archived {
        Some(json) => deliver(&shared, fault, &kill, json_body(json)).await,
        None => no_such_project(&id),
    }
}

async fn churn(
    State(shared): State<Arc<Shared>>,
    Json(asked): Json<super::ChurnReport>,
) -> Response {
    Json(
        shared
            .store()
            .churn(asked.renamed, asked.archived, asked.created),
    )
    .into_response()
}

async fn stats(State(shared): State<Arc<Shared>>) -> Json<super::EmulatorStats> {
    Json(shared.stats())
}

async fn push_fault(State(shared): State<Arc<Shared>>, Json(rule): Json<FaultRule>) -> StatusCode {
    shared
        .faults
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(rule);
    StatusCode::NO_CONTENT
}

async fn clear_faults(State(shared): State<Arc<Shared>>) -> StatusCode {
    shared
        .faults
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clear();
    StatusCode::NO_CONTENT
}

async fn set_rates(
    State(shared): State<Arc<Shared>>,
    Path(endpoint): Path<String>,
    Json(rates): Json<FaultRates>,
) -> Response {
    let Ok(endpoint) = serde_json::from_value::<Endpoint>(Value::String(endpoint)) else {
        return invalid(
            "Unknown endpoint; use list, create, retrieve, modify, archive, audit_logs or costs.",
            None,
            None,
        );
    };
    shared
        .faults
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .set_rates(endpoint, rates);
    StatusCode::NO_CONTENT.into_response()
}

#[derive(Deserialize)]
struct OrderBody {
    order: ListOrder,
}

async fn set_order(State(shared): State<Arc<Shared>>, Json(body): Json<OrderBody>) -> StatusCode {
    shared.store().set_order(body.order);
    StatusCode::NO_CONTENT
}

async fn freedoms(State(shared): State<Arc<Shared>>) -> Json<Freedoms> {
    Json(shared.store().freedoms().clone())
}

/// Replaces the freedoms with the body's; fields left out take their defaults.
async fn set_freedoms(State(shared): State<Arc<Shared>>, body: axum::body::Bytes) -> Response {
    let freedoms: Freedoms = match serde_json::from_slice(&body) {
        Ok(freedoms) => freedoms,
        Err(e) => return invalid(&format!("Invalid freedoms: {e}."), None, None),
    };
    if let Err(why) = freedoms.check() {
        return invalid(&format!("Invalid freedoms: {why}."), None, None);
    }
    shared.store().set_freedoms(freedoms.clone());
    Json(freedoms).into_response()
}

#[derive(Deserialize)]
struct BehindBackCreate {
    name: String,
    /// Who makes the change in the dashboard, as the audit log records it.
    #[serde(default)]
    actor_email: Option<String>,
    #[serde(default)]
    external_key_id: Option<String>,
    #[serde(default)]
    residency: Option<String>,
}

async fn create_behind_back(
    State(shared): State<Arc<Shared>>,
    Json(body): Json<BehindBackCreate>,
) -> Response {
    let json = {
        let mut store = shared.store();
        let residency = body
            .residency
            .or_else(|| store.freedoms().default_residency.clone());
        if let Some(email) = &body.actor_email {
            store.as_person(email);
        }
        let project = store.create(&body.name, body.external_key_id, residency);
        project.to_json(Rendering::of(store.freedoms()))
    };
    json_body(json)
}

#[derive(Deserialize)]
struct BehindBackChange {
    #[serde(default)]
    name: Option<String>,
    /// Who makes the change in the dashboard, as the audit log records it.
    #[serde(default)]
    actor_email: Option<String>,
    #[serde(default)]
    archive: bool,
    #[serde(default)]
    hidden: Option<bool>,
    #[serde(default)]
    fields: serde_json::Map<String, Value>,
}

async fn change_behind_back(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    Json(body): Json<BehindBackChange>,
) -> Response {
    let mut store = shared.store();
    if !store.contains(&id) {
        return no_such_project(&id);
    }
    if let Some(name) = body.name {
        if let Some(email) = &body.actor_email {
            store.as_person(email);
        }
        store.rename(&id, &name);
    }
    if body.archive {
        if let Some(email) = &body.actor_email {
            store.as_person(email);
        }
        store.archive(&id);
    }
    for (key, value) in body.fields {
        store.set_extra(&id, &key, value);
    }
    if let Some(hidden) = body.hidden {
        store.set_hidden(&id, hidden);
    }
    let json = store.get_json(&id).map_or("null", |j| j).to_owned();
    json_body(json)
}

async fn list_audit_logs(
    State(shared): State<Arc<Shared>>,
    Extension(kill): Extension<ConnectionKill>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Response {
    let fault = intercept(&shared, Endpoint::AuditLogs, &kill).await;
    if let Some(early) = answered_early(&shared, &fault) {
        return early;
    }
    let mut query = match AuditQuery::parse(&pairs) {
        Ok(query) => query,
        Err(refusal) => return invalid(&refusal.message, Some(&refusal.param), None),
    };
    if fault == Some(Fault::IgnoreCursor) {
        query.after = None;
    }
    let answer = {
        let store = shared.store();
        if fault == Some(Fault::EmptyPageWithMore) {
            return json_body(
                "{\"object\":\"list\",\"data\":[],\"first_id\":null,\"last_id\":null,\"has_more\":true}"
                    .to_owned(),
            );
        }
        let freedoms = store.freedoms();
        store.audit.list(
            &query,
            freedoms.page_size(query.limit),
            freedoms.order == ListOrder::OldestFirst,
            std::time::Instant::now(),
        )
    };
    match answer {
        AuditAnswer::Page(body) => deliver(&shared, fault, &kill, json_body(body)).await,
        AuditAnswer::LoggingOff => api_error(
            StatusCode::FORBIDDEN,
            "Audit logging is not enabled for this organization. An organization owner can turn it on under Organization settings; once on, it cannot be turned off.",
            "invalid_request_error",
            None,
            Some("audit_logging_disabled"),
        ),
        AuditAnswer::UnknownCursor(after) => invalid(
            &format!("Invalid 'after': no audit log event with id '{after}'."),
            Some("after"),
            None,
        ),
    }
}

async fn audit_events(State(shared): State<Arc<Shared>>) -> Json<Vec<Value>> {
    Json(shared.store().audit.all())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditLogControl {
    #[serde(default)]
    logging: Option<AuditLogging>,
    #[serde(default)]
    delay_ms: Option<u64>,
}

/// Turns audit logging on or off and sets how late events show; fields left out stay as they are.
async fn set_audit_log(State(shared): State<Arc<Shared>>, body: axum::body::Bytes) -> Response {
    let control: AuditLogControl = match serde_json::from_slice(&body) {
        Ok(control) => control,
        Err(e) => return invalid(&format!("Invalid audit log control: {e}."), None, None),
    };
    let mut store = shared.store();
    if let Some(logging) = control.logging {
        store.audit.set_logging(logging);
    }
    if let Some(delay) = control.delay_ms {
        store
            .audit
            .set_delay(std::time::Duration::from_millis(delay));
    }
    Json(json!({
        "logging": store.audit.logging(),
        "delay_ms": u64::try_from(store.audit.delay().as_millis()).unwrap_or(u64::MAX),
        "admin_key_id": store.audit.admin_key_id(),
    }))
    .into_response()
}
