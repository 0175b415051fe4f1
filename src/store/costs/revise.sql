-- Records a revision for each staged figure that differs from the stored one, and for each
-- row appearing on a day read before; provisional when no pass before this one had read the
-- day after it ended (its days are recorded after this). $1 observed at, $2 run, [$3, $4) the
-- staged days.
insert into openai.cost_revisions
    (bucket_start, project_id, line_item, currency, old_amount, new_amount, provisional, observed_at, run_id)
select s.bucket_start, s.project_id, s.line_item, s.currency, c.amount, s.amount,
       not exists (select 1 from openai.cost_days d
                   where d.bucket_start = s.bucket_start and d.read_after_end_at is not null),
       $1, $2
from cost_stage s
join openai.costs c
  on c.bucket_start = s.bucket_start
 and coalesce(c.project_id, '') = coalesce(s.project_id, '') and (c.project_id is null) = (s.project_id is null)
 and coalesce(c.line_item, '') = coalesce(s.line_item, '') and (c.line_item is null) = (s.line_item is null)
 and coalesce(c.currency, '') = coalesce(s.currency, '') and (c.currency is null) = (s.currency is null)
where c.bucket_start >= $3 and c.bucket_start < $4
  and c.amount <> s.amount
union all
select s.bucket_start, s.project_id, s.line_item, s.currency, null, s.amount,
       d.read_after_end_at is null, $1, $2
from cost_stage s
join openai.cost_days d on d.bucket_start = s.bucket_start
where not exists (
    select 1 from openai.costs c
    where c.bucket_start >= $3 and c.bucket_start < $4
      and c.bucket_start = s.bucket_start
      and coalesce(c.project_id, '') = coalesce(s.project_id, '') and (c.project_id is null) = (s.project_id is null)
      and coalesce(c.line_item, '') = coalesce(s.line_item, '') and (c.line_item is null) = (s.line_item is null)
      and coalesce(c.currency, '') = coalesce(s.currency, '') and (c.currency is null) = (s.currency is null))
