-- Inserts every staged row: the staged days have nothing stored and were never read.
-- $1 observed at, $2 run.
insert into openai.costs
    (bucket_start, bucket_end, project_id, line_item, currency, amount, quantity, quantity_unit, raw,
     first_fetched_at, last_fetched_at, first_run, last_run)
select s.bucket_start, s.bucket_end, s.project_id, s.line_item, s.currency, s.amount, s.quantity,
       s.quantity_unit, s.raw, $1, $1, $2, $2
from cost_stage s
