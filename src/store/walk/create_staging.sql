-- The walk's staging table, on its own connection: one row per listing received, appended as
-- pages arrive, outside any transaction, with no index to maintain and nothing looked up. An id
-- listed again later in the walk has its earlier rows removed before the apply, so the last
-- listing of each id counts. Nothing a reader can see changes until the apply.
--   seq     the listing's position in the walk
--   digest  `content_digest` of the API's JSON text for the project, exactly as received
--   raw     that JSON, parsed while the next page is on its way
create temp table walk_staged (
    seq bigint not null,
    project_id text not null,
    digest bigint not null,
    raw jsonb not null
)
