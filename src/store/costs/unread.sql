-- The days in [$1, $2) never read from the Costs API, oldest first.
select d.day
from generate_series($1::timestamptz, $2::timestamptz - interval '1 day', interval '1 day') as d(day)
where not exists (select 1 from openai.cost_days r where r.bucket_start = d.day)
order by d.day
