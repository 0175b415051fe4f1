-- The gap check reads each touched project's history once, in order, instead of looking up the
-- neighbours of every touched version one by one: a walk's first sync touches every project, and
-- two index look-ups per version cost more than one ordered pass over each project's versions
-- through the primary key. The touched ids are collected first: a join on the transition table
-- itself is planned as if it held 200 distinct ids, which made a thousand-row update read the
-- whole index. A statement that touched many projects (a first sync) has the check planned for
-- its number of ids; the common small one keeps the session's cached plan. The function's
-- operators resolve in pg_catalog whatever the caller's search_path.
create or replace function openai.refuse_history_gaps() returns trigger language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    broken record;
    projects text[];
    gapped bigint;
    gaps constant text := $gaps$
    select n.project_id, n.valid_from, n.valid_to, n.project_key, n.next_from, n.next_key
    from (
        select v.project_id, v.valid_from, v.valid_to, v.project_key,
               lead(v.valid_from) over w as next_from, lead(v.project_key) over w as next_key
        from openai.project_versions v
        where v.project_id = any($1)
        window w as (partition by v.project_id order by v.valid_from)
    ) n
    where (n.next_from is null and n.valid_to is not null)
       or (n.next_from is not null and (n.valid_to is distinct from n.next_from or n.next_key <> n.project_key))
    limit 1
    $gaps$;
begin
    if tg_op = 'INSERT' then
        select array_agg(distinct project_id) into projects from touched;
    elsif tg_op = 'UPDATE' then
        select array_agg(distinct project_id) into projects
        from (select project_id from touched union all select project_id from touched_before) t;
    else
        select array_agg(distinct project_id) into projects from touched_before;
    end if;
    -- Each version of a touched project must end where the next begins, under the same key, and
    -- the last must be open. With the exclusion constraint (no overlap) this makes each project's
    -- history contiguous. Every writer closes and opens versions in one statement, so the check
    -- runs after whole changes.
    if cardinality(projects) > 1000 then
        execute gaps into broken using projects;
        get diagnostics gapped = row_count;
    else
        select n.project_id, n.valid_from, n.valid_to, n.project_key, n.next_from, n.next_key
        into broken
        from (
            select v.project_id, v.valid_from, v.valid_to, v.project_key,
                   lead(v.valid_from) over w as next_from, lead(v.project_key) over w as next_key
            from openai.project_versions v
            where v.project_id = any(projects)
            window w as (partition by v.project_id order by v.valid_from)
        ) n
        where (n.next_from is null and n.valid_to is not null)
           or (n.next_from is not null and (n.valid_to is distinct from n.next_from or n.next_key <> n.project_key))
        limit 1;
        get diagnostics gapped = row_count;
    end if;
    if gapped > 0 then
        raise exception 'the history of project % would have a gap', broken.project_id
            using errcode = 'integrity_constraint_violation',
                  detail = case
                      when broken.next_key <> broken.project_key then format(
                          'its version from %s is under key %s, the next one under key %s: one project''s history would be split across two keys',
                          broken.valid_from, broken.project_key, broken.next_key)
                      else format('the version from %s ends at %s, and the next one begins at %s',
                          broken.valid_from, coalesce(broken.valid_to::text, 'no end'),
                          coalesce(broken.next_from::text, 'no time: there is none'))
                  end,
                  hint = 'each version of a project must end where the next begins; close the open version and open the new one in one statement, and never remove one (a project that disappeared is marked vanished)';
    end if;
    if tg_op <> 'INSERT' then
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
    end if;
    return null;
end
$$;
