-- The ops request queue: insert a row, the daemon creates the project and writes the outcome back.

create table openai.project_requests (
    id bigint generated always as identity primary key,
    -- Written by ops.
    name text not null,
    external_key_id text,
    geography text,
    residency text,
    allow_duplicate_name boolean not null default false,
    requested_by text not null default current_user,
    requested_at timestamptz not null default now(),
    -- Written by the daemon.
    status text not null default 'pending',
    attempts integer not null default 0,
    attempt_id uuid,
    attempt_started_at timestamptz,
    lease_until timestamptz,
    next_attempt_at timestamptz not null default now(),
    reconcile_walks integer not null default 0,
    project_id text,
    error text,
    updated_at timestamptz not null default now(),
    finished_at timestamptz,

    constraint request_name_is_blank check (btrim(name, E' \t\r\n') <> ''),
    constraint request_name_has_surrounding_spaces check
        (btrim(name, E' \t\r\n') = '' or (name !~ '^\s' and name !~ '\s$')),
    constraint request_name_is_longer_than_256_characters check (char_length(name) <= 256),
    constraint request_name_has_control_characters check (name !~ '[[:cntrl:]]'),
    constraint request_gives_both_geography_and_residency check (geography is null or residency is null),
    constraint request_external_key_id_is_blank check (external_key_id is null or btrim(external_key_id) <> ''),
    constraint request_status_is_unknown check
        (status in ('pending', 'creating', 'created', 'failed', 'unknown', 'cancelled')),
    constraint request_created_iff_project_id check ((status = 'created') = (project_id is not null)),
    constraint request_finished_iff_terminal check
        ((status in ('created', 'failed', 'cancelled')) = (finished_at is not null)),
    constraint request_ended_without_reason check (status not in ('failed', 'cancelled') or error is not null),
    constraint request_creating_without_attempt check
        (status <> 'creating' or (attempt_id is not null and lease_until is not null and attempt_started_at is not null))
);

-- A project settles at most one request.
create unique index project_requests_project_once on openai.project_requests (project_id) where project_id is not null;
create index project_requests_due on openai.project_requests (next_attempt_at, id) where status = 'pending';
create index project_requests_unsettled on openai.project_requests (id) where status in ('creating', 'unknown');

-- Wakes the daemon; polling remains the truth, so a lost notification only delays.
create function openai.notify_project_request() returns trigger language plpgsql as $$
begin
    perform pg_notify('openai_project_requests', new.id::text);
    return new;
end
$$;
create trigger project_requests_notify after insert on openai.project_requests
    for each row execute function openai.notify_project_request();

-- Cancelling is the one change ops make: only a pending request, and the row then says so.
create function openai.guard_request_cancel() returns trigger language plpgsql as $$
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
        new.error := coalesce(new.error, 'cancelled by ' || current_user);
    end if;
    return new;
end
$$;
create trigger project_requests_cancel before update of status on openai.project_requests
    for each row execute function openai.guard_request_cancel();

-- Each request with what happens next, in plain words.
create view openai.project_request_status as
select
    r.id,
    r.name,
    r.status,
    r.project_id,
    r.error,
    r.requested_by,
    r.requested_at,
    r.attempts,
    r.finished_at,
    case r.status
        when 'pending' then
            case when r.next_attempt_at > now()
                 then 'waiting: will be tried again at ' || to_char(r.next_attempt_at at time zone 'UTC', 'YYYY-MM-DD HH24:MI:SS') || ' UTC'
                 else 'waiting: the daemon will create it within seconds' end
        when 'creating' then 'being created now (attempt ' || r.attempts || ')'
        when 'unknown' then 'the create may have reached the API: the daemon is checking the project list before anything else; nothing to do'
        when 'created' then 'done: project ' || r.project_id
        when 'failed' then 'ended without a project: read error, fix the request and insert a new one'
        when 'cancelled' then 'cancelled: nothing was created'
    end as next_step
from openai.project_requests r;

-- Roles: an analyst who reads, an ops role that requests and cancels its own pending requests.
do $$
declare
    may_create boolean;
begin
    select rolsuper or rolcreaterole into may_create from pg_roles where rolname = current_user;
    if not may_create then
        raise notice 'roles openai_analyst and openai_ops were not created: % may not create roles', current_user;
        return;
    end if;
    -- Roles belong to the whole cluster: another database's migration may be creating them too.
    begin
        create role openai_analyst nologin;
    exception when duplicate_object or unique_violation then null;
    end;
    begin
        create role openai_ops nologin;
    exception when duplicate_object or unique_violation then null;
    end;
end
$$;

do $$
begin
    if not exists (select 1 from pg_roles where rolname = 'openai_analyst') then
        return;
    end if;
    grant usage on schema openai to openai_analyst, openai_ops;
    grant select on all tables in schema openai to openai_analyst;
    grant execute on function openai.projects_as_of(timestamptz) to openai_analyst;
    grant select on openai.project_requests, openai.project_request_status to openai_ops;
    grant insert (name, external_key_id, geography, residency, allow_duplicate_name)
        on openai.project_requests to openai_ops;
    grant update (status) on openai.project_requests to openai_ops;
end
$$;

-- Row security binds everyone but the owner (the daemon): ops may only cancel their own pending rows.
alter table openai.project_requests enable row level security;
create policy requests_readable on openai.project_requests for select using (true);
create policy requests_insert_as_self on openai.project_requests for insert
    with check (requested_by = current_user and status = 'pending');
-- Own rows only; the cancel trigger then refuses, out loud, anything but a pending one.
create policy requests_cancel_own on openai.project_requests for update
    using (requested_by = current_user)
    with check (requested_by = current_user and status = 'cancelled');
