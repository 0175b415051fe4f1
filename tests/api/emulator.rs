//! The emulator is faithful to the documented shapes, deterministic, and controllable.

use std::collections::HashSet;
use std::time::Duration;

use clap::Parser;
use openai_project_sync::cli::{Cli, Command, Failure, emulator_setup};
use openai_project_sync::client::{CreateOutcome, CreateProject, ListParams};
use openai_project_sync::emulator::{
    EmulatorConfig, EmulatorHandle, Endpoint, Fault, FaultRule, Freedoms, GeographyAnswer,
    HOSTILE_PAGE_CAP, ListOrder,
};
use serde_json::{Value, json};

use crate::helpers::{
    TEST_KEY, client_for, client_with, eventually, start_emulator, start_emulator_with, walk_all,
};

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

fn with_freedoms(projects: usize, freedoms: Freedoms) -> EmulatorConfig {
    EmulatorConfig {
        freedoms,
        ..config(projects, 7, ListOrder::NewestFirst)
    }
}

/// Every page of the raw list with `limit`, each as the server wrote it.
async fn raw_pages(emulator: &EmulatorHandle, limit: usize) -> Vec<Value> {
    let mut pages = Vec::new();
    let mut after = String::new();
    loop {
        let (status, page) = raw_get(
            &emulator.base_url(),
            &format!("/organization/projects?limit={limit}&include_archived=true&after={after}"),
            TEST_KEY,
        )
        .await;
        assert_eq!(status, 200, "{page}");
        let more = page["has_more"] == true;
        after = page["last_id"].as_str().unwrap_or_default().to_owned();
        pages.push(page);
        assert!(pages.len() < 1_000, "the walk does not end");
        if !more {
            return pages;
        }
    }
}

fn ids_of(pages: &[Value]) -> Vec<String> {
    pages
        .iter()
        .flat_map(|page| page["data"].as_array().cloned().unwrap_or_default())
        .map(|p| p["id"].as_str().expect("an id").to_owned())
        .collect()
}

async fn listed_first_page_ids(emulator: &EmulatorHandle) -> Vec<String> {
    let (status, page) = raw_get(
        &emulator.base_url(),
        "/organization/projects?limit=100&include_archived=true",
        TEST_KEY,
    )
    .await;
    assert_eq!(status, 200);
    ids_of(&[page])
}

#[tokio::test]
async fn geography_is_answered_as_a_residency_of_the_new_vocabulary_and_never_as_geography() {
    let emulator = start_emulator(0).await;
    let base = emulator.base_url();
    let expected = [
        ("US", "US_STORAGE_PROCESSING"),
        ("EU", "EU_STORAGE_PROCESSING"),
        ("JP", "JP_STORAGE"),
        ("IN", "IN_STORAGE"),
        ("KR", "KR_STORAGE"),
        ("CA", "CA_STORAGE"),
        ("AU", "AU_STORAGE"),
        ("SG", "SG_STORAGE"),
    ];

    for (geography, residency) in expected {
        let (status, created) = raw_post(
            &base,
            "/organization/projects",
            json!({"name": format!("In {geography}"), "geography": geography}),
        )
        .await;
        let id = created["id"].as_str().expect("an id");
        let (_, retrieved) =
            raw_get(&base, &format!("/organization/projects/{id}"), TEST_KEY).await;

        assert_eq!(status, 200, "{created}");
        for answer in [&created, &retrieved] {
            assert_eq!(answer["residency"], residency, "{geography}: {answer}");
            assert!(answer.get("geography").is_none(), "{geography}: {answer}");
        }
    }
    let listed = raw_pages(&emulator, 100).await;
    assert!(
        listed[0]["data"]
            .as_array()
            .expect("data")
            .iter()
            .all(|p| p.get("geography").is_none() && p["residency"] != p["name"])
    );
}

#[tokio::test]
async fn with_geography_omitted_a_project_created_with_geography_shows_no_region_at_all() {
    let emulator = start_emulator_with(with_freedoms(
        0,
        Freedoms {
            geography_answer: GeographyAnswer::Omitted,
            default_residency: Some("GLOBAL".into()),
            ..Freedoms::default()
        },
    ))
    .await;

    let (status, created) = raw_post(
        &emulator.base_url(),
        "/organization/projects",
        json!({"name": "Write-only geography", "geography": "EU"}),
    )
    .await;

    assert_eq!(status, 200, "{created}");
    assert!(created.get("geography").is_none(), "{created}");
    assert_eq!(
        created["residency"],
        Value::Null,
        "neither echoed nor defaulted"
    );
    let id = created["id"].as_str().expect("an id");
    assert_eq!(emulator.project(id).expect("stored").residency, None);
}

#[tokio::test]
async fn residency_is_taken_from_its_own_vocabulary_and_anything_else_is_refused() {
    let emulator = start_emulator(0).await;
    let base = emulator.base_url();

    let (accepted, created) = raw_post(
        &base,
        "/organization/projects",
        json!({"name": "Gulf", "residency": "AE_STORAGE_PROCESSING"}),
    )
    .await;
    let (old_word, old_word_body) = raw_post(
        &base,
        "/organization/projects",
        json!({"name": "Old word", "residency": "EU"}),
    )
    .await;
    let (new_word, new_word_body) = raw_post(
        &base,
        "/organization/projects",
        json!({"name": "New word", "geography": "EU_STORAGE_PROCESSING"}),
    )
    .await;

    assert_eq!(accepted, 200, "{created}");
    assert_eq!(created["residency"], "AE_STORAGE_PROCESSING");
    assert_eq!(old_word, 400);
    assert_eq!(old_word_body["error"]["param"], "residency");
    assert_eq!(old_word_body["error"]["type"], "invalid_request_error");
    assert_eq!(new_word, 400);
    assert_eq!(new_word_body["error"]["param"], "geography");
    assert_eq!(emulator.stats().projects_created, 1);
}

#[tokio::test]
async fn a_create_that_asks_for_no_region_is_given_the_default_residency() {
    let emulator = start_emulator_with(with_freedoms(
        0,
        Freedoms {
            default_residency: Some("GLOBAL".into()),
            ..Freedoms::default()
        },
    ))
    .await;
    let base = emulator.base_url();

    let (_, unasked) = raw_post(&base, "/organization/projects", json!({"name": "Anywhere"})).await;
    let (_, asked) = raw_post(
        &base,
        "/organization/projects",
        json!({"name": "Tokyo", "residency": "JP_STORAGE"}),
    )
    .await;
    let behind_the_back = emulator.create("Made in the dashboard");

    assert_eq!(unasked["residency"], "GLOBAL");
    assert_eq!(asked["residency"], "JP_STORAGE");
    assert_eq!(behind_the_back.residency.as_deref(), Some("GLOBAL"));
}

#[tokio::test]
async fn with_nulls_omitted_a_project_without_a_key_has_no_external_key_id_at_all() {
    let emulator = start_emulator(40).await;
    let base = emulator.base_url();
    let (_, written_null) =
        raw_post(&base, "/organization/projects", json!({"name": "Keyless"})).await;
    let id = written_null["id"].as_str().expect("an id").to_owned();

    emulator.set_freedoms(Freedoms {
        omit_nulls: true,
        ..Freedoms::default()
    });
    let (_, retrieved) = raw_get(&base, &format!("/organization/projects/{id}"), TEST_KEY).await;
    let listed: Vec<Value> = raw_pages(&emulator, 100)
        .await
        .iter()
        .flat_map(|page| page["data"].as_array().cloned().unwrap_or_default())
        .collect();

    assert_eq!(
        written_null.get("external_key_id"),
        Some(&Value::Null),
        "by default a null is written"
    );
    let retrieved = retrieved.as_object().expect("an object");
    assert!(!retrieved.contains_key("external_key_id"), "{retrieved:?}");
    assert!(!retrieved.contains_key("archived_at"), "{retrieved:?}");
    assert!(!retrieved.contains_key("residency"), "{retrieved:?}");
    assert_eq!(listed.len(), 41);
    assert!(
        listed
            .iter()
            .flat_map(|p| p.as_object().expect("an object").values())
            .all(|v| !v.is_null()),
        "seeded projects are written again without nulls"
    );
    assert!(
        listed.iter().any(|p| p.get("archived_at").is_some()),
        "fields with a value stay"
    );
}

#[tokio::test]
async fn unknown_fields_come_on_every_project_and_list_page_and_the_client_keeps_them() {
    let emulator = start_emulator_with(with_freedoms(
        25,
        Freedoms {
            unknown_fields: true,
            ..Freedoms::default()
        },
    ))
    .await;
    let base = emulator.base_url();
    let id = emulator.projects()[0].id.clone();

    let pages = raw_pages(&emulator, 10).await;
    let (_, retrieved) = raw_get(&base, &format!("/organization/projects/{id}"), TEST_KEY).await;
    let (walked, _) = walk_all(client_for(&emulator).walk_projects(10, true))
        .await
        .expect("the client walks past unknown fields");

    assert_eq!(pages.len(), 3);
    for page in &pages {
        assert_eq!(page["page_kind"], "cursor", "{page}");
        for project in page["data"].as_array().expect("data") {
            assert_eq!(project["billing_tier"], "standard", "{project}");
            assert_eq!(project["labels"], json!({}), "{project}");
        }
    }
    assert_eq!(retrieved["billing_tier"], "standard");
    assert_eq!(walked.len(), 25);
    assert!(
        walked
            .iter()
            .all(|p| p.extra.get("billing_tier") == Some(&Value::from("standard")))
    );
}

#[tokio::test]
async fn a_late_create_lands_after_a_client_with_a_short_timeout_gave_up() {
    let emulator = start_emulator_with(with_freedoms(
        3,
        Freedoms {
            create_delay_ms: 800,
            ..Freedoms::default()
        },
    ))
    .await;
    let impatient = client_with(&emulator.base_url(), TEST_KEY, Duration::from_millis(200));
    let started = chrono::Utc::now().timestamp();

    let outcome = impatient
        .create_project(&CreateProject {
            name: "Landed late".into(),
            ..Default::default()
        })
        .await;
    let when_the_client_gave_up = emulator.stats();
    eventually("the late create lands", || async {
        emulator.stats().projects_created == 1
    })
    .await;

    assert!(
        !matches!(outcome, CreateOutcome::Created(_)),
        "the client gave up first: {outcome:?}"
    );
    assert_eq!(
        (
            when_the_client_gave_up.create_calls,
            when_the_client_gave_up.projects_created
        ),
        (1, 0)
    );
    let landed: Vec<_> = emulator
        .projects()
        .into_iter()
        .filter(|p| p.name.as_deref() == Some("Landed late"))
        .collect();
    assert_eq!(landed.len(), 1);
    assert!(
        landed[0].created_at >= started,
        "created_at is when it landed"
    );
}

#[tokio::test]
async fn list_lag_hides_a_new_project_from_the_list_until_it_passes_but_retrieve_finds_it_at_once()
{
    let lag = Duration::from_millis(700);
    let emulator = start_emulator_with(with_freedoms(
        5,
        Freedoms {
            list_lag_ms: lag.as_millis() as u64,
            ..Freedoms::default()
        },
    ))
    .await;
    let base = emulator.base_url();

    // The lag counts from when the server answered, which is before the answer arrives here.
    let sent = std::time::Instant::now();
    let (_, created) = raw_post(&base, "/organization/projects", json!({"name": "Lagging"})).await;
    let id = created["id"].as_str().expect("an id").to_owned();
    let (retrieved, _) = raw_get(&base, &format!("/organization/projects/{id}"), TEST_KEY).await;
    let listed_at_once = listed_first_page_ids(&emulator).await;
    let behind_the_back = emulator.create("Lagging too");
    eventually("the new projects are listed", || async {
        let listed = listed_first_page_ids(&emulator).await;
        let shown = listed.contains(&id) && listed.contains(&behind_the_back.id);
        assert!(
            !listed.contains(&id) || sent.elapsed() >= lag,
            "listed before the lag passed"
        );
        shown
    })
    .await;

    assert_eq!(retrieved, 200, "retrieve finds it at once");
    assert!(!listed_at_once.contains(&id));
    assert_eq!(listed_at_once.len(), 5);
}

#[tokio::test]
async fn short_pages_hold_few_items_whatever_the_limit_and_say_has_more_with_their_first_and_last_ids()
 {
    let emulator = start_emulator_with(with_freedoms(
        30,
        Freedoms {
            short_pages: Some(7),
            ..Freedoms::default()
        },
    ))
    .await;
    let empty = start_emulator(0).await;

    let pages = raw_pages(&emulator, 100).await;
    let (_, empty_page) = raw_get(&empty.base_url(), "/organization/projects", TEST_KEY).await;

    let sizes: Vec<usize> = pages
        .iter()
        .map(|p| p["data"].as_array().map_or(0, Vec::len))
        .collect();
    assert_eq!(sizes, [7, 7, 7, 7, 2]);
    for (n, page) in pages.iter().enumerate() {
        let data = page["data"].as_array().expect("data");
        assert_eq!(page["has_more"], n + 1 < pages.len(), "page {n}");
        assert_eq!(page["first_id"], data[0]["id"], "page {n}");
        assert_eq!(page["last_id"], data[data.len() - 1]["id"], "page {n}");
    }
    let ids = ids_of(&pages);
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 30);
    assert_eq!(
        (
            &empty_page["first_id"],
            &empty_page["last_id"],
            &empty_page["has_more"]
        ),
        (&Value::Null, &Value::Null, &Value::Bool(false))
    );
}

#[tokio::test]
async fn the_arbitrary_order_is_stable_and_walks_every_project_exactly_once() {
    let emulator = start_emulator_with(config(230, 5, ListOrder::Arbitrary)).await;
    let created: Vec<String> = emulator.projects().into_iter().map(|p| p.id).collect();
    let mut reversed = created.clone();
    reversed.reverse();

    let first = ids_of(&raw_pages(&emulator, 40).await);
    let again = ids_of(&raw_pages(&emulator, 17).await);
    let mut during = client_for(&emulator).walk_projects(50, true);
    let mut seen = HashSet::new();
    while let Some(page) = during.next_page().await.expect("page") {
        for project in page.data {
            assert!(seen.insert(project.id), "listed twice");
        }
        emulator.create("Created mid-walk");
    }

    assert_eq!(first.len(), 230);
    assert_eq!(first.iter().collect::<HashSet<_>>().len(), 230);
    assert_ne!(first, created, "not creation order");
    assert_ne!(first, reversed, "not its reverse");
    assert_eq!(first, again, "stable, whatever the page size");
    assert!(
        seen.len() >= 230,
        "the seeded projects all listed: {}",
        seen.len()
    );
}

#[tokio::test]
async fn the_control_channel_switches_freedoms_at_runtime() {
    let emulator = start_emulator(12).await;
    let base = format!("http://{}", emulator.addr());
    let client = reqwest::Client::new();
    let control = |path: &str| format!("{base}/_emulator/{path}");

    let before: Freedoms = client
        .get(control("freedoms"))
        .bearer_auth(TEST_KEY)
        .send()
        .await
        .expect("get freedoms")
        .json()
        .await
        .expect("freedoms json");
    let switched = client
        .post(control("freedoms"))
        .bearer_auth(TEST_KEY)
        .json(&Freedoms::hostile())
        .send()
        .await
        .expect("post freedoms");
    let switched_status = switched.status().as_u16();
    let hostile_pages = raw_pages(&emulator, 100).await;
    let refused = client
        .post(control("freedoms"))
        .bearer_auth(TEST_KEY)
        .json(&json!({"short_pages": 0}))
        .send()
        .await
        .expect("post freedoms");
    let refused_status = refused.status().as_u16();
    let refused_body: Value = refused.json().await.expect("error json");
    let still_hostile = emulator.freedoms();
    let reset = client
        .post(control("freedoms"))
        .bearer_auth(TEST_KEY)
        .json(&json!({"omit_nulls": true}))
        .send()
        .await
        .expect("post freedoms");
    let reset_status = reset.status().as_u16();
    let plain_pages = raw_pages(&emulator, 100).await;

    assert_eq!(before, Freedoms::default());
    assert_eq!(switched_status, 200);
    assert_eq!(hostile_pages.len(), 2, "12 projects in pages of 7");
    assert!(
        hostile_pages[0]["data"][0].get("billing_tier").is_some(),
        "unknown fields on"
    );
    assert_eq!(refused_status, 400);
    assert!(refused_body["error"]["message"].is_string());
    assert_eq!(
        still_hostile,
        Freedoms::hostile(),
        "a refused change changes nothing"
    );
    assert_eq!(reset_status, 200);
    assert_eq!(
        emulator.freedoms(),
        Freedoms {
            omit_nulls: true,
            ..Freedoms::default()
        },
        "the body replaces every freedom"
    );
    assert_eq!(plain_pages.len(), 1);
    assert!(plain_pages[0]["data"][0].get("billing_tier").is_none());
}

#[tokio::test]
async fn rewritten_names_are_stored_decomposed_with_whitespace_folded() {
    let emulator = start_emulator_with(with_freedoms(
        0,
        Freedoms {
            rewrite_names: true,
            ..Freedoms::default()
        },
    ))
    .await;
    let base = emulator.base_url();
    let sent = "Café  Zürich\t\u{3000}team";

    let (_, created) = raw_post(&base, "/organization/projects", json!({"name": sent})).await;
    let id = created["id"].as_str().expect("an id").to_owned();
    let (_, renamed) = raw_post(
        &base,
        &format!("/organization/projects/{id}"),
        json!({"name": "Renamed   Straße"}),
    )
    .await;

    assert_eq!(created["name"], "Cafe\u{301} Zu\u{308}rich team");
    assert_ne!(created["name"], sent);
    assert_eq!(renamed["name"], "Renamed Straße");
    assert_eq!(
        emulator.project(&id).and_then(|p| p.name).as_deref(),
        Some("Renamed Straße")
    );
}

#[tokio::test]
async fn a_429_may_give_retry_after_as_an_http_date() {
    let emulator = start_emulator_with(with_freedoms(
        1,
        Freedoms {
            retry_after_as_date: true,
            ..Freedoms::default()
        },
    ))
    .await;
    emulator.push_fault(FaultRule {
        endpoint: Endpoint::List,
        skip: 0,
        times: Some(1),
        fault: Fault::TooManyRequests {
            retry_after_ms: 2_500,
        },
    });
    let asked = chrono::Utc::now();

    let response = reqwest::Client::new()
        .get(format!("{}/organization/projects", emulator.base_url()))
        .bearer_auth(TEST_KEY)
        .send()
        .await
        .expect("request");

    assert_eq!(response.status().as_u16(), 429);
    assert!(response.headers().get("retry-after-ms").is_none());
    let date = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .expect("a retry-after");
    let at = chrono::DateTime::parse_from_rfc2822(date).expect("an HTTP date");
    let wait = at.with_timezone(&chrono::Utc) - asked;
    assert!(
        (2..=4).contains(&wait.num_seconds()),
        "{date} is {wait} away"
    );
}

#[tokio::test]
async fn the_hostile_freedoms_are_all_taken_at_once_and_the_client_still_walks_them() {
    let emulator = start_emulator_with(with_freedoms(60, Freedoms::hostile())).await;

    let (_, created) = raw_post(
        &emulator.base_url(),
        "/organization/projects",
        json!({"name": "Hostile"}),
    )
    .await;
    let pages = raw_pages(&emulator, 100).await;
    let (walked, walked_pages) = walk_all(client_for(&emulator).walk_projects(100, true))
        .await
        .expect("walk");

    assert_eq!(created["residency"], "GLOBAL");
    assert!(created.get("external_key_id").is_none());
    assert!(created.get("billing_tier").is_some());
    assert_eq!(pages.len(), 61usize.div_ceil(HOSTILE_PAGE_CAP));
    assert_eq!(walked.len(), 61);
    assert_eq!(walked_pages, pages.len() as u64);
}

#[test]
fn the_emulator_command_takes_every_freedom_from_its_flags() {
    let parse = |flags: &[&str]| {
        let mut argv = vec!["openai-project-sync", "emulator", "--admin-key", TEST_KEY];
        argv.extend_from_slice(flags);
        let Cli {
            command: Command::Emulator(args),
            ..
        } = Cli::try_parse_from(argv).expect("the flags parse")
        else {
            panic!("not the emulator command")
        };
        emulator_setup(&args).map(|(config, _)| config.freedoms)
    };

    let plain = parse(&[]).expect("plain");
    let flagged = parse(&[
        "--omit-nulls",
        "--unknown-fields",
        "--geography-answer",
        "omitted",
        "--default-residency",
        "GLOBAL",
        "--create-delay-ms",
        "800",
        "--list-lag-ms",
        "300",
        "--short-pages",
        "9",
        "--order",
        "arbitrary",
        "--rewrite-names",
        "--retry-after-date",
    ])
    .expect("flagged");
    let hostile_but_oldest_first =
        parse(&["--hostile", "--order", "oldest-first"]).expect("hostile");
    let empty_pages = parse(&["--short-pages", "0"]);

    assert_eq!(plain, Freedoms::default());
    assert_eq!(
        flagged,
        Freedoms {
            geography_answer: GeographyAnswer::Omitted,
            default_residency: Some("GLOBAL".into()),
            omit_nulls: true,
            unknown_fields: true,
            create_delay_ms: 800,
            list_lag_ms: 300,
            short_pages: Some(9),
            order: ListOrder::Arbitrary,
            rewrite_names: true,
            retry_after_as_date: true,
            ..Freedoms::default()
        }
    );
    assert_eq!(
        hostile_but_oldest_first,
        Freedoms {
            order: ListOrder::OldestFirst,
            ..Freedoms::hostile()
        }
    );
    assert!(matches!(empty_pages, Err(Failure::Usage(_))));
}
