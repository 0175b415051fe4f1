-- Stages one page of cost results; amounts and quantities become exact numerics here.
insert into cost_stage
    (bucket_start, bucket_end, project_id, line_item, currency, amount, quantity, quantity_unit, raw)
select s, e, p, l, c, trim_scale(a::numeric), trim_scale(q::numeric), u, r::jsonb
from unnest($1::timestamptz[], $2::timestamptz[], $3::text[], $4::text[], $5::text[], $6::text[],
            $7::text[], $8::text[], $9::text[]) as t(s, e, p, l, c, a, q, u, r)
