-- The walk's staging table, on its own connection: one row per listed project id, the last
-- listing of it winning. Pages land here as they arrive, outside any transaction; nothing a
-- reader can see changes until the apply.
--   seq       the listing's position in the walk
--   raw_text  the API's JSON for the project, exactly as received
--   key       the project's key when it was already stored at staging (keys are never removed)
--   raw       the parsed JSON, when the project looked new or changed at staging
create temp table walk_staged (
    seq bigint not null,
    project_id text primary key,
    digest bigint not null,
    raw_text text not null,
    key bigint,
    raw jsonb
)
