-- History queries that cost what they return: one project's changes and the changes since a time
-- are index lookups however long history grows.

-- The changes since a time start from this index; the version before each one is found through
-- the primary key (project_id, valid_from).
create index project_versions_by_valid_from on openai.project_versions (valid_from);

-- One row per change: each version is the change that opened it, next to the version before.
-- The previous version is looked up per row (the newest one of the same project starting
-- earlier), instead of a window over all history, so a filter on `project_id` or `changed_at`
-- reaches the indexes and reads only the rows it returns.
create or replace view openai.project_changes as
select
    v.project_id,
    v.valid_from as changed_at,
    v.change,
    p.name as old_name,
    v.name as new_name,
    p.status as old_status,
    v.status as new_status,
    p.archived_at as old_archived_at,
    v.archived_at as new_archived_at,
    p.external_key_id as old_external_key_id,
    v.external_key_id as new_external_key_id,
    p.residency as old_residency,
    v.residency as new_residency,
    p.raw as old_raw,
    v.raw as new_raw,
    v.opened_by_run as sync_run_id,
    v.version_id
from openai.project_versions v
left join lateral (
    select prev.name, prev.status, prev.archived_at, prev.external_key_id, prev.residency, prev.raw
    from openai.project_versions prev
    where prev.project_id = v.project_id and prev.valid_from < v.valid_from
    order by prev.valid_from desc
    limit 1
) p on true;
