//! The Admin API client: the only module that speaks HTTP to OpenAI.

// An error keeps the API's own words for the operator; its size is nothing next to a network call.
#![allow(clippy::result_large_err)]

mod audit_log;
mod costs;
mod create;
mod error;
mod project;
mod retry;
mod walk;

use std::time::Duration;

use reqwest::header::{AUTHORIZATION, HeaderValue, USER_AGENT};
use reqwest::{Method, StatusCode, Url};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use serde::de::DeserializeOwned;

pub use audit_log::{
    AuditEvent, AuditWindow, MEMBER_EVENT_TYPES, PROJECT_ARCHIVED, PROJECT_CREATED,
    PROJECT_EVENT_TYPES, PROJECT_UPDATED,
};
pub use costs::{
    CostBucket, CostPage, CostQuery, CostResult, CostWalk, DAY_SECONDS, ExactNumber,
    MAX_COST_LIMIT, Text,
};
pub use create::{CreateOutcome, CreatedProject};
pub use error::ApiError;
pub use project::{
    CreateProject, ListParams, ListedProject, ModifyProject, Project, ProjectPage, RawProjectPage,
};
pub use retry::{RetryPolicy, is_retryable};
pub use walk::ProjectWalk;

/// The value of the `User-Agent` header on every call.
pub const USER_AGENT_VALUE: &str = concat!("openai-project-sync/", env!("CARGO_PKG_VERSION"));

/// The most a `content-length` reserves before the body arrives; a longer body still arrives whole.
const MAX_BODY_RESERVE: usize = 64 << 20;

/// How to reach the API.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub base_url: Url,
    pub admin_key: SecretString,
    pub timeout: Duration,
    pub retry: RetryPolicy,
}

/// A cheap-to-clone handle on the Admin API's project endpoints.
#[derive(Clone)]
pub struct AdminClient {
    http: reqwest::Client,
    base_url: Url,
    auth: HeaderValue,
    timeout: Duration,
    retry: RetryPolicy,
}

impl std::fmt::Debug for AdminClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminClient")
            .field(
                "base_url",
                &self.without_credentials(self.base_url.as_str()),
            )
            .field("auth", &"[REDACTED]")
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// One successful answer: its body and the request id the API gave it.
struct Answer {
    status: StatusCode,
    body: Vec<u8>,
    request_id: Option<String>,
}

impl AdminClient {
    /// Builds a client; fails only when the key cannot be a header value.
    pub fn new(options: ClientOptions) -> Result<AdminClient, ApiError> {
        let mut auth =
            HeaderValue::from_str(&format!("Bearer {}", options.admin_key.expose_secret()))
                .map_err(|_| {
                    ApiError::Connect(
                        "the admin key holds characters that cannot be sent in a header".into(),
                    )
                })?;
        auth.set_sensitive(true);
        Ok(AdminClient {
            http: http_client(options.timeout)?,
            base_url: options.base_url,
            auth,
            timeout: options.timeout,
            retry: options.retry,
        })
    }

    /// The same client with a connection pool of its own, for a task on another runtime: a
    /// connection lives on the runtime that opened it, so one pool must not span two.
    pub fn with_own_connections(&self) -> Result<AdminClient, ApiError> {
        Ok(AdminClient {
            http: http_client(self.timeout)?,
            ..self.clone()
        })
    }

    /// Fetches one page of projects, retrying transient failures.
    pub async fn list_page(&self, params: &ListParams) -> Result<ProjectPage, ApiError> {
        self.call_retrying("list", Method::GET, self.list_url(params), None::<&()>)
            .await
    }

    fn list_url(&self, params: &ListParams) -> Url {
        let mut url = self.url(&["organization", "projects"]);
        {
            let mut query = url.query_pairs_mut();
            query.append_pair("limit", &params.limit.to_string());
            if let Some(after) = &params.after {
                query.append_pair("after", after);
            }
            query.append_pair("include_archived", &params.include_archived.to_string());
        }
        url
    }

    /// Fetches one page of projects as raw JSON, checking only each project's required fields.
    pub async fn list_page_raw(&self, params: &ListParams) -> Result<RawProjectPage, ApiError> {
        let body: project::RawListBody = self
            .call_retrying("list", Method::GET, self.list_url(params), None::<&()>)
            .await?;
        let bad = |message: String| ApiError::Decode {
            message,
            request_id: None,
        };
        let items: Vec<Box<serde_json::value::RawValue>> = serde_json::from_str(body.data.get())
            .map_err(|e| bad(format!("`data` is not a list: {e}")))?;
        let mut projects = Vec::with_capacity(items.len());
        for raw in items {
            let fields: project::RequiredFields = serde_json::from_str(raw.get())
                .map_err(|e| bad(format!("a listed project lacks a required field: {e}")))?;
            if fields.object != "organization.project" {
                return Err(bad(format!(
                    "a listed item is a {:?}, not a project",
                    fields.object
                )));
            }
            projects.push(ListedProject { id: fields.id, raw });
        }
        Ok(RawProjectPage {
            projects,
            last_id: body.last_id.filter(|id| !id.is_empty()),
            has_more: body.has_more,
        })
    }

    /// Starts a walk over every page of the project list.
    pub fn walk_projects(&self, page_size: u32, include_archived: bool) -> ProjectWalk {
        ProjectWalk::new(self.clone(), page_size, include_archived)
    }

    /// Creates a project exactly once: never retried, the outcome says what is known.
    pub async fn create_project(&self, body: &CreateProject) -> CreateOutcome {
        let url = self.url(&["organization", "projects"]);
        let answer = self.send("create", Method::POST, url, Some(body)).await;
        CreateOutcome::classify(answer.and_then(|a| {
            let project = decode::<Project>(&a)?;
            let raw = String::from_utf8(a.body.to_vec()).map_err(|e| ApiError::Decode {
                message: format!("the created project is not UTF-8: {e}"),
                request_id: a.request_id.clone(),
            })?;
            Ok(CreatedProject { project, raw })
        }))
    }

    /// Fetches one project by id.
    pub async fn retrieve_project(&self, id: &str) -> Result<Project, ApiError> {
        let url = self.url(&["organization", "projects", id]);
        self.call_retrying("retrieve", Method::GET, url, None::<&()>)
            .await
    }

    /// Renames a project or changes its key; retried because repeating it changes nothing more.
    pub async fn modify_project(
        &self,
        id: &str,
        body: &ModifyProject,
    ) -> Result<Project, ApiError> {
        let url = self.url(&["organization", "projects", id]);
        self.call_retrying("modify", Method::POST, url, Some(body))
            .await
    }

    /// Archives a project; retried because archiving twice is the same as once.
    pub async fn archive_project(&self, id: &str) -> Result<Project, ApiError> {
        let url = self.url(&["organization", "projects", id, "archive"]);
        self.call_retrying("archive", Method::POST, url, None::<&()>)
            .await
    }

    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base_url.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    async fn call_retrying<T: DeserializeOwned>(
        &self,
        endpoint: &'static str,
        method: Method,
        url: Url,
        body: Option<&impl Serialize>,
    ) -> Result<T, ApiError> {
        self.call_retrying_with(endpoint, method, url, body, |answer| decode::<T>(&answer))
            .await
    }

    /// Like `call_retrying`, returning the answer's body as received, read into `buffer`'s
    /// allocation (emptied first) so a caller reading page after page allocates once.
    async fn call_retrying_raw(
        &self,
        endpoint: &'static str,
        method: Method,
        url: Url,
        buffer: Vec<u8>,
    ) -> Result<Vec<u8>, ApiError> {
        self.call_retrying_into(endpoint, method, url, None::<&()>, buffer, |answer| {
            Ok(answer.body)
        })
        .await
    }

    async fn call_retrying_with<T>(
        &self,
        endpoint: &'static str,
        method: Method,
        url: Url,
        body: Option<&impl Serialize>,
        read: impl Fn(Answer) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        self.call_retrying_into(endpoint, method, url, body, Vec::new(), read)
            .await
    }

    /// `call_retrying_with`, the first answer read into `buffer` (a retry reads into a new one).
    async fn call_retrying_into<T>(
        &self,
        endpoint: &'static str,
        method: Method,
        url: Url,
        body: Option<&impl Serialize>,
        buffer: Vec<u8>,
        read: impl Fn(Answer) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        let mut retry = 0;
        let mut buffer = Some(buffer);
        loop {
            let result = self
                .send_into(
                    endpoint,
                    method.clone(),
                    url.clone(),
                    body,
                    buffer.take().unwrap_or_default(),
                )
                .await
                .and_then(&read);
            let error = match result {
                Ok(value) => return Ok(value),
                Err(error) => error,
            };
            let Some(delay) = self.retry.delay_for(retry, &error) else {
                return Err(if retry > 0 && is_retryable(&error) {
                    ApiError::GaveUp {
                        attempts: retry + 1,
                        last: Box::new(error),
                    }
                } else {
                    error
                });
            };
            metrics::counter!(crate::metric::API_RETRIES_TOTAL, "endpoint" => endpoint)
                .increment(1);
            tracing::warn!(
                endpoint,
                attempt = retry + 1,
                retry_in_ms = delay.as_millis() as u64,
                error = %error,
                "API call failed; retrying"
            );
            tokio::time::sleep(delay).await;
            retry += 1;
        }
    }

    /// Sends one request and reads the whole answer, without retrying.
    async fn send(
        &self,
        endpoint: &'static str,
        method: Method,
        url: Url,
        body: Option<&impl Serialize>,
    ) -> Result<Answer, ApiError> {
        self.send_into(endpoint, method, url, body, Vec::new())
            .await
    }

    /// `send`, the answer read into `buffer`'s allocation.
    async fn send_into(
        &self,
        endpoint: &'static str,
        method: Method,
        url: Url,
        body: Option<&impl Serialize>,
        buffer: Vec<u8>,
    ) -> Result<Answer, ApiError> {
        let mut request = self
            .http
            .request(method, url)
            .timeout(self.timeout)
            .header(AUTHORIZATION, self.auth.clone())
            .header(USER_AGENT, USER_AGENT_VALUE);
        if let Some(body) = body {
            request = request.json(body);
        }
        let result = self.exchange(request, buffer).await;
        let (status, error) = match &result {
            Ok(answer) => (answer.status.as_u16().to_string(), "none"),
            Err(ApiError::Status { status, .. }) => (
                status.to_string(),
                match status {
                    429 => "rate_limited",
                    500.. => "server",
                    _ => "client",
                },
            ),
            Err(ApiError::Timeout(_)) => ("none".to_owned(), "timeout"),
            Err(ApiError::Connect(_)) => ("none".to_owned(), "connect"),
            Err(ApiError::Decode { .. }) => ("200".to_owned(), "decode"),
            Err(_) => ("none".to_owned(), "transport"),
        };
        metrics::counter!(
            crate::metric::API_REQUESTS_TOTAL,
            "endpoint" => endpoint,
            "status" => status,
            "error" => error
        )
        .increment(1);
        result
    }

    async fn exchange(
        &self,
        request: reqwest::RequestBuilder,
        buffer: Vec<u8>,
    ) -> Result<Answer, ApiError> {
        let response = request.send().await.map_err(|e| self.transport_error(&e))?;
        let status = response.status();
        let headers = response.headers().clone();
        let request_id = headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = self.read_body(response, buffer).await?;
        if status == StatusCode::OK || status.is_success() {
            return Ok(Answer {
                status,
                body,
                request_id,
            });
        }
        let error = ApiError::from_response(
            status,
            &body,
            request_id,
            retry::retry_after(&headers),
            retry::should_retry(&headers),
        );
        tracing::debug!(error = %error, "API call answered with an error");
        Err(error)
    }

    /// Reads a whole body into `body` (emptied first), reserving its `content-length`: each
    /// chunk is copied in as it arrives and let go, so a body is held once, not as chunks and
    /// then a copy.
    async fn read_body(
        &self,
        mut response: reqwest::Response,
        mut body: Vec<u8>,
    ) -> Result<Vec<u8>, ApiError> {
        body.clear();
        let expected = response
            .content_length()
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or(0)
            .min(MAX_BODY_RESERVE);
        body.reserve_exact(expected);
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| self.transport_error(&e))?
        {
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    fn transport_error(&self, error: &reqwest::Error) -> ApiError {
        // reqwest's messages quote the URL, with whatever user name and password it holds.
        let detail = self.without_credentials(&error_chain(error));
        if error.is_connect() {
            ApiError::Connect(detail)
        } else if error.is_timeout() {
            ApiError::Timeout(self.timeout)
        } else {
            ApiError::Transport(detail)
        }
    }
}

impl AdminClient {
    /// `text` with the base URL's user name and password taken out wherever it quotes them.
    fn without_credentials(&self, text: &str) -> String {
        let user = self.base_url.username();
        let userinfo = match self.base_url.password() {
            Some(password) => format!("{user}:{password}@"),
            None if !user.is_empty() => format!("{user}@"),
            None => return text.to_owned(),
        };
        text.replace(&userinfo, "")
    }
}

/// The HTTP client behind an `AdminClient`, with its own connection pool.
fn http_client(timeout: Duration) -> Result<reqwest::Client, ApiError> {
    reqwest::Client::builder()
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .pool_idle_timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| ApiError::Connect(format!("could not build the HTTP client: {e}")))
}

fn decode<T: DeserializeOwned>(answer: &Answer) -> Result<T, ApiError> {
    serde_json::from_slice(&answer.body).map_err(|e| ApiError::Decode {
        message: e.to_string(),
        request_id: answer.request_id.clone(),
    })
}

/// Joins an error with its sources, since reqwest's own message hides the cause.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
