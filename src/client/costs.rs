//! `GET /organization/costs`: daily cost buckets grouped by project and line item, with amounts
//! kept exactly as the API wrote them (a JSON number or a string, plain or scientific).

use std::borrow::Cow;

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

/// Most digits a Postgres `numeric` holds before the decimal point.
const NUMERIC_INTEGER_DIGITS: i64 = 131_072;

/// Most digits a Postgres `numeric` holds after the decimal point (its largest display scale,
/// counting the fraction's trailing zeros as written).
const NUMERIC_FRACTION_DIGITS: i64 = 16_383;

/// Postgres refuses an exponent of this magnitude or more whatever its digits, zero's too.
const NUMERIC_EXPONENT_LIMIT: i64 = 1_073_741_823;

/// Whether a decimal number is one Postgres `numeric` holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Range {
    Holds,
    /// A decimal number all the same, with more digits before or after the point than
    /// `numeric` holds: it cannot be stored exactly.
    Beyond,
}

impl ExactNumber {
    /// The text if it is a plain or scientific decimal number Postgres `numeric` can hold.
    pub fn parse(text: &str) -> Result<ExactNumber, String> {
        match check_number(text)? {
            Range::Holds => Ok(ExactNumber(text.to_owned())),
            Range::Beyond => Err(beyond_numeric(text)),
        }
    }

    /// The number's text, exactly as the API wrote it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn beyond_numeric(text: &str) -> String {
    format!(
        "{text:?} has more digits than Postgres numeric holds ({NUMERIC_INTEGER_DIGITS} before the point, {NUMERIC_FRACTION_DIGITS} after)"
    )
}

/// Whether `text` is a plain or scientific decimal number, and whether Postgres `numeric`
/// holds it: its digits before the point, leading zeros aside, and after it, as written,
/// once the exponent has moved the point.
fn check_number(text: &str) -> Result<Range, String> {
    let not_a_number = || format!("{text:?} is not a decimal number");
    let bytes = text.as_bytes();
    let mut at = 0;
    if bytes.first() == Some(&b'-') {
        at += 1;
    }
    let digits = |from: usize| {
        bytes
            .get(from..)
            .unwrap_or_default()
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count()
    };
    let integer = digits(at);
    if integer == 0 {
        return Err(not_a_number());
    }
    let mantissa_from = at;
    at += integer;
    let mut fraction = 0;
    if bytes.get(at) == Some(&b'.') {
        fraction = digits(at + 1);
        if fraction == 0 {
            return Err(not_a_number());
        }
        at += 1 + fraction;
    }
    let mantissa = bytes.get(mantissa_from..at).unwrap_or_default();
    // `None`: beyond an i64, so beyond what Postgres takes.
    let mut exponent = Some(0i64);
    if matches!(bytes.get(at), Some(b'e' | b'E')) {
        let sign = usize::from(matches!(bytes.get(at + 1), Some(b'+' | b'-')));
        let written = digits(at + 1 + sign);
        if written == 0 {
            return Err(not_a_number());
        }
        exponent = text
            .get(at + 1..at + 1 + sign + written)
            .and_then(|e| e.parse().ok());
        at += 1 + sign + written;
    }
    if at != bytes.len() {
        return Err(not_a_number());
    }
    let Some(exponent) =
        exponent.filter(|e| (1 - NUMERIC_EXPONENT_LIMIT..NUMERIC_EXPONENT_LIMIT).contains(e))
    else {
        return Ok(Range::Beyond);
    };
    // Lengths of a page's text, far below an i64's range.
    let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
    let leading_zeros = mantissa
        .iter()
        .filter(|&&b| b != b'.')
        .take_while(|&&b| b == b'0')
        .count();
    let is_zero = leading_zeros == integer + fraction;
    let after_point = count(fraction).saturating_sub(exponent).max(0);
    let before_point = count(integer)
        .saturating_add(exponent)
        .saturating_sub(count(leading_zeros));
    if after_point > NUMERIC_FRACTION_DIGITS || (!is_zero && before_point > NUMERIC_INTEGER_DIGITS)
    {
        Ok(Range::Beyond)
    } else {
        Ok(Range::Holds)
    }
}

/// The text of a JSON value holding a number or a numeric string, checked, with whether
/// Postgres `numeric` holds it; `None` for null.
fn number_text(raw: &RawValue) -> Result<Option<(&str, Range)>, String> {
    let text = raw.get().trim();
    if text == "null" {
        return Ok(None);
    }
    let number = match text.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
        // A numeric string has no escapes; one with any is no number.
        Some(inner) => inner.trim(),
        None => text,
    };
    let range = check_number(number)?;
    Ok(Some((number, range)))
}

/// A piece of a page's text: a span of the body as received, one of the page's unescaped
/// strings when the JSON escaped it, or null; read it with `CostPage::text`. Eight bytes, so a
/// page's results cost little beside its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Text {
    /// Where the span starts, or (high bit set) which unescaped string it is.
    at: u32,
    len: u32,
}

impl Text {
    pub const NULL: Text = Text {
        at: u32::MAX,
        len: 0,
    };
    const UNESCAPED: u32 = 1 << 31;

    fn span(from: usize, to: usize) -> Option<Text> {
        let at = u32::try_from(from)
            .ok()
            .filter(|at| at & Text::UNESCAPED == 0)?;
        let len = u32::try_from(to.checked_sub(from)?).ok()?;
        Some(Text { at, len })
    }

    fn unescaped(n: usize) -> Option<Text> {
        let n = u32::try_from(n).ok().filter(|n| n & Text::UNESCAPED == 0)?;
        Some(Text {
            at: Text::UNESCAPED | n,
            len: 0,
        })
        .filter(|t| *t != Text::NULL)
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

/// One cost result: a day's amount for a project and line item (either may be null); read
/// its text with `CostPage::text`. Amount and quantity are checked decimal numbers.
#[derive(Debug, Clone)]
pub struct CostResult {
    pub project_id: Text,
    pub line_item: Text,
    pub amount: Text,
    pub currency: Text,
    pub quantity: Text,
    pub quantity_unit: Text,
    /// The result object exactly as received.
    pub raw: Text,
}

/// One daily bucket; its results are `CostPage::buckets`' second half.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CostBucket {
    pub start_time: i64,
    pub end_time: i64,
    /// Where its results lie among the page's: from, count.
    results: (usize, usize),
    /// Results of this day left out: without an amount, or with a figure Postgres `numeric`
    /// cannot hold. Nothing stored for such a day is removed.
    pub left_out: u32,
}

/// One page of a cost query, checked: whole UTC days, ascending, inside the query's window.
///
/// The results' text stays in the body as received: a page holds its body once, not a copy
/// of every field (a day held back from the page before comes first, its texts copied). A
/// page read can be handed back to `CostWalk::next_page_reusing`, which reads the next one
/// into its buffers: a pass then allocates its pages once.
#[derive(Debug, Clone, Default)]
pub struct CostPage {
    body: Vec<u8>,
    /// The strings the JSON wrote with escapes, unescaped.
    unescaped: Vec<Box<str>>,
    buckets: Vec<CostBucket>,
    results: Vec<CostResult>,
    /// Results left out because they carried no amount (never stored as 0).
    pub without_amount: u64,
    /// Results left out because their amount or quantity has more digits than Postgres
    /// `numeric` holds, so it could not be stored exactly.
    pub beyond_numeric: u64,
    /// The days this page answers for: from where the last page ended to where its last day,
    /// held back for the next page, starts, or to the query's end on the last page.
    pub covers: (i64, i64),
}

impl CostPage {
    /// The text `text` stands for, `None` for null.
    pub fn text(&self, text: &Text) -> Option<&str> {
        if *text == Text::NULL {
            None
        } else if text.at & Text::UNESCAPED != 0 {
            let n = usize::try_from(text.at & !Text::UNESCAPED).ok()?;
            self.unescaped.get(n).map(|s| &**s)
        } else {
            let from = usize::try_from(text.at).ok()?;
            let to = from.checked_add(usize::try_from(text.len).ok()?)?;
            std::str::from_utf8(self.body.get(from..to)?).ok()
        }
    }

    /// The page's buckets, ascending, each with its results.
    pub fn buckets(&self) -> impl Iterator<Item = (&CostBucket, &[CostResult])> + Clone {
        self.buckets.iter().map(|bucket| {
            let (from, count) = bucket.results;
            let results = from
                .checked_add(count)
                .and_then(|to| self.results.get(from..to))
                .unwrap_or_default();
            (bucket, results)
        })
    }

    /// How many results the page holds.
    pub fn results(&self) -> usize {
        self.results.len()
    }

    /// Puts each bucket's results in key order: project, line item, currency, by their bytes,
    /// nulls last (the order of a text index under a bytewise collation). The API's order
    /// means nothing; in this one a table indexed by the key takes a day's rows in order.
    pub fn order_by_key(&mut self) {
        let CostPage {
            body,
            unescaped,
            buckets,
            results,
            ..
        } = self;
        let texts = Texts {
            body,
            unescaped: std::mem::take(unescaped),
        };
        for bucket in buckets.iter() {
            let (from, count) = bucket.results;
            let Some(results) = from
                .checked_add(count)
                .and_then(|to| results.get_mut(from..to))
            else {
                continue;
            };
            results.sort_unstable_by(|a, b| {
                let key = |r: &CostResult| [r.project_id, r.line_item, r.currency];
                key(a)
                    .iter()
                    .zip(key(b).iter())
                    .map(|(x, y)| match (texts.resolve(x), texts.resolve(y)) {
                        (Some(x), Some(y)) => x.cmp(y),
                        (x, y) => x.is_none().cmp(&y.is_none()),
                    })
                    .find(|o| o.is_ne())
                    .unwrap_or(std::cmp::Ordering::Equal)
            });
        }
        *unescaped = texts.unescaped;
    }
}

/// The page's body with each escape Postgres refuses (`\u0000`, an unpaired surrogate) replaced
/// by `\ufffd`, reported, with the body as received when anything was; a body without `\u` at
/// all is returned as it is, after one search.
///
/// JSON allows both escapes; stored as they came, one result would fail every pass that read
/// its day.
fn storable(body: Vec<u8>) -> (Vec<u8>, Option<Vec<u8>>) {
    if memchr::memmem::find(&body, b"\\u").is_none() {
        return (body, None);
    }
    let Some(safe) = std::str::from_utf8(&body)
        .ok()
        .and_then(crate::json_text::jsonb_safe)
    else {
        return (body, None);
    };
    tracing::warn!(
        "a costs page holds \\u0000 or an unpaired surrogate, which Postgres cannot store; read with U+FFFD in its place"
    );
    (safe.into_bytes(), Some(body))
}

/// The page's `next_page` exactly as the API wrote it: a token is opaque and bound to its
/// query, so it goes back unchanged whatever the rest of the page needed replaced. `None` when
/// it cannot be read as a string (an unpaired surrogate in the token itself).
fn token_as_written(body: &[u8]) -> Option<Option<String>> {
    #[derive(Deserialize)]
    struct Token {
        #[serde(default)]
        next_page: Option<String>,
    }
    serde_json::from_slice::<Token>(body)
        .ok()
        .map(|t| t.next_page)
}

/// Turns a page's fields into `Text`: spans of its body where the JSON wrote them plainly.
struct Texts<'b> {
    body: &'b [u8],
    unescaped: Vec<Box<str>>,
}

impl Texts<'_> {
    /// Where `piece`, a slice of the body, lies in it; kept aside if it is not one.
    fn of(&mut self, piece: &str) -> Text {
        let span = piece
            .as_ptr()
            .addr()
            .checked_sub(self.body.as_ptr().addr())
            .and_then(|from| Some((from, from.checked_add(piece.len())?)))
            .filter(|&(_, to)| to <= self.body.len())
            .and_then(|(from, to)| Text::span(from, to));
        match span {
            Some(span) => span,
            None => self.keep(piece.into()),
        }
    }

    /// The bytes `text` stands for, `None` for null.
    fn resolve(&self, text: &Text) -> Option<&[u8]> {
        if *text == Text::NULL {
            None
        } else if text.at & Text::UNESCAPED != 0 {
            let n = usize::try_from(text.at & !Text::UNESCAPED).ok()?;
            self.unescaped.get(n).map(|s| s.as_bytes())
        } else {
            let from = usize::try_from(text.at).ok()?;
            self.body
                .get(from..from.checked_add(usize::try_from(text.len).ok()?)?)
        }
    }

    fn keep(&mut self, owned: Box<str>) -> Text {
        match Text::unescaped(self.unescaped.len()) {
            Some(text) => {
                self.unescaped.push(owned);
                text
            }
            // Two billion escaped strings on one page: never; say nothing rather than a guess.
            None => Text::NULL,
        }
    }

    /// A string field: a span when the JSON wrote it plainly, unescaped when it did not.
    fn string(&mut self, value: Option<Str<'_>>) -> Text {
        match value.map(|s| s.0) {
            None => Text::NULL,
            Some(Cow::Borrowed(piece)) => self.of(piece),
            Some(Cow::Owned(owned)) => self.keep(owned.into_boxed_str()),
        }
    }
}

/// A JSON string, borrowed from the body unless it has escapes. (Serde borrows a `Cow` only
/// when it is the field's whole type, not inside an `Option`: hence the wrapper.)
#[derive(Deserialize)]
#[serde(transparent)]
struct Str<'a>(#[serde(borrow)] Cow<'a, str>);

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
    #[serde(deserialize_with = "super::project::whole_unix_seconds")]
    start_time: i64,
    #[serde(deserialize_with = "super::project::whole_unix_seconds")]
    end_time: i64,
    /// The results array as received, read one result at a time by `each_element`.
    #[serde(borrow, default, deserialize_with = "raw_present")]
    results: Option<&'a RawValue>,
}

/// A field's JSON as received, `null` included (a field left out is `None`).
fn raw_present<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(deserializer).map(Some)
}

/// Hands each element of the JSON array `array` to `each`, borrowed from it, without
/// collecting them first; stops at the first error, of the JSON (as a message) or of `each`.
fn each_element<'a, E>(
    array: &'a RawValue,
    each: impl FnMut(&'a RawValue) -> Result<(), E>,
) -> Result<(), ElementError<E>> {
    struct Each<F, E> {
        each: F,
        failed: Option<E>,
    }
    impl<'de, F, E> serde::de::Visitor<'de> for &mut Each<F, E>
    where
        F: FnMut(&'de RawValue) -> Result<(), E>,
    {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an array")
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            while let Some(element) = seq.next_element::<&'de RawValue>()? {
                if let Err(e) = (self.each)(element) {
                    self.failed = Some(e);
                    return Err(serde::de::Error::custom("stopped"));
                }
            }
            Ok(())
        }
    }
    let mut visitor = Each { each, failed: None };
    let mut deserializer = serde_json::Deserializer::from_str(array.get());
    let read = serde::Deserializer::deserialize_seq(&mut deserializer, &mut visitor);
    match (read, visitor.failed) {
        (_, Some(e)) => Err(ElementError::Each(e)),
        (Err(e), None) => Err(ElementError::Json(e.to_string())),
        (Ok(()), None) => Ok(()),
    }
}

enum ElementError<E> {
    Json(String),
    Each(E),
}

#[derive(Deserialize)]
struct ResultFields<'a> {
    #[serde(borrow, default)]
    project_id: Option<Str<'a>>,
    #[serde(borrow, default)]
    line_item: Option<Str<'a>>,
    #[serde(borrow, default)]
    amount: Option<AmountFields<'a>>,
    #[serde(borrow, default)]
    quantity: Option<&'a RawValue>,
    #[serde(borrow, default)]
    quantity_unit: Option<Str<'a>>,
}

#[derive(Deserialize)]
struct AmountFields<'a> {
    #[serde(borrow, default)]
    value: Option<&'a RawValue>,
    #[serde(borrow, default)]
    currency: Option<Str<'a>>,
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
            held: None,
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
    /// Where the next bucket may start: the end of the last one, or the start of the day held.
    cursor: i64,
    /// The last day of the page before, held back: the next page may continue it.
    held: Option<HeldDay>,
    pages: u64,
    done: bool,
}

/// A page's last day, held back from it until the next page shows whether that one continues
/// it (a server may cap a page by results and list the rest of a busy day in the same bucket at
/// the start of the next). Its results' texts are copied out of the page it came in.
#[derive(Debug)]
struct HeldDay {
    start_time: i64,
    end_time: i64,
    left_out: u32,
    /// Per result: project, line item, amount, currency, quantity, quantity unit, raw.
    results: Vec<[Option<Box<str>>; 7]>,
}

impl HeldDay {
    /// Copies the page's last bucket out of it, and takes the bucket and its results off it.
    fn take_last(page: &mut CostPage) -> Option<HeldDay> {
        let bucket = page.buckets.pop()?;
        let (from, count) = bucket.results;
        let to = from.checked_add(count)?;
        let results = page
            .results
            .get(from..to)
            .unwrap_or_default()
            .iter()
            .map(|r| {
                [
                    r.project_id,
                    r.line_item,
                    r.amount,
                    r.currency,
                    r.quantity,
                    r.quantity_unit,
                    r.raw,
                ]
                .map(|text| page.text(&text).map(Box::from))
            })
            .collect();
        page.results.truncate(from);
        Some(HeldDay {
            start_time: bucket.start_time,
            end_time: bucket.end_time,
            left_out: bucket.left_out,
            results,
        })
    }

    /// Appends its results to `results`, their texts kept by `texts`; returns its bucket.
    fn put_back(self, results: &mut Vec<CostResult>, texts: &mut Texts<'_>) -> CostBucket {
        let first = results.len();
        for fields in self.results {
            let [
                project_id,
                line_item,
                amount,
                currency,
                quantity,
                quantity_unit,
                raw,
            ] = fields.map(|text| text.map_or(Text::NULL, |t| texts.keep(t)));
            results.push(CostResult {
                project_id,
                line_item,
                amount,
                currency,
                quantity,
                quantity_unit,
                raw,
            });
        }
        CostBucket {
            start_time: self.start_time,
            end_time: self.end_time,
            results: (first, results.len() - first),
            left_out: self.left_out,
        }
    }
}

impl CostWalk {
    /// Fetches the next page, or `None` once the API said there is no more.
    pub async fn next_page(&mut self) -> Result<Option<CostPage>, ApiError> {
        self.next_page_reusing(None).await
    }

    /// `next_page`, read into the buffers of `spare`, a page done with.
    pub async fn next_page_reusing(
        &mut self,
        spare: Option<CostPage>,
    ) -> Result<Option<CostPage>, ApiError> {
        if self.done {
            return Ok(None);
        }
        let url = self
            .client
            .costs_url(&self.query, self.next_page.as_deref());
        let mut spare = spare.unwrap_or_default();
        let body = std::mem::take(&mut spare.body);
        let body = self
            .client
            .call_retrying_raw("costs", Method::GET, url, body)
            .await?;
        self.pages += 1;
        spare.body = body;
        match self.read(spare) {
            Ok(page) => Ok(Some(page)),
            Err(error) => {
                self.done = true;
                Err(error)
            }
        }
    }

    /// Whether the API said there is no more (or the walk failed): `next_page` answers `None`.
    pub fn finished(&self) -> bool {
        self.done
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

    /// Checks the page in `page.body` and lists its results, in `page`'s other buffers.
    fn read(&mut self, mut page: CostPage) -> Result<CostPage, ApiError> {
        let decode = |message: String| ApiError::Decode {
            message,
            request_id: None,
        };
        let (body, as_received) = storable(std::mem::take(&mut page.body));
        page.unescaped.clear();
        page.buckets.clear();
        page.results.clear();
        page.without_amount = 0;
        page.beyond_numeric = 0;
        let parsed: PageBody<'_> = serde_json::from_slice(&body)
            .map_err(|e| decode(format!("the costs page is not the documented shape: {e}")))?;
        let from = self.cursor;
        let mut texts = Texts {
            body: &body,
            unescaped: std::mem::take(&mut page.unescaped),
        };
        let mut held = self.held.take();
        page.buckets.reserve_exact(parsed.data.len() + 1);
        let buckets = parsed.data.len();
        for (n, bucket) in parsed.data.into_iter().enumerate() {
            // The server's current day may end at the moment of its answer: the last bucket of
            // a page, on the query's last day, shorter than a day, is that day so far, and is
            // read as the day. (The page may say has_more and the next turn out empty.) A short
            // bucket on any other day would say the days after it had not begun: refused.
            let length = bucket.end_time.checked_sub(bucket.start_time);
            let day_end = bucket.start_time.checked_add(DAY_SECONDS);
            let day_so_far = n + 1 == buckets
                && day_end == Some(self.query.end_time)
                && length.is_some_and(|l| l > 0 && l < DAY_SECONDS);
            if bucket.start_time < self.cursor
                || bucket.end_time > self.query.end_time
                || day_end.is_none_or(|end| end > self.query.end_time)
                || !(length == Some(DAY_SECONDS) || day_so_far)
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
            let end_time = day_end.unwrap_or(bucket.end_time);
            self.cursor = end_time;
            // The day held back from the page before goes first: continued by this bucket, or
            // on its own before it.
            let mut continued = None;
            if let Some(day) = held.take() {
                let back = day.put_back(&mut page.results, &mut texts);
                if back.start_time == bucket.start_time {
                    continued = Some(back);
                } else {
                    page.buckets.push(back);
                }
            }
            let first = continued.map_or(page.results.len(), |b| b.results.0);
            let skipped_before = page.without_amount + page.beyond_numeric;
            let (results, without_amount, beyond_numeric) = (
                &mut page.results,
                &mut page.without_amount,
                &mut page.beyond_numeric,
            );
            let mut read_one = |raw: &RawValue| -> Result<(), ApiError> {
                let fields: ResultFields<'_> = serde_json::from_str(raw.get()).map_err(|e| {
                    decode(format!("a cost result is not the documented shape: {e}"))
                })?;
                let (value, currency) = match fields.amount {
                    Some(AmountFields {
                        value: Some(value),
                        currency,
                    }) => (value, currency),
                    _ => {
                        *without_amount += 1;
                        return Ok(());
                    }
                };
                let Some((amount, amount_range)) = number_text(value)
                    .map_err(|e| decode(format!("a cost amount is not a number: {e}")))?
                else {
                    *without_amount += 1;
                    return Ok(());
                };
                let quantity = match fields.quantity {
                    Some(q) => number_text(q)
                        .map_err(|e| decode(format!("a cost quantity is not a number: {e}")))?,
                    None => None,
                };
                if amount_range == Range::Beyond
                    || quantity.is_some_and(|(_, range)| range == Range::Beyond)
                {
                    *beyond_numeric += 1;
                    return Ok(());
                }
                if results.len() == results.capacity() {
                    // By an eighth: the list is kept for the pass, at about its largest page.
                    results.reserve_exact(results.len() / 8 + 64);
                }
                results.push(CostResult {
                    project_id: texts.string(fields.project_id),
                    line_item: texts.string(fields.line_item),
                    amount: texts.of(amount),
                    currency: texts.string(currency),
                    quantity: quantity.map_or(Text::NULL, |(q, _)| texts.of(q)),
                    quantity_unit: texts.string(fields.quantity_unit),
                    raw: texts.of(raw.get()),
                });
                Ok(())
            };
            if let Some(listed) = bucket.results {
                each_element(listed, &mut read_one).map_err(|e| match e {
                    ElementError::Json(e) => {
                        decode(format!("the costs page is not the documented shape: {e}"))
                    }
                    ElementError::Each(e) => e,
                })?;
            }
            page.buckets.push(CostBucket {
                start_time: bucket.start_time,
                end_time,
                results: (first, page.results.len() - first),
                left_out: u32::try_from(page.without_amount + page.beyond_numeric - skipped_before)
                    .unwrap_or(u32::MAX)
                    .saturating_add(continued.map_or(0, |b| b.left_out)),
            });
        }
        if let Some(day) = held.take() {
            // A page without buckets: the held day waits for the next one, or ends the query.
            if parsed.has_more {
                self.held = Some(day);
            } else {
                let back = day.put_back(&mut page.results, &mut texts);
                page.buckets.push(back);
            }
        }
        page.unescaped = texts.unescaped;
        let has_more = parsed.has_more;
        let next_page = match as_received.as_deref().and_then(token_as_written) {
            Some(written) => written,
            None => parsed.next_page,
        };
        page.body = body;
        if !has_more {
            self.done = true;
            self.cursor = self.query.end_time;
            page.covers = (from, self.query.end_time);
            return Ok(page);
        }
        let Some(token) = next_page.filter(|t| !t.is_empty()) else {
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
        // The next page may continue this page's last day: it is held back until then.
        if let Some(day) = HeldDay::take_last(&mut page) {
            self.cursor = day.start_time;
            self.held = Some(day);
        }
        page.covers = (from, self.cursor);
        Ok(page)
    }
}
