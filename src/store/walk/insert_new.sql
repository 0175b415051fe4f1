-- Inserts every classified listing of a project that was not stored and opens its first
-- versions; $1 is the walk's observation time, $2 its run. An id the request worker stored
-- since the classification is skipped (`on conflict`) and returned, to be compared instead.
with unknown as materialized (
    select x.project_id, x.digest, x.raw
    from walk_classified x
    where x.seq is not null and x.key is null
),
