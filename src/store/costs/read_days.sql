-- Records the days a backfill page answered for as read, and as read after they ended where
-- they had ended. $1 the days, $2 observed at, $3 run.
insert into openai.cost_days (bucket_start, first_read_at, first_run, read_after_end_at)
select d, $2, $3, case when $2 >= d + interval '24 hours' then $2 end
from unnest($1::timestamptz[]) as t(d)
on conflict (bucket_start) do update set read_after_end_at = excluded.read_after_end_at
where cost_days.read_after_end_at is null and excluded.read_after_end_at is not null
