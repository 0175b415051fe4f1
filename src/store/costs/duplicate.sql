-- A key the API listed twice for one day, if any: storing either would lose the other.
select bucket_start, project_id, line_item, currency
from cost_stage
group by bucket_start, project_id, line_item, currency
having count(*) > 1
limit 1
