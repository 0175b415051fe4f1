-- A day read while it was still in progress holds its figures so far, not its total. Such a day
-- counts as unread (a backfill reads it again, also past the lookback) until a pass reads it
-- after it ended; until then a change to its figures is provisional, after it a restatement.

-- When a pass first read the day after the day had ended; null until one has. Set once.
alter table openai.cost_days add column read_after_end_at timestamptz;

-- Days first read after they ended were read whole then.
update openai.cost_days
set read_after_end_at = first_read_at
where first_read_at >= bucket_start + interval '24 hours';

-- A day with a row written after the day ended was read after it ended (at the latest then).
-- Any other day first read while it filled up is read once more: a re-read that found it
-- unchanged left no trace.
update openai.cost_days d
set read_after_end_at = w.written
from (
    select bucket_start, min(last_fetched_at) as written
    from openai.costs
    where last_fetched_at >= bucket_start + interval '24 hours'
    group by bucket_start
) w
where w.bucket_start = d.bucket_start and d.read_after_end_at is null;

-- A day with a revision recorded after the day ended (a row removed, say, the rest unchanged)
-- was read after it ended then, too.
update openai.cost_days d
set read_after_end_at = r.observed
from (
    select bucket_start, min(observed_at) as observed
    from openai.cost_revisions
    where observed_at >= bucket_start + interval '24 hours'
    group by bucket_start
) r
where r.bucket_start = d.bucket_start and d.read_after_end_at is null;
