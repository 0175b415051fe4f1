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

/// Table rights the daemon needs: (table, privileges, what for).
const TABLE_RIGHTS: &[(&str, &str, &str)] = &[
    (
        "openai.project_requests",
        "SELECT, UPDATE",
        "claiming requests and writing their outcomes",
    ),
    (
        "openai.project_current",
        "SELECT, INSERT, UPDATE",
        "walks, and recording created projects",
    ),
    (
        "openai.project_versions",
        "SELECT, INSERT, UPDATE",
        "walks, and recording created projects",
    ),
    (
        "openai.sync_runs",
        "SELECT, INSERT, UPDATE",
        "recording each pass",
    ),
    (
        "public._sqlx_migrations",
        "SELECT",
        "starting without migrating when every migration is applied",
    ),
];

/// The connected role's name, and every right it lacks to claim requests, write outcomes and
/// run walks; `None` when the schema has not been migrated yet.
pub async fn missing_grants(
    pool: &PgPool,
) -> Result<Option<(String, Vec<MissingGrant>)>, StoreError> {
    let (role, database, migrated): (String, String, bool) = sqlx::query_as(
        "select current_user::text, current_database()::text, \
                to_regclass('openai.project_requests') is not null",
    )
    .fetch_one(pool)
    .await?;
    if !migrated {
        return Ok(None);
    }
    let mut missing = Vec::new();
    for (table, rights, needed_for) in TABLE_RIGHTS {
        let (granted,): (bool,) = sqlx::query_as("select has_table_privilege($1, $2)")
            .bind(table)
            .bind(rights)
            .fetch_one(pool)
            .await?;
        if !granted {
            missing.push(MissingGrant {
                needed_for,
                grant: format!("grant {} on {table} to {role};", rights.to_lowercase()),
            });
        }
    }
    let (temporary, sees_every_request): (bool, bool) = sqlx::query_as(
        "select has_database_privilege(current_database(), 'TEMPORARY'), \
                (select rolsuper or rolbypassrls from pg_roles where rolname = current_user) \
             or pg_has_role(current_user, (select relowner from pg_class \
                                           where oid = 'openai.project_requests'::regclass), 'USAGE') \
             or exists (select 1 from pg_roles r where r.rolname = 'openai_daemon' \
                        and pg_has_role(current_user, r.oid, 'USAGE'))",
    )
    .fetch_one(pool)
    .await?;
    if !temporary {
        missing.push(MissingGrant {
            needed_for: "staging a walk's pages in a temporary table",
            grant: format!("grant temporary on database {database} to {role};"),
        });
    }
    if !sees_every_request {
        missing.push(MissingGrant {
            needed_for: "seeing the queue through row security (without it, no request is ever claimed)",
            grant: format!("grant openai_daemon to {role};  -- then: select openai.grant_roles();"),
        });
    }
    Ok(Some((role, missing)))
}
