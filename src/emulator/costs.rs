//! The emulated `GET /v1/organization/costs`: daily buckets of every project's costs, generated
//! from the seed one page at a time (never the whole history at once), and a control to restate
//! a past day.
//!
//! Faithful to what is known of the wire: at most 31 buckets a page whatever `limit` says, 400
//! above 180, `next_page` tokens bound to their exact query, amounts as numbers or strings
//! (`Freedoms::cost_amounts`), scientific notation and long decimals now and then, results with
//! a null `project_id` or `line_item` (organization-level cost), quiet days with `results: []`.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::Arc;

use axum::Extension;
use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::{Deserialize, Serialize};

use super::faults::Endpoint;
use super::freedoms::{CostAmountForm, Freedoms};
use super::routes::{answered_early, deliver, intercept, invalid, json_body};
use super::{ConnectionKill, Shared};

/// Seconds in a UTC day.
const DAY: i64 = 86_400;
/// The most buckets the real API puts on one page, whatever `limit` asks for.
const API_PAGE_BUCKETS: usize = 31;
/// The largest `limit` accepted.
const MAX_LIMIT: i64 = 180;
/// The default `limit` when none is given.
const DEFAULT_LIMIT: i64 = 7;

/// Line items a project spends on; free text with commas and colons, as the wire has them.
const LINE_ITEMS: [&str; 8] = [
    "gpt-5.4-2026-03-05, input",
    "gpt-5.4-2026-03-05, cached input",
    "gpt-5.4-2026-03-05, output",
    "gpt-4.1-mini, input",
    "gpt-4.1-mini, output",
    "web search tool calls",
    "Image models",
    "file search: storage",
];

/// A change to a past day's figures, as `POST /_emulator/costs/restate` takes it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Restatement {
    /// The day's bucket start, unix seconds (any time within the day will do).
    pub day: i64,
    /// Only this project's rows (`null` for every row of the day).
    #[serde(default)]
    pub project_id: Option<String>,
    /// Instead of new figures, the project no longer lists this line item on that day.
    #[serde(default)]
    pub remove_line_item: Option<String>,
    /// Instead of new figures, the whole day answers `results: []`; `false` brings it back.
    #[serde(default)]
    pub empty: Option<bool>,
}

/// One cost result as the emulator serves it, for tests to compare with what was stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmulatedCost {
    pub bucket_start: i64,
    pub project_id: Option<String>,
    pub line_item: Option<String>,
    /// The amount's text as written (number or string alike); `None` when served without one.
    pub amount: Option<String>,
    pub quantity: Option<u64>,
}

/// Restatements so far; everything else follows from the seed.
#[derive(Debug, Default)]
pub(super) struct CostBook {
    /// Revision of a day's figures, for one project or (`None`) the whole day.
    revisions: HashMap<(i64, Option<String>), u32>,
    /// (day, project, line item) no longer listed.
    removed: HashSet<(i64, String, String)>,
    /// Days that answer `results: []` whatever was spent.
    emptied: HashSet<i64>,
}

impl CostBook {
    pub(super) fn restate(&mut self, restatement: Restatement) {
        let day = restatement.day.div_euclid(DAY) * DAY;
        if let Some(empty) = restatement.empty {
            if empty {
                self.emptied.insert(day);
            } else {
                self.emptied.remove(&day);
            }
            return;
        }
        if let (Some(project), Some(item)) =
            (&restatement.project_id, &restatement.remove_line_item)
        {
            self.removed.insert((day, project.clone(), item.clone()));
            return;
        }
        *self
            .revisions
            .entry((day, restatement.project_id))
            .or_insert(0) += 1;
    }
}

/// What of a project decides its costs: its id and the days it existed.
pub(super) struct CostProject {
    id: String,
    hash: u64,
    first_day: i64,
    last_day: Option<i64>,
}

/// The first day with costs: `cost_days` before today.
fn history_start(shared: &Shared) -> i64 {
    let today = chrono::Utc::now().timestamp().div_euclid(DAY) * DAY;
    today - i64::from(shared.cost_days) * DAY
}

/// The projects spending between `first_day` and `last_day`, from the store as it is now.
fn spending_projects(shared: &Shared, first_day: i64, last_day: i64) -> Vec<CostProject> {
    let history = history_start(shared);
    if last_day < history {
        return Vec::new();
    }
    let store = shared.store();
    store
        .all()
        .iter()
        .filter_map(|p| {
            let created = p.created_at.div_euclid(DAY) * DAY;
            let archived = p.archived_at.map(|at| at.div_euclid(DAY) * DAY);
            (created <= last_day && archived.is_none_or(|a| a >= first_day)).then(|| CostProject {
                hash: fnv(p.id.as_bytes()),
                id: p.id.clone(),
                first_day: created.max(history),
                last_day: archived,
            })
        })
        .collect()
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A well-mixed 64-bit value of its inputs (splitmix64 steps).
fn mix(parts: &[u64]) -> u64 {
    let mut h: u64 = 0x9e37_79b9_7f4a_7c15;
    for &part in parts {
        h = (h ^ part).wrapping_add(0x9e37_79b9_7f4a_7c15);
        h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        h ^= h >> 31;
    }
    h
}

fn day_key(day: i64) -> u64 {
    u64::from_ne_bytes(day.to_ne_bytes())
}

/// A day's generator: the seed, the restatements and the freedoms in force.
struct DayCosts<'a> {
    seed: u64,
    /// The first day with costs.
    history: i64,
    book: &'a CostBook,
    without_amount: bool,
}

impl DayCosts<'_> {
    /// Whether the organization spent nothing at all that day (or the day was emptied).
    fn quiet(&self, day: i64) -> bool {
        day < self.history
            || self.book.emptied.contains(&day)
            || mix(&[self.seed, day_key(day), 7]).is_multiple_of(13)
    }

    fn revision(&self, day: i64, project: Option<&str>) -> u32 {
        let whole = self.book.revisions.get(&(day, None)).copied().unwrap_or(0);
        let own = project
            .and_then(|p| self.book.revisions.get(&(day, Some(p.to_owned()))).copied())
            .unwrap_or(0);
        whole + own
    }

    /// Every result of `day`, in a fixed order: each project's line items, then the
    /// organization-level rows.
    fn each(&self, day: i64, projects: &[CostProject], mut emit: impl FnMut(EmulatedCost)) {
        if self.quiet(day) {
            return;
        }
        let d = day_key(day);
        for project in projects {
            if project.first_day > day || project.last_day.is_some_and(|last| last < day) {
                continue;
            }
            let revision = self.revision(day, Some(&project.id));
            let r = mix(&[self.seed, d, project.hash]);
            let count = 3 + usize::try_from(r % 5).unwrap_or(0);
            let offset = usize::try_from((r >> 8) % 8).unwrap_or(0);
            for n in 0..count {
                let slot = (offset + n) % LINE_ITEMS.len();
                let item = LINE_ITEMS[slot];
                if self
                    .book
                    .removed
                    .contains(&(day, project.id.clone(), item.to_owned()))
                {
                    continue;
                }
                let r = mix(&[self.seed, d, project.hash, slot as u64, u64::from(revision)]);
                emit(self.result(day, Some(project.id.clone()), Some(item), r));
            }
        }
        let revision = u64::from(self.revision(day, None));
        let r = mix(&[self.seed, d, 1, revision]);
        emit(self.result(day, None, Some("web search tool calls"), r));
        if r.is_multiple_of(3) {
            let r = mix(&[self.seed, d, 2, revision]);
            emit(self.result(day, None, None, r));
        }
    }

    fn result(
        &self,
        day: i64,
        project_id: Option<String>,
        line_item: Option<&str>,
        r: u64,
    ) -> EmulatedCost {
        let amount = (!(self.without_amount && r % 97 == 5)).then(|| amount_text(r));
        let quantity = line_item.map(|_| (r >> 33) % 2_000_000);
        EmulatedCost {
            bucket_start: day,
            project_id,
            line_item: line_item.map(str::to_owned),
            amount,
            quantity,
        }
    }
}

/// A dollar amount's text: mostly plain, sometimes zero, long, or in scientific notation.
fn amount_text(r: u64) -> String {
    match r % 29 {
        0 => "0E-6176".to_owned(),
        1 => "0.000000".to_owned(),
        2 | 3 => format!(
            "{}.{:018}{:09}",
            (r >> 7) % 3,
            (r >> 11) % 1_000_000_000_000_000_000,
            (r >> 3) % 1_000_000_000
        ),
        4 | 5 => format!(
            "{}.{:06}E-{}",
            1 + (r >> 9) % 9,
            (r >> 17) % 1_000_000,
            2 + (r >> 5) % 4
        ),
        6 => format!("{}E+1", 1 + (r >> 9) % 9),
        _ => format!("{}.{:06}", (r >> 9) % 40, (r >> 21) % 1_000_000),
    }
}

/// Appends one result's JSON as the server writes it.
fn write_result(body: &mut String, cost: &EmulatedCost, freedoms: &Freedoms, r: u64) {
    let omit = freedoms.omit_nulls;
    let text = |s: &str| serde_json::to_string(s).unwrap_or_else(|_| "null".to_owned());
    body.push_str("{\"object\":\"organization.costs.result\"");
    if let Some(amount) = &cost.amount {
        let quoted = match freedoms.cost_amounts {
            CostAmountForm::Number => false,
            CostAmountForm::String => true,
            CostAmountForm::Mixed => r.is_multiple_of(2),
        };
        if quoted {
            let _ = write!(
                body,
                ",\"amount\":{{\"value\":\"{amount}\",\"currency\":\"usd\"}}"
            );
        } else {
            let _ = write!(
                body,
                ",\"amount\":{{\"value\":{amount},\"currency\":\"usd\"}}"
            );
        }
    }
    let mut optional = |key: &str, value: Option<String>| match value {
        Some(v) => {
            let _ = write!(body, ",\"{key}\":{v}");
        }
        None if !omit => {
            let _ = write!(body, ",\"{key}\":null");
        }
        None => {}
    };
    optional("line_item", cost.line_item.as_deref().map(text));
    optional("project_id", cost.project_id.as_deref().map(text));
    optional("quantity", cost.quantity.map(|q| q.to_string()));
    let unit = match cost.line_item.as_deref() {
        Some("web search tool calls") | None => None,
        Some("file search: storage") => Some("\"gibibyte_hours\"".to_owned()),
        Some(_) => Some("\"tokens\"".to_owned()),
    };
    optional("quantity_unit", unit);
    body.push_str(",\"organization_id\":\"org-emulated0000000000000000\"");
    if freedoms.unknown_fields {
        body.push_str(",\"service_tier\":\"default\"");
    }
    body.push('}');
}

/// The query a page token is bound to: every parameter but `page`, in a canonical form.
fn fingerprint(pairs: &[(String, String)]) -> u64 {
    let mut canonical: Vec<String> = pairs
        .iter()
        .filter(|(k, _)| k != "page")
        .map(|(k, v)| format!("{}={v}", k.trim_end_matches("[]")))
        .collect();
    canonical.sort();
    fnv(canonical.join("&").as_bytes())
}

fn token(fingerprint: u64, next_day: i64) -> String {
    format!("page_{fingerprint:016x}{:012x}", next_day.max(0))
}

fn read_token(text: &str) -> Option<(u64, i64)> {
    let hex = text.strip_prefix("page_")?;
    if hex.len() != 28 {
        return None;
    }
    let print = u64::from_str_radix(hex.get(..16)?, 16).ok()?;
    let next = i64::from_str_radix(hex.get(16..)?, 16).ok()?;
    Some((print, next))
}

/// What a costs query asks for, checked.
struct CostAsk {
    first_day: i64,
    end: i64,
    limit: usize,
    cursor: i64,
    fingerprint: u64,
}

// A refusal is the response itself, answered once per call.
#[allow(clippy::result_large_err)]
fn parse_ask(pairs: &[(String, String)], now: i64) -> Result<CostAsk, Response> {
    let one = |name: &str| {
        pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let integer = |name: &'static str| -> Result<Option<i64>, Response> {
        match one(name) {
            None => Ok(None),
            Some(v) => v.parse::<i64>().map(Some).map_err(|_| {
                invalid(
                    &format!("Invalid '{name}': expected an integer."),
                    Some(name),
                    Some("invalid_type"),
                )
            }),
        }
    };
    let Some(start_time) = integer("start_time")? else {
        return Err(invalid(
            "Missing required parameter: 'start_time'.",
            Some("start_time"),
            None,
        ));
    };
    let end_time = integer("end_time")?;
    if start_time < 0 || end_time.is_some_and(|end| end <= start_time) {
        return Err(invalid(
            "Invalid time range: 'end_time' must be after 'start_time'.",
            Some("end_time"),
            None,
        ));
    }
    if let Some(width) = one("bucket_width")
        && width != "1d"
    {
        return Err(invalid(
            &format!("Invalid bucket_width '{width}'. Currently only '1d' is supported."),
            Some("bucket_width"),
            None,
        ));
    }
    let limit = integer("limit")?.unwrap_or(DEFAULT_LIMIT);
    if limit > MAX_LIMIT {
        return Err(invalid(
            &format!(
                "Invalid limit provided: {limit}. Limit must be less than or equal to {MAX_LIMIT}."
            ),
            Some("limit"),
            None,
        ));
    }
    if limit < 1 {
        return Err(invalid(
            &format!("Invalid limit provided: {limit}. Limit must be greater than or equal to 1."),
            Some("limit"),
            None,
        ));
    }
    let groups: HashSet<&str> = pairs
        .iter()
        .filter(|(k, _)| k == "group_by" || k == "group_by[]")
        .map(|(_, v)| v.as_str())
        .collect();
    if let Some(bad) = groups
        .iter()
        .find(|g| !["project_id", "line_item", "api_key_id", "user_id"].contains(g))
    {
        return Err(invalid(
            &format!(
                "Invalid group_by '{bad}': must be one of project_id, line_item, api_key_id, user_id."
            ),
            Some("group_by"),
            None,
        ));
    }
    if groups != HashSet::from(["project_id", "line_item"]) {
        return Err(invalid(
            "This emulator serves costs grouped by exactly project_id and line_item.",
            Some("group_by"),
            None,
        ));
    }
    let first_day = start_time.div_euclid(DAY) * DAY;
    // Buckets exist up to the current day; a window ending later stops there.
    let today = now.div_euclid(DAY) * DAY;
    let end = end_time.unwrap_or(now).min(today + DAY);
    let print = fingerprint(pairs);
    let cursor = match one("page") {
        None => first_day,
        Some(page) => match read_token(page) {
            Some((p, next)) if p == print && next >= first_day => next,
            _ => {
                return Err(invalid(
                    "Invalid 'page': the token does not belong to this query.",
                    Some("page"),
                    None,
                ));
            }
        },
    };
    Ok(CostAsk {
        first_day,
        end,
        limit: usize::try_from(limit).unwrap_or(1),
        cursor,
        fingerprint: print,
    })
}

pub(super) async fn list_costs(
    State(shared): State<Arc<Shared>>,
    Extension(kill): Extension<ConnectionKill>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Response {
    let fault = intercept(&shared, Endpoint::Costs, &kill).await;
    if let Some(early) = answered_early(&shared, &fault) {
        return early;
    }
    let now = chrono::Utc::now().timestamp();
    let ask = match parse_ask(&pairs, now) {
        Ok(ask) => ask,
        Err(refused) => return refused,
    };
    if fault == Some(super::faults::Fault::EmptyPageWithMore) {
        // A page that says there is more but gives no token to get it.
        return json_body(
            r#"{"object":"page","data":[],"has_more":true,"next_page":null}"#.to_owned(),
        );
    }
    let freedoms = shared.store().freedoms().clone();
    let per_page = ask.limit.min(API_PAGE_BUCKETS).min(
        freedoms
            .cost_page_buckets
            .unwrap_or(API_PAGE_BUCKETS)
            .max(1),
    );
    let mut days = Vec::with_capacity(per_page);
    let mut day = ask.cursor.max(ask.first_day);
    while day < ask.end && days.len() < per_page {
        days.push(day);
        day += DAY;
    }
    let has_more = day < ask.end;
    let body = match (days.first(), days.last()) {
        (Some(&first), Some(&last)) => {
            let projects = spending_projects(&shared, first, last);
            let book = shared.costs.lock().unwrap_or_else(|e| e.into_inner());
            let generator = DayCosts {
                seed: shared.seed,
                history: history_start(&shared),
                book: &book,
                without_amount: freedoms.cost_results_without_amount,
            };
            page_body(
                &generator,
                &days,
                &projects,
                &freedoms,
                has_more.then(|| token(ask.fingerprint, day)),
                now,
            )
        }
        _ => page_body(
            &DayCosts {
                seed: shared.seed,
                history: 0,
                book: &CostBook::default(),
                without_amount: false,
            },
            &[],
            &[],
            &freedoms,
            None,
            now,
        ),
    };
    deliver(&shared, fault, &kill, json_body(body)).await
}

fn page_body(
    generator: &DayCosts<'_>,
    days: &[i64],
    projects: &[CostProject],
    freedoms: &Freedoms,
    next_page: Option<String>,
    now: i64,
) -> String {
    let mut body = String::with_capacity(64 + days.len() * (96 + projects.len() * 5 * 230));
    body.push_str("{\"object\":\"page\",\"data\":[");
    for (n, &day) in days.iter().enumerate() {
        if n > 0 {
            body.push(',');
        }
        // The day still running ends now under that freedom, a second in at the least.
        let end = if freedoms.cost_today_ends_now && (day..day + DAY).contains(&now) {
            now.max(day + 1)
        } else {
            day + DAY
        };
        let _ = write!(
            body,
            "{{\"object\":\"bucket\",\"start_time\":{day},\"end_time\":{end},\"results\":["
        );
        let mut first = true;
        let mut row = 0u64;
        generator.each(day, projects, |cost| {
            if !first {
                body.push(',');
            }
            first = false;
            row += 1;
            write_result(&mut body, &cost, freedoms, mix(&[day_key(day), row]));
        });
        body.push_str("]}");
    }
    let _ = write!(
        body,
        "],\"has_more\":{},\"next_page\":{}}}",
        next_page.is_some(),
        next_page.map_or("null".to_owned(), |t| format!("\"{t}\""))
    );
    body
}

/// `POST /_emulator/costs/restate`: changes a past day's figures from now on.
pub(super) async fn restate(
    State(shared): State<Arc<Shared>>,
    Json(restatement): Json<Restatement>,
) -> StatusCode {
    shared
        .costs
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .restate(restatement);
    StatusCode::NO_CONTENT
}

/// Every result the emulator serves now for the days in `[from, until)`, in serving order.
pub(super) fn cost_rows(shared: &Shared, from: i64, until: i64) -> Vec<EmulatedCost> {
    let first = from.div_euclid(DAY) * DAY;
    let today = chrono::Utc::now().timestamp().div_euclid(DAY) * DAY;
    let last = until.min(today + DAY) - DAY;
    let without_amount = shared.store().freedoms().cost_results_without_amount;
    let projects = spending_projects(shared, first, last);
    let book = shared.costs.lock().unwrap_or_else(|e| e.into_inner());
    let generator = DayCosts {
        seed: shared.seed,
        history: history_start(shared),
        book: &book,
        without_amount,
    };
    let mut rows = Vec::new();
    let mut day = first;
    while day <= last {
        generator.each(day, &projects, |cost| rows.push(cost));
        day += DAY;
    }
    rows
}
