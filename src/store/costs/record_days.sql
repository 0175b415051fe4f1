-- Records the staged days as read unless they were already, and, once, as read after they
-- ended where they had ended; a day recorded so before is not written. $1 observed at, $2 run.
insert into openai.cost_days (bucket_start, first_read_at, first_run, read_after_end_at)
select bucket_start, $1, $2, case when $1 >= bucket_start + interval '24 hours' then $1 end
from cost_stage_days
on conflict (bucket_start) do update set read_after_end_at = excluded.read_after_end_at
where cost_days.read_after_end_at is null and excluded.read_after_end_at is not null
