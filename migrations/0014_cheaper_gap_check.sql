-- The gap check after inserts, cheaper: it finds each new version's neighbours with one descent
-- of the primary key instead of two, which was a fifth of the cost of a first sync's apply. What
-- it refuses is unchanged (see 0007).
create or replace function openai.refuse_history_gaps() returns trigger language plpgsql as $$
declare
    broken record;
    projects text[];
begin
    if tg_op = 'INSERT' then
        -- The common case, a walk's new versions: each found with its neighbours in one
        -- descent of the primary key, which lists a project's versions together.
        select t.project_id, t.valid_from, t.valid_to, t.project_key,
               n.before_from, n.before_to, n.before_key, n.after_from, n.after_key
        into broken
        from touched t
        cross join lateral (
            select (array_agg(p.valid_from order by p.valid_from desc)
                        filter (where p.valid_from < t.valid_from))[1] as before_from,
                   (array_agg(p.valid_to order by p.valid_from desc)
                        filter (where p.valid_from < t.valid_from))[1] as before_to,
                   (array_agg(p.project_key order by p.valid_from desc)
                        filter (where p.valid_from < t.valid_from))[1] as before_key,
                   min(p.valid_from) filter (where p.valid_from > t.valid_from) as after_from,
                   (array_agg(p.project_key order by p.valid_from)
                        filter (where p.valid_from > t.valid_from))[1] as after_key
            from openai.project_versions p
            where p.project_id = t.project_id
        ) n
        where (n.before_from is not null
               and (n.before_to is distinct from t.valid_from or n.before_key <> t.project_key))
           or (n.after_from is distinct from t.valid_to)
           or (n.after_key <> t.project_key)
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
