-- Rewrites each stored row whose staged figures differ in anything; identical rows are left
-- alone (a field written as null or left out is the same result: the spec lets a server do
-- either). $1 observed at, $2 run, [$3, $4) the staged days.
update openai.costs c
set bucket_end = s.bucket_end, amount = s.amount, quantity = s.quantity,
    quantity_unit = s.quantity_unit, raw = s.raw, last_fetched_at = $1, last_run = $2
from cost_stage s
where c.bucket_start >= $3 and c.bucket_start < $4
  and c.bucket_start = s.bucket_start
  and coalesce(c.project_id, '') = coalesce(s.project_id, '') and (c.project_id is null) = (s.project_id is null)
  and coalesce(c.line_item, '') = coalesce(s.line_item, '') and (c.line_item is null) = (s.line_item is null)
  and coalesce(c.currency, '') = coalesce(s.currency, '') and (c.currency is null) = (s.currency is null)
  and ((c.amount, c.bucket_end, c.quantity, c.quantity_unit)
         is distinct from (s.amount, s.bucket_end, s.quantity, s.quantity_unit)
       -- Equal JSON needs no stripping: only JSON that differs is compared without its nulls.
       or (c.raw is distinct from s.raw
           and jsonb_strip_nulls(c.raw) is distinct from jsonb_strip_nulls(s.raw)))
