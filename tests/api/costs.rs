//! Cost passes against real Postgres and the emulator: exact amounts, restatements, unchanged
//! re-reads, failures, resumed backfills, organization-level cost, the finance view, the lock.

use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use openai_project_sync::costs::{self, CostDeps, CostError, CostSummary};
use openai_project_sync::emulator::{
    CostAmountForm, EmulatorConfig, EmulatorHandle, Endpoint, Fault, FaultRates, FaultRule,
    Freedoms, Restatement,
};
use openai_project_sync::store::{self, CostSession};
use openai_project_sync::sync::{SyncDeps, Trigger};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::helpers::{
    TEST_KEY, TestDb, client_for, output_text, run_binary_async, start_emulator_with, sync,
    sync_deps,
};

const DAY: i64 = 86_400;

struct Fixture {
    db: TestDb,
    emulator: EmulatorHandle,
    walk: SyncDeps,
}

async fn fixture_with(projects: usize, freedoms: Freedoms) -> Fixture {
    let db = TestDb::new().await;
    store::migrate(&db.pool).await.expect("migrations apply");
    let emulator = start_emulator_with(EmulatorConfig {
        admin_key: TEST_KEY.into(),
        projects,
        archived_ratio: 0.0,
        seed: 12,
        freedoms,
        ..EmulatorConfig::default()
    })
    .await;
    let walk = sync_deps(&db, client_for(&emulator), 100);
    Fixture { db, emulator, walk }
}

async fn fixture(projects: usize) -> Fixture {
    fixture_with(projects, Freedoms::default()).await
}

/// Today's UTC midnight, unix seconds.
fn today() -> i64 {
    Utc::now().timestamp().div_euclid(DAY) * DAY
}

fn date(unix: i64) -> NaiveDate {
    DateTime::from_timestamp(unix, 0)
        .expect("a time")
        .date_naive()
}

impl Fixture {
    /// Cost passes re-reading `lookback` days, backfilling from `backfill_days` before today
    /// (`None`: nothing before the window).
    fn costs(&self, lookback: u32, backfill_days: Option<i64>) -> CostDeps {
        let from = backfill_days.unwrap_or(i64::from(lookback));
        CostDeps {
            pool: self.db.pool.clone(),
            connect: self.db.url.parse().expect("test URL parses"),
            client: self.walk.client.clone(),
            lookback_days: lookback,
            backfill_from: Some(date(today() - from * DAY)),
        }
    }

    /// Everything the emulator serves for the days `[today − days, tomorrow)`.
    fn served(&self, days: i64) -> Vec<openai_project_sync::emulator::EmulatedCost> {
        self.emulator.cost_rows(today() - days * DAY, today() + DAY)
    }
}

/// The latest day before today, at most `back` days back, on which a project spent.
fn busy_day(f: &Fixture, back: i64) -> i64 {
    (1..=back)
        .map(|n| today() - n * DAY)
        .find(|&day| {
            f.emulator
                .cost_rows(day, day + DAY)
                .iter()
                .any(|c| c.project_id.is_some() && c.amount.is_some())
        })
        .expect("a day with spend")
}

/// Whether an amount's text is a zero, in any of the forms the emulator writes.
fn is_zero(text: &str) -> bool {
    text.starts_with("0E") || text.chars().all(|c| c == '0' || c == '.')
}

/// Cost passes (one day of lookback, no backfill) against a scripted server that answers every
/// query in one page, each UTC day of the asked window as the bucket `bucket(day)` writes.
async fn scripted_cost_passes(
    db: &TestDb,
    bucket: impl Fn(i64) -> String + Clone + Send + Sync + 'static,
) -> CostDeps {
    let app = axum::Router::new().route(
        "/v1/organization/costs",
        axum::routing::get(
            move |axum::extract::Query(query): axum::extract::Query<Vec<(String, String)>>| {
                let bucket = bucket.clone();
                async move {
                    let time = |name: &str| {
                        query
                            .iter()
                            .find(|(key, _)| key == name)
                            .and_then(|(_, value)| value.parse::<i64>().ok())
                            .expect("the pass names its window")
                    };
                    let buckets: Vec<String> = (time("start_time")..time("end_time"))
                        .step_by(86_400)
                        .map(&bucket)
                        .collect();
                    (
                        [(axum::http::header::CONTENT_TYPE, "application/json")],
                        format!(
                            r#"{{"object":"page","data":[{}],"has_more":false,"next_page":null}}"#,
                            buckets.join(",")
                        ),
                    )
                }
            },
        ),
    );
    one_day_passes_against(db, app).await
}

/// Cost passes of a one-day lookback and no backfill against the scripted API `app`.
async fn one_day_passes_against(db: &TestDb, app: axum::Router) -> CostDeps {
    CostDeps {
        pool: db.pool.clone(),
        connect: db.url.parse().expect("test URL parses"),
        client: crate::client::serve_scripted(app).await,
        lookback_days: 1,
        backfill_from: None,
    }
}

/// A migrated database and a cost session holding its lock.
async fn migrated_with_cost_session() -> (TestDb, CostSession) {
    let db = TestDb::new().await;
    store::migrate(&db.pool).await.expect("migrations apply");
    let connect = db.url.parse().expect("test URL parses");
    let session = CostSession::open(&connect)
        .await
        .expect("connect")
        .expect("the lock is free");
    (db, session)
}

async fn pass(deps: &CostDeps) -> CostSummary {
    costs::run_pass(deps, Trigger::Manual, &CancellationToken::new())
        .await
        .expect("the cost pass succeeds")
}

/// Every stored cost row, revision and read day, as text: equal means nothing changed.
async fn snapshot(pool: &sqlx::PgPool) -> Vec<String> {
    let rows: Vec<(String,)> = sqlx::query_as(
        "select 'c' || ctid::text || xmin::text || (c.*)::text from openai.costs c \
         union all select 'r' || (r.*)::text from openai.cost_revisions r \
         union all select 'd' || (d.*)::text from openai.cost_days d order by 1",
    )
    .fetch_all(pool)
    .await
    .expect("snapshot");
    rows.into_iter().map(|(r,)| r).collect()
}

/// The sum of `amounts` computed by Postgres from their text, trailing zeros dropped.
async fn exact_sum(pool: &sqlx::PgPool, amounts: Vec<String>) -> String {
    let (sum,): (String,) = sqlx::query_as(
        "select trim_scale(coalesce(sum(a::numeric), 0))::text from unnest($1::text[]) a",
    )
    .bind(amounts)
    .fetch_one(pool)
    .await
    .expect("sum");
    sum
}

async fn stored_sum(pool: &sqlx::PgPool) -> String {
    let (sum,): (String,) =
        sqlx::query_as("select trim_scale(coalesce(sum(amount), 0))::text from openai.costs")
            .fetch_one(pool)
            .await
            .expect("stored sum");
    sum
}

/// Served rows whose stored amount is missing or differs from the served text's value, and
/// stored rows never served.
async fn mismatches(
    pool: &sqlx::PgPool,
    served: &[openai_project_sync::emulator::EmulatedCost],
) -> i64 {
    let with_amount: Vec<_> = served.iter().filter(|c| c.amount.is_some()).collect();
    let starts: Vec<DateTime<Utc>> = with_amount
        .iter()
        .map(|c| DateTime::from_timestamp(c.bucket_start, 0).expect("time"))
        .collect();
    let projects: Vec<Option<String>> = with_amount.iter().map(|c| c.project_id.clone()).collect();
    let items: Vec<Option<String>> = with_amount.iter().map(|c| c.line_item.clone()).collect();
    let amounts: Vec<String> = with_amount
        .iter()
        .filter_map(|c| c.amount.clone())
        .collect();
    let (n,): (i64,) = sqlx::query_as(
        "with served as (select * from unnest($1::timestamptz[], $2::text[], $3::text[], $4::text[]) \
            as s(bucket_start, project_id, line_item, amount)) \
         select count(*) from served s full join openai.costs c \
           on c.bucket_start = s.bucket_start and c.project_id is not distinct from s.project_id \
          and c.line_item is not distinct from s.line_item \
         where c.amount is null or s.amount is null \
            or c.amount::text <> trim_scale(s.amount::numeric)::text",
    )
    .bind(starts)
    .bind(projects)
    .bind(items)
    .bind(amounts)
    .fetch_one(pool)
    .await
    .expect("compare");
    n
}

#[tokio::test]
async fn every_amount_equals_the_apis_exactly_as_numbers_strings_and_both() {
    let f = fixture(12).await;
    let deps = f.costs(20, None);
    let served = f.served(20);
    let texts: Vec<String> = served.iter().filter_map(|c| c.amount.clone()).collect();
    assert!(
        texts.iter().any(|t| t == "0E-6176"),
        "the emulator serves 0E-6176"
    );
    assert!(
        texts.iter().any(|t| t.contains("E-")),
        "and other scientific notation"
    );
    let long = texts
        .iter()
        .find(|t| t.len() >= 28 && !t.contains('E'))
        .expect("and long decimals")
        .clone();

    let mut sums = Vec::new();
    for form in [
        CostAmountForm::Number,
        CostAmountForm::String,
        CostAmountForm::Mixed,
    ] {
        f.emulator.set_freedoms(Freedoms {
            cost_amounts: form,
            ..Freedoms::default()
        });
        let summary = pass(&deps).await;
        sums.push((
            form,
            stored_sum(&f.db.pool).await,
            mismatches(&f.db.pool, &served).await,
            summary,
        ));
    }
    let expected = exact_sum(&f.db.pool, texts.clone()).await;
    let (zeros,): (i64,) = sqlx::query_as(
        "select count(*) from openai.costs where amount::text = '0' \
         and (raw->'amount'->>'value' = '0E-6176' or length(raw->'amount'->>'value') > 6000)",
    )
    .fetch_one(&f.db.pool)
    .await
    .expect("zeros");
    let (long_stored,): (String,) =
        sqlx::query_as("select amount::text from openai.costs where amount = $1::numeric limit 1")
            .bind(&long)
            .fetch_one(&f.db.pool)
            .await
            .expect("the long decimal is stored");
    let (long_expected,): (String,) = sqlx::query_as("select trim_scale($1::numeric)::text")
        .bind(&long)
        .fetch_one(&f.db.pool)
        .await
        .expect("normalized");

    assert!(expected.contains('.'), "a sum with decimals: {expected}");
    for (form, sum, wrong, summary) in &sums {
        assert_eq!(sum, &expected, "{form:?}: the stored sum, digit for digit");
        assert_eq!(*wrong, 0, "{form:?}: every row equals the API's");
        assert_eq!(
            summary.counts.revisions, 0,
            "{form:?}: another form of the same amount is no revision"
        );
    }
    assert_eq!(
        sums[0].3.counts.inserted,
        i64::try_from(texts.len()).expect("count")
    );
    assert!(sums[1].3.counts.updated > 0, "string forms are kept in raw");
    assert!(zeros > 0, "0E-6176 is stored as 0");
    assert_eq!(long_stored, long_expected, "long decimals digit for digit");
    assert!(long_stored.len() >= 26, "{long_stored}");
}

#[tokio::test]
async fn a_restated_day_updates_its_rows_and_records_each_revision() {
    let f = fixture(8).await;
    let deps = f.costs(7, None);
    pass(&deps).await;
    let day = busy_day(&f, 6);
    let before: Vec<_> = f
        .emulator
        .cost_rows(day, day + DAY)
        .into_iter()
        .filter(|c| c.amount.is_some())
        .collect();
    assert!(!before.is_empty(), "the day had spend");
    let project = before
        .iter()
        .find_map(|c| c.project_id.clone())
        .expect("a project spent that day");
    f.emulator.restate_costs(Restatement {
        day,
        project_id: Some(project.clone()),
        ..Restatement::default()
    });
    let after = f.emulator.cost_rows(day, day + DAY);
    let rewritten = before
        .iter()
        .zip(&after)
        .filter(|(b, a)| b.amount != a.amount)
        .count();
    let changed: Vec<(String, String)> = before
        .iter()
        .zip(&after)
        .filter_map(|(b, a)| Some((b.amount.clone()?, a.amount.clone()?)))
        .filter(|(b, a)| b != a && !(is_zero(b) && is_zero(a)))
        .collect();
    assert!(!changed.is_empty(), "the restatement changed figures");

    let summary = pass(&deps).await;
    let revisions: Vec<(String, String, String, bool, i64)> = sqlx::query_as(
        "select project_id, old_amount::text, new_amount::text, provisional, run_id from openai.cost_revisions \
         where bucket_start = to_timestamp($1) order by id",
    )
    .bind(day as f64)
    .fetch_all(&f.db.pool)
    .await
    .expect("revisions");
    let served = f.served(7);
    let wrong = mismatches(&f.db.pool, &served).await;
    let (run,): (i32,) = sqlx::query_as("select revisions from openai.sync_runs where id = $1")
        .bind(summary.run_id)
        .fetch_one(&f.db.pool)
        .await
        .expect("run row");

    assert_eq!(
        summary.counts.updated,
        i64::try_from(rewritten).expect("n"),
        "only the restated rows are written"
    );
    assert_eq!(
        summary.counts.revisions,
        i64::try_from(changed.len()).expect("n")
    );
    assert_eq!(run, i32::try_from(changed.len()).expect("n"));
    assert_eq!(revisions.len(), changed.len());
    for ((project_id, old, new, provisional, run_id), (was, is)) in revisions.iter().zip(&changed) {
        assert_eq!(project_id, &project);
        let (old_expected, new_expected): (String, String) =
            sqlx::query_as("select trim_scale($1::numeric)::text, trim_scale($2::numeric)::text")
                .bind(was)
                .bind(is)
                .fetch_one(&f.db.pool)
                .await
                .expect("normalized");
        assert_eq!((old, new), (&old_expected, &new_expected));
        assert!(!provisional, "the day had ended when it was first read");
        assert_eq!(*run_id, summary.run_id);
    }
    assert_eq!(wrong, 0, "the table equals what the API says now");
}

#[tokio::test]
async fn a_line_item_no_longer_listed_is_removed_with_a_revision_and_an_empty_day_is_kept() {
    let f = fixture(6).await;
    let deps = f.costs(7, None);
    pass(&deps).await;
    let removed_day = busy_day(&f, 3);
    let gone = f
        .emulator
        .cost_rows(removed_day, removed_day + DAY)
        .into_iter()
        .find(|c| c.project_id.is_some() && c.amount.is_some())
        .expect("a project row");
    let emptied_day = (4..=6)
        .map(|n| today() - n * DAY)
        .find(|&day| !f.emulator.cost_rows(day, day + DAY).is_empty())
        .expect("a day with spend");
    let (emptied_rows,): (i64,) =
        sqlx::query_as("select count(*) from openai.costs where bucket_start = to_timestamp($1)")
            .bind(emptied_day as f64)
            .fetch_one(&f.db.pool)
            .await
            .expect("rows");
    let kept_before = snapshot_day(&f.db.pool, emptied_day).await;
    f.emulator.restate_costs(Restatement {
        day: removed_day,
        project_id: gone.project_id.clone(),
        remove_line_item: gone.line_item.clone(),
        empty: None,
    });
    f.emulator.restate_costs(Restatement {
        day: emptied_day,
        empty: Some(true),
        ..Restatement::default()
    });

    let summary = pass(&deps).await;
    let (still_there,): (i64,) = sqlx::query_as(
        "select count(*) from openai.costs where bucket_start = to_timestamp($1) and project_id = $2 and line_item = $3",
    )
    .bind(removed_day as f64)
    .bind(&gone.project_id)
    .bind(&gone.line_item)
    .fetch_one(&f.db.pool)
    .await
    .expect("count");
    let (old, new): (Option<String>, Option<String>) = sqlx::query_as(
        "select old_amount::text, new_amount::text from openai.cost_revisions where project_id = $1 and line_item = $2",
    )
    .bind(&gone.project_id)
    .bind(&gone.line_item)
    .fetch_one(&f.db.pool)
    .await
    .expect("the removal's revision");
    let (days_kept,): (i32,) =
        sqlx::query_as("select days_kept from openai.sync_runs where id = $1")
            .bind(summary.run_id)
            .fetch_one(&f.db.pool)
            .await
            .expect("run");

    assert_eq!(still_there, 0, "the row the API no longer lists is gone");
    assert_eq!(summary.counts.removed, 1);
    assert!(old.is_some() && new.is_none(), "{old:?} -> {new:?}");
    assert!(emptied_rows > 0, "the emptied day had spend");
    assert_eq!(
        snapshot_day(&f.db.pool, emptied_day).await,
        kept_before,
        "an empty re-read keeps the figures"
    );
    assert_eq!(summary.counts.days_kept, 1);
    assert_eq!(days_kept, 1);
}

async fn snapshot_day(pool: &sqlx::PgPool, day: i64) -> Vec<String> {
    let rows: Vec<(String,)> = sqlx::query_as(
        "select ctid::text || xmin::text || (c.*)::text from openai.costs c where bucket_start = to_timestamp($1) order by 1",
    )
    .bind(day as f64)
    .fetch_all(pool)
    .await
    .expect("day");
    rows.into_iter().map(|(r,)| r).collect()
}

#[tokio::test]
async fn a_pass_with_nothing_changed_writes_no_cost_row() {
    let f = fixture(10).await;
    let deps = f.costs(7, Some(12));
    let first = pass(&deps).await;
    let before = snapshot(&f.db.pool).await;
    let second = pass(&deps).await;
    let after = snapshot(&f.db.pool).await;
    let (runs,): (i64,) = sqlx::query_as(
        "select count(*) from openai.sync_runs where resource = 'costs' and status = 'succeeded'",
    )
    .fetch_one(&f.db.pool)
    .await
    .expect("runs");

    assert!(first.counts.inserted > 0);
    assert!(first.backfilled_days >= 5, "{first:?}");
    assert_eq!(second.backfilled_days, 0, "nothing left to backfill");
    assert_eq!(
        (
            second.counts.inserted,
            second.counts.updated,
            second.counts.removed,
            second.counts.revisions
        ),
        (0, 0, 0, 0)
    );
    assert!(second.counts.unchanged > 0);
    assert_eq!(
        after, before,
        "no row of costs, revisions or days was written"
    );
    assert_eq!(runs, 2);
}

#[tokio::test]
async fn a_pass_that_fails_on_page_3_leaves_the_tables_as_they_were() {
    let f = fixture_with(
        6,
        Freedoms {
            cost_page_buckets: Some(2),
            ..Freedoms::default()
        },
    )
    .await;
    let deps = f.costs(10, None);
    let first = pass(&deps).await;
    assert!(
        first.counts.pages >= 5,
        "the window takes several pages: {first:?}"
    );
    f.emulator.restate_costs(Restatement {
        day: today() - 9 * DAY,
        ..Restatement::default()
    });
    f.emulator.restate_costs(Restatement {
        day: today() - DAY,
        ..Restatement::default()
    });
    let before = snapshot(&f.db.pool).await;
    f.emulator.push_fault(FaultRule {
        endpoint: Endpoint::Costs,
        skip: 2,
        times: Some(1),
        fault: Fault::ServerError { status: 400 },
    });

    let failed = costs::run_pass(&deps, Trigger::Manual, &CancellationToken::new()).await;
    let after = snapshot(&f.db.pool).await;
    let (status, error): (String, Option<String>) = sqlx::query_as(
        "select status, error from openai.sync_runs where resource = 'costs' order by id desc limit 1",
    )
    .fetch_one(&f.db.pool)
    .await
    .expect("run");
    let recovered = pass(&deps).await;

    assert!(
        matches!(failed, Err(CostError::Api { pages: 2, .. })),
        "{failed:?}"
    );
    assert_eq!(after, before, "nothing of the failed pass is kept");
    assert_eq!(status, "failed");
    assert!(error.is_some_and(|e| e.contains("400")));
    assert!(
        recovered.counts.revisions > 0,
        "the next pass applies the restatements"
    );
}

#[tokio::test]
async fn an_interrupted_backfill_resumes_where_the_last_committed_day_ended() {
    let f = fixture_with(
        5,
        Freedoms {
            cost_page_buckets: Some(3),
            ..Freedoms::default()
        },
    )
    .await;
    let deps = f.costs(2, Some(20));
    // The backfill reads 18 days, a day or two first, then pages of three; the fifth call fails.
    f.emulator.push_fault(FaultRule {
        endpoint: Endpoint::Costs,
        skip: 4,
        times: Some(1),
        fault: Fault::ServerError { status: 400 },
    });
    let failed = costs::run_pass(&deps, Trigger::Manual, &CancellationToken::new()).await;
    let (committed,): (i64,) = sqlx::query_as("select count(*) from openai.cost_days")
        .fetch_one(&f.db.pool)
        .await
        .expect("days");
    let (latest,): (DateTime<Utc>,) =
        sqlx::query_as("select max(bucket_start) from openai.cost_days")
            .fetch_one(&f.db.pool)
            .await
            .expect("latest");
    let calls_before = f.emulator.stats().cost_calls;
    let resumed = pass(&deps).await;
    let calls = f.emulator.stats().cost_calls - calls_before;
    let (days,): (i64,) = sqlx::query_as("select count(*) from openai.cost_days")
        .fetch_one(&f.db.pool)
        .await
        .expect("days");
    let wrong = mismatches(&f.db.pool, &f.served(20)).await;

    let Err(CostError::Api {
        backfilled_days, ..
    }) = failed
    else {
        panic!("the first pass fails: {failed:?}");
    };
    assert!(
        (4..18).contains(&backfilled_days),
        "some pages were committed: {backfilled_days}"
    );
    assert_eq!(committed, backfilled_days, "the window was not");
    assert_eq!(
        latest.timestamp(),
        today() - (21 - committed) * DAY,
        "the committed days are the oldest ones"
    );
    assert_eq!(
        resumed.backfilled_days,
        18 - committed,
        "the next pass reads only the days after them"
    );
    assert_eq!(days, 21);
    assert!(calls <= 6, "no day read twice: {calls} calls");
    assert_eq!(wrong, 0);
}

#[tokio::test]
async fn a_backfill_stores_every_figure_as_the_api_wrote_it_trailing_zeros_dropped() {
    let f = fixture_with(
        12,
        Freedoms {
            cost_amounts: CostAmountForm::Mixed,
            ..Freedoms::default()
        },
    )
    .await;
    let deps = f.costs(2, Some(24));
    let summary = pass(&deps).await;
    let served = f.served(24);
    let texts: Vec<String> = served.iter().filter_map(|c| c.amount.clone()).collect();
    let wrong = mismatches(&f.db.pool, &served).await;
    // Amount and quantity equal, digit for digit and scale for scale, what Postgres makes of
    // the text kept in raw with its trailing zeros dropped.
    let (differing, rows): (i64, i64) = sqlx::query_as(
        "select count(*) filter (where amount::text <> trim_scale((raw->'amount'->>'value')::numeric)::text \
            or quantity::text is distinct from trim_scale((raw->>'quantity')::numeric)::text), count(*) \
         from openai.costs",
    )
    .fetch_one(&f.db.pool)
    .await
    .expect("compare");

    assert!(summary.backfilled_days >= 20, "{summary:?}");
    assert_eq!(
        stored_sum(&f.db.pool).await,
        exact_sum(&f.db.pool, texts.clone()).await
    );
    assert_eq!(wrong, 0, "every backfilled row equals the API's");
    assert_eq!(rows, i64::try_from(texts.len()).expect("n"));
    assert_eq!(differing, 0);
}

/// Backfills `amounts` on `day`, one project each, through the binary COPY in a transaction of
/// its own; returns how many rows were copied and the projects, in the order of `amounts`.
/// Fails if the page would take the comparing path.
async fn copy_one_day(
    session: &mut CostSession,
    day: DateTime<Utc>,
    amounts: &[String],
) -> (i64, Vec<String>) {
    let projects: Vec<String> = (0..amounts.len()).map(|n| format!("proj_{n:05}")).collect();
    let rows: Vec<store::CostRow<'_>> = amounts
        .iter()
        .zip(&projects)
        .map(|(amount, project)| cost_row(day, project, amount, "{}"))
        .collect();
    session.begin().await.expect("begin");
    let copied = match session
        .insert_unread(rows.iter().copied(), &[day], 1, Utc::now())
        .await
        .expect("insert")
    {
        store::Backfilled::Sent(copy) => copy.finish().await.expect("copied"),
        store::Backfilled::Compare => panic!("nothing stored, every figure fits: copied"),
    };
    session.commit().await.expect("commit");
    (copied, projects)
}

/// A cost row of `day` for the store's own tests.
fn cost_row<'a>(
    day: DateTime<Utc>,
    project: &'a str,
    amount: &'a str,
    raw: &'a str,
) -> store::CostRow<'a> {
    store::CostRow {
        bucket_start: day,
        bucket_end: day + chrono::TimeDelta::days(1),
        project_id: Some(project),
        line_item: Some("gpt-5.4-2026-03-05, input"),
        currency: Some("usd"),
        amount,
        quantity: Some(amount),
        quantity_unit: Some("tokens"),
        raw,
    }
}

#[tokio::test]
async fn a_backfill_page_copies_any_decimal_exactly_and_leaves_one_too_long_to_the_comparing_path()
{
    let (db, mut session) = migrated_with_cost_session().await;
    let day = DateTime::from_timestamp(today() - 40 * DAY, 0).expect("a day");
    let too_long = format!("1.{}1", "0".repeat(13_000));
    let amounts: Vec<String> = [
        "0",
        "-0.000",
        "12.50",
        "0E-6176",
        "1.5E-3",
        "-7.25e+2",
        "5E+1",
        "7E2",
        "0.0001000",
        "9999.9999",
        "10000",
        "100000000",
        "1e-16000",
        "4.5e+3",
        "1E+16000",
        "-007.50",
        "1234567890.123456789012345678901234567890",
        "0.1",
        "99990000.00009999",
        "123.456E-2",
    ]
    .iter()
    .map(|a| (*a).to_owned())
    .collect();
    let (copied, projects) = copy_one_day(&mut session, day, &amounts).await;
    let next = day + chrono::TimeDelta::days(1);
    let long_row = [cost_row(next, "proj_long", &too_long, "{}")];
    session.begin().await.expect("begin");
    let compared = matches!(
        session
            .insert_unread(long_row.iter().copied(), &[next], 1, Utc::now())
            .await
            .expect("checked"),
        store::Backfilled::Compare
    );
    session.rollback().await.expect("rollback");
    session.close().await;
    let (differing,): (i64,) = sqlx::query_as(
        "select count(*) from openai.costs c join unnest($1::text[], $2::text[]) as t(project, text) \
           on t.project = c.project_id \
         where c.amount::text <> trim_scale(t.text::numeric)::text \
            or c.quantity::text <> trim_scale(t.text::numeric)::text",
    )
    .bind(&projects)
    .bind(&amounts)
    .fetch_one(&db.pool)
    .await
    .expect("compare");
    let (days,): (i64,) = sqlx::query_as("select count(*) from openai.cost_days")
        .fetch_one(&db.pool)
        .await
        .expect("days");

    assert_eq!(copied, i64::try_from(amounts.len()).expect("n"));
    assert_eq!(
        differing, 0,
        "each figure is its text's value at its smallest scale"
    );
    assert!(
        compared,
        "a figure binary numeric cannot carry is staged instead, not cut"
    );
    assert_eq!(days, 1, "the copied day is recorded as read");
}

#[tokio::test]
async fn a_key_listed_twice_on_a_backfill_page_is_refused_by_name_and_nothing_is_written() {
    let (db, mut session) = migrated_with_cost_session().await;
    let day = DateTime::from_timestamp(today() - 40 * DAY, 0).expect("a day");
    let rows = [
        cost_row(day, "proj_a", "1.5", "{}"),
        cost_row(day, "proj_b", "2", "{}"),
        cost_row(day, "proj_a", "1.5", "{}"),
    ];

    session.begin().await.expect("begin");
    let refused = match session
        .insert_unread(rows.iter().copied(), &[day], 1, Utc::now())
        .await
    {
        Err(store::CostApplyError::Duplicate(key)) => Some(key),
        _ => None,
    };
    session.rollback().await.expect("rollback");
    session.close().await;
    let (stored, days): (i64, i64) = sqlx::query_as(
        "select (select count(*) from openai.costs), (select count(*) from openai.cost_days)",
    )
    .fetch_one(&db.pool)
    .await
    .expect("counts");

    let key = refused.expect("the page is refused as a duplicate");
    assert_eq!(key.project_id.as_deref(), Some("proj_a"));
    assert_eq!(key.bucket_start, day);
    assert_eq!((stored, days), (0, 0), "nothing is written");
}

#[tokio::test]
async fn days_recorded_unread_that_hold_rows_are_compared_never_inserted_twice() {
    let f = fixture(6).await;
    let deps = f.costs(2, Some(16));
    pass(&deps).await;
    // A busy day before the window, with the two days before it.
    let day = (5..=12)
        .map(|n| today() - n * DAY)
        .find(|&day| {
            f.emulator
                .cost_rows(day, day + DAY)
                .iter()
                .any(|c| c.project_id.is_some() && c.amount.is_some())
        })
        .expect("a day with spend");
    // As if the days had never been read: the next pass's backfill reads them again.
    sqlx::query("delete from openai.cost_days where bucket_start between to_timestamp($1) and to_timestamp($2)")
        .bind((day - 2 * DAY) as f64)
        .bind(i32::try_from(day).map(f64::from).expect("a day"))
        .execute(&f.db.pool)
        .await
        .expect("forget the days");
    f.emulator.restate_costs(Restatement {
        day,
        ..Restatement::default()
    });
    let second = pass(&deps).await;
    let (twice,): (i64,) = sqlx::query_as(
        "select count(*) from (select 1 from openai.costs \
         group by bucket_start, project_id, line_item, currency having count(*) > 1) d",
    )
    .fetch_one(&f.db.pool)
    .await
    .expect("duplicates");
    let (days,): (i64,) = sqlx::query_as("select count(*) from openai.cost_days")
        .fetch_one(&f.db.pool)
        .await
        .expect("days");
    let wrong = mismatches(&f.db.pool, &f.served(16)).await;

    assert_eq!(second.backfilled_days, 3, "{second:?}");
    assert_eq!(twice, 0, "no row stored twice");
    assert!(
        second.counts.updated > 0,
        "the restated day's rows are updated: {second:?}"
    );
    assert!(
        second.counts.revisions > 0,
        "with their revisions: {second:?}"
    );
    assert!(
        second.counts.unchanged > 0,
        "the other days' rows are left alone"
    );
    assert_eq!(days, 17);
    assert_eq!(wrong, 0);
}

#[tokio::test]
async fn organization_level_rows_are_kept_under_null_keys() {
    let f = fixture(4).await;
    let deps = f.costs(20, None);
    pass(&deps).await;
    pass(&deps).await;
    let served = f.served(20);
    let expected_org = served
        .iter()
        .filter(|c| c.project_id.is_none() && c.amount.is_some())
        .count();
    let expected_both_null = served
        .iter()
        .filter(|c| c.project_id.is_none() && c.line_item.is_none() && c.amount.is_some())
        .count();
    let (org, both_null, unattributed): (i64, i64, i64) = sqlx::query_as(
        "select count(*) filter (where project_id is null), \
                count(*) filter (where project_id is null and line_item is null), \
                (select count(*) from openai.costs_by_project where not attributed and project_name is null) \
         from openai.costs",
    )
    .fetch_one(&f.db.pool)
    .await
    .expect("counts");
    let duplicate = sqlx::query(
        "insert into openai.costs (bucket_start, bucket_end, project_id, line_item, currency, amount, raw, \
           first_fetched_at, last_fetched_at, first_run, last_run) \
         select bucket_start, bucket_end, null, null, currency, 1, '{}', now(), now(), 0, 0 \
         from openai.costs where project_id is null and line_item is null limit 1",
    )
    .execute(&f.db.pool)
    .await;

    assert!(
        expected_both_null > 0,
        "the emulator serves rows with neither project nor line item"
    );
    assert_eq!(
        org,
        i64::try_from(expected_org).expect("n"),
        "kept once each, twice read"
    );
    assert_eq!(both_null, i64::try_from(expected_both_null).expect("n"));
    assert_eq!(
        unattributed, org,
        "the view reports them as organization-level cost"
    );
    assert!(
        duplicate.is_err(),
        "a null key is a key: no second row for it"
    );
}

/// A group of a project's cost rows in the view: name then, status then, name now, rows.
type NamedCosts = (Option<String>, Option<String>, Option<String>, i64);

#[tokio::test]
async fn the_view_names_old_costs_as_the_projects_were_named_then() {
    let f = fixture(6).await;
    sync(&f.walk).await;
    let deps = f.costs(7, None);
    let projects: Vec<_> = f
        .emulator
        .projects()
        .into_iter()
        .filter(|p| p.name.is_some())
        .collect();
    let renamed = projects[0].clone();
    let archived = projects[1].clone();
    let vanished = projects[2].clone();
    let newborn = f.emulator.create("Born today");
    pass(&deps).await;
    f.emulator.rename(&renamed.id, "Renamed since");
    f.emulator.archive(&archived.id);
    f.emulator.set_hidden(&vanished.id, true);
    sync(&f.walk).await;
    pass(&deps).await;

    let names = |id: String| {
        let pool = f.db.pool.clone();
        async move {
            let rows: Vec<NamedCosts> = sqlx::query_as(
                "select project_name, project_status, project_name_now, count(*) from openai.costs_by_project \
                 where project_id = $1 group by 1, 2, 3",
            )
            .bind(id)
            .fetch_all(&pool)
            .await
            .expect("view");
            rows
        }
    };
    let renamed_rows = names(renamed.id.clone()).await;
    let archived_rows = names(archived.id.clone()).await;
    let vanished_rows = names(vanished.id.clone()).await;
    let newborn_rows = names(newborn.id.clone()).await;
    let (view_rows, cost_rows, view_sum, cost_sum): (i64, i64, String, String) = sqlx::query_as(
        "select (select count(*) from openai.costs_by_project), (select count(*) from openai.costs), \
                (select sum(amount)::text from openai.costs_by_project), (select sum(amount)::text from openai.costs)",
    )
    .fetch_one(&f.db.pool)
    .await
    .expect("totals");
    let (unnamed,): (i64,) = sqlx::query_as(
        "select count(*) from openai.costs_by_project where attributed and project_status is null",
    )
    .fetch_one(&f.db.pool)
    .await
    .expect("unnamed");

    assert_eq!(renamed_rows.len(), 1, "{renamed_rows:?}");
    assert_eq!(
        renamed_rows[0].0, renamed.name,
        "old costs keep the old name"
    );
    assert_eq!(renamed_rows[0].2.as_deref(), Some("Renamed since"));
    assert_eq!(archived_rows.len(), 1, "{archived_rows:?}");
    assert_eq!(archived_rows[0].0, archived.name);
    assert_eq!(
        archived_rows[0].1.as_deref(),
        Some("active"),
        "it was active then"
    );
    assert_eq!(archived_rows[0].2, archived.name);
    assert_eq!(vanished_rows.len(), 1);
    assert_eq!(
        vanished_rows[0].0, vanished.name,
        "a vanished project keeps its name"
    );
    let newborn_spent = f
        .served(0)
        .iter()
        .any(|c| c.project_id.as_deref() == Some(newborn.id.as_str()));
    if newborn_spent {
        assert_eq!(newborn_rows.len(), 1, "{newborn_rows:?}");
        assert_eq!(
            newborn_rows[0].0.as_deref(),
            Some("Born today"),
            "the creation day's costs are named"
        );
    } else {
        assert!(newborn_rows.is_empty(), "a quiet day");
    }
    assert_eq!(
        (view_rows, view_sum),
        (cost_rows, cost_sum),
        "one view row per cost row"
    );
    assert_eq!(unnamed, 0);
}

#[tokio::test]
async fn two_replicas_never_run_two_cost_passes_at_once() {
    let f = fixture(3).await;
    let deps = f.costs(3, None);
    let held = CostSession::open(&deps.connect)
        .await
        .expect("connect")
        .expect("the lock is free");
    let refused = costs::run_pass(&deps, Trigger::Manual, &CancellationToken::new()).await;
    // The walk's lock is another: a walk runs while a cost pass holds its own.
    let walked = openai_project_sync::sync::walk_and_apply(
        &f.walk,
        Trigger::Manual,
        &CancellationToken::new(),
        &mut (),
    )
    .await;
    held.close().await;

    f.emulator.set_rates(
        Endpoint::Costs,
        FaultRates {
            latency_ms: 300,
            ..FaultRates::default()
        },
    );
    let cancel = CancellationToken::new();
    let (a, b) = tokio::join!(
        costs::run_pass(&deps, Trigger::Manual, &cancel),
        costs::run_pass(&deps, Trigger::Schedule, &cancel),
    );
    let (running,): (i64,) =
        sqlx::query_as("select count(*) from openai.sync_runs where resource = 'costs'")
            .fetch_one(&f.db.pool)
            .await
            .expect("runs");

    assert!(
        matches!(refused, Err(CostError::AlreadyRunning)),
        "{refused:?}"
    );
    assert!(walked.is_ok(), "{walked:?}");
    let outcomes = [a.is_ok(), b.is_ok()];
    assert_eq!(outcomes.iter().filter(|ok| **ok).count(), 1, "{a:?} {b:?}");
    assert!(
        matches!(a, Err(CostError::AlreadyRunning)) || matches!(b, Err(CostError::AlreadyRunning)),
        "the other was refused"
    );
    assert_eq!(running, 1, "a refused pass records no run");
}

#[tokio::test]
async fn a_result_without_an_amount_is_skipped_never_stored_as_zero() {
    let f = fixture_with(
        20,
        Freedoms {
            cost_results_without_amount: true,
            ..Freedoms::default()
        },
    )
    .await;
    let deps = f.costs(14, None);
    pass(&deps).await;
    let served = f.served(14);
    let missing: Vec<_> = served.iter().filter(|c| c.amount.is_none()).collect();
    let wrong = mismatches(&f.db.pool, &served).await;
    let (stored,): (i64,) = sqlx::query_as("select count(*) from openai.costs")
        .fetch_one(&f.db.pool)
        .await
        .expect("count");

    assert!(!missing.is_empty(), "the emulator left some amounts out");
    assert_eq!(
        stored,
        i64::try_from(served.len() - missing.len()).expect("n")
    );
    assert_eq!(wrong, 0, "no row for a result without amount");
}

#[tokio::test]
async fn the_emulator_pages_costs_as_the_api_does() {
    let f = fixture(3).await;
    let http = reqwest::Client::new();
    let get = |query: String| {
        let http = http.clone();
        let url = format!("{}/organization/costs?{query}", f.emulator.base_url());
        async move {
            let response = http
                .get(url)
                .bearer_auth(TEST_KEY)
                .send()
                .await
                .expect("answer");
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.expect("json"))
        }
    };
    let start = today() - 60 * DAY;
    let window = format!(
        "start_time={start}&end_time={}&bucket_width=1d&group_by[]=project_id&group_by[]=line_item",
        today() + DAY
    );
    let (first_status, first) = get(format!("{window}&limit=180")).await;
    let token = first["next_page"].as_str().expect("a token").to_owned();
    let (second_status, second) = get(format!("{window}&limit=180&page={token}")).await;
    let (other_status, other) = get(format!("{window}&limit=90&page={token}")).await;
    let (over_status, over) = get(format!("{window}&limit=181")).await;
    let (width_status, _) = get(format!(
        "start_time={start}&bucket_width=1h&group_by[]=project_id&group_by[]=line_item"
    ))
    .await;
    let (repeated_status, repeated) = get(format!(
        "start_time={start}&end_time={}&group_by=project_id&group_by=line_item&limit=3",
        start + 3 * DAY
    ))
    .await;
    let (missing_status, _) = get("group_by[]=project_id&group_by[]=line_item".into()).await;
    let quiet = first["data"]
        .as_array()
        .expect("buckets")
        .iter()
        .chain(second["data"].as_array().expect("buckets"))
        .filter(|b| b["results"].as_array().is_some_and(Vec::is_empty))
        .count();

    assert_eq!(first_status, 200);
    assert_eq!(
        first["data"].as_array().map(Vec::len),
        Some(31),
        "31 buckets whatever limit says"
    );
    assert_eq!(first["has_more"], json!(true));
    assert_eq!(second_status, 200);
    assert_eq!(
        second["data"][0]["start_time"],
        json!(start + 31 * DAY),
        "the token continues"
    );
    assert_eq!(
        other_status, 400,
        "a token under another query is refused: {other}"
    );
    assert_eq!(over_status, 400);
    assert!(
        over["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("180"))
    );
    assert_eq!(width_status, 400);
    assert_eq!(repeated_status, 200, "the repeated form is understood too");
    assert_eq!(repeated["data"].as_array().map(Vec::len), Some(3));
    assert_eq!(repeated["has_more"], json!(false));
    assert_eq!(missing_status, 400);
    assert!(quiet > 0, "quiet days answer results: []");
}

#[tokio::test]
async fn the_same_seed_gives_the_same_costs() {
    let a = fixture(5).await;
    let b = fixture(5).await;
    let rows_a = a.served(10);
    let rows_b = b.served(10);
    assert!(rows_a.len() > 5 * 10 * 3);
    assert_eq!(rows_a, rows_b);
}

#[tokio::test]
async fn sync_costs_runs_one_pass_and_sync_runs_one_after_the_walk_unless_disabled() {
    let f = fixture(3).await;
    let base = f.emulator.base_url();
    let from = date(today() - 3 * DAY).to_string();
    let env = [
        ("DATABASE_URL", f.db.url.as_str()),
        ("OPENAI_BASE_URL", base.as_str()),
        ("OPENAI_ADMIN_KEY", TEST_KEY),
        ("APP_COSTS__BACKFILL_FROM", from.as_str()),
        ("APP_COSTS__LOOKBACK_DAYS", "1"),
    ];
    let costs_only = run_binary_async(&["sync", "costs"], &env).await;
    let both = run_binary_async(&["sync"], &env).await;
    let mut disabled_env = env.to_vec();
    disabled_env.push(("APP_COSTS__ENABLED", "false"));
    let disabled = run_binary_async(&["sync"], &disabled_env).await;
    let (walks, passes, days): (i64, i64, i32) = sqlx::query_as(
        "select count(*) filter (where resource = 'projects'), count(*) filter (where resource = 'costs'), \
                coalesce(sum(days_read) filter (where resource = 'costs'), 0)::int from openai.sync_runs where status = 'succeeded'",
    )
    .fetch_one(&f.db.pool)
    .await
    .expect("runs");

    let text = output_text(&costs_only);
    assert_eq!(costs_only.status.code(), Some(0), "{text}");
    assert!(
        text.contains("cost pass") && text.contains("backfilled  2 day(s)"),
        "{text}"
    );
    let text = output_text(&both);
    assert_eq!(both.status.code(), Some(0), "{text}");
    assert!(
        text.find("sync run")
            .is_some_and(|w| text.find("cost pass").is_some_and(|c| w < c)),
        "walk, then costs: {text}"
    );
    let text = output_text(&disabled);
    assert_eq!(disabled.status.code(), Some(0), "{text}");
    assert!(
        text.contains("sync run") && !text.contains("cost pass"),
        "{text}"
    );
    assert_eq!((walks, passes), (2, 2));
    assert_eq!(days, 4 + 2, "four days, then the two of the window again");
}

#[tokio::test]
async fn the_daemon_runs_a_cost_pass_at_start_and_publishes_its_metrics() {
    let f = fixture(3).await;
    let from = date(today() - 2 * DAY).to_string();
    let base = f.emulator.base_url();
    let env: Vec<(String, String)> = [
        ("DATABASE_URL", f.db.url.as_str()),
        ("OPENAI_BASE_URL", base.as_str()),
        ("OPENAI_ADMIN_KEY", TEST_KEY),
        ("APP_SYNC__SCHEDULE", "0 0 0 1 1 *"),
        ("APP_HTTP__LISTEN", "127.0.0.1:0"),
        ("APP_COSTS__BACKFILL_FROM", from.as_str()),
        ("APP_COSTS__SCHEDULE", "0 0 0 1 1 *"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let settings =
        openai_project_sync::config::Settings::load(&openai_project_sync::config::Sources {
            config_dir: Some(std::env::temp_dir().join("ops-no-config-here")),
            file: None,
            env: Some(env),
        })
        .expect("settings");
    assert!(settings.costs.enabled, "costs are on by default");
    assert_eq!(settings.costs.lookback_days, 7);
    let shutdown = CancellationToken::new();
    let daemon = openai_project_sync::app::start_daemon(settings, shutdown.clone())
        .await
        .expect("the daemon starts");
    crate::helpers::eventually("a cost pass and a walk succeed", || async {
        let (n,): (i64,) = sqlx::query_as(
            "select count(distinct resource) from openai.sync_runs where status = 'succeeded'",
        )
        .fetch_one(&f.db.pool)
        .await
        .expect("runs");
        n == 2
    })
    .await;
    let (metrics_status, metrics) = {
        let response = reqwest::get(format!("http://{}/metrics", daemon.http_addr))
            .await
            .expect("metrics");
        (
            response.status().as_u16(),
            response.text().await.expect("body"),
        )
    };
    shutdown.cancel();
    let stopped = tokio::time::timeout(Duration::from_secs(10), daemon.finished).await;

    assert_eq!(metrics_status, 200);
    for needle in [
        "openai_project_sync_runs_total{resource=\"costs\",status=\"succeeded\"}",
        "openai_project_sync_seconds_since_last_success{resource=\"costs\"}",
    ] {
        assert!(
            metrics.contains(needle),
            "{needle} missing from:\n{metrics}"
        );
    }
    assert!(matches!(stopped, Ok(Ok(Ok(())))), "{stopped:?}");
}

#[tokio::test]
async fn a_cost_pass_is_not_taken_for_the_walk_that_last_saw_the_projects() {
    let f = fixture(3).await;
    let walk = sync(&f.walk).await;
    pass(&f.costs(1, None)).await;
    let (walked_at,): (DateTime<Utc>,) =
        sqlx::query_as("select started_at from openai.sync_runs where id = $1")
            .bind(walk.run_id)
            .fetch_one(&f.db.pool)
            .await
            .expect("walk");
    let (latest_seen,): (DateTime<Utc>,) =
        sqlx::query_as("select max(last_seen_at) from openai.projects")
            .fetch_one(&f.db.pool)
            .await
            .expect("projects");
    assert!(
        latest_seen <= walked_at,
        "{latest_seen} after the walk at {walked_at}"
    );
}

#[tokio::test]
async fn cost_settings_are_checked_with_the_key_named() {
    let load = |pairs: &[(&str, &str)]| {
        openai_project_sync::config::Settings::load(&openai_project_sync::config::Sources {
            config_dir: Some(std::env::temp_dir().join("ops-no-config-here")),
            file: None,
            env: Some(
                pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
        })
    };
    let defaults = load(&[]).expect("defaults");
    let crontab = load(&[("APP_COSTS__SCHEDULE", "15 * * * *")]).expect_err("5 fields");
    let date_error = load(&[("APP_COSTS__BACKFILL_FROM", "last year")]).expect_err("not a date");
    let dated = load(&[("APP_COSTS__BACKFILL_FROM", "2025-01-01")]).expect("a date");

    assert_eq!(defaults.costs.schedule, "0 15 * * * *");
    assert!(defaults.costs.backfill_from.is_none());
    assert!(
        crontab.to_string().contains("costs.schedule") && crontab.to_string().contains("5 fields"),
        "{crontab}"
    );
    assert!(
        date_error.to_string().contains("costs.backfill_from"),
        "{date_error}"
    );
    assert_eq!(
        dated.cost_backfill_from().expect("date"),
        NaiveDate::from_ymd_opt(2025, 1, 1)
    );
}

#[tokio::test]
async fn every_query_in_the_finance_section_of_the_readme_runs() {
    let f = fixture(5).await;
    sync(&f.walk).await;
    let archived = f.emulator.projects()[0].id.clone();
    f.emulator.archive(&archived);
    sync(&f.walk).await;
    pass(&f.costs(7, None)).await;
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README");
    let section = readme
        .split("## Costs for finance")
        .nth(1)
        .expect("the section");
    let block = section
        .split("```sql")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("an sql block");
    let queries: Vec<&str> = block
        .split(';')
        .map(str::trim)
        .filter(|q| {
            q.lines()
                .any(|l| !l.trim().starts_with("--") && !l.trim().is_empty())
        })
        .collect();
    let mut answers = Vec::new();
    for query in &queries {
        let rows = sqlx::query(query)
            .fetch_all(&f.db.pool)
            .await
            .unwrap_or_else(|e| panic!("README query failed: {e}\n{query}"));
        answers.push(rows.len());
    }

    assert_eq!(queries.len(), 5);
    assert!(answers[0] > 0, "cost per project per month");
    assert_eq!(answers[1], 1, "the archived project's cost");
    assert!(answers[2] > 0, "organization-level cost");
    assert_eq!(answers[4], 1, "the pass");
}

#[tokio::test]
async fn has_more_without_a_next_page_fails_the_pass_and_applies_nothing() {
    let f = fixture(4).await;
    let deps = f.costs(5, None);
    pass(&deps).await;
    f.emulator.restate_costs(Restatement {
        day: today() - DAY,
        ..Restatement::default()
    });
    let before = snapshot(&f.db.pool).await;
    f.emulator.push_fault(FaultRule {
        endpoint: Endpoint::Costs,
        skip: 0,
        times: Some(1),
        fault: Fault::EmptyPageWithMore,
    });
    let failed = costs::run_pass(&deps, Trigger::Manual, &CancellationToken::new()).await;
    let after = snapshot(&f.db.pool).await;

    let message = format!("{:?}", failed);
    assert!(message.contains("next_page"), "{message}");
    assert_eq!(after, before);
}

#[test]
fn only_decimal_numbers_postgres_can_hold_pass_as_amounts() {
    use openai_project_sync::client::ExactNumber;
    for good in [
        "0",
        "-0.5",
        "12.50",
        "0E-6176",
        "1.23456789012345678901234567",
        "4.5e+3",
        "7E2",
        "1E+99999",
        "1e131071",
        "0.001e131074",
        "1e-16383",
        "0e99999999",
    ] {
        assert_eq!(
            ExactNumber::parse(good).map(|n| n.as_str().to_owned()),
            Ok(good.to_owned())
        );
    }
    for bad in [
        "",
        " 1",
        "1 ",
        "1.",
        ".5",
        "+1",
        "1e",
        "1e+",
        "NaN",
        "Infinity",
        "0x10",
        "1,5",
        "1e131072",
        "10e131071",
        "1e-16384",
        "1.0e-16383",
        "0e-16384",
        "0e1073741823",
        "1e99999999999999999999",
    ] {
        assert!(ExactNumber::parse(bad).is_err(), "{bad:?} accepted");
    }
}

/// Adversarial decimal texts: powers of ten in every spelling around each base-10000 group
/// boundary, runs of nines, signs, leading and trailing zeros, and seeded random mixes.
fn adversarial_decimals() -> Vec<String> {
    let mut texts: Vec<String> = [
        "0.1",
        "1e-20",
        "123456789012345678901234567890.123456789",
        "9.99E+30",
        "-0.0000001",
        "10000",
        "0.0001",
        "1e4",
        "1.0000e-4",
        "007.50",
        "-0",
        "0E-6176",
        "-0E+5",
        "0.000000",
        "1.5E+3",
        "-1.5E+3",
        "00000.00000",
        "0000123.4500000",
        "9999",
        "99999999",
        "0.9999",
        "0.99999",
        "1E+0",
        "1E-0",
        "1e+00004",
        "-9999.99990000E-4",
        "12345678.87654321",
        "1E16000",
        "1E-16000",
        "9.9999999999999999999E-16000",
        "-1.00000000000000000001",
    ]
    .iter()
    .map(|t| (*t).to_owned())
    .collect();
    for exponent in -40i32..=40 {
        texts.push(format!("1E{exponent}"));
        texts.push(format!("-1.0000e{exponent:+}"));
        texts.push(format!("9999.9999E{exponent}"));
        texts.push(format!("10000.0001e{exponent}"));
        texts.push(format!("0.00012340E{exponent}"));
    }
    for digits in 1..=24usize {
        texts.push("9".repeat(digits));
        texts.push(format!("0.{}", "9".repeat(digits)));
        texts.push(format!("1{}", "0".repeat(digits)));
        texts.push(format!("0.{}1", "0".repeat(digits)));
        texts.push(format!("-{}.{}", "5".repeat(digits), "0".repeat(digits)));
    }
    let mut rng = fastrand::Rng::with_seed(9739);
    for _ in 0..3_000 {
        let digit = |rng: &mut fastrand::Rng| char::from(b'0' + rng.u8(0..10));
        let zeros = |rng: &mut fastrand::Rng, most: usize| "0".repeat(rng.usize(0..=most));
        let mut text = String::new();
        if rng.bool() {
            text.push('-');
        }
        text.push_str(&zeros(&mut rng, 3));
        for _ in 0..rng.usize(1..12) {
            text.push(digit(&mut rng));
        }
        text.push_str(&zeros(&mut rng, 6));
        if rng.bool() {
            text.push('.');
            text.push_str(&zeros(&mut rng, 9));
            for _ in 0..rng.usize(1..14) {
                text.push(digit(&mut rng));
            }
            text.push_str(&zeros(&mut rng, 6));
        }
        match rng.u8(0..4) {
            0 => text.push_str(&format!("e{}", rng.i32(-60..60))),
            1 => text.push_str(&format!("E+{}", rng.i32(0..60))),
            2 => text.push_str(&format!("E-{:03}", rng.i32(0..60))),
            _ => {}
        }
        texts.push(text);
    }
    texts
}

#[tokio::test]
async fn every_adversarial_decimal_is_copied_digit_for_digit_and_scale_for_scale() {
    let (db, mut session) = migrated_with_cost_session().await;
    let day = DateTime::from_timestamp(today() - 50 * DAY, 0).expect("a day");
    let amounts = adversarial_decimals();
    for text in &amounts {
        openai_project_sync::client::ExactNumber::parse(text)
            .unwrap_or_else(|e| panic!("the client accepts {text:?}: {e}"));
    }
    let (copied, projects) = copy_one_day(&mut session, day, &amounts).await;
    session.close().await;
    let differing: Vec<(String, String, String)> = sqlx::query_as(
        "select t.text, c.amount::text, trim_scale(t.text::numeric)::text \
         from openai.costs c join unnest($1::text[], $2::text[]) as t(project, text) \
           on t.project = c.project_id \
         where c.amount::text <> trim_scale(t.text::numeric)::text \
            or scale(c.amount) <> scale(trim_scale(t.text::numeric)) \
            or c.quantity::text <> trim_scale(t.text::numeric)::text \
            or c.amount <> t.text::numeric \
         limit 20",
    )
    .bind(&projects)
    .bind(&amounts)
    .fetch_all(&db.pool)
    .await
    .expect("compare");

    assert_eq!(copied, i64::try_from(amounts.len()).expect("n"));
    assert_eq!(differing, Vec::new(), "(text, stored, expected)");
}

/// A hand-written Costs API: each day's results as set in `days`, the whole query on one page.
type ScriptedDays = std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<i64, Vec<Value>>>>;

async fn scripted_costs(days: ScriptedDays) -> openai_project_sync::client::AdminClient {
    use axum::extract::{Query, State};
    let app = axum::Router::new()
        .route(
            "/v1/organization/costs",
            axum::routing::get(
                |State(days): State<ScriptedDays>,
                 Query(q): Query<std::collections::HashMap<String, String>>| async move {
                    let start: i64 = q["start_time"].parse().expect("start");
                    let end: i64 = q["end_time"].parse().expect("end");
                    let days = days.lock().expect("days");
                    let data: Vec<Value> = (start..end)
                        .step_by(86_400)
                        .map(|day| {
                            json!({"object": "bucket", "start_time": day, "end_time": day + DAY,
                                   "results": days.get(&day).cloned().unwrap_or_default()})
                        })
                        .collect();
                    axum::Json(json!({"object": "page", "data": data, "has_more": false, "next_page": null}))
                },
            ),
        )
        .with_state(days);
    crate::client::serve_scripted(app).await
}

fn scripted_result(project: Option<&str>, item: Option<&str>, amount: Value) -> Value {
    json!({"object": "organization.costs.result", "amount": {"value": amount, "currency": "usd"},
           "line_item": item, "project_id": project, "organization_id": "org-placeholder"})
}

async fn scripted_fixture(
    lookback: u32,
    backfill_days: i64,
    days: &ScriptedDays,
) -> (TestDb, CostDeps) {
    let db = TestDb::new().await;
    store::migrate(&db.pool).await.expect("migrations apply");
    let deps = CostDeps {
        pool: db.pool.clone(),
        connect: db.url.parse().expect("test URL parses"),
        client: scripted_costs(days.clone()).await,
        lookback_days: lookback,
        backfill_from: Some(date(today() - backfill_days * DAY)),
    };
    (db, deps)
}

#[tokio::test]
async fn a_listed_result_whose_amount_goes_missing_keeps_its_stored_figure() {
    let days = ScriptedDays::default();
    let day = today() - DAY;
    let (a, b) = (Some("proj_a"), Some("gpt-5.4, input"));
    days.lock().expect("days").insert(
        day,
        vec![
            scripted_result(a, b, json!("1.50")),
            scripted_result(Some("proj_b"), b, json!("2.5")),
        ],
    );
    let (db, deps) = scripted_fixture(3, 3, &days).await;
    pass(&deps).await;
    // The API still lists proj_b's line item, but without its amount this time.
    days.lock().expect("days").insert(
        day,
        vec![
            scripted_result(a, b, json!("1.50")),
            json!({"object": "organization.costs.result", "line_item": b, "project_id": "proj_b"}),
        ],
    );
    let second = pass(&deps).await;
    let stored: Vec<(String, String)> =
        sqlx::query_as("select project_id, amount::text from openai.costs order by 1")
            .fetch_all(&db.pool)
            .await
            .expect("rows");

    assert_eq!(
        stored,
        vec![
            ("proj_a".into(), "1.5".into()),
            ("proj_b".into(), "2.5".into())
        ],
        "a result listed without an amount is skipped, its figure neither zeroed nor removed"
    );
    assert_eq!((second.counts.removed, second.counts.revisions), (0, 0));
}

#[tokio::test]
async fn a_backfill_stores_escaped_and_unicode_keys_and_odd_amounts_as_the_api_meant_them() {
    let days = ScriptedDays::default();
    let day = today() - 20 * DAY;
    let items = [
        Some("caf\u{e9}, input"),
        Some("tab\there \"quoted\" back\\slash"),
        Some("emoji \u{1F600}, output"),
        Some("gpt-5.4-2026-03-05, cached input"),
        None,
        Some(""),
    ];
    // Out of key order, numbers and strings, unknown fields, nulls, credits and zeros.
    let amounts = [
        json!("-0"),
        json!("0E-6176"),
        json!(-12.5),
        json!("1.0000e-4"),
        json!(1e4),
        json!("007.50"),
    ];
    let results: Vec<Value> = items
        .iter()
        .rev()
        .zip(&amounts)
        .flat_map(|(item, amount)| {
            [None, Some("proj_z"), Some("proj_a")].map(|project| {
                let mut r = scripted_result(project, *item, amount.clone());
                r["unknown_field"] = json!({"nested": [1, 2]});
                r
            })
        })
        .collect();
    days.lock().expect("days").insert(day, results.clone());
    let (db, deps) = scripted_fixture(2, 25, &days).await;
    let summary = pass(&deps).await;
    let stored: Vec<(Option<String>, Option<String>, String, String)> = sqlx::query_as(
        "select project_id, line_item, amount::text, raw->'unknown_field'->>'nested' from openai.costs \
         where bucket_start = to_timestamp($1) order by 1, 2",
    )
    .bind(day as f64)
    .fetch_all(&db.pool)
    .await
    .expect("rows");
    let mut expected: Vec<(Option<String>, Option<String>, String, String)> = results
        .iter()
        .map(|r| {
            let value = &r["amount"]["value"];
            let text = value
                .as_str()
                .map_or_else(|| value.to_string(), str::to_owned);
            (
                r["project_id"].as_str().map(str::to_owned),
                r["line_item"].as_str().map(str::to_owned),
                text,
                "[1, 2]".to_owned(),
            )
        })
        .collect();
    for row in &mut expected {
        let (t,): (String,) = sqlx::query_as("select trim_scale($1::numeric)::text")
            .bind(&row.2)
            .fetch_one(&db.pool)
            .await
            .expect("text");
        row.2 = t;
    }
    expected.sort();
    let mut stored_sorted = stored.clone();
    stored_sorted.sort();

    assert!(summary.backfilled_days >= 20, "{summary:?}");
    assert_eq!(stored_sorted, expected);
}

#[tokio::test]
async fn a_current_day_whose_bucket_ends_at_the_moment_of_the_answer_is_read_as_that_day_so_far() {
    let f = fixture_with(
        20,
        Freedoms {
            cost_today_ends_now: true,
            ..Freedoms::default()
        },
    )
    .await;
    let listed: Value = reqwest::Client::new()
        .get(format!(
            "{}/organization/costs?start_time={}&end_time={}&bucket_width=1d&group_by[]=project_id&group_by[]=line_item",
            f.emulator.base_url(),
            today(),
            today() + DAY
        ))
        .bearer_auth(TEST_KEY)
        .send()
        .await
        .expect("answer")
        .json()
        .await
        .expect("json");
    let served_end = listed["data"][0]["end_time"].as_i64().expect("a bucket");
    let deps = f.costs(3, None);

    pass(&deps).await;
    let wrong = mismatches(&f.db.pool, &f.served(3)).await;
    let (rows, ends): (i64, Vec<DateTime<Utc>>) = sqlx::query_as(
        "select count(*), coalesce(array_agg(distinct bucket_end), '{}') from openai.costs \
         where bucket_start = $1",
    )
    .bind(DateTime::from_timestamp(today(), 0).expect("time"))
    .fetch_one(&f.db.pool)
    .await
    .expect("today's rows");

    assert!(
        served_end < today() + DAY,
        "the emulator ends today's bucket early"
    );
    assert!(rows > 0, "today's figures are stored");
    assert_eq!(
        ends,
        vec![DateTime::from_timestamp(today() + DAY, 0).expect("time")],
        "stored as the whole day, so a later reading of it is not a restatement"
    );
    assert_eq!(wrong, 0, "every served figure stored exactly");
}

#[tokio::test]
async fn a_cost_result_holding_a_nul_escape_or_an_unpaired_surrogate_is_stored_with_replacement_characters()
 {
    // JSON allows both; Postgres text and jsonb refuse them. One such result must not fail
    // every pass that reads its day.
    let db = TestDb::new().await;
    store::migrate(&db.pool).await.expect("migrations apply");
    let deps = scripted_cost_passes(&db, |day| {
        let results = if day == today() - DAY {
            r#"{"object":"organization.costs.result","amount":{"value":1.25,"currency":"usd"},"line_item":"in\u0000put","project_id":"proj_\ud800x"}"#
        } else {
            ""
        };
        format!(
            r#"{{"object":"bucket","start_time":{day},"end_time":{},"results":[{results}]}}"#,
            day + 86_400
        )
    })
    .await;

    pass(&deps).await;
    let before = snapshot(&db.pool).await;
    pass(&deps).await;

    type Stored = (Option<String>, Option<String>, String, Option<String>);
    let stored: Vec<Stored> = sqlx::query_as(
        "select project_id, line_item, amount::text, raw ->> 'line_item' from openai.costs",
    )
    .fetch_all(&db.pool)
    .await
    .expect("stored");
    assert_eq!(
        stored,
        vec![(
            Some("proj_\u{fffd}x".to_owned()),
            Some("in\u{fffd}put".to_owned()),
            "1.25".to_owned(),
            Some("in\u{fffd}put".to_owned())
        )]
    );
    assert_eq!(
        snapshot(&db.pool).await,
        before,
        "read again the same way: nothing changed"
    );
}

#[tokio::test]
async fn a_page_token_holding_a_nul_escape_is_sent_back_as_the_api_wrote_it() {
    // `next_page` is opaque and bound to the query: whatever the page's JSON needed replaced for
    // Postgres, the token must go back unchanged, or the next page is refused on every pass.
    let db = TestDb::new().await;
    store::migrate(&db.pool).await.expect("migrations apply");
    let app = axum::Router::new().route(
        "/v1/organization/costs",
        axum::routing::get(
            |axum::extract::Query(query): axum::extract::Query<Vec<(String, String)>>| async move {
                let value = |name: &str| {
                    query
                        .iter()
                        .find(|(key, _)| key == name)
                        .map(|(_, value)| value.clone())
                };
                let time = |name: &str| {
                    value(name)
                        .and_then(|v| v.parse::<i64>().ok())
                        .expect("the pass names its window")
                };
                let (start, end) = (time("start_time"), time("end_time"));
                let bucket = |day: i64| {
                    format!(
                        r#"{{"object":"bucket","start_time":{day},"end_time":{},"results":[{{"object":"organization.costs.result","amount":{{"value":"0.5","currency":"usd"}},"line_item":"input","project_id":"proj_a"}}]}}"#,
                        day + 86_400
                    )
                };
                let json = [(axum::http::header::CONTENT_TYPE, "application/json")];
                let last = end - 86_400;
                match value("page").as_deref() {
                    None => {
                        let first: Vec<String> = (start..last).step_by(86_400).map(bucket).collect();
                        (
                            axum::http::StatusCode::OK,
                            json,
                            format!(
                                r#"{{"object":"page","data":[{}],"has_more":true,"next_page":"tok\u0000en"}}"#,
                                first.join(",")
                            ),
                        )
                    }
                    Some("tok\u{0}en") => (
                        axum::http::StatusCode::OK,
                        json,
                        format!(
                            r#"{{"object":"page","data":[{}],"has_more":false,"next_page":null}}"#,
                            bucket(last)
                        ),
                    ),
                    Some(_) => (
                        axum::http::StatusCode::BAD_REQUEST,
                        json,
                        r#"{"error":{"message":"Invalid page token","type":"invalid_request_error","param":"page","code":null}}"#.to_owned(),
                    ),
                }
            },
        ),
    );
    let deps = one_day_passes_against(&db, app).await;

    let outcome = costs::run_pass(&deps, Trigger::Manual, &CancellationToken::new()).await;

    assert!(outcome.is_ok(), "{outcome:?}");
    let (days,): (i64,) = sqlx::query_as("select count(distinct bucket_start) from openai.costs")
        .fetch_one(&db.pool)
        .await
        .expect("count");
    assert_eq!(days, 2, "yesterday and today, one a page");
}

#[tokio::test]
async fn a_server_that_starts_leaving_null_fields_out_of_cost_results_rewrites_no_row() {
    // The spec lets a server write an optional field as null or leave it out, as the walk
    // already allows for projects: the same result, so a re-read that finds it writes nothing.
    let f = fixture(6).await;
    let deps = f.costs(7, None);
    pass(&deps).await;
    let (with_nulls,): (i64,) =
        sqlx::query_as("select count(*) from openai.costs where raw::text like '%: null%'")
            .fetch_one(&f.db.pool)
            .await
            .expect("count");
    let before = snapshot(&f.db.pool).await;
    let mut freedoms = f.emulator.freedoms();
    freedoms.omit_nulls = true;
    f.emulator.set_freedoms(freedoms);

    let summary = pass(&deps).await;

    assert!(with_nulls > 0, "some stored result wrote a null field");
    assert_eq!(summary.counts.updated, 0, "{summary:?}");
    assert_eq!(snapshot(&f.db.pool).await, before, "no row rewritten");
}

#[tokio::test]
async fn bucket_times_written_as_whole_floats_are_read_as_the_same_seconds() {
    // JSON has one number type: `1787529600.0` is that integer to a JSON Schema, as the walk
    // already reads project times.
    let db = TestDb::new().await;
    store::migrate(&db.pool).await.expect("migrations apply");
    let deps = scripted_cost_passes(&db, |day| {
        format!(
            r#"{{"object":"bucket","start_time":{day}.0,"end_time":{}.0,"results":[{{"object":"organization.costs.result","amount":{{"value":0.25,"currency":"usd"}},"line_item":"input","project_id":"proj_a"}}]}}"#,
            day + 86_400
        )
    })
    .await;

    let outcome = costs::run_pass(&deps, Trigger::Manual, &CancellationToken::new()).await;

    assert!(outcome.is_ok(), "{outcome:?}");
    let (days,): (i64,) = sqlx::query_as("select count(distinct bucket_start) from openai.costs")
        .fetch_one(&db.pool)
        .await
        .expect("count");
    assert_eq!(days, 2);
}

#[tokio::test]
async fn a_current_day_that_ends_now_on_a_page_followed_by_an_empty_last_page_is_read_as_that_day_so_far()
 {
    // Two freedoms the spec leaves a server, together: the current day's bucket ends at the
    // moment of the answer, and `has_more` is true on a full page whose next page turns out
    // empty. Refused, today's bucket would fail every pass.
    let db = TestDb::new().await;
    store::migrate(&db.pool).await.expect("migrations apply");
    let app = axum::Router::new().route(
        "/v1/organization/costs",
        axum::routing::get(
            |axum::extract::Query(query): axum::extract::Query<Vec<(String, String)>>| async move {
                let value = |name: &str| {
                    query
                        .iter()
                        .find(|(key, _)| key == name)
                        .map(|(_, value)| value.clone())
                };
                let time = |name: &str| {
                    value(name)
                        .and_then(|v| v.parse::<i64>().ok())
                        .expect("the pass names its window")
                };
                let (start, end) = (time("start_time"), time("end_time"));
                let now = Utc::now().timestamp();
                let json = [(axum::http::header::CONTENT_TYPE, "application/json")];
                if value("page").is_some() {
                    return (
                        json,
                        r#"{"object":"page","data":[],"has_more":false,"next_page":null}"#
                            .to_owned(),
                    );
                }
                let buckets: Vec<String> = (start..end)
                    .step_by(86_400)
                    .map(|day| {
                        let bucket_end = if (day..day + 86_400).contains(&now) {
                            now
                        } else {
                            day + 86_400
                        };
                        format!(
                            r#"{{"object":"bucket","start_time":{day},"end_time":{bucket_end},"results":[{{"object":"organization.costs.result","amount":{{"value":"0.5","currency":"usd"}},"line_item":"input","project_id":"proj_a"}}]}}"#
                        )
                    })
                    .collect();
                (
                    json,
                    format!(
                        r#"{{"object":"page","data":[{}],"has_more":true,"next_page":"page_2"}}"#,
                        buckets.join(",")
                    ),
                )
            },
        ),
    );
    let deps = one_day_passes_against(&db, app).await;

    let outcome = costs::run_pass(&deps, Trigger::Manual, &CancellationToken::new()).await;

    assert!(outcome.is_ok(), "{outcome:?}");
    let (days,): (i64,) = sqlx::query_as("select count(distinct bucket_start) from openai.costs")
        .fetch_one(&db.pool)
        .await
        .expect("count");
    assert_eq!(days, 2, "yesterday and today so far");
}

#[tokio::test]
async fn a_bucket_shorter_than_a_day_before_the_querys_last_day_is_refused() {
    // Only the day in progress may end early, and it is the query's last day. A short bucket
    // on an earlier day, ending the answer, would record the days after it as read and empty.
    let app = axum::Router::new().route(
        "/v1/organization/costs",
        axum::routing::get(
            |axum::extract::Query(query): axum::extract::Query<Vec<(String, String)>>| async move {
                let start = query
                    .iter()
                    .find(|(key, _)| key == "start_time")
                    .and_then(|(_, value)| value.parse::<i64>().ok())
                    .expect("the query names its start");
                (
                    [(axum::http::header::CONTENT_TYPE, "application/json")],
                    format!(
                        r#"{{"object":"page","data":[{{"object":"bucket","start_time":{start},"end_time":{},"results":[]}}],"has_more":false,"next_page":null}}"#,
                        start + 3600
                    ),
                )
            },
        ),
    );
    let client = crate::client::serve_scripted(app).await;
    let mut walk = client.cost_pages(openai_project_sync::client::CostQuery {
        start_time: today() - DAY,
        end_time: today() + DAY,
        limit: 2,
    });

    let read = walk.next_page().await;

    assert!(
        matches!(
            read,
            Err(openai_project_sync::client::ApiError::Pagination { .. })
        ),
        "{read:?}"
    );
}

#[tokio::test]
async fn a_change_to_a_day_already_read_whole_after_it_ended_is_a_restatement_not_provisional() {
    // The daemon reads today every hour, so each day is first read while it fills up. A pass
    // after midnight that reads the ended day and finds it unchanged writes nothing; a figure
    // that changes days later is then a restatement of an ended day, whatever the row's last
    // write says. Finance's "what changed after the fact" query (`not provisional`) must show it.
    let days = ScriptedDays::default();
    let day = today() - 2 * DAY;
    let item = Some("gpt-5.4, input");
    days.lock().expect("days").insert(
        day,
        vec![
            scripted_result(Some("proj_a"), item, json!("1.00")),
            scripted_result(Some("proj_c"), item, json!("4")),
        ],
    );
    let (db, deps) = scripted_fixture(3, 3, &days).await;
    pass(&deps).await;
    // That first reading was taken at 23:00 on the day itself, while it was still filling up.
    read_only_while_filling_up(&db, day, 23).await;
    // After midnight the ended day reads the same: no cost row or revision is written (only,
    // once, that the day has been read after its end).
    let confirmed = pass(&deps).await;
    // Days later the API restates it: one figure changes, one row appears, one goes away.
    days.lock().expect("days").insert(
        day,
        vec![
            scripted_result(Some("proj_a"), item, json!("2")),
            scripted_result(Some("proj_b"), item, json!("3")),
        ],
    );
    let restated = pass(&deps).await;
    let revisions: Vec<(String, Option<String>, Option<String>, bool)> = sqlx::query_as(
        "select project_id, old_amount::text, new_amount::text, provisional from openai.cost_revisions \
         where bucket_start = to_timestamp($1) order by project_id",
    )
    .bind(day as f64)
    .fetch_all(&db.pool)
    .await
    .expect("revisions");

    assert_eq!(
        (confirmed.counts.updated, confirmed.counts.revisions),
        (0, 0)
    );
    assert_eq!(restated.counts.revisions, 3, "{restated:?}");
    assert_eq!(
        revisions,
        vec![
            ("proj_a".into(), Some("1".into()), Some("2".into()), false),
            ("proj_b".into(), None, Some("3".into()), false),
            ("proj_c".into(), Some("4".into()), None, false),
        ],
        "each change came after a pass had read the whole ended day"
    );
}

#[tokio::test]
async fn a_change_found_by_the_first_reading_of_a_day_after_it_ended_is_provisional() {
    // A day last read at 23:00 while it filled up: what the first reading after midnight finds
    // changed or added is the day's last hour, not a restatement. Only later changes are.
    let days = ScriptedDays::default();
    let day = today() - 2 * DAY;
    let item = Some("gpt-5.4, input");
    days.lock().expect("days").insert(
        day,
        vec![scripted_result(Some("proj_a"), item, json!("1.00"))],
    );
    let (db, deps) = scripted_fixture(3, 3, &days).await;
    pass(&deps).await;
    read_only_while_filling_up(&db, day, 23).await;
    // The day's last hour: proj_a spent more, proj_b started.
    days.lock().expect("days").insert(
        day,
        vec![
            scripted_result(Some("proj_a"), item, json!("1.5")),
            scripted_result(Some("proj_b"), item, json!("0.25")),
        ],
    );
    pass(&deps).await;
    // Days later, a restatement.
    days.lock().expect("days").insert(
        day,
        vec![
            scripted_result(Some("proj_a"), item, json!("1.25")),
            scripted_result(Some("proj_b"), item, json!("0.25")),
        ],
    );
    pass(&deps).await;
    let revisions: Vec<(String, Option<String>, Option<String>, bool)> = sqlx::query_as(
        "select project_id, old_amount::text, new_amount::text, provisional from openai.cost_revisions \
         where bucket_start = to_timestamp($1) order by id",
    )
    .bind(day as f64)
    .fetch_all(&db.pool)
    .await
    .expect("revisions");

    let mut found = revisions.clone();
    found[..2].sort();
    assert_eq!(
        found,
        vec![
            ("proj_a".into(), Some("1".into()), Some("1.5".into()), true),
            ("proj_b".into(), None, Some("0.25".into()), true),
            (
                "proj_a".into(),
                Some("1.5".into()),
                Some("1.25".into()),
                false
            ),
        ]
    );
}

/// A server that lists every day of a query on a first page (proj_a each) saying has_more,
/// and continues the query's last day on the next (proj_b): a day split across two pages.
fn last_day_continued_on_a_second_page() -> axum::Router {
    axum::Router::new().route(
        "/v1/organization/costs",
        axum::routing::get(
            |axum::extract::Query(query): axum::extract::Query<Vec<(String, String)>>| async move {
                let value = |name: &str| {
                    query
                        .iter()
                        .find(|(key, _)| key == name)
                        .map(|(_, value)| value.clone())
                };
                let time = |name: &str| {
                    value(name)
                        .and_then(|v| v.parse::<i64>().ok())
                        .expect("the pass names its window")
                };
                let (start, end) = (time("start_time"), time("end_time"));
                let bucket = |day: i64, project: &str| {
                    format!(
                        r#"{{"object":"bucket","start_time":{day},"end_time":{},"results":[{{"object":"organization.costs.result","amount":{{"value":"0.5","currency":"usd"}},"line_item":"input","project_id":"{project}"}}]}}"#,
                        day + 86_400
                    )
                };
                let json = [(axum::http::header::CONTENT_TYPE, "application/json")];
                let last = end - 86_400;
                match value("page") {
                    None => {
                        let first: Vec<String> =
                            (start..end).step_by(86_400).map(|d| bucket(d, "proj_a")).collect();
                        (
                            json,
                            format!(
                                r#"{{"object":"page","data":[{}],"has_more":true,"next_page":"page_2"}}"#,
                                first.join(",")
                            ),
                        )
                    }
                    Some(_) => (
                        json,
                        format!(
                            r#"{{"object":"page","data":[{}],"has_more":false,"next_page":null}}"#,
                            bucket(last, "proj_b")
                        ),
                    ),
                }
            },
        ),
    )
}

#[tokio::test]
async fn a_day_whose_results_continue_on_the_next_page_is_stored_whole() {
    // Nothing in the spec says a bucket appears on one page only: a server that caps a page by
    // results may list a busy day's first results at the end of one page and the rest in the
    // same bucket at the start of the next. Refused, that day would fail every pass.
    let db = TestDb::new().await;
    store::migrate(&db.pool).await.expect("migrations apply");
    let app = last_day_continued_on_a_second_page();
    let deps = one_day_passes_against(&db, app).await;

    let outcome = costs::run_pass(&deps, Trigger::Manual, &CancellationToken::new()).await;

    assert!(outcome.is_ok(), "{outcome:?}");
    let (rows,): (i64,) = sqlx::query_as("select count(*) from openai.costs")
        .fetch_one(&db.pool)
        .await
        .expect("count");
    // Yesterday and today (each its own query): proj_a from the first page, proj_b from the next.
    assert_eq!(rows, 4);
}

#[tokio::test]
async fn a_backfilled_day_whose_results_continue_on_the_next_page_is_stored_whole() {
    // Each backfill page is committed on its own: the first half of a split day must not be
    // written as the whole day and then removed when the second half is compared with it.
    let db = TestDb::new().await;
    store::migrate(&db.pool).await.expect("migrations apply");
    let deps = CostDeps {
        pool: db.pool.clone(),
        connect: db.url.parse().expect("test URL parses"),
        client: crate::client::serve_scripted(last_day_continued_on_a_second_page()).await,
        lookback_days: 0,
        backfill_from: Some(date(today() - 5 * DAY)),
    };

    let summary = pass(&deps).await;

    let (days_a, backfilled_b, revisions): (i64, i64, i64) = sqlx::query_as(
        "select (select count(distinct bucket_start) from openai.costs where project_id = 'proj_a'), \
                (select count(*) from openai.costs where project_id = 'proj_b' and bucket_start < $1), \
                (select count(*) from openai.cost_revisions)",
    )
    .bind(DateTime::from_timestamp(today(), 0).expect("time"))
    .fetch_one(&db.pool)
    .await
    .expect("counts");
    assert!(summary.backfilled_days == 5, "{summary:?}");
    assert_eq!(days_a, 6, "every day keeps its first page's result");
    assert!(backfilled_b > 0, "a backfilled day's second half is stored");
    assert_eq!(revisions, 0, "nothing was removed or restated");
}

#[tokio::test]
async fn a_day_last_read_while_it_was_filling_up_is_read_again_after_it_ended_even_past_the_lookback()
 {
    // The daemon read a day while it was in progress, then was down for longer than the
    // lookback (or runs with `lookback_days = 0`). That day is recorded as read, but what
    // was stored is its figure so far, not its total: it must be read once more now that it
    // has ended, or its last hours of spend are missing for good.
    let days = ScriptedDays::default();
    let day = today() - 5 * DAY;
    let item = Some("gpt-5.4, input");
    days.lock().expect("days").insert(
        day,
        vec![scripted_result(Some("proj_a"), item, json!("1.25"))],
    );
    let (db, deps) = scripted_fixture(2, 6, &days).await;
    pass(&deps).await;
    // As a pass at 10:00 on the day itself left it: read, with the day's figure so far.
    read_only_while_filling_up(&db, day, 10).await;
    // The rest of that day's spend, which the API has had ever since the day ended.
    days.lock().expect("days").insert(
        day,
        vec![scripted_result(Some("proj_a"), item, json!("3.75"))],
    );

    pass(&deps).await;

    let (amount,): (String,) =
        sqlx::query_as("select amount::text from openai.costs where bucket_start = $1")
            .bind(DateTime::from_timestamp(day, 0).expect("time"))
            .fetch_one(&db.pool)
            .await
            .expect("the day's row");
    assert_eq!(amount, "3.75", "the day's total, not its figure at 10:00");
}

/// Cost passes against a server whose yesterday lists one result of amount `odd` (a JSON
/// number, as written) beside an ordinary one; every other day one ordinary result.
async fn passes_with_one_odd_amount(db: &TestDb, odd: String) -> CostDeps {
    scripted_cost_passes(db, move |day| {
        let result = |project: &str, amount: &str| {
            format!(
                r#"{{"object":"organization.costs.result","amount":{{"value":{amount},"currency":"usd"}},"line_item":"input","project_id":"{project}"}}"#
            )
        };
        let results = if day == today() - DAY {
            format!("{},{}", result("proj_odd", &odd), result("proj_a", "0.5"))
        } else {
            result("proj_a", "0.5")
        };
        format!(
            r#"{{"object":"bucket","start_time":{day},"end_time":{},"results":[{results}]}}"#,
            day + 86_400
        )
    })
    .await
}

#[tokio::test]
async fn a_very_large_amount_postgres_holds_is_stored_exactly() {
    // `1e20000` is a JSON number and a `numeric` Postgres holds (it takes up to 131072 digits
    // before the point). Refused as out of range, it would fail every pass that reads its day.
    let db = TestDb::new().await;
    store::migrate(&db.pool).await.expect("migrations apply");
    let deps = passes_with_one_odd_amount(&db, "1e20000".into()).await;

    let outcome = costs::run_pass(&deps, Trigger::Manual, &CancellationToken::new()).await;

    assert!(outcome.is_ok(), "{outcome:?}");
    let (exact,): (bool,) = sqlx::query_as(
        "select amount = '1e20000'::numeric from openai.costs where project_id = 'proj_odd'",
    )
    .fetch_one(&db.pool)
    .await
    .expect("the row");
    assert!(exact);
}

#[tokio::test]
async fn an_amount_too_long_for_postgres_fails_no_pass_and_the_rest_of_its_day_is_stored() {
    // A valid JSON number with more fraction digits than a `numeric` holds (16383). It cannot
    // be stored exactly; failing the pass for it would fail every pass that reads its day.
    let db = TestDb::new().await;
    store::migrate(&db.pool).await.expect("migrations apply");
    let deps = passes_with_one_odd_amount(&db, format!("0.{}", "1".repeat(16_390))).await;

    let outcome = costs::run_pass(&deps, Trigger::Manual, &CancellationToken::new()).await;

    assert!(outcome.is_ok(), "{outcome:?}");
    let (ordinary,): (i64,) =
        sqlx::query_as("select count(*) from openai.costs where project_id = 'proj_a'")
            .fetch_one(&db.pool)
            .await
            .expect("count");
    assert_eq!(ordinary, 2, "yesterday's and today's ordinary results");
}

/// Makes the stored reading of `day` (unix seconds of its midnight) one taken `hours` into the
/// day itself, while it was still filling up: its rows and the day fetched then, and the day not
/// read since it ended.
async fn read_only_while_filling_up(db: &TestDb, day: i64, hours: i64) {
    let start = DateTime::from_timestamp(day, 0).expect("time");
    let then = DateTime::from_timestamp(day + hours * 3600, 0).expect("time");
    sqlx::query(
        "update openai.costs set first_fetched_at = $2, last_fetched_at = $2 where bucket_start = $1",
    )
    .bind(start)
    .bind(then)
    .execute(&db.pool)
    .await
    .expect("backdate rows");
    sqlx::query(
        "update openai.cost_days set first_read_at = $2, read_after_end_at = null \
         where bucket_start = $1",
    )
    .bind(start)
    .bind(then)
    .execute(&db.pool)
    .await
    .expect("backdate day");
}

/// A server that caps a page by results, one result a page, as the spec lets it: a busy day's
/// results spread over as many pages, each in the same bucket, every page followed by an empty
/// page that says `has_more`; days without spend are a bucket of their own.
async fn one_result_a_page_costs(days: ScriptedDays) -> openai_project_sync::client::AdminClient {
    use axum::extract::{Query, State};
    let app = axum::Router::new()
        .route(
            "/v1/organization/costs",
            axum::routing::get(
                |State(days): State<ScriptedDays>,
                 Query(q): Query<std::collections::HashMap<String, String>>| async move {
                    let start: i64 = q["start_time"].parse().expect("start");
                    let end: i64 = q["end_time"].parse().expect("end");
                    let days = days.lock().expect("days");
                    // Each slot: a day and one of its results (or none for a day without).
                    let slots: Vec<(i64, Option<Value>)> = (start..end)
                        .step_by(86_400)
                        .flat_map(|day| {
                            let results = days.get(&day).cloned().unwrap_or_default();
                            if results.is_empty() {
                                vec![(day, None)]
                            } else {
                                results.into_iter().map(|r| (day, Some(r))).collect()
                            }
                        })
                        .collect();
                    let (at, empty) = match q.get("page") {
                        None => (0, false),
                        Some(token) => {
                            let (kind, n) = token.split_at(1);
                            (n.parse::<usize>().expect("offset"), kind == "e")
                        }
                    };
                    if empty {
                        return axum::Json(json!({"object": "page", "data": [], "has_more": true,
                                                 "next_page": format!("p{at}")}));
                    }
                    let (day, result) = slots[at].clone();
                    let data = vec![
                        json!({"object": "bucket", "start_time": day, "end_time": day + DAY,
                                            "results": result.into_iter().collect::<Vec<_>>()}),
                    ];
                    let more = at + 1 < slots.len();
                    axum::Json(json!({"object": "page", "data": data, "has_more": more,
                                      "next_page": more.then(|| format!("e{}", at + 1))}))
                },
            ),
        )
        .with_state(days);
    crate::client::serve_scripted(app).await
}

#[tokio::test]
async fn every_day_a_server_spreads_one_result_a_page_is_stored_whole_and_a_re_run_writes_nothing()
{
    let days = ScriptedDays::default();
    {
        let mut d = days.lock().expect("days");
        for n in [6, 5, 3, 2, 1, 0] {
            let day = today() - n * DAY;
            let results = (0..(n % 4))
                .map(|i| {
                    scripted_result(
                        Some(&format!("proj_{i}")),
                        Some("input"),
                        json!(format!("{n}.{i}")),
                    )
                })
                .collect();
            d.insert(day, results);
        }
    }
    let db = TestDb::new().await;
    store::migrate(&db.pool).await.expect("migrations apply");
    let deps = CostDeps {
        pool: db.pool.clone(),
        connect: db.url.parse().expect("test URL parses"),
        client: one_result_a_page_costs(days.clone()).await,
        lookback_days: 2,
        backfill_from: Some(date(today() - 6 * DAY)),
    };

    pass(&deps).await;
    let stored = snapshot(&db.pool).await;
    let again = pass(&deps).await;

    let expected: i64 = [6i64, 5, 3, 2, 1, 0].iter().map(|n| n % 4).sum();
    let (rows,): (i64,) = sqlx::query_as("select count(*) from openai.costs")
        .fetch_one(&db.pool)
        .await
        .expect("count");
    assert_eq!(rows, expected, "every result of every day");
    assert_eq!(
        (
            again.counts.inserted,
            again.counts.updated,
            again.counts.removed,
            again.counts.revisions
        ),
        (0, 0, 0, 0)
    );
    assert_eq!(snapshot(&db.pool).await, stored, "the re-run wrote nothing");
    let (revisions,): (i64,) = sqlx::query_as("select count(*) from openai.cost_revisions")
        .fetch_one(&db.pool)
        .await
        .expect("count");
    assert_eq!(revisions, 0);
}
