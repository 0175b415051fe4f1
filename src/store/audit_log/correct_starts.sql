-- Moves the start of one walk-observed change per project to the time its audit event gives,
-- and records its author: the project's stored state is already what the API says now (null
-- fields and absent ones alike, as the spec lets a server write either), the version's start was
-- observed (by a walk, or by a pass that had no event describing it), and one of the project's
-- stored `project.updated` events describes it: its title, if any, is the version's name (an
-- event with a title preferred, then one dated no later than the version was seen, as the
-- change must have been, then the latest: a later one is the change to the next version, or
-- a change back to this name), it came after the previous version began,
-- before the next one began, and is not dated after now. Of several such versions the earliest
-- is moved; the caller repeats the statement until none is left, so that each statement moves
-- two neighbouring rows only. The start moves to `effective_at`, never to or before the previous
-- version's start; the previous version's end moves with it. The row that shrinks is written
-- first, so the exclusion constraint never sees an overlap, and both rows are one statement, so
-- the gap check sees the history whole.
-- $1 ids, $2 raw texts.
with input as (
    select x.project_id, x.raw_text::jsonb as raw
    from unnest($1::text[], $2::text[]) as x(project_id, raw_text)
), target as materialized (
    select distinct on (x.project_id)
           x.project_id, e.changed_by as event_by, v.ctid as version, v.valid_from as version_from,
           prev.ctid as previous, greatest(e.effective_at, prev.valid_from + interval '1 microsecond') as new_start
    from input x
    join openai.project_current c
      on c.project_id = x.project_id and jsonb_strip_nulls(c.raw) = jsonb_strip_nulls(x.raw)
    join openai.project_versions v
      on v.project_id = x.project_id and v.project_key = c.key
     and v.change in ('renamed', 'updated', 'unarchived', 'reappeared')
     and coalesce(v.time_source, 'observed') = 'observed'
    cross join lateral (
        select p.ctid, p.valid_from from openai.project_versions p
        where p.project_id = x.project_id and p.valid_from < v.valid_from
        order by p.valid_from desc limit 1
    ) prev
    cross join lateral (
        select e.effective_at, e.changed_by from openai.audit_events e
        where e.target_id = x.project_id and e.type = 'project.updated'
          and e.effective_at > prev.valid_from and e.effective_at <= now()
          and (v.valid_to is null or e.effective_at < v.valid_to)
          and (e.raw -> 'project.updated' -> 'changes_requested' ->> 'title' is null
               or openai.comparable_name(e.raw -> 'project.updated' -> 'changes_requested' ->> 'title')
                  is not distinct from openai.comparable_name(v.name))
        order by e.raw -> 'project.updated' -> 'changes_requested' ->> 'title' is not null desc,
                 e.effective_at <= v.valid_from desc, e.effective_at desc, e.id desc
        limit 1
    ) e
    order by x.project_id, v.valid_from
), shrunk as (
    update openai.project_versions p set
        valid_from = case when p.ctid = t.version then t.new_start else p.valid_from end,
        valid_to = case when p.ctid = t.previous then t.new_start else p.valid_to end,
        changed_by = case when p.ctid = t.version then t.event_by else p.changed_by end,
        time_source = case when p.ctid = t.version then 'audit_log' else p.time_source end
    from target t
    where (t.new_start < t.version_from and p.ctid = t.previous)
       or (t.new_start > t.version_from and p.ctid = t.version)
    returning t.project_id
), grown as (
    update openai.project_versions p set
        valid_from = case when p.ctid = t.version then t.new_start else p.valid_from end,
        valid_to = case when p.ctid = t.previous then t.new_start else p.valid_to end,
        changed_by = case when p.ctid = t.version then t.event_by else p.changed_by end,
        time_source = case when p.ctid = t.version then 'audit_log' else p.time_source end
    from target t join shrunk s on s.project_id = t.project_id
    where (t.new_start < t.version_from and p.ctid = t.version)
       or (t.new_start > t.version_from and p.ctid = t.previous)
    returning 1
), authored as (
    -- Already at the event's time (or no earlier start possible): only the author is new.
    update openai.project_versions p set changed_by = t.event_by, time_source = 'audit_log'
    from target t
    where t.new_start = t.version_from and p.ctid = t.version
    returning 1
)
select (select count(*) from grown) + (select count(*) from authored)
