-- Inserts the staged rows not stored yet. $1 observed at, $2 run, [$3, $4) the staged days.
insert into openai.costs
    (bucket_start, bucket_end, project_id, line_item, currency, amount, quantity, quantity_unit, raw,
     first_fetched_at, last_fetched_at, first_run, last_run)
select s.bucket_start, s.bucket_end, s.project_id, s.line_item, s.currency, s.amount, s.quantity,
       s.quantity_unit, s.raw, $1, $1, $2, $2
from cost_stage s
where not exists (
    select 1 from openai.costs c
    where c.bucket_start >= $3 and c.bucket_start < $4
      and c.bucket_start = s.bucket_start
      and coalesce(c.project_id, '') = coalesce(s.project_id, '') and (c.project_id is null) = (s.project_id is null)
      and coalesce(c.line_item, '') = coalesce(s.line_item, '') and (c.line_item is null) = (s.line_item is null)
      and coalesce(c.currency, '') = coalesce(s.currency, '') and (c.currency is null) = (s.currency is null))
