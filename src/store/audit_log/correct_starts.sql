-- Moves the start of a walk-observed change to the time its audit event gives, and records its
-- author: the project's stored state is already what the API says now (null fields and absent
-- ones alike, as the spec lets a server write either), its open version was
-- opened by a walk (`observed`), and the latest event describes it (a `project.updated` whose
-- title, if any, is the version's name), came after the previous version began, and is not
-- dated after now. The start moves to `effective_at`, never to or before
-- the previous version's start; the previous version's end moves with it. The row that shrinks
-- is written first, so the exclusion constraint never sees an overlap, and both rows are one
-- statement, so the gap check sees the history whole.
-- $1 ids, $2 raw texts, $3 latest event times, $4 latest event types, $5 requested titles,
-- $6 authors of the latest events.
with input as (
    select x.project_id, x.raw_text::jsonb as raw, x.event_at, x.event_type, x.event_title, x.event_by
    from unnest($1::text[], $2::text[], $3::timestamptz[], $4::text[], $5::text[], $6::text[])
        as x(project_id, raw_text, event_at, event_type, event_title, event_by)
), target as materialized (
    select x.project_id, x.event_by, v.ctid as version, v.valid_from as version_from, prev.ctid as previous,
           greatest(x.event_at, prev.valid_from + interval '1 microsecond') as new_start
    from input x
    join openai.project_current c
      on c.project_id = x.project_id and jsonb_strip_nulls(c.raw) = jsonb_strip_nulls(x.raw)
    cross join lateral (
        select ctid, valid_from, name, change, time_source from openai.project_versions
        where openai.spread_key(project_key) = openai.spread_key(c.key)
          and project_key = c.key and valid_to is null limit 1
    ) v
    cross join lateral (
        select p.ctid, p.valid_from from openai.project_versions p
        where p.project_id = x.project_id and p.valid_from < v.valid_from
        order by p.valid_from desc limit 1
    ) prev
    where x.event_type = 'project.updated'
      and x.event_at > prev.valid_from and x.event_at <= now()
      and v.change in ('renamed', 'updated', 'unarchived', 'reappeared')
      and coalesce(v.time_source, 'observed') = 'observed'
      and (x.event_title is null
           or openai.comparable_name(x.event_title) is not distinct from openai.comparable_name(v.name))
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
