-- Versions are keyed by their project and the instant they start, not by `version_id`.
--
-- Versions of one project never overlap and are never empty, so no two of them start at the same
-- instant: (project_id, valid_from) identifies a version. It is also the index that reading one
-- project's history uses, so the table keeps one B-tree where it had two, and every version
-- written pays for one index insert fewer. `version_id` stays, generated as before.
alter table openai.project_versions drop constraint project_versions_pkey;
drop index openai.project_versions_by_project;
alter table openai.project_versions add constraint project_versions_pkey primary key (project_id, valid_from);
