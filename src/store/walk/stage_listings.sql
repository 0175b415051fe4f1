-- Stages listed projects ($1 ids, $2 digests, $3 JSON texts, $4 positions; one listing per id),
-- appending them as they are: the JSON is parsed here, while the next page is on its way, and
-- nothing is compared with the stored state until the apply, which reads the state as it is then.
insert into walk_staged (seq, project_id, digest, raw)
select p.seq, p.project_id, p.digest, p.raw_text::jsonb
from unnest($1::text[], $2::bigint[], $3::text[], $4::bigint[]) as p(project_id, digest, raw_text, seq)
