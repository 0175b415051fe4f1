-- Inserts every staged project that is not stored yet and opens its first versions; $1 is the
-- walk's observation time, $2 its run. Returns how many were inserted, and the ids that turned
-- out to be stored after all (the request worker may have recorded one since it was staged).
with unknown as materialized (
    select s.project_id, s.digest, coalesce(s.raw, s.raw_text::jsonb) as raw
    from walk_staged s
    where s.key is null
),
