//! Walking every page of the project list, refusing pagination that would loop or stop early.

use std::collections::HashSet;

use super::{AdminClient, ApiError, ListParams, Project, ProjectPage, RawProjectPage};

/// A cursor over all pages of `GET /organization/projects`.
#[derive(Debug)]
pub struct ProjectWalk {
    client: AdminClient,
    page_size: u32,
    include_archived: bool,
    cursor: Option<String>,
    cursors_seen: HashSet<String>,
    pages: u64,
    done: bool,
}

impl ProjectWalk {
    pub(super) fn new(client: AdminClient, page_size: u32, include_archived: bool) -> ProjectWalk {
        ProjectWalk {
            client,
            page_size,
            include_archived,
            cursor: None,
            cursors_seen: HashSet::new(),
            pages: 0,
            done: false,
        }
    }

    /// Fetches the next page, or `None` once the API said there is no more.
    pub async fn next_page(&mut self) -> Result<Option<ProjectPage>, ApiError> {
        let Some(raw) = self.next_raw_page().await? else {
            return Ok(None);
        };
        let data = raw
            .projects
            .iter()
            .map(|p| serde_json::from_str::<Project>(p.raw.get()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ApiError::Decode {
                message: e.to_string(),
                request_id: None,
            })?;
        Ok(Some(ProjectPage {
            object: "list".into(),
            first_id: data.first().map(|p| p.id.clone()),
            last_id: data.last().map(|p| p.id.clone()),
            has_more: raw.has_more,
            data,
        }))
    }

    /// Fetches the next page as the API's own JSON, or `None` once there is no more.
    pub async fn next_raw_page(&mut self) -> Result<Option<RawProjectPage>, ApiError> {
        if self.done {
            return Ok(None);
        }
        let params = ListParams {
            limit: self.page_size,
            after: self.cursor.clone(),
            include_archived: self.include_archived,
        };
        let page = self.client.list_page_raw(&params).await?;
        self.pages += 1;
        // The cursor is the last item's id; a `last_id` naming another project would skip or
        // repeat projects whichever of the two the server meant.
        let last_item = page.projects.last().map(|p| p.id.as_str());
        if let (Some(last_id), Some(last_item)) = (page.last_id.as_deref(), last_item)
            && last_id != last_item
        {
            self.done = true;
            return Err(ApiError::Pagination {
                page: self.pages,
                problem: format!(
                    "the page's last_id {last_id} is not its last project's id {last_item}"
                ),
            });
        }
        if !page.has_more {
            self.done = true;
            return Ok(Some(page));
        }
        let Some(next) = last_item.map(str::to_owned) else {
            self.done = true;
            return Err(ApiError::Pagination {
                page: self.pages,
                problem: "the API said has_more on an empty page".into(),
            });
        };
        if !self.cursors_seen.insert(next.clone()) {
            self.done = true;
            return Err(ApiError::Pagination {
                page: self.pages,
                problem: format!("cursor {next} came back a second time; the walk would loop"),
            });
        }
        self.cursor = Some(next);
        Ok(Some(page))
    }

    /// How many pages have been fetched so far.
    pub fn pages(&self) -> u64 {
        self.pages
    }
}
