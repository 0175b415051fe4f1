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
    projects text[];
begin
    if tg_op = 'INSERT' then
        -- The common case, a walk's new versions: each checked against its neighbours by index.
        select t.project_id, t.valid_from, t.valid_to, t.project_key,
               before.valid_from as before_from, before.valid_to as before_to, before.project_key as before_key,
               after.valid_from as after_from, after.project_key as after_key
        into broken
        from touched t
        left join lateral (
            select p.valid_from, p.valid_to, p.project_key from openai.project_versions p
            where p.project_id = t.project_id and p.valid_from < t.valid_from
            order by p.valid_from desc
            limit 1
        ) before on true
        left join lateral (
            select n.valid_from, n.project_key from openai.project_versions n
            where n.project_id = t.project_id and n.valid_from > t.valid_from
            order by n.valid_from
            limit 1
        ) after on true
        where (before.valid_from is not null
               and (before.valid_to is distinct from t.valid_from or before.project_key <> t.project_key))
           or (after.valid_from is distinct from t.valid_to)
           or (after.project_key <> t.project_key)
        limit 1;
        if found then
            raise exception 'the history of project % would have a gap', broken.project_id
                using errcode = 'integrity_constraint_violation',
                      detail = case
                          when broken.before_key <> broken.project_key or broken.after_key <> broken.project_key then format(
                              'its version from %s is under key %s, its neighbour under key %s: one project''s history would be split across two keys',
                              broken.valid_from, broken.project_key, coalesce(broken.before_key, broken.after_key))
                          when broken.before_from is not null and broken.before_to is distinct from broken.valid_from then format(
                              'the version from %s ends at %s, but the next one begins at %s',
                              broken.before_from, coalesce(broken.before_to::text, 'no end'), broken.valid_from)
                          else format('the version from %s ends at %s, and the next one begins at %s',
                              broken.valid_from, coalesce(broken.valid_to::text, 'no end'),
                              coalesce(broken.after_from::text, 'no time: there is none'))
                      end,
                      hint = 'each version of a project must end where the next begins; close the open version and open the new one in one statement';
        end if;
        return null;
    end if;
    -- Updates (a walk closing versions) and deletes are few: every version of each project they
    -- touched, before or after, is checked against the next.
    if tg_op = 'UPDATE' then
        select array_agg(distinct project_id) into projects
        from (select project_id from touched union all select project_id from touched_before) t;
    else
        select array_agg(distinct project_id) into projects from touched_before;
    end if;
    select * into broken from (
        select v.project_id, v.valid_from, v.valid_to, v.project_key,
               lead(v.valid_from) over w as next_from, lead(v.project_key) over w as next_key
        from openai.project_versions v
        where v.project_id = any(projects)
        window w as (partition by v.project_id order by v.valid_from)
    ) n
    where (n.next_from is null and n.valid_to is not null)
       or (n.next_from is not null and (n.valid_to is distinct from n.next_from or n.next_key <> n.project_key))
    limit 1;
    if found then
        raise exception 'the history of project % would have a gap', broken.project_id
            using errcode = 'integrity_constraint_violation',
                  detail = format('the version from %s (key %s) ends at %s, and the next begins at %s (key %s)',
                                  broken.valid_from, broken.project_key, coalesce(broken.valid_to::text, 'no end'),
                                  coalesce(broken.next_from::text, 'no time: there is none'),
                                  coalesce(broken.next_key::text, '-')),
                  hint = 'versions are closed and opened in one statement and never removed; a project that disappeared is marked vanished';
    end if;
    select c.project_id into broken
    from openai.project_current c
    where c.project_id = any(projects)
      and not exists (select 1 from openai.project_versions v where v.project_id = c.project_id)
    limit 1;
    if found then
        raise exception 'project % would be left without a history', broken.project_id
            using errcode = 'integrity_constraint_violation',
                  hint = 'versions are never removed; a project that disappeared is marked vanished';
    end if;
    return null;
end
$$;

create trigger project_versions_no_gap_after_insert after insert on openai.project_versions
    referencing new table as touched for each statement execute function openai.refuse_history_gaps();
create trigger project_versions_no_gap_after_update after update on openai.project_versions
    referencing old table as touched_before new table as touched
    for each statement execute function openai.refuse_history_gaps();
-- A delete has only rows before; the same names keep one function for every case.
create trigger project_versions_no_gap_after_delete after delete on openai.project_versions
    referencing old table as touched_before for each statement execute function openai.refuse_history_gaps();

create function openai.refuse_truncating_history() returns trigger language plpgsql as $$
begin
    raise exception 'the project history is never truncated'
        using errcode = 'integrity_constraint_violation',
              hint = 'versions are never removed; a project that disappeared is marked vanished';
end
$$;
create trigger project_versions_never_truncated before truncate on openai.project_versions
    for each statement execute function openai.refuse_truncating_history();
