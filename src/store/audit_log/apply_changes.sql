-- Applies the retrieved state of projects whose content differs from the stored one (a field
-- written as null or left out is no difference), by the
-- walk's history rules, with the start an audit event gives: an archive starts at `archived_at`;
-- another change at the latest event's `effective_at` when that event describes it (a
-- `project.updated` whose title, if any, is the new name) and is later than the open version's
-- start and not after now; otherwise when observed (`$1`). Never before the version it replaces. A rename seen
-- with an archive is two versions, as in a walk: the rename is written as observed, just before
-- the archive, and `correct_starts.sql`, in the same transaction, moves it to its own
-- `project.updated` event's time with that event's author.
-- $1 now, $2 run, $3 ids, $4 raw texts, $5 digests, $6 latest event times, $7 latest event
-- types, $8 requested titles, $9 authors of the latest events.
with input as (
    select x.project_id, x.raw_text::jsonb as raw, x.digest, x.event_at, x.event_type, x.event_title, x.event_by
    from unnest($3::text[], $4::text[], $5::bigint[], $6::timestamptz[], $7::text[], $8::text[], $9::text[])
        as x(project_id, raw_text, digest, event_at, event_type, event_title, event_by)
), b as materialized (
    select c.key, x.project_id, x.raw, x.digest, c.name as old_name, c.status as old_status, c.missing_since,
           f.name, f.status, f.created_at, f.archived_at, f.external_key_id, f.residency,
           x.event_at, x.event_type, x.event_title, x.event_by
    from input x
    join openai.project_current c on c.project_id = x.project_id
    cross join lateral openai.project_fields(x.raw) f
    where jsonb_strip_nulls(c.raw) is distinct from jsonb_strip_nulls(x.raw)
), changes as materialized (
    select b.*, v.ctid as open_version, v.status as open_status, v.archived_at as open_archived_at,
           v.raw -> 'archived_at' as open_archived_at_raw, k.change, k.renamed_too, k.starts, k.time_source,
           k.changed_by,
           greatest(v.valid_from + interval '1 microsecond',
                    least($1, k.starts - interval '1 microsecond')) as renamed_at
    from b
    cross join lateral (
        select ctid, valid_from, status, archived_at, raw from openai.project_versions
        where openai.spread_key(project_key) = openai.spread_key(b.key)
          and project_key = b.key and valid_to is null limit 1
    ) v
    cross join lateral (
        select b.status = 'archived' and b.old_status is distinct from 'archived' as archiving
    ) a
    cross join lateral (
        select b.event_at > v.valid_from and b.event_at <= $1
               and ((b.event_type = 'project.archived' and a.archiving)
                    or (b.event_type = 'project.updated' and not a.archiving
                        and (b.event_title is null
                             or openai.comparable_name(b.event_title) is not distinct from openai.comparable_name(b.name))))
               as described
    ) d
    cross join lateral (
        select case when a.archiving then 'archived'
                    when b.missing_since is not null then 'reappeared'
                    when b.old_status = 'archived' and b.status is distinct from 'archived' then 'unarchived'
                    when b.name is distinct from b.old_name then 'renamed'
                    else 'updated' end as change,
               a.archiving and b.name is distinct from b.old_name as renamed_too,
               greatest(
                   case when a.archiving and b.archived_at is not null then b.archived_at
                        when d.described then b.event_at
                        else $1 end,
                   v.valid_from + case when a.archiving and b.name is distinct from b.old_name
                                       then interval '2 microseconds'
                                       else interval '1 microsecond' end) as starts,
               case when a.archiving and b.archived_at is not null then 'api'
                    when d.described then 'audit_log'
                    else 'observed' end as time_source,
               case when d.described then b.event_by end as changed_by
    ) k
), closed as (
    update openai.project_versions v
    set valid_to = case when c.renamed_too then c.renamed_at else c.starts end, closed_by_run = $2
    from changes c
    where v.ctid = c.open_version
    returning c.open_version
), opened as (
    insert into openai.project_versions
        (project_key, project_id, name, status, created_at, archived_at, external_key_id, residency,
         raw, change, valid_from, valid_to, opened_by_run, closed_by_run, changed_by, time_source)
    select c.key, c.project_id, c.name, c.status, c.created_at, c.archived_at, c.external_key_id,
           c.residency, c.raw, c.change, c.starts, null::timestamptz, $2, null::bigint, c.changed_by, c.time_source
    from changes c join closed on closed.open_version = c.open_version
    union all
    select c.key, c.project_id, c.name, c.open_status, c.created_at, c.open_archived_at,
           c.external_key_id, c.residency,
           c.raw || jsonb_build_object('status', c.open_status,
                                       'archived_at', coalesce(c.open_archived_at_raw, 'null'::jsonb)),
           'renamed', c.renamed_at, c.starts, $2, $2, null, 'observed'
    from changes c join closed on closed.open_version = c.open_version
    where c.renamed_too
    returning 1
), current as (
    update openai.project_current p set
        name = c.name, status = c.status, created_at = c.created_at, archived_at = c.archived_at,
        external_key_id = c.external_key_id, residency = c.residency, raw = c.raw,
        raw_digest = c.digest, last_seen_at = greatest(p.last_seen_at, $1), missing_since = null
    from changes c where p.key = c.key
    returning 1
)
select (select count(*) from current)
