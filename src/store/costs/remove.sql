-- Removes the rows the API no longer lists on a day it answered with results, recording each
-- as a revision; a day answered empty, or listing a result left out (without an amount, or
-- with a figure numeric cannot hold), keeps its rows.
-- Provisional when no pass before this one had read the day after it ended (its days are
-- recorded after this). $1 observed at, $2 run, [$3, $4) the days.
with gone as (
    delete from openai.costs c
    using cost_stage_days d
    where c.bucket_start >= $3 and c.bucket_start < $4
      and c.bucket_start = d.bucket_start and d.results > 0 and not d.incomplete
      and not exists (
          select 1 from cost_stage s
          where s.bucket_start = c.bucket_start
            and coalesce(c.project_id, '') = coalesce(s.project_id, '') and (c.project_id is null) = (s.project_id is null)
            and coalesce(c.line_item, '') = coalesce(s.line_item, '') and (c.line_item is null) = (s.line_item is null)
            and coalesce(c.currency, '') = coalesce(s.currency, '') and (c.currency is null) = (s.currency is null))
    returning c.bucket_start, c.project_id, c.line_item, c.currency, c.amount
)
insert into openai.cost_revisions
    (bucket_start, project_id, line_item, currency, old_amount, new_amount, provisional, observed_at, run_id)
select g.bucket_start, g.project_id, g.line_item, g.currency, g.amount, null,
       not exists (select 1 from openai.cost_days d
                   where d.bucket_start = g.bucket_start and d.read_after_end_at is not null),
       $1, $2
from gone g
