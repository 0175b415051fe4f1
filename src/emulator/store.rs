//! The emulator's organization: its projects in creation order, seeded deterministically.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::client::Project;

/// What one round of churn changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChurnReport {
    #[serde(default)]
    pub renamed: usize,
    #[serde(default)]
    pub archived: usize,
    #[serde(default)]
    pub created: usize,
}

/// Which end of the creation order the list starts from; the real order is undocumented.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum ListOrder {
    #[default]
    NewestFirst,
    OldestFirst,
}

/// The answer to one list call, already JSON.
pub struct ListedPage {
    pub body: String,
}

/// Every project of the emulated organization.
pub struct ProjectStore {
    projects: Vec<Project>,
    /// Each project's JSON, kept in step with `projects` so a page is a concatenation.
    json: Vec<String>,
    index: HashMap<String, usize>,
    /// Projects left out of every answer, as if they had vanished upstream.
    hidden: HashSet<String>,
    rng: fastrand::Rng,
    last_created_at: i64,
    pub order: ListOrder,
}

/// Seconds since the epoch at which generated histories start (2023-11-14).
const SEED_EPOCH: i64 = 1_700_000_000;

const WORDS: &[&str] = &[
    "Payments",
    "Search",
    "Analytics",
    "Support",
    "Billing",
    "Growth",
    "Risk",
    "Labs",
    "Platform",
    "Mobile",
    "Data",
    "Ledger",
    "Onboarding",
    "Fraud",
    "Catalog",
    "Ranking",
];
const FLAVOURS: &[&str] = &[
    "staging", "prod", "sandbox", "eval", "batch", "internal", "pilot", "EU",
];

impl ProjectStore {
    /// Generates `count` projects, a share `archived_ratio` archived; the same seed gives the same projects.
    pub fn seeded(count: usize, archived_ratio: f64, seed: u64) -> ProjectStore {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut store = ProjectStore {
            projects: Vec::with_capacity(count),
            json: Vec::with_capacity(count),
            index: HashMap::with_capacity(count),
            hidden: Default::default(),
            rng: fastrand::Rng::with_seed(seed ^ 0x9e37_79b9_7f4a_7c15),
            last_created_at: SEED_EPOCH,
            order: ListOrder::default(),
        };
        let mut created_at = SEED_EPOCH - (count as i64) * 600;
        for n in 0..count {
            created_at += rng.i64(1..=600);
            let archived = rng.f64() < archived_ratio;
            let project = Project {
                id: new_id(&mut rng),
                object: "organization.project".into(),
                created_at,
                name: generated_name(&mut rng, n),
                status: Some(if archived { "archived" } else { "active" }.into()),
                archived_at: archived.then(|| created_at + rng.i64(60..=86_400 * 30)),
                external_key_id: (rng.u8(..) < 8).then(|| format!("key_{}", rng.u32(..))),
                residency: (rng.u8(..) < 16).then(|| "EU".to_owned()),
                extra: Default::default(),
            };
            store.insert(project);
        }
        store.last_created_at = created_at.max(SEED_EPOCH);
        store
    }

    fn insert(&mut self, project: Project) {
        self.index.insert(project.id.clone(), self.projects.len());
        self.json.push(to_json(&project));
        self.projects.push(project);
    }

    /// The number of projects, archived ones included.
    pub fn len(&self) -> usize {
        self.projects.len()
    }

    /// One project by id, unless hidden.
    pub fn get(&self, id: &str) -> Option<&Project> {
        if self.hidden.contains(id) {
            return None;
        }
        self.index.get(id).map(|&i| &self.projects[i])
    }

    /// Leaves a project out of every answer (`true`) or brings it back (`false`).
    pub fn set_hidden(&mut self, id: &str, hidden: bool) -> bool {
        if !self.index.contains_key(id) {
            return false;
        }
        if hidden {
            self.hidden.insert(id.to_owned());
        } else {
            self.hidden.remove(id);
        }
        true
    }

    /// Every project, oldest first.
    pub fn all(&self) -> &[Project] {
        &self.projects
    }

    /// Whether `id` names a project, so a cursor can be checked before listing.
    pub fn contains(&self, id: &str) -> bool {
        self.index.contains_key(id)
    }

    /// Up to `limit` projects after the cursor in the current order, as the list's JSON body.
    pub fn list(&self, limit: usize, after: Option<&str>, include_archived: bool) -> ListedPage {
        let position = after.and_then(|id| self.index.get(id).copied());
        let visible = |&i: &usize| {
            let p = &self.projects[i];
            (include_archived || p.status.as_deref() != Some("archived"))
                && !self.hidden.contains(&p.id)
        };
        let chosen: Vec<usize> = match self.order {
            ListOrder::OldestFirst => {
                let start = position.map_or(0, |i| i + 1);
                (start..self.projects.len())
                    .filter(visible)
                    .take(limit + 1)
                    .collect()
            }
            ListOrder::NewestFirst => {
                let end = position.unwrap_or(self.projects.len());
                (0..end).rev().filter(visible).take(limit + 1).collect()
            }
        };
        let has_more = chosen.len() > limit;
        let chosen = &chosen[..chosen.len().min(limit)];
        let id = |i: Option<&usize>| {
            i.map_or("null".to_owned(), |&i| {
                Value::from(self.projects[i].id.as_str()).to_string()
            })
        };
        let mut body = String::with_capacity(
            chosen
                .iter()
                .map(|&i| self.json[i].len() + 1)
                .sum::<usize>()
                + 128,
        );
        body.push_str("{\"object\":\"list\",\"data\":[");
        for (n, &i) in chosen.iter().enumerate() {
            if n > 0 {
                body.push(',');
            }
            body.push_str(&self.json[i]);
        }
        body.push_str(&format!(
            "],\"first_id\":{},\"last_id\":{},\"has_more\":{has_more}}}",
            id(chosen.first()),
            id(chosen.last())
        ));
        ListedPage { body }
    }

    /// Creates a project now, as the API would.
    pub fn create(
        &mut self,
        name: String,
        external_key_id: Option<String>,
        residency: Option<String>,
    ) -> Project {
        // Creation times never go backwards, so the stored order stays the creation order.
        let now = chrono::Utc::now().timestamp().max(self.last_created_at);
        self.last_created_at = now;
        let project = Project {
            id: new_id(&mut self.rng),
            object: "organization.project".into(),
            created_at: now,
            name: Some(name),
            status: Some("active".into()),
            archived_at: None,
            external_key_id,
            residency,
            extra: Default::default(),
        };
        self.insert(project.clone());
        project
    }

    /// Applies a change to one project and returns it.
    pub fn update(&mut self, id: &str, change: impl FnOnce(&mut Project)) -> Option<Project> {
        let i = *self.index.get(id)?;
        let project = &mut self.projects[i];
        change(project);
        self.json[i] = to_json(project);
        Some(project.clone())
    }

    /// Archives a project; archiving twice changes nothing.
    pub fn archive(&mut self, id: &str) -> Option<Project> {
        self.update(id, |p| {
            if p.status.as_deref() != Some("archived") {
                p.status = Some("archived".into());
                p.archived_at = Some(chrono::Utc::now().timestamp());
            }
        })
    }

    /// Sets a field the product does not model, as a newer API version might add.
    pub fn set_extra(&mut self, id: &str, key: &str, value: Value) -> Option<Project> {
        self.update(id, |p| {
            p.extra.insert(key.to_owned(), value);
        })
    }

    /// A random project id, for churn that picks its victims.
    pub fn random_id(&mut self) -> Option<String> {
        if self.projects.is_empty() {
            return None;
        }
        let i = self.rng.usize(..self.projects.len());
        Some(self.projects[i].id.clone())
    }

    /// Renames, archives and creates projects at random, as a living organization does.
    ///
    /// Renames and archives pick distinct active projects, so the counts are exact while
    /// enough active projects exist.
    pub fn churn(&mut self, renames: usize, archives: usize, creates: usize) -> ChurnReport {
        let stamp = chrono::Utc::now().format("%H:%M:%S%.3f");
        let mut touched = HashSet::new();
        let mut report = ChurnReport::default();
        for n in 0..renames {
            if let Some(id) = self.pick_active(&mut touched) {
                self.update(&id, |p| p.name = Some(format!("Renamed {stamp} #{n}")));
                report.renamed += 1;
            }
        }
        for _ in 0..archives {
            if let Some(id) = self.pick_active(&mut touched) {
                self.archive(&id);
                report.archived += 1;
            }
        }
        for n in 0..creates {
            self.create(format!("New at {stamp} #{n}"), None, None);
            report.created += 1;
        }
        report
    }

    /// A random active project not in `touched`, which it joins; a bounded number of tries.
    fn pick_active(&mut self, touched: &mut HashSet<String>) -> Option<String> {
        for _ in 0..64 {
            let id = self.random_id()?;
            let active = self
                .get(&id)
                .is_some_and(|p| p.status.as_deref() == Some("active"));
            if active && touched.insert(id.clone()) {
                return Some(id);
            }
        }
        None
    }
}

fn to_json(project: &Project) -> String {
    // A Project is plain data; serializing it cannot fail.
    serde_json::to_string(project).unwrap_or_default()
}

fn new_id(rng: &mut fastrand::Rng) -> String {
    let mut id = String::from("proj_");
    id.extend((0..24).map(|_| rng.alphanumeric()));
    id
}

fn generated_name(rng: &mut fastrand::Rng, n: usize) -> Option<String> {
    let word = WORDS[rng.usize(..WORDS.len())];
    let flavour = FLAVOURS[rng.usize(..FLAVOURS.len())];
    Some(match rng.u8(..20) {
        0 => return None,
        1 => format!("Zürich {word} {n}"),
        2 => format!("数据平台 {word} {n}"),
        3 => format!("🚀 {word} launch {n}"),
        4 => format!("O'Brien's \"{word}\" {n}"),
        5 => format!("Москва {flavour} {n}"),
        6 => format!("Café — {word} {n}"),
        _ => format!("{word} {flavour} {n}"),
    })
}
