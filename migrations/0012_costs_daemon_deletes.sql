-- The daemon role may delete cost rows: a cost pass removes the rows the Costs API no longer
-- lists for a day it re-read with results. grant_roles() as before, with that one grant more.

create or replace function openai.grant_roles() returns void language plpgsql as $$
begin
    if exists (select 1 from pg_roles where rolname = 'openai_analyst') then
        grant usage on schema openai to openai_analyst;
        grant select on all tables in schema openai to openai_analyst;
        grant execute on all functions in schema openai to openai_analyst;
    else
        raise notice 'role openai_analyst does not exist; create it (create role openai_analyst nologin) and run select openai.grant_roles() again';
    end if;
    if exists (select 1 from pg_roles where rolname = 'openai_ops') then
        grant usage on schema openai to openai_ops;
        grant select on openai.project_requests, openai.project_request_status to openai_ops;
        grant insert (name, external_key_id, geography, residency, allow_duplicate_name)
            on openai.project_requests to openai_ops;
        grant update (status) on openai.project_requests to openai_ops;
    else
        raise notice 'role openai_ops does not exist; create it (create role openai_ops nologin) and run select openai.grant_roles() again';
    end if;
    if exists (select 1 from pg_roles where rolname = 'openai_daemon') then
        grant usage on schema openai to openai_daemon;
        grant select, insert, update on all tables in schema openai to openai_daemon;
        -- A cost pass removes the rows the Costs API no longer lists for a day it re-read.
        grant delete on openai.costs to openai_daemon;
        grant usage, select on all sequences in schema openai to openai_daemon;
        grant execute on all functions in schema openai to openai_daemon;
        if to_regclass('public._sqlx_migrations') is not null then
            grant select on public._sqlx_migrations to openai_daemon;
        end if;
        if not exists (select 1 from pg_policies where schemaname = 'openai'
                         and tablename = 'project_requests'
                         and policyname = 'requests_daemon_works_the_queue') then
            create policy requests_daemon_works_the_queue on openai.project_requests
                for all to openai_daemon using (true) with check (true);
        end if;
    else
        raise notice 'role openai_daemon does not exist; create it (create role openai_daemon nologin) and run select openai.grant_roles() again';
    end if;
end
$$;

select openai.grant_roles();
