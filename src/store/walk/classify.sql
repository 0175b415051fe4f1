-- Compares the complete walk with the stored state at the apply, in one pass over each, and
-- keeps in walk_classified only what the next steps act on: staged listings of projects not
-- stored (key null), stored ones whose digest differs or that were missing, and the present
-- projects the walk did not list (seq null). Nothing wide is carried through the join but the
-- listing itself, and a listing whose digest equals the stored one is left behind here.
create temp table walk_classified on commit drop as
select s.seq, coalesce(s.project_id, c.project_id) as project_id, s.digest, s.raw, c.key,
       c.first_seen_at
from walk_staged s
full join openai.project_current c on c.project_id = s.project_id
where (s.seq is null and c.missing_since is null)
   or (s.seq is not null
       and (c.key is null or c.missing_since is not null or c.raw_digest is distinct from s.digest))
