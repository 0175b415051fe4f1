-- Stages the days a page answered for, with how many results each had (0: none, or no bucket).
insert into cost_stage_days (bucket_start, results)
select d, n from unnest($1::timestamptz[], $2::int4[]) as t(d, n)
on conflict (bucket_start) do update set results = cost_stage_days.results + excluded.results
