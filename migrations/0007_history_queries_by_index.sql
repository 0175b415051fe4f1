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

-- "No gap" enforced by the database, not only by the code: after every statement that writes
-- versions, each version it wrote must begin where the one before it (of the same project, under
-- the same key) ends, and a closed one must be followed by a version beginning where it ends.
-- With the exclusion constraint (no overlap) this makes each project's history contiguous. Every
-- writer closes and opens versions in one statement, so the check runs after whole changes.
create function openai.refuse_history_gaps() returns trigger language plpgsql as $$
declare
    broken record;
begin
    if tg_op = 'DELETE' then
        -- A removed version leaves its neighbours to be checked: all versions of its projects.
        select * into broken from (
            select v.project_id, v.valid_from, v.valid_to, v.project_key,
                   lead(v.valid_from) over w as next_from, lead(v.project_key) over w as next_key
            from openai.project_versions v
            where v.project_id in (select project_id from touched)
            window w as (partition by v.project_id order by v.valid_from)
        ) n
        where (n.next_from is null and n.valid_to is not null)
           or (n.next_from is not null and (n.valid_to is distinct from n.next_from or n.next_key <> n.project_key))
        limit 1;
        if found then
            raise exception 'removing versions would leave a gap in the history of project %', broken.project_id
                using errcode = 'integrity_constraint_violation',
                      detail = format('the version from %s ends at %s, and the next begins at %s',
                                      broken.valid_from, coalesce(broken.valid_to::text, 'no end'),
                                      coalesce(broken.next_from::text, 'no next version')),
                      hint = 'versions of a project are never removed; a project that disappeared is marked vanished';
        end if;
        select t.project_id into broken from touched t
        where exists (select 1 from openai.project_current c where c.project_id = t.project_id)
          and not exists (select 1 from openai.project_versions v where v.project_id = t.project_id)
        limit 1;
        if found then
            raise exception 'removing versions would leave project % without a history', broken.project_id
                using errcode = 'integrity_constraint_violation',
                      hint = 'versions of a project are never removed; a project that disappeared is marked vanished';
        end if;
        return null;
    end if;
    select t.project_id, t.valid_from, t.valid_to, t.project_key,
           before.valid_from as before_from, before.valid_to as before_to, before.project_key as before_key
    into broken
    from touched t
    left join lateral (
        select p.valid_from, p.valid_to, p.project_key from openai.project_versions p
        where p.project_id = t.project_id and p.valid_from < t.valid_from
        order by p.valid_from desc
        limit 1
    ) before on true
    where (before.valid_from is not null
           and (before.valid_to is distinct from t.valid_from or before.project_key <> t.project_key))
       or (t.valid_to is not null and not exists (
            select 1 from openai.project_versions n
            where n.project_id = t.project_id and n.valid_from = t.valid_to and n.project_key = t.project_key))
    limit 1;
    if found then
        raise exception 'the history of project % would have a gap', broken.project_id
            using errcode = 'integrity_constraint_violation',
                  detail = case
                      when broken.before_key <> broken.project_key then format(
                          'its version from %s is under key %s, the one before it under key %s: one project''s history is split across two keys',
                          broken.valid_from, broken.project_key, broken.before_key)
                      when broken.before_from is not null and broken.before_to is distinct from broken.valid_from then format(
                          'the version from %s ends at %s, but the next one begins at %s',
                          broken.before_from, coalesce(broken.before_to::text, 'no end'), broken.valid_from)
                      else format('the version from %s ends at %s, and no version begins then',
                          broken.valid_from, broken.valid_to)
                  end,
                  hint = 'each version of a project must end where the next begins; close the open version and open the new one in one statement';
    end if;
    return null;
end
$$;

create trigger project_versions_no_gap_after_insert after insert on openai.project_versions
    referencing new table as touched for each statement execute function openai.refuse_history_gaps();
create trigger project_versions_no_gap_after_update after update on openai.project_versions
    referencing new table as touched for each statement execute function openai.refuse_history_gaps();
create trigger project_versions_no_gap_after_delete after delete on openai.project_versions
    referencing old table as touched for each statement execute function openai.refuse_history_gaps();
