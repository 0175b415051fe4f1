-- Each project with project events not yet applied: its latest project event of all stored
-- (latest by `effective_at` not after now, a future-dated one only when there is no other,
-- then create < update < archive, then id), the other project events
-- of that same second (times are whole seconds: their order is unknown), the authors of its
-- create and archive events, the ids of its events to apply, and the stored project's row
-- version now (null: not stored), for the apply to tell whether a walk wrote it meanwhile.
with pending as (
    select target_id, array_agg(id) as ids
    from openai.audit_events
    where applied_at is null and target_id is not null
      and type in ('project.created', 'project.updated', 'project.archived')
    group by target_id
)
select p.target_id, p.ids, l.effective_at, l.type,
       l.raw -> 'project.updated' -> 'changes_requested' ->> 'title' as title, l.changed_by,
       (select e.changed_by from openai.audit_events e
        where e.target_id = p.target_id and e.type = 'project.created'
        order by e.effective_at limit 1) as created_by,
       (select e.changed_by from openai.audit_events e
        where e.target_id = p.target_id and e.type = 'project.archived'
        order by e.effective_at limit 1) as archived_by,
       array(select e.type from openai.audit_events e
             where e.target_id = p.target_id and e.effective_at = l.effective_at
               and e.type in ('project.created', 'project.updated', 'project.archived')
             order by e.id) as same_second_types,
       array(select e.raw -> 'project.updated' -> 'changes_requested' ->> 'title' from openai.audit_events e
             where e.target_id = p.target_id and e.effective_at = l.effective_at
               and e.type in ('project.created', 'project.updated', 'project.archived')
             order by e.id) as same_second_titles,
       array(select e.changed_by from openai.audit_events e
             where e.target_id = p.target_id and e.effective_at = l.effective_at
               and e.type in ('project.created', 'project.updated', 'project.archived')
             order by e.id) as same_second_by,
       (select c.xmin::text::bigint from openai.project_current c
        where c.project_id = p.target_id) as row_version
from pending p
cross join lateral (
    select e.effective_at, e.type, e.raw, e.changed_by from openai.audit_events e
    where e.target_id = p.target_id
      and e.type in ('project.created', 'project.updated', 'project.archived')
    order by e.effective_at <= now() desc, e.effective_at desc,
             case e.type when 'project.archived' then 3 when 'project.updated' then 2 else 1 end desc,
             e.id desc
    limit 1
) l
order by l.effective_at
