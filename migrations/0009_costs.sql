-- The organization's costs, as the Costs API reports them per UTC day, project and line item;
-- every later change of a figure; and a view that names each cost as its project was named then.

-- One row per (day, project, line item, currency). A null project_id or line_item is a real key
-- (cost the API does not attribute to a project or a line item), hence `nulls not distinct`.
create table openai.costs (
    bucket_start timestamptz not null,
    bucket_end timestamptz not null,
    project_id text,
    line_item text,
    currency text,
    -- Exact, as the API wrote it (number or string, plain or scientific), trailing zeros dropped.
    amount numeric not null,
    quantity numeric,
    quantity_unit text,
    -- The API's result object as received, fields this product does not model included.
    raw jsonb not null,
    first_fetched_at timestamptz not null,
    -- When the row was last written: a re-read that finds the same figures writes nothing.
    last_fetched_at timestamptz not null,
    first_run bigint not null,
    last_run bigint not null,
    constraint cost_bucket_not_empty check (bucket_end > bucket_start),
    constraint costs_one_row_per_key unique nulls not distinct (bucket_start, project_id, line_item, currency)
);

-- Every change of a stored figure after it was first read: a changed amount, a row the API
-- listed later on a day already read (old_amount null), a row it no longer lists (new_amount null).
create table openai.cost_revisions (
    id bigint generated always as identity primary key,
    bucket_start timestamptz not null,
    project_id text,
    line_item text,
    currency text,
    old_amount numeric,
    new_amount numeric,
    -- The replaced figure had been fetched while its day was still in progress (today's bucket
    -- filling up), rather than restated after the day had ended.
    provisional boolean not null,
    observed_at timestamptz not null,
    run_id bigint not null,
    constraint cost_revision_changes_something check (old_amount is distinct from new_amount)
);
create index cost_revisions_by_day on openai.cost_revisions (bucket_start);

-- Each UTC day the Costs API has been read for, with spend or without: what a backfill still
-- has to read, and whether a row appearing later on a day is a change after the fact.
create table openai.cost_days (
    bucket_start timestamptz primary key,
    first_read_at timestamptz not null,
    first_run bigint not null
);

-- The figures of a cost pass (resource 'costs'): `pages` API pages, `inserted`/`changed`/
-- `unchanged` cost rows, and these. `if not exists` keeps other resources' migrations free to
-- add a column of the same meaning.
alter table openai.sync_runs add column if not exists days_read integer not null default 0;
alter table openai.sync_runs add column if not exists removed integer not null default 0;
alter table openai.sync_runs add column if not exists revisions integer not null default 0;
-- Days re-read empty that had spend stored: kept as they were, and warned about.
alter table openai.sync_runs add column if not exists days_kept integer not null default 0;

-- The current-state view counted any succeeded run as the last walk; cost passes are not walks.
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

-- Finance's view: each cost row with its project's name and status at `bucket_start`.
--
-- Versions of a project are contiguous and the last one never ends, so exactly one version is
-- valid at any instant from the project's `created_at` on. On the day a project was created its
-- first version starts after midnight: that day's costs take the first version's name. One
-- equi-join on project_id (the versions' primary key leads with it), no function per row.
create view openai.costs_by_project as
select
    c.bucket_start,
    c.bucket_end,
    c.project_id,
    c.line_item,
    c.currency,
    c.amount,
    c.quantity,
    c.quantity_unit,
    v.name as project_name,
    v.status as project_status,
    now_.name as project_name_now,
    c.project_id is not null as attributed,
    c.raw
from openai.costs c
left join openai.project_versions v
    on v.project_id = c.project_id
   and v.valid_from < c.bucket_end
   and (v.valid_to is null or v.valid_to > c.bucket_start)
   and (v.valid_from <= c.bucket_start or v.change = 'created')
left join openai.project_current now_ on now_.project_id = c.project_id;

do $$
begin
    if exists (select 1 from pg_roles where rolname = 'openai_analyst') then
        grant select on openai.costs, openai.cost_revisions, openai.cost_days, openai.costs_by_project
            to openai_analyst;
    end if;
end
$$;
