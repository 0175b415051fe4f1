-- When each project row was first stored, by the database's clock. A project stored before a
-- request's attempt began existed before it, so it is never that attempt's result. (A walk's
-- `first_seen_at` is when the walk began, which may precede the listing of a project made
-- during the walk; the apply that stores it begins only after its last page.) Rows stored
-- before this migration read as stored now, which rules nothing out for an attempt under way.
alter table openai.project_current add column stored_at timestamptz not null default now();
