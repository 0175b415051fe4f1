-- Whether any day in [$1, $2) has cost rows stored or was read before.
select exists (select 1 from openai.costs where bucket_start >= $1 and bucket_start < $2)
    or exists (select 1 from openai.cost_days where bucket_start >= $1 and bucket_start < $2)
