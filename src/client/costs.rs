//! `GET /organization/costs`: daily cost buckets grouped by project and line item, with amounts
//! kept exactly as the API wrote them (a JSON number or a string, plain or scientific).

use reqwest::{Method, Url};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{AdminClient, ApiError};

/// Seconds in a UTC day, the only bucket width the API serves.
pub const DAY_SECONDS: i64 = 86_400;

/// The most buckets the API accepts as `limit`.
pub const MAX_COST_LIMIT: u32 = 180;

/// A decimal number as the API wrote it, checked to be one: an optional minus, digits, an
/// optional fraction and an optional exponent. Never passed through a float.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExactNumber(String);

/// Largest exponent magnitude accepted: beyond it Postgres `numeric` cannot hold the value.
const MAX_EXPONENT: i64 = 16_000;

impl ExactNumber {
    /// The text if it is a plain or scientific decimal number Postgres `numeric` can hold.
    pub fn parse(text: &str) -> Result<ExactNumber, String> {
        let bytes = text.as_bytes();
        let mut at = 0;
        if bytes.first() == Some(&b'-') {
            at += 1;
        }
        let digits = |from: usize| {
            bytes[from..]
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .count()
        };
        let integer = digits(at);
        if integer == 0 {
            return Err(format!("{text:?} is not a decimal number"));
        }
        at += integer;
        if bytes.get(at) == Some(&b'.') {
            let fraction = digits(at + 1);
            if fraction == 0 {
                return Err(format!("{text:?} is not a decimal number"));
            }
            at += 1 + fraction;
        }
        if matches!(bytes.get(at), Some(b'e' | b'E')) {
            let sign = usize::from(matches!(bytes.get(at + 1), Some(b'+' | b'-')));
            let exponent = digits(at + 1 + sign);
            if exponent == 0 {
                return Err(format!("{text:?} is not a decimal number"));
            }
            let value: i64 = text[at + 1..at + 1 + sign + exponent]
                .parse()
                .map_err(|_| format!("{text:?} has an exponent out of range"))?;
            if !(-MAX_EXPONENT..=MAX_EXPONENT).contains(&value) {
                return Err(format!("{text:?} has an exponent out of range"));
            }
            at += 1 + sign + exponent;
        }
        if at != bytes.len() {
            return Err(format!("{text:?} is not a decimal number"));
        }
        Ok(ExactNumber(text.to_owned()))
    }

    /// A JSON value holding a number or a numeric string; `None` for null.
    fn from_json(raw: &RawValue) -> Result<Option<ExactNumber>, String> {
        let text = raw.get().trim();
        if text == "null" {
            return Ok(None);
        }
        if text.starts_with('"') {
            let inner: String = serde_json::from_str(text).map_err(|e| e.to_string())?;
            return ExactNumber::parse(inner.trim()).map(Some);
        }
        ExactNumber::parse(text).map(Some)
    }

    /// The number's text, exactly as the API wrote it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// One query of the Costs API: a fixed window so `next_page` tokens stay valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CostQuery {
    /// Inclusive start, unix seconds (a UTC midnight).
    pub start_time: i64,
    /// Exclusive end, unix seconds (a UTC midnight).
    pub end_time: i64,
    /// Buckets asked for per page, 1 to 180; the API may answer fewer.
    pub limit: u32,
}

/// One cost result: a day's amount for a project and line item (either may be null).
#[derive(Debug, Clone)]
pub struct CostResult {
    pub project_id: Option<String>,
    pub line_item: Option<String>,
    pub amount: ExactNumber,
    pub currency: Option<String>,
    pub quantity: Option<ExactNumber>,
    pub quantity_unit: Option<String>,
    /// The result object exactly as received.
    pub raw: Box<RawValue>,
}

/// One daily bucket and its results.
#[derive(Debug, Clone)]
pub struct CostBucket {
    pub start_time: i64,
    pub end_time: i64,
    pub results: Vec<CostResult>,
}

/// One page of a cost query, checked: whole UTC days, ascending, inside the query's window.
#[derive(Debug, Clone)]
pub struct CostPage {
    pub buckets: Vec<CostBucket>,
    /// Results left out because they carried no amount (never stored as 0).
    pub without_amount: u64,
    /// The days this page answers for: from where the last page ended to its last bucket's
    /// end, or to the query's end on the last page.
    pub covers: (i64, i64),
}

#[derive(Deserialize)]
struct PageBody<'a> {
    #[serde(borrow)]
    data: Vec<BucketBody<'a>>,
    has_more: bool,
    #[serde(default)]
    next_page: Option<String>,
}

#[derive(Deserialize)]
struct BucketBody<'a> {
    start_time: i64,
    end_time: i64,
    #[serde(borrow, default)]
    results: Vec<&'a RawValue>,
}

#[derive(Deserialize)]
struct ResultFields<'a> {
    #[serde(default)]
    project_id: Option<String>,
    #[serde(default)]
    line_item: Option<String>,
    #[serde(borrow, default)]
    amount: Option<AmountFields<'a>>,
    #[serde(borrow, default)]
    quantity: Option<&'a RawValue>,
    #[serde(default)]
    quantity_unit: Option<String>,
}

#[derive(Deserialize)]
struct AmountFields<'a> {
    #[serde(borrow, default)]
    value: Option<&'a RawValue>,
    #[serde(default)]
    currency: Option<String>,
}

impl AdminClient {
    /// Starts reading every page of `query`.
    pub fn cost_pages(&self, query: CostQuery) -> CostWalk {
        CostWalk {
            client: self.clone(),
            cursor: query.start_time,
            query,
            next_page: None,
            tokens_seen: Default::default(),
            pages: 0,
            done: false,
        }
    }

    fn costs_url(&self, query: &CostQuery, page: Option<&str>) -> Url {
        let mut url = self.url(&["organization", "costs"]);
        {
            let mut pairs = url.query_pairs_mut();
            pairs.append_pair("start_time", &query.start_time.to_string());
            pairs.append_pair("end_time", &query.end_time.to_string());
            pairs.append_pair("bucket_width", "1d");
            pairs.append_pair("group_by[]", "project_id");
            pairs.append_pair("group_by[]", "line_item");
            pairs.append_pair("limit", &query.limit.to_string());
            if let Some(page) = page {
                pairs.append_pair("page", page);
            }
        }
        url
    }
}

/// A cursor over the pages of one cost query, refusing pagination that would loop or stop early.
#[derive(Debug)]
pub struct CostWalk {
    client: AdminClient,
    query: CostQuery,
    next_page: Option<String>,
    tokens_seen: std::collections::HashSet<String>,
    /// Where the next bucket may start: the end of the last one.
    cursor: i64,
    pages: u64,
    done: bool,
}

impl CostWalk {
    /// Fetches the next page, or `None` once the API said there is no more.
    pub async fn next_page(&mut self) -> Result<Option<CostPage>, ApiError> {
        if self.done {
            return Ok(None);
        }
        let url = self
            .client
            .costs_url(&self.query, self.next_page.as_deref());
        let body: bytes::Bytes = self
            .client
            .call_retrying_raw("costs", Method::GET, url)
            .await?;
        self.pages += 1;
        let page = match self.read(&body) {
            Ok(page) => page,
            Err(error) => {
                self.done = true;
                return Err(error);
            }
        };
        Ok(Some(page))
    }

    /// How many pages have been fetched so far.
    pub fn pages(&self) -> u64 {
        self.pages
    }

    fn broken(&self, problem: String) -> ApiError {
        ApiError::Pagination {
            page: self.pages,
            problem,
        }
    }

    fn read(&mut self, body: &[u8]) -> Result<CostPage, ApiError> {
        let decode = |message: String| ApiError::Decode {
            message,
            request_id: None,
        };
        let parsed: PageBody<'_> = serde_json::from_slice(body)
            .map_err(|e| decode(format!("the costs page is not the documented shape: {e}")))?;
        let from = self.cursor;
        let mut buckets = Vec::with_capacity(parsed.data.len());
        let mut without_amount = 0u64;
        for bucket in parsed.data {
            if bucket.start_time < self.cursor
                || bucket.end_time > self.query.end_time
                || bucket.end_time.checked_sub(bucket.start_time) != Some(DAY_SECONDS)
                || bucket.start_time.rem_euclid(DAY_SECONDS) != 0
            {
                return Err(self.broken(format!(
                    "bucket [{}, {}) is not a UTC day after {} inside the query's [{}, {})",
                    bucket.start_time,
                    bucket.end_time,
                    self.cursor,
                    self.query.start_time,
                    self.query.end_time
                )));
            }
            self.cursor = bucket.end_time;
            let mut results = Vec::with_capacity(bucket.results.len());
            for raw in bucket.results {
                let fields: ResultFields<'_> = serde_json::from_str(raw.get()).map_err(|e| {
                    decode(format!("a cost result is not the documented shape: {e}"))
                })?;
                let (value, currency) = match fields.amount {
                    Some(AmountFields {
                        value: Some(value),
                        currency,
                    }) => (value, currency),
                    _ => {
                        without_amount += 1;
                        continue;
                    }
                };
                let Some(amount) = ExactNumber::from_json(value)
                    .map_err(|e| decode(format!("a cost amount is not a number: {e}")))?
                else {
                    without_amount += 1;
                    continue;
                };
                let quantity = match fields.quantity {
                    Some(q) => ExactNumber::from_json(q)
                        .map_err(|e| decode(format!("a cost quantity is not a number: {e}")))?,
                    None => None,
                };
                results.push(CostResult {
                    project_id: fields.project_id,
                    line_item: fields.line_item,
                    amount,
                    currency,
                    quantity,
                    quantity_unit: fields.quantity_unit,
                    raw: raw.to_owned(),
                });
            }
            buckets.push(CostBucket {
                start_time: bucket.start_time,
                end_time: bucket.end_time,
                results,
            });
        }
        if !parsed.has_more {
            self.done = true;
            self.cursor = self.query.end_time;
            return Ok(CostPage {
                buckets,
                without_amount,
                covers: (from, self.query.end_time),
            });
        }
        let Some(token) = parsed.next_page.filter(|t| !t.is_empty()) else {
            self.done = true;
            return Err(self.broken("the API said has_more but gave no next_page".into()));
        };
        if !self.tokens_seen.insert(token.clone()) {
            self.done = true;
            return Err(self.broken(format!(
                "page token {token} came back a second time; the walk would loop"
            )));
        }
        self.next_page = Some(token);
        Ok(CostPage {
            buckets,
            without_amount,
            covers: (from, self.cursor),
        })
    }
}
