-- Days answered without results that have spend stored: kept as they were. [$1, $2) the days.
select d.bucket_start
from cost_stage_days d
where d.results = 0
  and exists (select 1 from openai.costs c
              where c.bucket_start >= $1 and c.bucket_start < $2 and c.bucket_start = d.bucket_start)
order by d.bucket_start
