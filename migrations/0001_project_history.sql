-- Projects, their change history (SCD type 2), and the sync runs that observed them.

create schema if not exists openai;

-- btree_gist lets one exclusion constraint combine "same project" (=) with "overlapping validity" (&&).
create extension if not exists btree_gist;

create table openai.sync_runs (
    id bigint generated always as identity primary key,
    trigger text not null check (trigger in ('manual', 'schedule', 'startup')),
    started_at timestamptz not null default now(),
    finished_at timestamptz,
    status text not null default 'running' check (status in ('running', 'succeeded', 'failed')),
    pages integer not null default 0,
    seen integer not null default 0,
    inserted integer not null default 0,
    changed integer not null default 0,
    unchanged integer not null default 0,
    vanished integer not null default 0,
    reappeared integer not null default 0,
    error text,
    constraint sync_run_finished_when_not_running
        check ((status = 'running') = (finished_at is null)),
    constraint sync_run_failure_has_error
        check (status <> 'failed' or error is not null)
);
create index sync_runs_succeeded_recent on openai.sync_runs (started_at desc) where status = 'succeeded';

-- Current state, one row per project id ever seen. `key` is a compact surrogate: the exclusion
-- constraint below is several times cheaper over a bigint than over the text id.
create table openai.project_current (
    key bigint generated always as identity primary key,
    project_id text not null unique,
    name text,
    status text,
    created_at timestamptz not null,
    archived_at timestamptz,
    external_key_id text,
    residency text,
    raw jsonb not null,
    first_seen_at timestamptz not null,
    last_seen_at timestamptz not null,
    missing_since timestamptz
);

-- No foreign keys here: their per-row triggers would triple the cost of a first sync. Only the
-- sync and the request worker write these rows, always with a key from project_current.
create table openai.project_versions (
    version_id bigint generated always as identity primary key,
    project_key bigint not null,
    project_id text not null,
    name text,
    status text,
    created_at timestamptz not null,
    archived_at timestamptz,
    external_key_id text,
    residency text,
    raw jsonb not null,
    missing boolean not null default false,
    change text not null
        check (change in ('created', 'renamed', 'archived', 'unarchived', 'vanished', 'reappeared', 'updated')),
    valid_from timestamptz not null,
    valid_to timestamptz,
    opened_by_run bigint,
    closed_by_run bigint,
    constraint project_version_not_empty check (valid_to is null or valid_to > valid_from),
    constraint project_versions_never_overlap
        exclude using gist (project_key with =, tstzrange(valid_from, valid_to, '[)') with &&)
);
create unique index project_versions_one_open on openai.project_versions (project_key) where valid_to is null;
create index project_versions_by_project on openai.project_versions (project_id, valid_from);

-- Current state for readers. A project present in the last complete walk was seen then; writing
-- that time into every row on every sync would rewrite the whole table for nothing.
create view openai.projects as
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
    where r.status = 'succeeded'
    order by r.started_at desc
    limit 1
) last_walk on true;

-- One row per change: each version is the change that opened it, next to the version before.
create view openai.project_changes as
select
    v.project_id,
    v.valid_from as changed_at,
    v.change,
    lag(v.name) over w as old_name,
    v.name as new_name,
    lag(v.status) over w as old_status,
    v.status as new_status,
    lag(v.archived_at) over w as old_archived_at,
    v.archived_at as new_archived_at,
    lag(v.external_key_id) over w as old_external_key_id,
    v.external_key_id as new_external_key_id,
    lag(v.residency) over w as old_residency,
    v.residency as new_residency,
    lag(v.raw) over w as old_raw,
    v.raw as new_raw,
    v.opened_by_run as sync_run_id,
    v.version_id
from openai.project_versions v
window w as (partition by v.project_key order by v.valid_from);

-- Every project's version valid at `ts`; `missing` marks projects a complete walk no longer listed.
create function openai.projects_as_of(ts timestamptz)
returns table (
    project_id text,
    name text,
    status text,
    created_at timestamptz,
    archived_at timestamptz,
    external_key_id text,
    residency text,
    missing boolean,
    raw jsonb,
    valid_from timestamptz,
    valid_to timestamptz
)
language sql stable
as $$
    select v.project_id, v.name, v.status, v.created_at, v.archived_at, v.external_key_id,
           v.residency, v.missing, v.raw, v.valid_from, v.valid_to
    from openai.project_versions v
    -- Written as containment so the exclusion constraint's GiST index can answer it.
    where tstzrange(v.valid_from, v.valid_to, '[)') @> ts
$$;

-- The typed columns of a project, derived from the API's object; one definition for every writer.
create function openai.project_fields(
    raw jsonb,
    out name text,
    out status text,
    out created_at timestamptz,
    out archived_at timestamptz,
    out external_key_id text,
    out residency text
)
language sql immutable
as $$
    select raw ->> 'name',
           raw ->> 'status',
           to_timestamp((raw ->> 'created_at')::double precision),
           to_timestamp((raw ->> 'archived_at')::double precision),
           raw ->> 'external_key_id',
           raw ->> 'residency'
$$;
