-- Collects into walk_batch each staged project stored before this apply whose listing differs
-- from the stored state, or that was missing and is listed again, with the stored fields
-- beside the listed ones. The digest comparison is against the state now, inside the apply,
-- so a change written since the page was staged is never overwritten unseen; only listings
-- whose digest differs are parsed and compared in full (another spelling of the same object
-- is no change).
with suspect as materialized (
    select s.seq, s.project_id, s.digest, s.raw, s.raw_text, c.key, c.name as old_name,
           c.status as old_status, c.missing_since, c.raw as old_raw
    from walk_staged s
    join openai.project_current c on c.key = s.key
    where c.missing_since is not null or c.raw_digest is distinct from s.digest
), parsed as materialized (
    select x.*, coalesce(x.raw, x.raw_text::jsonb) as listed_raw from suspect x
)
insert into walk_batch
select p.seq, p.project_id, p.listed_raw, p.digest, p.key, p.old_name, p.old_status,
       p.missing_since, f.*
from parsed p
cross join lateral openai.project_fields(p.listed_raw) f
where p.missing_since is not null or p.listed_raw is distinct from p.old_raw
