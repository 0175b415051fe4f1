-- Stages the days a page answered for, with how many results each had (0: none, or no bucket)
-- and whether it listed results left out, without an amount or with a figure numeric cannot
-- hold (incomplete: none of its rows is removed).
insert into cost_stage_days (bucket_start, results, incomplete)
select d, n, i from unnest($1::timestamptz[], $2::int4[], $3::bool[]) as t(d, n, i)
on conflict (bucket_start) do update set results = cost_stage_days.results + excluded.results,
    incomplete = cost_stage_days.incomplete or excluded.incomplete
