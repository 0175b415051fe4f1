-- The organization's audit log: the events the product reads, who made each project change and
-- exactly when.

-- One row per event id, as the API gave it; `target_id` is the project the event is about (the
-- payload's `id`: admin-key actions are filed under the default project, so the top-level
-- `project` is no guide). `applied_at` is when a project event was applied to history (null:
-- not yet); events the product does not apply are stored applied.
create table openai.audit_events (
    id text primary key,
    type text not null,
    effective_at timestamptz not null,
    target_id text,
    actor_type text,
    actor_email text,
    actor_id text,
    -- Who, in words: the session user's email, or the key's id and owner.
    changed_by text,
    raw jsonb not null,
    first_seen_at timestamptz not null default now(),
    applied_at timestamptz
);
create index audit_events_by_target on openai.audit_events (target_id, effective_at);
create index audit_events_to_apply on openai.audit_events (first_seen_at) where applied_at is null;
-- The queue looks up its own creates by name.
create index audit_events_created_by_name on openai.audit_events
    (openai.comparable_name(raw -> 'project.created' -> 'data' ->> 'name'))
    where type = 'project.created';

-- Where the audit-log poll stands: one row. `watermark` is the newest `effective_at` of a window
-- stored whole; the next poll reads from it less the overlap. `logging` is what the last check
-- found ('on', 'off', or 'unknown' before any), `logging_checked_at` when.
create table openai.audit_log_state (
    singleton boolean primary key default true constraint audit_log_state_is_one_row check (singleton),
    watermark timestamptz,
    polled_at timestamptz,
    logging text not null default 'unknown'
        constraint audit_log_state_logging_is_known check (logging in ('on', 'off', 'unknown')),
    logging_checked_at timestamptz
);
insert into openai.audit_log_state default values;

-- Who made the change that opened a version (an email, or a key's id and owner) and where its
-- start came from. Null `time_source` on rows written by walks: derived in the view below.
alter table openai.project_versions
    add column changed_by text,
    add column time_source text
        constraint project_version_time_source_is_known check (time_source in ('api', 'audit_log', 'observed'));

-- The same view as 0007 (the previous version is still looked up per row, by index), with the
-- author and the source of `changed_at` appended.
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
    v.version_id,
    v.changed_by,
    coalesce(v.time_source, case
        when v.change = 'created' and v.valid_from = v.created_at then 'api'
        when v.change = 'archived' and v.valid_from = v.archived_at then 'api'
        else 'observed'
    end) as time_source
from openai.project_versions v
left join lateral (
    select prev.name, prev.status, prev.archived_at, prev.external_key_id, prev.residency, prev.raw
    from openai.project_versions prev
    where prev.project_id = v.project_id and prev.valid_from < v.valid_from
    order by prev.valid_from desc
    limit 1
) p on true;

-- A project is seen by project walks, not by audit-log polls or cost syncs: `last_seen_at`
-- counts only runs of the project resource.
create or replace view openai.projects as
select
    c.project_id,
    c.name,
    c.status,
    c.created_at,
    c.archived_at,
    c.external_key_id,
    c.residency,
    c.raw,
    c.first_seen_at,
    case
        when c.missing_since is null then greatest(c.last_seen_at, last_walk.started_at)
        else c.last_seen_at
    end as last_seen_at,
    c.missing_since
from openai.project_current c
left join lateral (
    select r.started_at
    from openai.sync_runs r
    where r.status = 'succeeded' and r.resource = 'projects'
    order by r.started_at desc
    limit 1
) last_walk on true;

do $$
begin
    if exists (select 1 from pg_roles where rolname = 'openai_analyst') then
        grant select on openai.audit_events, openai.audit_log_state, openai.project_changes,
            openai.projects to openai_analyst;
    end if;
end
$$;
