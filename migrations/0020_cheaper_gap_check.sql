-- The gap check reads each touched project's history once, in order, instead of looking up the
-- neighbours of every touched version one by one. A walk's first sync touches every project: the
-- planner then reads the history whole and hashes, where two index look-ups per version cost
-- more than the versions' own insert; a walk that touches a few projects still reads them by
-- the primary key. The query is planned at each check (`execute`) for the array of touched ids it
-- is given, whose length the planner sees (it cannot count the distinct ids of a transition
-- table), never with a plan made for another statement's number.
create or replace function openai.refuse_history_gaps() returns trigger language plpgsql as $$
declare
    broken record;
    projects text[];
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
    execute $check$
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
    $check$ into broken using projects;
    if broken.project_id is not null then
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
        execute $orphan$
            select c.project_id
            from openai.project_current c
            where c.project_id = any($1)
              and not exists (select 1 from openai.project_versions v where v.project_id = c.project_id)
            limit 1
        $orphan$ into broken using projects;
        if broken.project_id is not null then
            raise exception 'project % would be left without a history', broken.project_id
                using errcode = 'integrity_constraint_violation',
                      hint = 'versions are never removed; a project that disappeared is marked vanished';
        end if;
    end if;
    return null;
end
$$;
