//! The emulator is faithful to the documented shapes, deterministic, and controllable.

use std::collections::HashSet;

use openai_project_sync::client::ListParams;
use openai_project_sync::emulator::{EmulatorConfig, Freedoms, ListOrder};
use serde_json::Value;

use crate::helpers::{TEST_KEY, client_for, start_emulator, start_emulator_with, walk_all};

fn config(projects: usize, seed: u64, order: ListOrder) -> EmulatorConfig {
    EmulatorConfig {
        admin_key: TEST_KEY.into(),
        projects,
        archived_ratio: 0.25,
        seed,
        freedoms: Freedoms {
            order,
            ..Freedoms::default()
        },
        ..EmulatorConfig::default()
    }
}

async fn raw_get(base: &str, path: &str, key: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .get(format!("{base}{path}"))
        .bearer_auth(key)
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.expect("json body"))
}

async fn raw_post(base: &str, path: &str, body: Value) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .bearer_auth(TEST_KEY)
        .json(&body)
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.expect("json body"))
}

#[tokio::test]
async fn the_same_seed_generates_the_same_organization_and_another_seed_another() {
    let a = start_emulator_with(config(300, 9, ListOrder::NewestFirst)).await;
    let b = start_emulator_with(config(300, 9, ListOrder::NewestFirst)).await;
    let c = start_emulator_with(config(300, 10, ListOrder::NewestFirst)).await;

    assert_eq!(a.projects(), b.projects());
    assert_ne!(a.projects(), c.projects());
}

#[tokio::test]
async fn generated_projects_include_archived_ones_unicode_quotes_and_null_names() {
    let emulator = start_emulator_with(config(1_000, 3, ListOrder::NewestFirst)).await;
    let projects = emulator.projects();

    let archived = projects
        .iter()
        .filter(|p| p.status.as_deref() == Some("archived"))
        .count();
    assert!(
        (150..350).contains(&archived),
        "about a quarter archived, got {archived}"
    );
    assert!(
        projects
            .iter()
            .all(|p| p.status.as_deref() != Some("archived") || p.archived_at.is_some())
    );
    assert!(
        projects.iter().any(|p| p.name.is_none()),
        "some names are null"
    );
    let names: Vec<&str> = projects.iter().filter_map(|p| p.name.as_deref()).collect();
    assert!(names.iter().any(|n| !n.is_ascii()), "unicode names");
    assert!(names.iter().any(|n| n.contains('🚀')), "emoji names");
    assert!(
        names.iter().any(|n| n.contains('"') && n.contains('\'')),
        "quoted names"
    );
    assert!(
        projects
            .iter()
            .all(|p| p.id.starts_with("proj_") && p.object == "organization.project")
    );
}

#[tokio::test]
async fn newest_and_oldest_first_list_the_same_projects_in_opposite_orders() {
    let newest = start_emulator_with(config(230, 5, ListOrder::NewestFirst)).await;
    let oldest = start_emulator_with(config(230, 5, ListOrder::OldestFirst)).await;

    let (a, _) = walk_all(client_for(&newest).walk_projects(100, true))
        .await
        .expect("walk");
    let (mut b, _) = walk_all(client_for(&oldest).walk_projects(100, true))
        .await
        .expect("walk");
    b.reverse();

    assert_eq!(a, b);
    assert!(a.windows(2).all(|w| w[0].created_at >= w[1].created_at));
}

#[tokio::test]
async fn the_list_defaults_to_20_active_projects_and_includes_archived_only_when_asked() {
    let emulator = start_emulator_with(config(120, 4, ListOrder::NewestFirst)).await;
    let base = emulator.base_url();

    let (status, default_page) = raw_get(&base, "/organization/projects", TEST_KEY).await;
    let (_, active) = walk_all(client_for(&emulator).walk_projects(100, false))
        .await
        .expect("walk");
    let (_, all) = walk_all(client_for(&emulator).walk_projects(100, true))
        .await
        .expect("walk");

    assert_eq!(status, 200);
    assert_eq!(default_page["object"], "list");
    assert_eq!(default_page["data"].as_array().map(Vec::len), Some(20));
    assert!(
        default_page["data"]
            .as_array()
            .into_iter()
            .flatten()
            .all(|p| p["status"] == "active")
    );
    assert_eq!(default_page["first_id"], default_page["data"][0]["id"]);
    assert_eq!(default_page["last_id"], default_page["data"][19]["id"]);
    assert_eq!(default_page["has_more"], true);
    assert!(
        active < all,
        "archived projects are hidden unless include_archived=true"
    );
}

#[tokio::test]
async fn errors_use_the_openai_error_shape() {
    let emulator = start_emulator(5).await;
    let base = emulator.base_url();

    let (unauthorized, body) = raw_get(&base, "/organization/projects", "sk-admin-wrong").await;
    let (bad_limit, limit_body) =
        raw_get(&base, "/organization/projects?limit=abc", TEST_KEY).await;
    let (blank, _) = raw_post(
        &base,
        "/organization/projects",
        serde_json::json!({"name": ""}),
    )
    .await;
    let (both, both_body) = raw_post(
        &base,
        "/organization/projects",
        serde_json::json!({"name": "Both", "geography": "EU", "residency": "EU"}),
    )
    .await;
    let (unknown, _) = raw_post(
        &base,
        "/organization/projects",
        serde_json::json!({"name": "X", "colour": "red"}),
    )
    .await;
    let (missing, missing_body) =
        raw_get(&base, "/organization/projects/proj_nope", TEST_KEY).await;

    assert_eq!(unauthorized, 401);
    assert_eq!(body["error"]["code"], "invalid_api_key");
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert_eq!(
        (bad_limit, limit_body["error"]["param"].as_str()),
        (400, Some("limit"))
    );
    assert_eq!((blank, both, unknown), (400, 400, 400));
    assert!(
        both_body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("geography"))
    );
    assert_eq!(
        (missing, missing_body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    assert_eq!(emulator.stats().projects_created, 0);
}

#[tokio::test]
async fn created_projects_are_listed_first_in_newest_order_and_counted() {
    let emulator = start_emulator(50).await;
    let (status, created) = raw_post(
        &emulator.base_url(),
        "/organization/projects",
        serde_json::json!({"name": "Fresh", "residency": "EU_STORAGE_PROCESSING"}),
    )
    .await;

    let page = client_for(&emulator)
        .list_page(&ListParams {
            limit: 1,
            after: None,
            include_archived: true,
        })
        .await
        .expect("list");

    assert_eq!(status, 200);
    assert_eq!(created["status"], "active");
    assert_eq!(created["residency"], "EU_STORAGE_PROCESSING");
    assert_eq!(page.data[0].id, created["id"].as_str().unwrap_or_default());
    let stats = emulator.stats();
    assert_eq!(
        (stats.create_calls, stats.projects_created, stats.projects),
        (1, 1, 51)
    );
}

#[tokio::test]
async fn the_control_channel_changes_projects_behind_the_daemons_back() {
    let emulator = start_emulator(10).await;
    let base = format!("http://{}", emulator.addr());
    let id = emulator.projects()[3].id.clone();
    let client = reqwest::Client::new();

    let renamed = client
        .post(format!("{base}/_emulator/projects/{id}"))
        .bearer_auth(TEST_KEY)
        .json(&serde_json::json!({"name": "Behind the back", "archive": true, "fields": {"tier": "gold"}}))
        .send()
        .await
        .expect("control call");
    let stats: Value = client
        .get(format!("{base}/_emulator/stats"))
        .bearer_auth(TEST_KEY)
        .send()
        .await
        .expect("stats")
        .json()
        .await
        .expect("stats json");
    let refused = client
        .get(format!("{base}/_emulator/stats"))
        .send()
        .await
        .expect("stats");

    assert_eq!(renamed.status().as_u16(), 200);
    let project = emulator.project(&id).expect("still there");
    assert_eq!(project.name.as_deref(), Some("Behind the back"));
    assert_eq!(project.status.as_deref(), Some("archived"));
    assert_eq!(project.extra.get("tier"), Some(&Value::from("gold")));
    assert_eq!(stats["projects"], 10);
    assert_eq!(refused.status().as_u16(), 401, "control needs the key too");
}

#[tokio::test]
async fn ids_listed_across_pages_are_unique_while_projects_are_created_during_the_walk() {
    let emulator = start_emulator(250).await;
    let client = client_for(&emulator);
    let mut walk = client.walk_projects(100, true);
    let mut ids = HashSet::new();

    while let Some(page) = walk.next_page().await.expect("page") {
        for project in page.data {
            assert!(ids.insert(project.id), "listed twice");
        }
        emulator.create("Created mid-walk");
    }

    assert!(ids.len() >= 250);
}
