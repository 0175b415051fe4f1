//! The API's wire shapes: `Project`, a list page, and the bodies of create and modify.

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// One organization project as the API returned it; unknown fields are kept in `extra`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct Project {
    pub id: String,
    pub object: String,
    #[serde(deserialize_with = "unix_seconds")]
    pub created_at: i64,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default, deserialize_with = "optional_unix_seconds")]
    pub archived_at: Option<i64>,
    #[serde(default)]
    pub external_key_id: Option<String>,
    #[serde(default)]
    pub residency: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One page of `GET /organization/projects`.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ProjectPage {
    pub object: String,
    pub data: Vec<Project>,
    #[serde(default)]
    pub first_id: Option<String>,
    #[serde(default)]
    pub last_id: Option<String>,
    /// Required by the spec: a page that does not say whether more follow cannot end a walk.
    pub has_more: bool,
}

/// Body of `POST /organization/projects`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct CreateProject {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_key_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub geography: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub residency: Option<String>,
}

/// Body of `POST /organization/projects/{id}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct ModifyProject {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_key_id: Option<String>,
}

/// Query of one list call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListParams {
    pub limit: u32,
    pub after: Option<String>,
    pub include_archived: bool,
}

/// One listed project: its id and the API's own JSON for it, exactly as received.
#[derive(Debug, Clone)]
pub struct ListedProject {
    pub id: String,
    pub raw: Box<RawValue>,
}

/// One page of the list kept as the API's own JSON, for callers that store it as it came.
#[derive(Debug, Clone)]
pub struct RawProjectPage {
    pub projects: Vec<ListedProject>,
    /// The page's `last_id` as the API sent it (an empty string read as none).
    pub last_id: Option<String>,
    pub has_more: bool,
}

#[derive(Deserialize)]
pub(super) struct RawListBody {
    pub data: Box<RawValue>,
    #[serde(default)]
    pub last_id: Option<String>,
    /// Required by the spec: a page that does not say whether more follow cannot end a walk.
    pub has_more: bool,
}

/// The fields every listed project must have; the rest is checked where it is stored.
#[derive(Deserialize)]
pub(super) struct RequiredFields {
    pub id: String,
    pub object: String,
    #[allow(dead_code)]
    #[serde(deserialize_with = "any_unix_seconds")]
    pub created_at: i64,
}

/// `unix_seconds` for a field read alone (no `flatten` around it), also where the number is
/// beyond what a float holds (`1e400`): JSON sets no bound, and such a time names no calendar
/// day either, so it reads as its nearest bound.
pub(super) fn any_unix_seconds<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<i64, D::Error> {
    let raw = Box::<RawValue>::deserialize(deserializer)?;
    let text = raw.get();
    match serde_json::from_str::<serde_json::Number>(text) {
        Ok(number) => Ok(saturating_seconds_of(&number)),
        Err(_) if text.starts_with('-') => Ok(i64::MIN),
        Err(_) if text.starts_with(|c: char| c.is_ascii_digit()) => Ok(i64::MAX),
        Err(_) => Err(D::Error::custom(format!(
            "{text} is not a time in unix seconds"
        ))),
    }
}

/// A time in unix seconds as the API writes it: an integer, or a float (JSON has one number
/// type, and `1697013376.0` is that integer to a JSON Schema); a fraction is dropped here, while
/// the stored JSON keeps the number as written.
///
/// Any number is read, a number beyond a 64-bit integer as its nearest bound: the spec says only
/// "integer", and one absurd time must not fail every walk. Whether it is a time the product can
/// store is `unix_time::storable`'s question.
pub(super) fn unix_seconds<'de, D: Deserializer<'de>>(deserializer: D) -> Result<i64, D::Error> {
    Ok(saturating_seconds_of(&serde_json::Number::deserialize(
        deserializer,
    )?))
}

/// `unix_seconds` for a field that may be absent or null.
fn optional_unix_seconds<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<i64>, D::Error> {
    Ok(Option::<serde_json::Number>::deserialize(deserializer)?
        .as_ref()
        .map(saturating_seconds_of))
}

fn saturating_seconds_of(number: &serde_json::Number) -> i64 {
    match (number.as_i64(), number.as_u64(), number.as_f64()) {
        (Some(seconds), _, _) => seconds,
        (None, Some(_), _) => i64::MAX,
        // `as` saturates; JSON has no NaN or infinity.
        (None, None, Some(f)) => f.floor() as i64,
        (None, None, None) => i64::MAX,
    }
}

/// A number of seconds that is exactly an i64, a float being read only far inside that range.
fn seconds_of(number: &serde_json::Number) -> Option<i64> {
    // Beyond about ±9.2e18 a float is no i64; far inside that it is no timestamp Postgres holds.
    const LIMIT: f64 = 9.2e18;
    number.as_i64().or_else(|| {
        number
            .as_f64()
            .filter(|f| f.is_finite() && f.abs() < LIMIT)
            .map(|f| f.floor() as i64)
    })
}

/// `unix_seconds` for a time that must be a whole second (a cost bucket's bounds): a float is
/// read only when it has no fraction, which the checks on a bucket would otherwise not see.
pub(super) fn whole_unix_seconds<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<i64, D::Error> {
    let number = serde_json::Number::deserialize(deserializer)?;
    seconds_of(&number)
        .filter(|_| number.as_f64().is_none_or(|f| f.fract() == 0.0))
        .ok_or_else(|| D::Error::custom(format!("{number} is not a whole time in unix seconds")))
}
