-- What already has the comparable name of request $2's name $1: an active project, an earlier
-- live request, or a created request whose project is not stored yet. A project's name that is
-- its own comparable form is found as it is (most are: `openai.name_needs_folding`), the others
-- through the index of their comparable forms; requests' names likewise, without an index.
with wanted as materialized (
    select openai.comparable_name($1) as name
)
select 'project ' || c.project_id || ' is active with this name'
from openai.project_current c, wanted w
where c.name = w.name and c.status is distinct from 'archived' and c.missing_since is null
union all
select 'project ' || c.project_id || ' is active with this name'
from openai.project_current c, wanted w
where openai.name_needs_folding(c.name) and openai.comparable_name(c.name) = w.name
  and c.status is distinct from 'archived' and c.missing_since is null
union all
select 'request ' || r.id || ' (' || r.status || ') asks for the same name'
from openai.project_requests r, wanted w
where r.id < $2 and r.status in ('pending', 'creating', 'unknown')
  and (r.name = w.name
       or (openai.name_needs_folding(r.name) and openai.comparable_name(r.name) = w.name))
union all
select 'request ' || r.id || ' created project ' || r.project_id || ' with this name'
from openai.project_requests r, wanted w
where r.id <> $2 and r.status = 'created'
  and not exists (select 1 from openai.project_current c where c.project_id = r.project_id)
  and (r.name = w.name
       or (openai.name_needs_folding(r.name) and openai.comparable_name(r.name) = w.name))
limit 1
