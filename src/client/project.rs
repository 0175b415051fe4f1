//! The API's wire shapes: `Project`, a list page, and the bodies of create and modify.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// One organization project as the API returned it; unknown fields are kept in `extra`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct Project {
    pub id: String,
    pub object: String,
    pub created_at: i64,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
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
    pub created_at: i64,
}
