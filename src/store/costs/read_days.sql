-- Records the days a backfill page answered for as read. $1 the days, $2 observed at, $3 run.
insert into openai.cost_days (bucket_start, first_read_at, first_run)
select d, $2, $3 from unnest($1::timestamptz[]) as t(d)
on conflict (bucket_start) do nothing
