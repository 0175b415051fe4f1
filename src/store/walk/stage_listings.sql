-- Stages listed projects ($1 ids, $2 digests, $3 JSON texts, $4 positions; one listing per id).
-- Each is looked up in the stored state by index; the JSON of a project that looks new or
-- changed is parsed now, while the next page is on its way, so the apply only compares. What
-- staging saw is not trusted at the apply: it checks every listing against the state again.
insert into walk_staged as s (seq, project_id, digest, raw_text, key, raw)
select p.seq, p.project_id, p.digest, p.raw_text, c.key,
       case when c.key is null or c.missing_since is not null
                 or c.raw_digest is distinct from p.digest
            then p.raw_text::jsonb end
from unnest($1::text[], $2::bigint[], $3::text[], $4::bigint[]) as p(project_id, digest, raw_text, seq)
left join lateral (
    select key, raw_digest, missing_since from openai.project_current
    where project_id = p.project_id limit 1
) c on true
on conflict (project_id) do update
    set seq = excluded.seq, digest = excluded.digest, raw_text = excluded.raw_text,
        key = coalesce(excluded.key, s.key), raw = excluded.raw
    where s.seq < excluded.seq
