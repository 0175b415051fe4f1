//! The emulator's own wire types: a project as the server keeps it, and its JSON as the server writes it.

use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{Map, Value};

use super::freedoms::Freedoms;

/// The `object` of every project.
pub const PROJECT_OBJECT: &str = "organization.project";

/// Fields `Rendering::unknown_fields` adds to every project that does not set them itself.
const UNKNOWN_PROJECT_FIELDS: [&str; 2] = ["billing_tier", "labels"];

/// Field names the emulator models; an `extra` entry by one of these names is never written.
const MODELLED_FIELDS: [&str; 8] = [
    "id",
    "object",
    "created_at",
    "name",
    "status",
    "archived_at",
    "external_key_id",
    "residency",
];

/// One organization project as the emulated server stores it.
#[derive(Debug, Clone, PartialEq)]
pub struct EmulatedProject {
    /// The project id, `proj_` and 24 alphanumerics.
    pub id: String,
    /// Always `organization.project`.
    pub object: String,
    /// When the project landed, in unix seconds.
    pub created_at: i64,
    /// The name, null for some generated projects.
    pub name: Option<String>,
    /// `active` or `archived`.
    pub status: Option<String>,
    /// When the project was archived, in unix seconds.
    pub archived_at: Option<i64>,
    /// The id of the customer-managed encryption key.
    pub external_key_id: Option<String>,
    /// The data residency, in the new vocabulary.
    pub residency: Option<String>,
    /// Fields set through the control channel that the emulator does not model, written as given.
    pub extra: Map<String, Value>,
}

/// How the server writes JSON at the moment: the freedoms that change the shape of an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rendering {
    /// Null-valued optional fields are left out.
    pub omit_nulls: bool,
    /// Projects and list pages carry fields the client does not model.
    pub unknown_fields: bool,
    /// Projects are written without their `name`.
    pub omit_names: bool,
}

impl Rendering {
    /// The rendering `freedoms` call for.
    pub fn of(freedoms: &Freedoms) -> Rendering {
        Rendering {
            omit_nulls: freedoms.omit_nulls,
            unknown_fields: freedoms.unknown_fields,
            omit_names: freedoms.omit_names,
        }
    }
}

impl EmulatedProject {
    /// The project's JSON as the server writes it with `rendering`.
    pub fn to_json(&self, rendering: Rendering) -> String {
        // Strings, integers and a map of JSON values: serializing cannot fail.
        serde_json::to_string(&Rendered {
            project: self,
            rendering,
        })
        .unwrap_or_default()
    }

    /// Whether the project is archived.
    pub fn is_archived(&self) -> bool {
        self.status.as_deref() == Some("archived")
    }
}

/// A project paired with the rendering to write it in.
struct Rendered<'a> {
    project: &'a EmulatedProject,
    rendering: Rendering,
}

impl Serialize for Rendered<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let p = self.project;
        let omit = self.rendering.omit_nulls;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("id", &p.id)?;
        map.serialize_entry("object", &p.object)?;
        map.serialize_entry("created_at", &p.created_at)?;
        if !self.rendering.omit_names {
            optional(&mut map, "name", &p.name, omit)?;
        }
        optional(&mut map, "status", &p.status, omit)?;
        optional(&mut map, "archived_at", &p.archived_at, omit)?;
        optional(&mut map, "external_key_id", &p.external_key_id, omit)?;
        optional(&mut map, "residency", &p.residency, omit)?;
        if self.rendering.unknown_fields {
            for key in UNKNOWN_PROJECT_FIELDS {
                if p.extra.contains_key(key) {
                    continue;
                }
                match key {
                    "billing_tier" => map.serialize_entry(key, "standard")?,
                    _ => map.serialize_entry(key, &Map::new())?,
                }
            }
        }
        for (key, value) in &p.extra {
            if !MODELLED_FIELDS.contains(&key.as_str()) {
                map.serialize_entry(key, value)?;
            }
        }
        map.end()
    }
}

fn optional<M: SerializeMap, T: Serialize>(
    map: &mut M,
    key: &str,
    value: &Option<T>,
    omit_nulls: bool,
) -> Result<(), M::Error> {
    if value.is_some() || !omit_nulls {
        map.serialize_entry(key, value)?;
    }
    Ok(())
}

/// The body of one list answer from the projects' JSON already rendered.
pub fn list_body<'a>(
    items: impl ExactSizeIterator<Item = &'a str> + Clone,
    first_id: Option<&str>,
    last_id: Option<&str>,
    has_more: bool,
    rendering: Rendering,
) -> String {
    let id = |id: Option<&str>| id.map_or("null".to_owned(), |id| Value::from(id).to_string());
    let mut body =
        String::with_capacity(items.clone().map(|item| item.len() + 1).sum::<usize>() + 160);
    body.push_str("{\"object\":\"list\",\"data\":[");
    for (n, item) in items.enumerate() {
        if n > 0 {
            body.push(',');
        }
        body.push_str(item);
    }
    body.push_str(&format!(
        "],\"first_id\":{},\"last_id\":{},\"has_more\":{has_more}",
        id(first_id),
        id(last_id)
    ));
    if rendering.unknown_fields {
        body.push_str(",\"page_kind\":\"cursor\"");
    }
    body.push('}');
    body
}
