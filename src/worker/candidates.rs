//! Which projects could be an unknown request's result, and which of those fit the request.
//!
//! The API may echo a request differently from how it was sent: `geography` is write-only and
//! comes back, if at all, as a `residency` of another vocabulary; absent fields may be omitted;
//! the server may pick a default residency; names may be stored in another Unicode form. So a
//! candidate is found by name and time alone, and region and key only decide whether it fits.

use unicode_normalization::UnicodeNormalization;

use crate::client::Project;
use crate::store::ClaimedRequest;

/// Characters a comparison ignores, and a request name may not hold: zero-width spaces and
/// joiners, the byte-order mark, the soft hyphen, direction marks, embeddings, overrides and
/// isolates, and invisible operators; `openai.comparable_name` drops the same.
const INVISIBLE: [char; 29] = [
    '\u{200B}', '\u{200C}', '\u{200D}', '\u{2060}', '\u{FEFF}', '\u{180E}', '\u{00AD}', '\u{061C}',
    '\u{200E}', '\u{200F}', '\u{202A}', '\u{202B}', '\u{202C}', '\u{202D}', '\u{202E}', '\u{2061}',
    '\u{2062}', '\u{2063}', '\u{2064}', '\u{2066}', '\u{2067}', '\u{2068}', '\u{2069}', '\u{206A}',
    '\u{206B}', '\u{206C}', '\u{206D}', '\u{206E}', '\u{206F}',
];

/// The form in which names are compared: NFC, zero-width characters removed, every run of
/// Unicode white space folded to one space, none at either end; `openai.comparable_name` in SQL.
pub fn comparable_name(name: &str) -> String {
    let mut folded = String::with_capacity(name.len());
    let mut pending_space = false;
    for c in name.nfc().filter(|c| !INVISIBLE.contains(c)) {
        if c.is_whitespace() {
            pending_space = true;
            continue;
        }
        if pending_space && !folded.is_empty() {
            folded.push(' ');
        }
        pending_space = false;
        folded.push(c);
    }
    folded
}

/// A same-name project created since the request's attempt began and linked to no request.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub project: Project,
    /// The API's JSON for it, as received.
    pub raw: String,
    /// Whether the JSON read as a project; one that did not is a candidate that never fits.
    pub readable: bool,
}

impl Candidate {
    /// Reads a candidate from the API's JSON for a project; what does not read as a project
    /// still counts, by its id and name, so "could not read" never becomes "nothing there".
    pub fn from_raw(raw: String) -> Candidate {
        if let Ok(project) = serde_json::from_str::<Project>(&raw) {
            return Candidate {
                project,
                raw,
                readable: true,
            };
        }
        // Field by field, unparsed: one value serde cannot hold (a number beyond any float)
        // must not hide the name of a project that may be the request's.
        let loose: std::collections::HashMap<String, Box<serde_json::value::RawValue>> =
            serde_json::from_str(&raw).unwrap_or_default();
        let text = |key: &str| {
            loose
                .get(key)
                .and_then(|v| serde_json::from_str::<String>(v.get()).ok())
        };
        Candidate {
            project: Project {
                id: text("id").unwrap_or_default(),
                object: text("object").unwrap_or_default(),
                // Unknown creation time: never ruled out by it.
                created_at: i64::MAX,
                name: text("name"),
                status: text("status"),
                archived_at: None,
                external_key_id: text("external_key_id"),
                residency: text("residency"),
                extra: Default::default(),
            },
            raw,
            readable: false,
        }
    }

    /// The comparable form of the project's name, unless the API showed none or a blank one.
    pub fn shown_name(&self) -> Option<String> {
        self.project
            .name
            .as_deref()
            .map(comparable_name)
            .filter(|name| !name.is_empty())
    }

    /// Whether the project agrees with what the request asked for, where the API echoed it; a
    /// project shown without a name cannot be told to be the request's.
    pub fn fits(&self, request: &ClaimedRequest) -> bool {
        if !self.readable || self.shown_name().is_none() {
            return false;
        }
        let key_fits = match (&request.external_key_id, &self.project.external_key_id) {
            (_, None) => true,
            (Some(asked), Some(got)) => asked == got,
            (None, Some(_)) => false,
        };
        let asked_region = request
            .geography
            .as_deref()
            .or(request.residency.as_deref());
        let region_fits = match (asked_region, self.project.residency.as_deref()) {
            // Not echoed, or nothing asked and the server picked a default.
            (_, None) | (None, Some(_)) => true,
            (Some(asked), Some(got)) => region_family(asked) == region_family(got),
        };
        key_fits && region_fits
    }
}

/// The region a geography (`EU`) or residency (`EU_STORAGE_PROCESSING`, `JP_STORAGE`) names.
pub fn region_family(value: &str) -> String {
    let upper = value.trim().to_ascii_uppercase();
    for suffix in ["_STORAGE_PROCESSING", "_STORAGE", "_PROCESSING"] {
        if let Some(region) = upper.strip_suffix(suffix) {
            return region.to_owned();
        }
    }
    upper
}

/// Whether a project created at `created_at` (unix seconds) may be the result of an attempt
/// begun at `since` (unix seconds), given how far the API's clock may be behind ours. A creation
/// time outside the years the product stores tells nothing, and rules nothing out.
pub fn created_since(created_at: i64, since: i64, clock_skew_secs: i64) -> bool {
    crate::unix_time::storable(created_at).is_none()
        || created_at >= since.saturating_sub(clock_skew_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_differ_only_by_form_compare_equal() {
        assert_eq!(
            comparable_name("Cafe\u{301}  Ops"),
            comparable_name("Café Ops")
        );
        assert_eq!(
            comparable_name("\u{3000}Zürich\u{200B}\tTeam "),
            "Zürich Team"
        );
        assert_ne!(comparable_name("Team A"), comparable_name("team a"));
        assert_eq!(comparable_name("\u{200B} \u{00A0}"), "");
    }

    #[test]
    fn regions_compare_by_family_across_vocabularies() {
        assert_eq!(region_family("EU"), region_family("EU_STORAGE_PROCESSING"));
        assert_eq!(region_family("JP"), region_family("JP_STORAGE"));
        assert_eq!(region_family("jp"), region_family("JP_STORAGE_PROCESSING"));
        assert_ne!(region_family("EU"), region_family("US_STORAGE_PROCESSING"));
        assert_ne!(region_family("EU"), region_family("GLOBAL"));
    }

    #[test]
    fn a_project_shown_without_a_name_or_with_a_blank_one_shows_no_name() {
        let shown = |raw: &str| Candidate::from_raw(raw.to_owned()).shown_name();
        let project = |name: &str| {
            format!(r#"{{"id":"proj_x","object":"organization.project","created_at":1{name}}}"#)
        };
        assert_eq!(shown(&project("")), None);
        assert_eq!(shown(&project(r#","name":null"#)), None);
        assert_eq!(shown(&project(r#","name":" \u200b ""#)), None);
        assert_eq!(
            shown(&project(r#","name":"Ops  A""#)).as_deref(),
            Some("Ops A")
        );
    }

    #[test]
    fn a_creation_time_outside_the_stored_years_rules_no_project_out() {
        let since = 1_700_000_000;
        assert!(!created_since(since - 3_600, since, 60));
        assert!(created_since(since - 30, since, 60));
        assert!(created_since(-300_000_000_000, since, 60));
        let listed = Candidate::from_raw(
            r#"{"id":"proj_x","object":"organization.project","name":"X","created_at":-1e20}"#
                .to_owned(),
        );
        assert!(listed.readable);
        assert!(created_since(listed.project.created_at, since, 60));
    }
}
