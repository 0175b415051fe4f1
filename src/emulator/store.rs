//! The emulated organization: its projects in creation order, seeded deterministically, and
//! their list answers in the order and shape the current freedoms call for.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::audit_log::{AuditActor, AuditLog, ProjectChange};
use super::freedoms::{Freedoms, ListOrder};
use super::wire::{self, EmulatedProject, PROJECT_OBJECT, Rendering};

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

/// Every project of the emulated organization.
pub struct ProjectStore {
    projects: Vec<EmulatedProject>,
    /// Each project's JSON in the current rendering, kept in step with `projects` so a page is a concatenation.
    json: Vec<String>,
    index: HashMap<String, usize>,
    /// When each project starts showing in list answers; `None` for always.
    visible_from: Vec<Option<Instant>>,
    /// Positions in `projects`, sorted by `arbitrary_rank`: the arbitrary list order.
    by_rank: Vec<usize>,
    rank_seed: u64,
    /// Projects left out of every answer, as if they had vanished upstream.
    hidden: HashSet<String>,
    rng: fastrand::Rng,
    last_created_at: i64,
    freedoms: Freedoms,
    /// The organization's audit log, written with every change under the same lock.
    pub audit: AuditLog,
    /// Who the next change is made by; `None` is a person in the dashboard ("behind the back").
    next_actor: Option<AuditActor>,
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
    pub fn seeded(
        count: usize,
        archived_ratio: f64,
        seed: u64,
        freedoms: Freedoms,
        audit: AuditLog,
    ) -> ProjectStore {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut store = ProjectStore {
            projects: Vec::with_capacity(count),
            json: Vec::with_capacity(count),
            index: HashMap::with_capacity(count),
            visible_from: Vec::with_capacity(count),
            by_rank: Vec::with_capacity(count),
            rank_seed: seed.rotate_left(17) ^ 0x51_7cc1_b727_220a,
            hidden: Default::default(),
            rng: fastrand::Rng::with_seed(seed ^ 0x9e37_79b9_7f4a_7c15),
            last_created_at: SEED_EPOCH,
            freedoms,
            audit,
            next_actor: None,
        };
        let mut created_at = SEED_EPOCH - (count as i64) * 600;
        for n in 0..count {
            created_at += rng.i64(1..=600);
            let archived = rng.f64() < archived_ratio;
            let project = EmulatedProject {
                id: new_id(&mut rng),
                object: PROJECT_OBJECT.into(),
                created_at,
                name: generated_name(&mut rng, n).map(|name| store.freedoms.stored_name(&name)),
                status: Some(if archived { "archived" } else { "active" }.into()),
                archived_at: archived.then(|| created_at + rng.i64(60..=86_400 * 30)),
                external_key_id: (rng.u8(..) < 8).then(|| format!("key_{}", rng.u32(..))),
                residency: (rng.u8(..) < 16).then(|| "EU_STORAGE_PROCESSING".to_owned()),
                extra: Default::default(),
            };
            store.push(project, None);
        }
        // Sorting once beats inserting each seeded project at its rank.
        let mut ranked: Vec<(u64, usize)> = (0..store.projects.len())
            .map(|i| (store.arbitrary_rank(i), i))
            .collect();
        ranked.sort_unstable();
        store.by_rank = ranked.into_iter().map(|(_, i)| i).collect();
        store.last_created_at = created_at.max(SEED_EPOCH);
        store
    }

    /// Appends a project to the creation order, without ranking it.
    fn push(&mut self, project: EmulatedProject, visible_from: Option<Instant>) -> usize {
        let i = self.projects.len();
        self.index.insert(project.id.clone(), i);
        self.json
            .push(project.to_json(Rendering::of(&self.freedoms)));
        self.visible_from.push(visible_from);
        self.projects.push(project);
        i
    }

    /// The project's key in the arbitrary order: a seeded hash of its id, then its position.
    fn arbitrary_rank(&self, i: usize) -> u64 {
        // FNV-1a then a splitmix64 finalizer: stable for a seed, unrelated to creation order.
        let mut hash = self.rank_seed ^ 0xcbf2_9ce4_8422_2325;
        for byte in self.projects[i].id.bytes() {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        hash = (hash ^ (hash >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        hash = (hash ^ (hash >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        hash ^ (hash >> 31)
    }

    /// Where project `i` stands, or would stand, in `by_rank`.
    fn rank_position(&self, i: usize) -> Result<usize, usize> {
        let key = (self.arbitrary_rank(i), i);
        self.by_rank
            .binary_search_by_key(&key, |&j| (self.arbitrary_rank(j), j))
    }

    /// Makes the next change one made through the API with the admin key.
    pub fn as_admin_key(&mut self) -> &mut ProjectStore {
        self.next_actor = Some(self.audit.admin_key_actor());
        self
    }

    /// Makes the next change one made in the dashboard by the person with `email`.
    pub fn as_person(&mut self, email: &str) -> &mut ProjectStore {
        self.next_actor = Some(AuditActor::session(email));
        self
    }

    /// Records a change to project `i` in the audit log, by whoever the next actor is.
    fn audit(&mut self, i: usize, change: ProjectChange, effective_at: i64) {
        let actor = self
            .next_actor
            .take()
            .unwrap_or_else(|| AuditActor::session(super::audit_log::DEFAULT_SESSION_EMAIL));
        let project = &self.projects[i];
        self.audit.record(
            &project.id,
            project.name.as_deref(),
            &change,
            &actor,
            effective_at,
        );
    }

    /// The freedoms the server takes now.
    pub fn freedoms(&self) -> &Freedoms {
        &self.freedoms
    }

    /// Takes other freedoms; every project's JSON is rendered again when the shape changed.
    pub fn set_freedoms(&mut self, freedoms: Freedoms) {
        let rerender = Rendering::of(&freedoms) != Rendering::of(&self.freedoms);
        self.freedoms = freedoms;
        if rerender {
            let rendering = Rendering::of(&self.freedoms);
            self.json = self.projects.iter().map(|p| p.to_json(rendering)).collect();
        }
    }

    /// Changes the order the list answers in.
    pub fn set_order(&mut self, order: ListOrder) {
        self.freedoms.order = order;
    }

    /// The number of projects, archived ones included.
    pub fn len(&self) -> usize {
        self.projects.len()
    }

    /// One project by id, unless hidden; a project not yet listed is found all the same.
    pub fn get(&self, id: &str) -> Option<&EmulatedProject> {
        if self.hidden.contains(id) {
            return None;
        }
        self.index.get(id).map(|&i| &self.projects[i])
    }

    /// One project's JSON as the server writes it now, unless hidden.
    pub fn get_json(&self, id: &str) -> Option<&str> {
        if self.hidden.contains(id) {
            return None;
        }
        self.index.get(id).map(|&i| self.json[i].as_str())
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
    pub fn all(&self) -> &[EmulatedProject] {
        &self.projects
    }

    /// Whether `id` names a project, so a cursor can be checked before listing.
    pub fn contains(&self, id: &str) -> bool {
        self.index.contains_key(id)
    }

    /// Positions in `projects` after the cursor's, in the current list order.
    fn after_cursor(&self, position: Option<usize>) -> Box<dyn Iterator<Item = usize> + '_> {
        match self.freedoms.order {
            ListOrder::OldestFirst => Box::new(position.map_or(0, |i| i + 1)..self.projects.len()),
            ListOrder::NewestFirst => Box::new((0..position.unwrap_or(self.projects.len())).rev()),
            ListOrder::Arbitrary => {
                let start = position.map_or(0, |i| match self.rank_position(i) {
                    Ok(at) => at + 1,
                    Err(at) => at,
                });
                Box::new(self.by_rank[start..].iter().copied())
            }
        }
    }

    /// One list answer's JSON body: up to `limit` projects after the cursor in the current order,
    /// fewer when pages are short, leaving out projects that do not show yet at `now`.
    pub fn list(
        &self,
        limit: usize,
        after: Option<&str>,
        include_archived: bool,
        now: Instant,
    ) -> String {
        let page_size = self.freedoms.page_size(limit);
        let position = after.and_then(|id| self.index.get(id).copied());
        let listed = |&i: &usize| {
            let p = &self.projects[i];
            (include_archived || !p.is_archived())
                && self.visible_from[i].is_none_or(|from| from <= now)
                && !self.hidden.contains(&p.id)
        };
        let chosen: Vec<usize> = self
            .after_cursor(position)
            .filter(listed)
            .take(page_size + 1)
            .collect();
        let has_more = chosen.len() > page_size;
        let chosen = &chosen[..chosen.len().min(page_size)];
        let id = |i: Option<&usize>| i.map(|&i| self.projects[i].id.as_str());
        wire::list_body(
            chosen.iter().map(|&i| self.json[i].as_str()),
            id(chosen.first()),
            id(chosen.last()),
            has_more,
            Rendering::of(&self.freedoms),
        )
    }

    /// Creates a project now, as the API would: the name stored the server's way, listed after the lag.
    pub fn create(
        &mut self,
        name: &str,
        external_key_id: Option<String>,
        residency: Option<String>,
    ) -> EmulatedProject {
        // Creation times never go backwards, so the stored order stays the creation order.
        let now = chrono::Utc::now().timestamp().max(self.last_created_at);
        self.last_created_at = now;
        let project = EmulatedProject {
            id: new_id(&mut self.rng),
            object: PROJECT_OBJECT.into(),
            created_at: now,
            name: Some(self.freedoms.stored_name(name)),
            status: Some("active".into()),
            archived_at: None,
            external_key_id,
            residency,
            extra: Default::default(),
        };
        let lag = self.freedoms.list_lag();
        let visible_from = (!lag.is_zero()).then(|| Instant::now() + lag);
        let i = self.push(project.clone(), visible_from);
        if let Err(at) = self.rank_position(i) {
            self.by_rank.insert(at, i);
        }
        let name = project.name.clone().unwrap_or_default();
        self.audit(i, ProjectChange::Created { name }, now);
        project
    }

    /// Applies a change to one project and returns it.
    pub fn update(
        &mut self,
        id: &str,
        change: impl FnOnce(&mut EmulatedProject),
    ) -> Option<EmulatedProject> {
        let i = *self.index.get(id)?;
        let project = &mut self.projects[i];
        change(project);
        self.json[i] = project.to_json(Rendering::of(&self.freedoms));
        Some(project.clone())
    }

    /// Renames a project, the name stored the server's way.
    pub fn rename(&mut self, id: &str, name: &str) -> Option<EmulatedProject> {
        let stored = self.freedoms.stored_name(name);
        let title = stored.clone();
        let Some(renamed) = self.update(id, |p| p.name = Some(stored)) else {
            self.next_actor = None;
            return None;
        };
        if let Some(&i) = self.index.get(id) {
            self.audit(
                i,
                ProjectChange::Renamed { title },
                chrono::Utc::now().timestamp(),
            );
        }
        Some(renamed)
    }

    /// Changes a project's encryption key; the audit log's payload does not say what changed.
    pub fn set_external_key(&mut self, id: &str, key: String) -> Option<EmulatedProject> {
        let Some(changed) = self.update(id, |p| p.external_key_id = Some(key)) else {
            self.next_actor = None;
            return None;
        };
        if let Some(&i) = self.index.get(id) {
            self.audit(i, ProjectChange::Updated, chrono::Utc::now().timestamp());
        }
        Some(changed)
    }

    /// Archives a project; archiving twice changes nothing and records nothing.
    pub fn archive(&mut self, id: &str) -> Option<EmulatedProject> {
        let now = chrono::Utc::now().timestamp();
        let was_archived = self.get(id).is_some_and(EmulatedProject::is_archived);
        let Some(archived) = self.update(id, |p| {
            if !p.is_archived() {
                p.status = Some("archived".into());
                p.archived_at = Some(now);
            }
        }) else {
            self.next_actor = None;
            return None;
        };
        match self.index.get(id) {
            Some(&i) if !was_archived => self.audit(i, ProjectChange::Archived, now),
            _ => self.next_actor = None,
        }
        Some(archived)
    }

    /// Sets a field the product does not model, as a newer API version might add.
    pub fn set_extra(&mut self, id: &str, key: &str, value: Value) -> Option<EmulatedProject> {
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
                self.rename(&id, &format!("Renamed {stamp} #{n}"));
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
            let residency = self.freedoms.default_residency.clone();
            self.create(&format!("New at {stamp} #{n}"), None, residency);
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
