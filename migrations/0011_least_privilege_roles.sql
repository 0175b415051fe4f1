-- Roles a DBA can live with.
--   openai_analyst  reads everything
--   openai_ops      inserts requests and cancels its own pending ones
--   openai_daemon   what the daemon needs when it runs as a role that does not own the tables
-- Roles belong to the cluster, so a DBA may create them after migrating, or not at all; each
-- gets its grants from `select openai.grant_roles();`, which is safe to run again at any time.

-- "Own" is the login that inserted the row (session_user), not the role it acts as: several
-- people may share openai_ops through `set role`.
alter table openai.project_requests alter column requested_by set default session_user;

drop policy requests_insert_as_self on openai.project_requests;
create policy requests_insert_as_self on openai.project_requests for insert
    with check (requested_by = session_user and status = 'pending');
drop policy requests_cancel_own on openai.project_requests;
create policy requests_cancel_own on openai.project_requests for update
    using (requested_by = session_user)
    with check (requested_by = session_user and status = 'cancelled');

create or replace function openai.guard_request_cancel() returns trigger language plpgsql as $$
begin
    if new.status = 'cancelled' and old.status is distinct from 'cancelled' then
        if old.status <> 'pending' then
            raise exception 'request % is %, so it can no longer be cancelled', old.id, old.status
                using errcode = 'check_violation',
                      hint = case when old.status in ('creating', 'unknown')
                                  then 'the project may already exist; wait for the outcome'
                                  else 'the request has ended already' end;
        end if;
        new.finished_at := now();
        new.updated_at := now();
        new.error := coalesce(new.error, 'cancelled by ' || session_user);
    end if;
    return new;
end
$$;

do $$
begin
    if not exists (select 1 from pg_roles where rolname = current_user and (rolsuper or rolcreaterole)) then
        raise notice 'role openai_daemon was not created: % may not create roles; a DBA can create it and run select openai.grant_roles()', current_user;
        return;
    end if;
    begin
        create role openai_daemon nologin;
    exception when duplicate_object or unique_violation then null;
    end;
end
$$;

-- Row security binds every role but the owner: the daemon's role sees and changes every request.
drop policy if exists requests_daemon_works_the_queue on openai.project_requests;
do $$
begin
    if exists (select 1 from pg_roles where rolname = 'openai_daemon') then
        create policy requests_daemon_works_the_queue on openai.project_requests
            for all to openai_daemon using (true) with check (true);
    end if;
end
$$;

-- Grants every existing product role what it needs, on every table and function there is now;
-- a role that does not exist is reported as a notice. Idempotent.
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
