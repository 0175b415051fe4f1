-- Request names: direction marks, embeddings, overrides, isolates, invisible operators, the
-- soft hyphen and the Arabic letter mark show as nothing (or reorder what follows them), so a
-- name holding one would compare as another name. They join the zero-width characters: refused
-- at insert, and dropped where names are compared. `worker::candidates::INVISIBLE` is the same
-- set in Rust; a test holds the two together.
create or replace function openai.comparable_name(name text) returns text
language sql immutable strict parallel safe
as $$
    select btrim(regexp_replace(
        translate(normalize(name, NFC),
                  U&'\0009\000A\000B\000C\000D\0085\00A0\1680\2000\2001\2002\2003\2004\2005\2006\2007\2008\2009\200A\2028\2029\202F\205F\3000\200B\200C\200D\2060\FEFF\180E\00AD\061C\200E\200F\202A\202B\202C\202D\202E\2061\2062\2063\2064\2066\2067\2068\2069\206A\206B\206C\206D\206E\206F',
                  '                        '),
        ' {2,}', ' ', 'g'), ' ')
$$;
-- The queue's look-up of its own creates by name is an index on that function: built anew, not
-- reindexed, since a connection that used the index before keeps the function's old body in
-- its cached index definition, and a reindex on that connection would write the old keys.
drop index openai.audit_events_created_by_name;
create index audit_events_created_by_name on openai.audit_events
    (openai.comparable_name(raw -> 'project.created' -> 'data' ->> 'name'))
    where type = 'project.created';

create or replace function openai.refuse_unsafe_request_name() returns trigger language plpgsql as $$
declare
    spaces constant text := U&'\0009-\000D\0020\0085\00A0\1680\2000-\200A\2028\2029\202F\205F\3000';
    invisible constant text := U&'\200B-\200F\2060-\2064\2066-\206F\202A-\202E\FEFF\180E\00AD\061C';
    rule text;
begin
    rule := case
        when openai.comparable_name(new.name) = '' then 'request_name_is_blank'
        when new.name ~ ('^[' || spaces || invisible || ']') or new.name ~ ('[' || spaces || invisible || ']$')
            then 'request_name_has_surrounding_spaces'
        when not new.name is nfc normalized then 'request_name_is_not_nfc_normalized'
        when new.name ~ ('[' || invisible || ']') then 'request_name_has_zero_width_characters'
    end;
    if rule is not null then
        raise exception 'new row for relation "project_requests" violates check constraint "%"', rule
            using errcode = 'check_violation', constraint = rule, table = 'project_requests',
                  schema = 'openai',
                  hint = 'names must be NFC-normalized text without zero-width or other invisible characters (direction marks, overrides, isolates) or spaces at either end, so that they can be compared with the names the API returns';
    end if;
    return new;
end
$$;

-- A pending request may have been put back after an attempt whose outcome was never confirmed
-- (`candidates_since` set): cancelling it stops further attempts, but that attempt's project may
-- still exist or land later. Its row says so instead of "nothing was created". A reason ops give
-- in `error` with the cancel is kept; otherwise the row says who cancelled it.
create or replace function openai.guard_request_cancel() returns trigger language plpgsql as $$
begin
    if new.status = 'cancelled' and old.status is distinct from 'cancelled' then
        if old.status <> 'pending' then
            raise exception 'request % is %, so it can no longer be cancelled', old.id, old.status
                using errcode = 'check_violation',
                      hint = case when old.status in ('creating', 'unknown')
                                  then 'the project may already exist; wait for the outcome'
                                  else 'the request has ended already' end;
        end if;
        new.finished_at := now();
        new.updated_at := now();
        if new.error is null or new.error is not distinct from old.error then
            new.error := 'cancelled by ' || session_user;
        end if;
        if old.candidates_since is not null then
            new.error := new.error || '; an earlier attempt''s create was never confirmed, so a project of this name may exist: check the project list';
        end if;
    end if;
    return new;
end
$$;

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
        when 'cancelled' then
            case when r.candidates_since is not null
                 then 'cancelled: no more attempts, but an earlier attempt''s create was never confirmed: a project of this name may exist; check the project list before requesting it again'
                 else 'cancelled: nothing was created' end
    end as next_step
from openai.project_requests r;
