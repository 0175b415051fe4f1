//! What the configured database role may do, for `check`.

use sqlx::PgPool;

use super::StoreError;

/// A right the daemon needs and the connected role lacks, with the grant that gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingGrant {
    /// What fails without it, in plain words.
    pub needed_for: &'static str,
    /// The statement a DBA runs to give it.
    pub grant: String,
}

/// The connected role's name, and every right it lacks to claim requests, write outcomes and
/// run walks, cost passes and audit-log polls (what `openai.grant_roles()` gives `openai_daemon`);
/// `None` when the schema has not been migrated yet. Names in the grants are quoted as needed.
pub async fn missing_grants(
    pool: &PgPool,
) -> Result<Option<(String, Vec<MissingGrant>)>, StoreError> {
    let (role, quoted_role, quoted_database, migrated): (String, String, String, bool) =
        sqlx::query_as(
            "select current_user::text, quote_ident(current_user), quote_ident(current_database()), \
                    exists (select 1 from pg_class c join pg_namespace n on n.oid = c.relnamespace \
                            where n.nspname = 'openai' and c.relname = 'project_requests')",
        )
        .fetch_one(pool)
        .await?;
    if !migrated {
        return Ok(None);
    }
    let mut missing = Vec::new();
    let (schema_usage,): (bool,) = sqlx::query_as("select has_schema_privilege('openai', 'USAGE')")
        .fetch_one(pool)
        .await?;
    if !schema_usage {
        missing.push(MissingGrant {
            needed_for: "reaching any table of the openai schema",
            grant: format!("grant usage on schema openai to {quoted_role};"),
        });
    }
    // By oid, so that a role without usage on the schema can still be told what it lacks.
    let relations: Vec<(String, String, bool)> = sqlx::query_as(
        "select quote_ident(n.nspname) || '.' || quote_ident(c.relname), \
                case when c.relkind = 'S' then 'usage, select' \
                     when c.relname = 'costs' then 'select, insert, update, delete' \
                     else 'select, insert, update' end, \
                case when c.relkind = 'S' then has_sequence_privilege(c.oid, 'USAGE, SELECT') \
                     when c.relname = 'costs' then has_table_privilege(c.oid, 'SELECT, INSERT, UPDATE, DELETE') \
                     else has_table_privilege(c.oid, 'SELECT, INSERT, UPDATE') end \
         from pg_class c join pg_namespace n on n.oid = c.relnamespace \
         where n.nspname = 'openai' and c.relkind in ('r', 'p', 'S') \
         union all \
         select 'public._sqlx_migrations', 'select', has_table_privilege(c.oid, 'SELECT') \
         from pg_class c join pg_namespace n on n.oid = c.relnamespace \
         where n.nspname = 'public' and c.relname = '_sqlx_migrations' \
         order by 1",
    )
    .fetch_all(pool)
    .await?;
    for (relation, rights, granted) in relations {
        if granted {
            continue;
        }
        let (keyword, needed_for) = if rights.starts_with("usage") {
            ("sequence ", "numbering runs and requests")
        } else if relation == "public._sqlx_migrations" {
            (
                "",
                "starting without migrating when every migration is applied",
            )
        } else {
            (
                "",
                "walks, cost passes, audit-log polls and the request queue",
            )
        };
        missing.push(MissingGrant {
            needed_for,
            grant: format!("grant {rights} on {keyword}{relation} to {quoted_role};"),
        });
    }
    let (temporary, bypasses_row_security, member_of_daemon_role, daemon_policy): (
        bool,
        bool,
        bool,
        bool,
    ) = sqlx::query_as(
        "select has_database_privilege(current_database(), 'TEMPORARY'), \
                (select rolsuper or rolbypassrls from pg_roles where rolname = current_user) \
             or pg_has_role(current_user, (select c.relowner from pg_class c \
                                           join pg_namespace n on n.oid = c.relnamespace \
                                           where n.nspname = 'openai' \
                                             and c.relname = 'project_requests'), 'USAGE'), \
                exists (select 1 from pg_roles r where r.rolname = 'openai_daemon' \
                        and pg_has_role(current_user, r.oid, 'USAGE')), \
                exists (select 1 from pg_policies where schemaname = 'openai' \
                        and tablename = 'project_requests' \
                        and policyname = 'requests_daemon_works_the_queue')",
    )
    .fetch_one(pool)
    .await?;
    if !temporary {
        missing.push(MissingGrant {
            needed_for: "staging a walk's pages in a temporary table",
            grant: format!("grant temporary on database {quoted_database} to {quoted_role};"),
        });
    }
    if !bypasses_row_security {
        if !member_of_daemon_role {
            missing.push(MissingGrant {
                needed_for: "seeing the queue through row security (without it, no request is ever claimed)",
                grant: format!(
                    "grant openai_daemon to {quoted_role};  -- then: select openai.grant_roles();"
                ),
            });
        } else if !daemon_policy {
            missing.push(MissingGrant {
                needed_for: "seeing the queue through row security: openai_daemon has no policy on openai.project_requests yet (without it, no request is ever claimed)",
                grant: "select openai.grant_roles();".to_owned(),
            });
        }
    }
    Ok(Some((role, missing)))
}
