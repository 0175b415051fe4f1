-- The days in [$1, $2) not read after they ended (never read, or read only while in
-- progress), oldest first.
select d.day
from generate_series($1::timestamptz, $2::timestamptz - interval '1 day', interval '1 day') as d(day)
where not exists (select 1 from openai.cost_days r
                  where r.bucket_start = d.day and r.read_after_end_at is not null)
order by d.day
