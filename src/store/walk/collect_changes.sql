-- Collects into walk_batch each classified listing of a stored project that differs from the
-- stored state, or that was missing and is listed again, with the stored fields beside the
-- listed ones. Only listings whose digest differed were classified; here they are compared in
-- full (another spelling of the same object is no change: another key order, and a field written
-- as null or left out, which the spec lets a server do either way), against the state now.
with suspect as materialized (
    select x.seq, x.project_id, x.digest, x.raw, c.key, c.name as old_name,
           c.status as old_status, c.missing_since, c.raw as old_raw
    from walk_classified x
    cross join lateral (
        select key, name, status, missing_since, raw from openai.project_current
        where key = x.key limit 1
    ) c
    where x.seq is not null and x.key is not null
)
insert into walk_batch
select p.seq, p.project_id, p.raw, p.digest, p.key, p.old_name, p.old_status,
       p.missing_since, f.*
from suspect p
cross join lateral openai.project_fields(p.raw) f
where p.missing_since is not null or jsonb_strip_nulls(p.raw) is distinct from jsonb_strip_nulls(p.old_raw)
