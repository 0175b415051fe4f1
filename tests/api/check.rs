//! The `check` command end to end, and the admin key kept out of every output of a failing run.

use crate::helpers::{
    TEST_KEY, TestDb, output_text, run_binary_async, start_emulator, start_emulator_with,
};
use openai_project_sync::emulator::{EmulatorConfig, Endpoint, Fault, FaultRule};

#[tokio::test]
async fn check_passes_against_a_reachable_database_and_api() {
    let db = TestDb::new().await;
    let emulator = start_emulator(3).await;
    let base = emulator.base_url();

    let output = run_binary_async(
        &["check"],
        &[
            ("DATABASE_URL", &db.url),
            ("OPENAI_BASE_URL", &base),
            ("OPENAI_ADMIN_KEY", TEST_KEY),
        ],
    )
    .await;

    let text = output_text(&output);
    assert_eq!(output.status.code(), Some(0), "{text}");
    assert!(
        text.contains("ok    database") && text.contains("ok    OpenAI Admin API"),
        "{text}"
    );
    assert!(text.contains("all checks passed"));
}

#[tokio::test]
async fn check_explains_a_refused_key_and_an_unreachable_database_in_plain_words() {
    let emulator = start_emulator(3).await;
    let base = emulator.base_url();
    let closed_port = openai_project_sync::local_postgres::free_port().expect("port");
    let db_url = format!("postgres://postgres@127.0.0.1:{closed_port}/nothing");

    let output = run_binary_async(
        &["check"],
        &[
            ("DATABASE_URL", &db_url),
            ("OPENAI_BASE_URL", &base),
            ("OPENAI_ADMIN_KEY", "sk-admin-wrong-placeholder"),
        ],
    )
    .await;

    let text = output_text(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(
        text.contains("FAIL  database") && text.contains("check that Postgres runs"),
        "{text}"
    );
    assert!(
        text.contains("the admin key was refused") && text.contains("sk-admin-"),
        "{text}"
    );
    assert!(
        text.contains("FAIL  audit log: not read") && !text.contains("audit logging is off"),
        "the audit log is not misread as off behind a refused key: {text}"
    );
    assert!(text.contains("3 check(s) failed"), "{text}");
}

#[tokio::test]
async fn a_canary_admin_key_appears_in_no_output_of_a_failing_run() {
    let db = TestDb::new().await;
    let canary = "sk-admin-CANARY-7d1c0ffee";
    let accepting = start_emulator_with(EmulatorConfig {
        admin_key: canary.into(),
        projects: 3,
        ..EmulatorConfig::default()
    })
    .await;
    accepting.push_fault(FaultRule {
        endpoint: Endpoint::List,
        skip: 0,
        times: None,
        fault: Fault::ServerError { status: 500 },
    });
    let failing = accepting.base_url();
    let refusing = start_emulator(3).await;
    let base = refusing.base_url();
    let closed_port = openai_project_sync::local_postgres::free_port().expect("port");
    let closed = format!("http://127.0.0.1:{closed_port}/v1");

    let refused = run_binary_async(
        &["check"],
        &[
            ("DATABASE_URL", &db.url),
            ("OPENAI_BASE_URL", &base),
            ("OPENAI_ADMIN_KEY", canary),
            ("RUST_LOG", "trace"),
        ],
    )
    .await;
    let unreachable = run_binary_async(
        &["check"],
        &[
            ("DATABASE_URL", &db.url),
            ("OPENAI_BASE_URL", &closed),
            ("OPENAI_ADMIN_KEY", canary),
            ("RUST_LOG", "trace"),
            ("APP_LOG__FORMAT", "json"),
        ],
    )
    .await;

    let server_errors = run_binary_async(
        &["check"],
        &[
            ("DATABASE_URL", &db.url),
            ("OPENAI_BASE_URL", &failing),
            ("OPENAI_ADMIN_KEY", canary),
            ("RUST_LOG", "trace"),
        ],
    )
    .await;

    assert!(
        output_text(&server_errors).contains("retrying"),
        "the retry was logged"
    );
    for output in [&refused, &unreachable, &server_errors] {
        let text = output_text(output);
        assert_eq!(output.status.code(), Some(1), "{text}");
        assert!(!text.contains("CANARY"), "the key leaked:\n{text}");
        assert!(text.contains("FAIL  OpenAI Admin API"), "{text}");
    }
}

#[tokio::test]
async fn an_api_refusal_echoing_a_masked_key_leaves_no_key_in_tables_or_logs() {
    let db = TestDb::new().await;
    let emulator = start_emulator(3).await;
    let base = emulator.base_url();
    let wrong = "sk-admin-wrong-placeholder-QZXW";
    let env = [
        ("DATABASE_URL", db.url.as_str()),
        ("OPENAI_BASE_URL", base.as_str()),
        ("OPENAI_ADMIN_KEY", wrong),
        ("RUST_LOG", "debug"),
    ];
    let migrated = run_binary_async(&["migrate"], &env).await;
    assert_eq!(
        migrated.status.code(),
        Some(0),
        "{}",
        output_text(&migrated)
    );
    sqlx::query("insert into openai.project_requests (name) values ('Refused for its key')")
        .execute(&db.pool)
        .await
        .expect("a request");

    let requests = run_binary_async(&["requests"], &env).await;
    // The walk alone: timings in the debug log of a cost pass too could spell the key's end.
    let sync = run_binary_async(&["sync", "projects"], &env).await;

    let (request_error,): (Option<String>,) =
        sqlx::query_as("select error from openai.project_requests")
            .fetch_one(&db.pool)
            .await
            .expect("the request");
    let (run_error,): (Option<String>,) = sqlx::query_as("select error from openai.sync_runs")
        .fetch_one(&db.pool)
        .await
        .expect("the walk");
    let request_error = request_error.expect("the refusal is recorded");
    let run_error = run_error.expect("the failure is recorded");
    assert!(
        request_error.contains("Incorrect API key provided")
            && request_error.contains("[redacted key]"),
        "{request_error}"
    );
    for (what, text) in [
        ("project_requests.error", request_error),
        ("sync_runs.error", run_error),
        ("the requests command's log", output_text(&requests)),
        ("the sync command's log", output_text(&sync)),
    ] {
        assert!(!text.contains("sk-"), "{what} holds a key:\n{text}");
        assert!(
            !text.contains("QZXW"),
            "{what} holds the key's end:\n{text}"
        );
    }
}

#[tokio::test]
async fn check_never_prints_a_password_whose_unescaped_slash_split_the_database_url() {
    // `app:9/…` reads as host `localhost`, port 9, and the rest of the password as the database.
    let emulator = start_emulator(1).await;
    let base = emulator.base_url();
    let url = "postgres://localhost:9/S3CRETPART@127.0.0.1:5432/openai";

    let output = run_binary_async(
        &["check"],
        &[
            ("DATABASE_URL", url),
            ("OPENAI_BASE_URL", &base),
            ("OPENAI_ADMIN_KEY", TEST_KEY),
        ],
    )
    .await;

    let text = output_text(&output);
    assert!(!text.contains("S3CRETPART"), "{text}");
    assert!(text.contains("percent-encode"), "{text}");
}
