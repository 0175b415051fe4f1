//! The Admin API client against the emulator: walking, retrying, and classifying creates.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use openai_project_sync::client::{
    ApiError, CreateOutcome, CreateProject, CreatedProject, ListParams,
};
use openai_project_sync::emulator::{EmulatorConfig, Endpoint, Fault, FaultRule, LostAs};

use crate::helpers::{
    TEST_KEY, client_for, client_with, start_emulator, start_emulator_with, walk_all,
};

fn list_fault(skip: u32, times: u32, fault: Fault) -> FaultRule {
    FaultRule {
        endpoint: Endpoint::List,
        skip,
        times: Some(times),
        fault,
    }
}

fn create_fault(fault: Fault) -> FaultRule {
    FaultRule {
        endpoint: Endpoint::Create,
        skip: 0,
        times: Some(1),
        fault,
    }
}

#[tokio::test]
async fn walk_of_2537_projects_survives_429_and_5xx_and_honours_retry_after() {
    let emulator = start_emulator_with(EmulatorConfig {
        admin_key: TEST_KEY.into(),
        projects: 2_537,
        archived_ratio: 0.3,
        seed: 42,
        ..EmulatorConfig::default()
    })
    .await;
    emulator.push_fault(list_fault(
        2,
        2,
        Fault::TooManyRequests {
            retry_after_ms: 300,
        },
    ));
    emulator.push_fault(list_fault(8, 1, Fault::ServerError { status: 503 }));
    emulator.push_fault(list_fault(14, 1, Fault::ServerError { status: 500 }));

    let started = Instant::now();
    let (projects, pages) = walk_all(client_for(&emulator).walk_projects(100, true))
        .await
        .expect("the walk survives transient faults");
    let elapsed = started.elapsed();

    assert_eq!(pages, 26);
    assert_eq!(projects.len(), 2_537);
    let ids: HashSet<&str> = projects.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(ids.len(), 2_537, "no project is listed twice");
    assert!(
        projects
            .iter()
            .any(|p| p.status.as_deref() == Some("archived"))
    );
    assert!(
        elapsed >= Duration::from_millis(600),
        "two 429s asking for 300 ms each were honoured, waited {elapsed:?}"
    );
    assert_eq!(
        emulator.stats().list_calls,
        26 + 4,
        "each fault cost exactly one retry"
    );
}

#[tokio::test]
async fn a_repeated_cursor_stops_the_walk_with_an_error() {
    let emulator = start_emulator(250).await;
    emulator.push_fault(list_fault(1, 1, Fault::IgnoreCursor));

    let error = walk_all(client_for(&emulator).walk_projects(100, true))
        .await
        .expect_err("a cursor that comes back must stop the walk");

    assert!(
        matches!(error, ApiError::Pagination { page: 2, .. }),
        "{error:?}"
    );
    assert!(
        error.to_string().contains("came back a second time"),
        "{error}"
    );
    assert_eq!(
        emulator.stats().list_calls,
        2,
        "the walk did not go on looping"
    );
}

#[tokio::test]
async fn has_more_on_an_empty_page_stops_the_walk_rather_than_ending_early() {
    let emulator = start_emulator(250).await;
    emulator.push_fault(list_fault(1, 1, Fault::EmptyPageWithMore));

    let error = walk_all(client_for(&emulator).walk_projects(100, true))
        .await
        .expect_err("an empty page with has_more is a broken walk");

    assert!(
        error.to_string().contains("has_more on an empty page"),
        "{error}"
    );
}

#[tokio::test]
async fn an_empty_organization_walks_to_zero_projects() {
    let emulator = start_emulator(0).await;

    let page = client_for(&emulator)
        .list_page(&ListParams {
            limit: 100,
            after: None,
            include_archived: true,
        })
        .await
        .expect("an empty list is fine");
    let (projects, pages) = walk_all(client_for(&emulator).walk_projects(100, true))
        .await
        .expect("walk an empty organization");

    assert!(page.data.is_empty() && !page.has_more);
    assert_eq!((page.first_id, page.last_id), (None, None));
    assert_eq!((projects.len(), pages), (0, 1));
}

#[tokio::test]
async fn a_refused_key_ends_the_walk_at_once_with_the_apis_message() {
    let emulator = start_emulator(300).await;
    let client = client_with(
        &emulator.base_url(),
        "sk-admin-wrong-placeholder",
        Duration::from_secs(5),
    );

    let error = walk_all(client.walk_projects(100, true))
        .await
        .expect_err("401");

    assert_eq!(error.status(), Some(401));
    assert!(
        error.to_string().contains("Incorrect API key provided"),
        "{error}"
    );
    assert!(
        error.to_string().contains("request id req_emu"),
        "the request id is kept: {error}"
    );
    assert_eq!(emulator.stats().list_calls, 1, "401 is not retried");
}

#[tokio::test]
async fn limits_of_0_and_101_are_refused_with_400_and_not_retried() {
    let emulator = start_emulator(10).await;
    let client = client_for(&emulator);

    for limit in [0, 101] {
        let error = client
            .list_page(&ListParams {
                limit,
                after: None,
                include_archived: false,
            })
            .await
            .expect_err("out of range");
        assert_eq!(error.status(), Some(400), "limit {limit}");
        assert!(error.to_string().contains("limit"), "{error}");
    }
    assert_eq!(emulator.stats().list_calls, 2);
}

#[tokio::test]
async fn reads_give_up_after_the_retry_budget_and_say_how_often_they_tried() {
    let emulator = start_emulator(10).await;
    emulator.push_fault(FaultRule {
        endpoint: Endpoint::List,
        skip: 0,
        times: None,
        fault: Fault::ServerError { status: 502 },
    });

    let error = client_for(&emulator)
        .list_page(&ListParams {
            limit: 10,
            after: None,
            include_archived: true,
        })
        .await
        .expect_err("every attempt fails");

    assert!(
        matches!(error, ApiError::GaveUp { attempts: 7, .. }),
        "{error:?}"
    );
    assert_eq!(error.status(), Some(502));
    assert_eq!(emulator.stats().list_calls, 7);
}

#[tokio::test]
async fn a_read_that_hangs_past_the_timeout_is_retried_and_succeeds() {
    let emulator = start_emulator(5).await;
    emulator.push_fault(list_fault(0, 1, Fault::Hang));
    emulator.push_fault(list_fault(0, 1, Fault::Drop));
    let client = client_with(&emulator.base_url(), TEST_KEY, Duration::from_millis(300));

    let page = client
        .list_page(&ListParams {
            limit: 10,
            after: None,
            include_archived: true,
        })
        .await
        .expect("a hang and a dropped connection are retried");

    assert_eq!(page.data.len(), 5);
    assert_eq!(emulator.stats().list_calls, 3);
}

async fn create_once(
    rule: Option<FaultRule>,
    timeout: Duration,
) -> (CreateOutcome, openai_project_sync::emulator::EmulatorStats) {
    let emulator = start_emulator(3).await;
    if let Some(rule) = rule {
        emulator.push_fault(rule);
    }
    let client = client_with(&emulator.base_url(), TEST_KEY, timeout);
    let outcome = client
        .create_project(&CreateProject {
            name: "Payments staging".into(),
            ..Default::default()
        })
        .await;
    (outcome, emulator.stats())
}

#[tokio::test]
async fn a_successful_create_returns_the_project_with_its_name_intact() {
    let emulator = start_emulator(0).await;
    let name = "Zürich «quotes» \"and\" 'apostrophes' 🚀";

    let outcome = client_for(&emulator)
        .create_project(&CreateProject {
            name: name.into(),
            external_key_id: Some("key_placeholder".into()),
            geography: Some("EU".into()),
            residency: None,
        })
        .await;

    let CreateOutcome::Created(CreatedProject { project, .. }) = outcome else {
        panic!("expected created, got {outcome:?}")
    };
    assert_eq!(project.name.as_deref(), Some(name));
    assert_eq!(project.external_key_id.as_deref(), Some("key_placeholder"));
    assert_eq!(
        emulator
            .project(&project.id)
            .and_then(|p| p.name)
            .as_deref(),
        Some(name)
    );
    assert_eq!(emulator.stats().projects_created, 1);
}

#[tokio::test]
async fn a_create_refused_with_400_is_rejected_and_not_retried() {
    let emulator = start_emulator(0).await;

    let outcome = client_for(&emulator)
        .create_project(&CreateProject {
            name: "   ".into(),
            ..Default::default()
        })
        .await;
    let both = client_for(&emulator)
        .create_project(&CreateProject {
            name: "Both".into(),
            geography: Some("EU".into()),
            residency: Some("EU".into()),
            ..Default::default()
        })
        .await;

    let CreateOutcome::Rejected(error) = outcome else {
        panic!("expected rejected, got {outcome:?}")
    };
    assert!(error.to_string().contains("must not be empty"), "{error}");
    assert!(matches!(both, CreateOutcome::Rejected(_)), "{both:?}");
    let stats = emulator.stats();
    assert_eq!((stats.create_calls, stats.projects_created), (2, 0));
}

#[tokio::test]
async fn a_create_with_a_refused_key_is_rejected() {
    let emulator = start_emulator(0).await;
    let client = client_with(
        &emulator.base_url(),
        "sk-admin-wrong-placeholder",
        Duration::from_secs(5),
    );

    let outcome = client
        .create_project(&CreateProject {
            name: "X".into(),
            ..Default::default()
        })
        .await;

    assert!(
        matches!(&outcome, CreateOutcome::Rejected(e) if e.status() == Some(401)),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn a_rate_limited_create_is_refused_for_now_with_the_wait_asked() {
    let (outcome, stats) = create_once(
        Some(create_fault(Fault::TooManyRequests {
            retry_after_ms: 1_500,
        })),
        Duration::from_secs(5),
    )
    .await;

    let CreateOutcome::RefusedForNow { retry_after, .. } = outcome else {
        panic!("expected refused for now, got {outcome:?}")
    };
    assert_eq!(retry_after, Some(Duration::from_millis(1_500)));
    assert_eq!((stats.create_calls, stats.projects_created), (1, 0));
}

#[tokio::test]
async fn a_create_that_cannot_connect_is_refused_for_now() {
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr")
    };
    let client = client_with(
        &format!("http://{closed}/v1"),
        TEST_KEY,
        Duration::from_secs(2),
    );

    let outcome = client
        .create_project(&CreateProject {
            name: "X".into(),
            ..Default::default()
        })
        .await;

    assert!(
        matches!(
            outcome,
            CreateOutcome::RefusedForNow {
                error: ApiError::Connect(_),
                ..
            }
        ),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn a_create_answered_500_is_ambiguous_and_not_retried() {
    let (outcome, stats) = create_once(
        Some(create_fault(Fault::ServerError { status: 500 })),
        Duration::from_secs(5),
    )
    .await;

    assert!(
        matches!(outcome, CreateOutcome::Ambiguous(_)),
        "{outcome:?}"
    );
    assert_eq!((stats.create_calls, stats.projects_created), (1, 0));
}

#[tokio::test]
async fn a_create_that_hangs_past_the_timeout_is_ambiguous_and_not_retried() {
    let (outcome, stats) =
        create_once(Some(create_fault(Fault::Hang)), Duration::from_millis(300)).await;

    assert!(
        matches!(outcome, CreateOutcome::Ambiguous(ApiError::Timeout(_))),
        "{outcome:?}"
    );
    assert_eq!(stats.create_calls, 1);
}

#[tokio::test]
async fn a_create_whose_connection_drops_is_ambiguous_and_not_retried() {
    let (outcome, stats) =
        create_once(Some(create_fault(Fault::Drop)), Duration::from_secs(5)).await;

    assert!(
        matches!(outcome, CreateOutcome::Ambiguous(ApiError::Transport(_))),
        "{outcome:?}"
    );
    assert_eq!((stats.create_calls, stats.projects_created), (1, 0));
}

#[tokio::test]
async fn a_create_whose_response_is_lost_is_ambiguous_though_the_project_exists() {
    for then in [LostAs::ServerError, LostAs::Drop, LostAs::Hang] {
        let (outcome, stats) = create_once(
            Some(create_fault(Fault::LostResponse { then })),
            Duration::from_millis(300),
        )
        .await;

        assert!(
            matches!(outcome, CreateOutcome::Ambiguous(_)),
            "{then:?}: {outcome:?}"
        );
        assert_eq!(
            (stats.create_calls, stats.projects_created),
            (1, 1),
            "{then:?}"
        );
    }
}

#[tokio::test]
async fn retrieve_modify_and_archive_round_trip_and_archived_projects_refuse_changes() {
    let emulator = start_emulator(4).await;
    let client = client_for(&emulator);
    let id = emulator.projects()[0].id.clone();

    let renamed = client
        .modify_project(
            &id,
            &openai_project_sync::client::ModifyProject {
                name: Some("Renamed".into()),
                external_key_id: None,
            },
        )
        .await
        .expect("modify");
    let archived = client.archive_project(&id).await.expect("archive");
    let fetched = client.retrieve_project(&id).await.expect("retrieve");
    let refused = client
        .modify_project(
            &id,
            &openai_project_sync::client::ModifyProject {
                name: Some("Again".into()),
                external_key_id: None,
            },
        )
        .await
        .expect_err("archived projects cannot be modified");
    let missing = client
        .retrieve_project("proj_missing")
        .await
        .expect_err("404");

    assert_eq!(renamed.name.as_deref(), Some("Renamed"));
    assert_eq!(archived.status.as_deref(), Some("archived"));
    assert!(archived.archived_at.is_some());
    assert_eq!(fetched, archived);
    assert!(
        matches!(refused.root(), ApiError::Status { status: 400, code: Some(c), .. } if c == "project_archived"),
        "{refused:?}"
    );
    assert_eq!(missing.status(), Some(404));
}

/// Serves a hand-written API on loopback and returns a client for it.
pub(crate) async fn serve_scripted(app: axum::Router) -> openai_project_sync::client::AdminClient {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    client_with(
        &format!("http://{addr}/v1"),
        TEST_KEY,
        Duration::from_secs(5),
    )
}

#[tokio::test]
async fn every_call_sends_a_user_agent_naming_the_product() {
    assert!(openai_project_sync::client::USER_AGENT_VALUE.starts_with("openai-project-sync/"));
    let received = std::sync::Arc::new(std::sync::Mutex::new(None::<String>));
    let seen = received.clone();
    let app = axum::Router::new().route(
        "/v1/organization/projects",
        axum::routing::get(move |headers: axum::http::HeaderMap| {
            let seen = seen.clone();
            async move {
                *seen.lock().expect("lock") = headers
                    .get("user-agent")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                axum::Json(serde_json::json!({"object": "list", "data": [], "first_id": null, "last_id": null, "has_more": false}))
            }
        }),
    );
    let client = serve_scripted(app).await;

    client
        .list_page(&ListParams {
            limit: 1,
            after: None,
            include_archived: true,
        })
        .await
        .expect("list");

    let agent = received.lock().expect("lock").clone();
    assert_eq!(
        agent.as_deref(),
        Some(openai_project_sync::client::USER_AGENT_VALUE)
    );
}

#[test]
fn projects_tolerate_missing_fields_and_keep_unknown_ones() {
    let minimal = r#"{"id":"proj_a","object":"organization.project","created_at":1711471533}"#;
    let richer = r#"{"id":"proj_b","object":"organization.project","created_at":1,"name":null,"status":"active","archived_at":null,"billing":{"tier":"gold"}}"#;

    let minimal: openai_project_sync::client::Project =
        serde_json::from_str(minimal).expect("minimal");
    let richer: openai_project_sync::client::Project =
        serde_json::from_str(richer).expect("richer");

    assert_eq!(
        (minimal.name, minimal.status, minimal.archived_at),
        (None, None, None)
    );
    assert_eq!(
        richer.extra.get("billing"),
        Some(&serde_json::json!({"tier": "gold"}))
    );
    let back = serde_json::to_value(&richer).expect("serialize");
    assert_eq!(
        back["billing"]["tier"], "gold",
        "unknown fields survive a round trip"
    );
}

#[tokio::test]
async fn x_should_retry_overrides_the_status_in_both_directions() {
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let counter = calls.clone();
    // 503 that says "do not retry", then 400 that says "do retry", then success.
    let app = axum::Router::new().route(
        "/v1/organization/projects",
        axum::routing::get(move |query: axum::extract::RawQuery| {
            let counter = counter.clone();
            async move {
                let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let error = |status: u16, retry: &'static str| {
                    (
                        axum::http::StatusCode::from_u16(status).expect("status"),
                        [("x-should-retry", retry)],
                        axum::Json(serde_json::json!({"error": {"message": "scripted", "type": "x", "param": null, "code": null}})),
                    )
                        .into_response()
                };
                match (query.0.unwrap_or_default().contains("limit=1&"), n) {
                    (true, _) => error(503, "false"),
                    (false, 1) => error(400, "true"),
                    _ => axum::Json(serde_json::json!({"object": "list", "data": [], "first_id": null, "last_id": null, "has_more": false})).into_response(),
                }
            }
        }),
    );
    use axum::response::IntoResponse;
    let client = serve_scripted(app).await;

    let refused = client
        .list_page(&ListParams {
            limit: 1,
            after: None,
            include_archived: true,
        })
        .await;
    let before = calls.load(std::sync::atomic::Ordering::SeqCst);
    let retried = client
        .list_page(&ListParams {
            limit: 2,
            after: None,
            include_archived: true,
        })
        .await;

    assert_eq!(
        refused
            .expect_err("503 with x-should-retry: false")
            .status(),
        Some(503)
    );
    assert_eq!(before, 1, "not retried");
    assert!(
        retried.is_ok(),
        "400 with x-should-retry: true was retried: {retried:?}"
    );
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 3);
}

/// One listed project's JSON.
pub(crate) fn scripted_project(id: &str) -> serde_json::Value {
    serde_json::json!({"id": id, "object": "organization.project", "name": id, "created_at": 1700000000, "status": "active"})
}

/// A client of a project list that is the one page `page`, its JSON text sent exactly as written
/// (numbers and escapes a JSON value would rewrite included).
pub(crate) async fn serve_one_list_page(
    page: &'static str,
) -> openai_project_sync::client::AdminClient {
    serve_scripted(axum::Router::new().route(
        "/v1/organization/projects",
        axum::routing::get(move || async move {
            (
                [(axum::http::header::CONTENT_TYPE, "application/json")],
                page,
            )
        }),
    ))
    .await
}

/// A list API whose first page is `first` and whose every later page (`after` given) is `rest`.
pub(crate) fn scripted_list(first: serde_json::Value, rest: serde_json::Value) -> axum::Router {
    axum::Router::new().route(
        "/v1/organization/projects",
        axum::routing::get(move |query: axum::extract::RawQuery| {
            let later = query.0.unwrap_or_default().contains("after=");
            let body = if later { rest.clone() } else { first.clone() };
            async move { axum::Json(body) }
        }),
    )
}

#[tokio::test]
async fn a_list_page_without_has_more_is_a_decode_error_not_the_end_of_the_list() {
    let page = serde_json::json!({"object": "list", "data": [scripted_project("proj_a")], "first_id": "proj_a", "last_id": "proj_a"});
    let client = serve_scripted(scripted_list(page.clone(), page)).await;

    let typed = client
        .list_page(&ListParams {
            limit: 10,
            after: None,
            include_archived: true,
        })
        .await
        .expect_err("has_more is required");
    let walked = walk_all(client.walk_projects(10, true))
        .await
        .expect_err("has_more is required");

    for error in [typed, walked] {
        assert!(
            matches!(&error, ApiError::Decode { message, .. } if message.contains("has_more")),
            "{error:?}"
        );
    }
}

#[tokio::test]
async fn a_last_id_that_is_not_the_last_projects_id_stops_the_walk_naming_both() {
    let first = serde_json::json!({
        "object": "list",
        "data": [scripted_project("proj_a"), scripted_project("proj_b")],
        "first_id": "proj_a", "last_id": "proj_a", "has_more": true,
    });
    let rest = serde_json::json!({"object": "list", "data": [scripted_project("proj_c")], "first_id": "proj_c", "last_id": "proj_c", "has_more": false});
    let client = serve_scripted(scripted_list(first, rest)).await;

    let error = walk_all(client.walk_projects(2, true))
        .await
        .expect_err("the page contradicts itself");

    assert!(
        matches!(&error, ApiError::Pagination { page: 1, problem } if problem.contains("proj_a") && problem.contains("proj_b")),
        "{error:?}"
    );
}

#[tokio::test]
async fn a_null_last_id_on_a_full_page_walks_on_from_the_last_project() {
    let first = serde_json::json!({
        "object": "list",
        "data": [scripted_project("proj_a"), scripted_project("proj_b")],
        "first_id": null, "last_id": null, "has_more": true,
    });
    let rest = serde_json::json!({"object": "list", "data": [scripted_project("proj_c")], "first_id": "proj_c", "last_id": "proj_c", "has_more": false});
    let client = serve_scripted(scripted_list(first, rest)).await;

    let (projects, pages) = walk_all(client.walk_projects(2, true))
        .await
        .expect("a missing last_id is no contradiction");

    assert_eq!((projects.len(), pages), (3, 2));
}

#[tokio::test]
async fn absurd_retry_after_headers_on_a_list_page_are_survived_without_a_long_wait() {
    let emulator = start_emulator(250).await;
    let raw = |retry_after: Option<&str>, retry_after_ms: Option<&str>| Fault::TooManyRequestsRaw {
        retry_after: retry_after.map(str::to_owned),
        retry_after_ms: retry_after_ms.map(str::to_owned),
    };
    // Each rule lets the first call through, then fires once: page 2 is refused four times.
    emulator.push_fault(list_fault(1, 1, raw(Some("1e20"), None)));
    emulator.push_fault(list_fault(1, 1, raw(None, Some("1e30"))));
    emulator.push_fault(list_fault(1, 1, raw(Some("-5"), Some("-5"))));
    emulator.push_fault(list_fault(1, 1, raw(Some("NaN"), Some("NaN"))));

    let started = Instant::now();
    let (projects, pages) = walk_all(client_for(&emulator).walk_projects(100, true))
        .await
        .expect("garbled waits are ignored and the page retried");

    assert_eq!((projects.len(), pages), (250, 3));
    assert_eq!(emulator.stats().list_calls, 3 + 4);
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn credentials_in_the_base_url_appear_in_no_error_and_no_debug_output() {
    // Nothing listens on the discard port of loopback: the call fails to connect.
    let client = client_with(
        "http://proxy-user:s3cret-pass@127.0.0.1:9/v1",
        TEST_KEY,
        Duration::from_secs(2),
    );

    let error = client
        .list_page(&ListParams {
            limit: 1,
            after: None,
            include_archived: true,
        })
        .await
        .expect_err("nothing answers");

    for text in [
        error.to_string(),
        format!("{error:?}"),
        format!("{client:?}"),
    ] {
        assert!(!text.contains("s3cret-pass"), "{text}");
        assert!(!text.contains("proxy-user"), "{text}");
    }
}
