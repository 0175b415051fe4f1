-- Every resource the product syncs (projects, costs, the audit log) records its passes in
-- openai.sync_runs; `resource` says which. Runs before this migration were all project walks.
alter table openai.sync_runs
    add column resource text not null default 'projects'
        constraint sync_run_resource_is_known check (resource in ('projects', 'costs', 'audit_log'));

drop index if exists openai.sync_runs_succeeded_recent;
create index sync_runs_succeeded_recent on openai.sync_runs (resource, started_at desc)
    where status = 'succeeded';
