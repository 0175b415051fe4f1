//! The freedoms the published spec leaves a server, and which of them the emulator takes.
//!
//! Each is legal by the spec; a client that breaks under one of them is wrong, not the server.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use unicode_normalization::UnicodeNormalization;

use super::regions;

/// The order the list answers in; the real order is undocumented.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum ListOrder {
    /// Newest project first: creation order reversed.
    #[default]
    NewestFirst,
    /// Oldest project first: creation order.
    OldestFirst,
    /// A stable order that is neither creation order nor its reverse (a seeded hash of the id).
    Arbitrary,
}

/// How a project created with the old `geography` field shows its region afterwards.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum GeographyAnswer {
    /// As a `residency` of the new vocabulary (`EU` → `EU_STORAGE_PROCESSING`).
    #[default]
    NewVocabulary,
    /// Not at all: `geography` is write-only and the project has no `residency`.
    Omitted,
}

/// The server's current choices among the behaviours the spec allows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Freedoms {
    /// What a create's `geography` turns into; it is never echoed as `geography`.
    pub geography_answer: GeographyAnswer,
    /// The residency the server assigns when a create asks for neither geography nor residency.
    pub default_residency: Option<String>,
    /// Leaves null-valued optional fields out of a project's JSON instead of writing `null`.
    pub omit_nulls: bool,
    /// Leaves `name` out of every project's JSON: the spec marks it optional.
    pub omit_names: bool,
    /// Adds fields the client does not model to every project and to every list page.
    pub unknown_fields: bool,
    /// Milliseconds a create takes to land; the server finishes it even if the caller gave up.
    pub create_delay_ms: u64,
    /// Milliseconds after its create before a new project appears in list answers.
    pub list_lag_ms: u64,
    /// The most items a list page holds, whatever `limit` asks for.
    pub short_pages: Option<usize>,
    /// The order the list answers in.
    pub order: ListOrder,
    /// Stores names NFD-decomposed with whitespace runs folded to one space: equivalent, not equal.
    pub rewrite_names: bool,
    /// Gives a 429's `retry-after` as an HTTP date, without `retry-after-ms`.
    pub retry_after_as_date: bool,
    /// How cost amounts are written: JSON numbers, numeric strings, or both by turns.
    pub cost_amounts: CostAmountForm,
    /// The most buckets a costs page holds, below the API's own 31, whatever `limit` says.
    pub cost_page_buckets: Option<usize>,
    /// Some cost results come without an `amount` (the SDK types it optional).
    pub cost_results_without_amount: bool,
    /// Ends the current day's cost bucket at the moment of the answer, not at the next
    /// midnight: the spec says only that `end_time` is a time.
    pub cost_today_ends_now: bool,
}

/// How the Costs API writes `amount.value`: the spec says a number, the wire has sent strings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum CostAmountForm {
    /// A JSON number (`0.0042`, `0E-6176`).
    #[default]
    Number,
    /// A JSON string holding the number (`"0.0042"`, `"0E-6176"`).
    String,
    /// Numbers and strings mixed within one page.
    Mixed,
}

/// The page size `Freedoms::hostile` caps list pages at: small, and no divisor of the usual limits.
pub const HOSTILE_PAGE_CAP: usize = 7;

impl Freedoms {
    /// The faithful-but-hostile choices fault tests run against; delays and lag stay 0 for tests to set.
    pub fn hostile() -> Freedoms {
        Freedoms {
            geography_answer: GeographyAnswer::NewVocabulary,
            default_residency: Some("GLOBAL".into()),
            omit_nulls: true,
            omit_names: false,
            unknown_fields: true,
            create_delay_ms: 0,
            list_lag_ms: 0,
            short_pages: Some(HOSTILE_PAGE_CAP),
            order: ListOrder::Arbitrary,
            rewrite_names: false,
            retry_after_as_date: false,
            cost_amounts: CostAmountForm::Mixed,
            cost_page_buckets: Some(HOSTILE_PAGE_CAP),
            cost_results_without_amount: true,
            cost_today_ends_now: true,
        }
    }

    /// Why these freedoms cannot be served, if they cannot.
    pub fn check(&self) -> Result<(), String> {
        if self.short_pages == Some(0) {
            return Err("short_pages must hold at least one item".into());
        }
        if self.cost_page_buckets == Some(0) {
            return Err("cost_page_buckets must hold at least one bucket".into());
        }
        if let Some(residency) = &self.default_residency
            && residency.trim().is_empty()
        {
            return Err("default_residency must not be blank; leave it out for none".into());
        }
        Ok(())
    }

    /// How long a create waits before it lands.
    pub fn create_delay(&self) -> Duration {
        Duration::from_millis(self.create_delay_ms)
    }

    /// How long a new project stays out of list answers.
    pub fn list_lag(&self) -> Duration {
        Duration::from_millis(self.list_lag_ms)
    }

    /// The most items one page may hold when the caller asked for `limit`.
    pub fn page_size(&self, limit: usize) -> usize {
        self.short_pages.map_or(limit, |cap| limit.min(cap.max(1)))
    }

    /// The name as the server stores it: as sent, or rewritten to an equivalent form.
    pub fn stored_name(&self, name: &str) -> String {
        if !self.rewrite_names {
            return name.to_owned();
        }
        let mut stored = String::with_capacity(name.len());
        let mut in_space = false;
        for c in name.nfd() {
            if c.is_whitespace() {
                if !in_space {
                    stored.push(' ');
                }
                in_space = true;
            } else {
                stored.push(c);
                in_space = false;
            }
        }
        stored
    }

    /// The residency a create ends with, or why it is refused; `param` names the offending field.
    pub fn residency_for_create(
        &self,
        geography: Option<&str>,
        residency: Option<&str>,
    ) -> Result<Option<String>, Refusal> {
        match (geography, residency) {
            (Some(_), Some(_)) => Err(Refusal {
                message: "Only one of 'geography' and 'residency' may be given; 'geography' is deprecated, use 'residency'.".into(),
                param: "residency",
            }),
            (Some(geography), None) => {
                let Some(translated) = regions::residency_of_geography(geography) else {
                    return Err(Refusal {
                        message: format!(
                            "Invalid geography '{geography}': must be one of {}.",
                            regions::GEOGRAPHIES.join(", ")
                        ),
                        param: "geography",
                    });
                };
                Ok(match self.geography_answer {
                    GeographyAnswer::NewVocabulary => Some(translated.to_owned()),
                    GeographyAnswer::Omitted => None,
                })
            }
            (None, Some(residency)) => {
                if regions::RESIDENCIES.contains(&residency) {
                    Ok(Some(residency.to_owned()))
                } else {
                    Err(Refusal {
                        message: format!(
                            "Invalid residency '{residency}': must be one of {}.",
                            regions::RESIDENCIES.join(", ")
                        ),
                        param: "residency",
                    })
                }
            }
            (None, None) => Ok(self.default_residency.clone()),
        }
    }
}

/// Why a create's region was refused, for a 400 in the API's error envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The error's message.
    pub message: String,
    /// The request field at fault.
    pub param: &'static str,
}
