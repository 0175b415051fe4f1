-- Tables a later migration adds get the product roles' grants as they are created: the daemon
-- role writes them and the analyst role reads them, without waiting for someone to run
-- `select openai.grant_roles()` again. Covers what the migrating role creates in schema openai;
-- a role that does not exist yet gets its grants from openai.grant_roles() once a DBA creates it.
do $$
begin
    if exists (select 1 from pg_roles where rolname = 'openai_daemon') then
        alter default privileges in schema openai
            grant select, insert, update on tables to openai_daemon;
        alter default privileges in schema openai
            grant usage, select on sequences to openai_daemon;
        alter default privileges in schema openai
            grant execute on functions to openai_daemon;
    end if;
    if exists (select 1 from pg_roles where rolname = 'openai_analyst') then
        alter default privileges in schema openai grant select on tables to openai_analyst;
        alter default privileges in schema openai grant execute on functions to openai_analyst;
    end if;
end
$$;

-- A migration numbered below one already applied runs after it (sqlx applies what is missing
-- in order): tables 0010 added after 0011 had granted everything get their grants now.
select openai.grant_roles();
