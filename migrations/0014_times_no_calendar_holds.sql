-- A unix time the API writes outside the years 1 to 9999 is stored as unknown (null), not as a
-- time: past the years Postgres holds it failed every walk that listed the project, and past
-- 9999 most clients of the database (Python's datetime among them) cannot read it back. The
-- stored JSON keeps the number as written. `unix_time::STORABLE_SECONDS` draws the same line.

-- The time `seconds` (a JSON number of unix seconds) names, with its fraction; null for
-- anything else: JSON null, another type, or a number outside the years 1 to 9999.
create function openai.unix_time(seconds jsonb) returns timestamptz
language sql immutable parallel safe
as $$
    select case when jsonb_typeof(seconds) = 'number' then
        case when seconds::numeric >= -62135596800 and seconds::numeric < 253402300800
            then to_timestamp(seconds::numeric::double precision)
        end
    end
$$;

-- The same definition as 0003, its times read through openai.unix_time.
create or replace function openai.project_fields(raw jsonb)
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
           openai.unix_time(raw -> 'created_at'),
           openai.unix_time(raw -> 'archived_at'),
           raw ->> 'external_key_id',
           raw ->> 'residency'
$$;

-- Unknown creation times: such a project's history starts when a walk first saw it.
alter table openai.project_current alter column created_at drop not null;
alter table openai.project_versions alter column created_at drop not null;
