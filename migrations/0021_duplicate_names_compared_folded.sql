-- A request's name is checked against the active projects' names in their comparable form
-- (`openai.comparable_name`), since a server may store a name in an equivalent form (another
-- Unicode normalization, runs of spaces folded) and answer it so. A name of printable ASCII
-- without runs of spaces or spaces at either end is its own comparable form; only the others
-- need the function, and only they are in this index, so a walk computes it for few names.
create function openai.name_needs_folding(name text) returns boolean
language sql immutable strict parallel safe
as $$
    -- Inlined into the index's predicate, so no `set search_path`; the operator is named in full.
    select name operator(pg_catalog.~) '[^ -~]|  |^ | $'
$$;

create index project_current_by_folded_name on openai.project_current
    (openai.comparable_name(name))
    where openai.name_needs_folding(name);
