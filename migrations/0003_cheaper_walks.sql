-- Cheaper walks: a digest to skip comparing unchanged projects, an exclusion constraint whose
-- index fills evenly, typed columns the planner can inline, and no redundant index.

-- Digest of the API's text for the project as last listed. A walk compares a listed project's
-- content only when this differs; null (rows written before this column, or by the request
-- worker) always compares. Never used to decide that something changed.
alter table openai.project_current add column raw_digest bigint;

-- Keys are handed out in order, so a first sync adds versions to the exclusion constraint's GiST
-- index in key order: every insert lands on the same edge of the tree and its page splits leave
-- pages half empty, which makes each insert into it about half again as costly. The index keys on a
-- bijection of the key that scatters neighbours (distinct keys stay distinct, so the constraint
-- means exactly what it did). Lookups by key through this index must use the same expression.
create function openai.spread_key(key bigint) returns bigint
language sql immutable parallel safe
as $$
    select case
        when key >= 0 and key < 2147483648 then (key * 2654435761) % 4294967296
        else key + 4294967296
    end
$$;

alter table openai.project_versions drop constraint project_versions_never_overlap;
alter table openai.project_versions add constraint project_versions_never_overlap
    exclude using gist (openai.spread_key(project_key) with =, tstzrange(valid_from, valid_to, '[)') with &&);

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
