-- Cheaper walks: a digest to skip comparing unchanged projects, typed columns the planner can
-- inline, and no index the exclusion constraint already makes redundant.

-- Digest of the API's text for the project as last listed. A walk compares a listed project's
-- content only when this differs; null (rows written before this column, or by the request
-- worker) always compares. Never used to decide that something changed.
alter table openai.project_current add column raw_digest bigint;

-- Two open versions of one project would overlap, so the exclusion constraint already refuses
-- them; this index only cost every first version a second index insert.
drop index openai.project_versions_one_open;

-- The same definition as before, now set-returning so that the planner inlines it into the
-- walk's statements instead of calling it once per project.
drop function openai.project_fields(jsonb);
create function openai.project_fields(raw jsonb)
returns table (
    name text,
    status text,
    created_at timestamptz,
    archived_at timestamptz,
    external_key_id text,
    residency text
)
language sql immutable parallel safe
as $$
    select raw ->> 'name',
           raw ->> 'status',
           to_timestamp((raw ->> 'created_at')::double precision),
           to_timestamp((raw ->> 'archived_at')::double precision),
           raw ->> 'external_key_id',
           raw ->> 'residency'
$$;
