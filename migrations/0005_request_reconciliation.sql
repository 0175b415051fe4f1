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

-- Rows the earlier release may already have tried and put back: a project from any of their
-- attempts may still land, so their candidates start when they were requested.
update openai.project_requests
set candidates_since = requested_at
where attempts > 0 and status in ('pending', 'creating', 'unknown');

-- Names must compare safely. Checked when a name is written (insert, or a change of name), not
-- as row constraints: rows written before this release keep being updated by the worker.
-- Each refusal names the rule, as a constraint would.
create function openai.refuse_unsafe_request_name() returns trigger language plpgsql as $$
declare
    spaces constant text := U&'\0009-\000D\0020\0085\00A0\1680\2000-\200A\2028\2029\202F\205F\3000';
    zero_width constant text := U&'\200B-\200D\2060\FEFF\180E';
    rule text;
begin
    rule := case
        when openai.comparable_name(new.name) = '' then 'request_name_is_blank'
        when new.name ~ ('^[' || spaces || zero_width || ']') or new.name ~ ('[' || spaces || zero_width || ']$')
            then 'request_name_has_surrounding_spaces'
        when not new.name is nfc normalized then 'request_name_is_not_nfc_normalized'
        when new.name ~ ('[' || zero_width || ']') then 'request_name_has_zero_width_characters'
    end;
    if rule is not null then
        raise exception 'new row for relation "project_requests" violates check constraint "%"', rule
            using errcode = 'check_violation', constraint = rule, table = 'project_requests',
                  schema = 'openai',
                  hint = 'names must be NFC-normalized text without zero-width characters or spaces at either end, so that they can be compared with the names the API returns';
    end if;
    return new;
end
$$;
create trigger project_requests_safe_name before insert or update of name on openai.project_requests
    for each row execute function openai.refuse_unsafe_request_name();

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
