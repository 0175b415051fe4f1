-- Reconciliation that never turns "could not confirm" into "nothing was made", and request
-- names that can be compared safely.

-- The form in which names are compared: NFC, zero-width characters removed, every run of
-- Unicode white space folded to one space, no space at either end. `worker::comparable_name`
-- is the same definition in Rust; a test holds the two together.
create function openai.comparable_name(name text) returns text
language sql immutable strict parallel safe
as $$
    select btrim(regexp_replace(
        translate(normalize(name, NFC),
                  U&'\0009\000A\000B\000C\000D\0085\00A0\1680\2000\2001\2002\2003\2004\2005\2006\2007\2008\2009\200A\2028\2029\202F\205F\3000\200B\200C\200D\2060\FEFF\180E',
                  '                        '),
        ' {2,}', ' ', 'g'), ' ')
$$;

-- When the current outcome became unknown: the grace period counts from here, not from when the
-- attempt started (a create can land long after its caller timed out).
alter table openai.project_requests add column unknown_since timestamptz;
-- Start of the earliest attempt that may have reached the API: a project created since then
-- (less clock skew) under this name may be this request's.
alter table openai.project_requests add column candidates_since timestamptz;
-- When the first list walk that found no candidate at all started; a new attempt needs a
-- second such walk at least the grace period later.
alter table openai.project_requests add column first_fruitless_walk_at timestamptz;

update openai.project_requests
set unknown_since = updated_at, candidates_since = attempt_started_at
where status = 'unknown';

alter table openai.project_requests add constraint request_unknown_without_since check
    (status <> 'unknown' or (unknown_since is not null and candidates_since is not null));

-- Names must compare safely. Existing rows are not re-checked (`not valid`); every new row is.
alter table openai.project_requests drop constraint request_name_is_blank;
alter table openai.project_requests add constraint request_name_is_blank
    check (openai.comparable_name(name) <> '') not valid;
alter table openai.project_requests drop constraint request_name_has_surrounding_spaces;
alter table openai.project_requests add constraint request_name_has_surrounding_spaces check (
    openai.comparable_name(name) = ''
    or (name !~ U&'^[\0009-\000D\0020\0085\00A0\1680\2000-\200A\2028\2029\202F\205F\3000\200B-\200D\2060\FEFF\180E]'
        and name !~ U&'[\0009-\000D\0020\0085\00A0\1680\2000-\200A\2028\2029\202F\205F\3000\200B-\200D\2060\FEFF\180E]$')
) not valid;
alter table openai.project_requests add constraint request_name_is_not_nfc_normalized
    check (name is nfc normalized) not valid;
alter table openai.project_requests add constraint request_name_has_zero_width_characters
    check (name !~ U&'[\200B-\200D\2060\FEFF\180E]') not valid;

-- Candidates of an unknown request are the projects created since its attempt began: few,
-- and found through this index. (An index on the comparable name would cost every walk's
-- insert a normalization, about a second per 100,000 projects.)
create index project_current_by_created_at on openai.project_current (created_at);

create or replace view openai.project_request_status as
select
    r.id,
    r.name,
    r.status,
    r.project_id,
    r.error,
    r.requested_by,
    r.requested_at,
    r.attempts,
    r.finished_at,
    case r.status
        when 'pending' then
            case when r.next_attempt_at > now()
                 then 'waiting: will be tried again at ' || to_char(r.next_attempt_at at time zone 'UTC', 'YYYY-MM-DD HH24:MI:SS') || ' UTC'
                 else 'waiting: the daemon will create it within seconds' end
        when 'creating' then 'being created now (attempt ' || r.attempts || ')'
        when 'unknown' then 'the create may have reached the API: the daemon is looking for the project before anything else; nothing to do'
        when 'created' then 'done: project ' || r.project_id
        when 'failed' then
            case when r.error like 'could not tell%'
                 then 'ended for a person: a project may already exist; check the candidate projects named in error: if one is this request''s project, use it, and do not request it again'
                 else 'ended without a project: read error, fix the request and insert a new one' end
        when 'cancelled' then 'cancelled: nothing was created'
    end as next_step
from openai.project_requests r;
