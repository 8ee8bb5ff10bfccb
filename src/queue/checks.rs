//! What `pdq doctor` asks the database: the roles and their grants, and worker heartbeats.

use serde::Serialize;
use sqlx::PgPool;

use super::gauges::HEARTBEAT_FRESH_SECONDS;
use super::Error;

/// One of pdq's roles and whether it holds what its job needs.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow, Serialize)]
pub struct RoleCheck {
    /// `pdq_producer`, `pdq_worker` or `pdq_operator`.
    pub role: String,
    /// The role exists.
    pub exists: bool,
    /// The role holds the grants its job needs (false when it does not exist).
    pub granted: bool,
    /// What the role needs, in words.
    pub needs: String,
}

/// Checks the three roles of the least-privilege setup. (`has_table_privilege` with a list
/// answers true when *any* is held, so each privilege is asked on its own.)
pub async fn roles(pool: &PgPool) -> Result<Vec<RoleCheck>, Error> {
    let rows = sqlx::query_as(
        "with wanted(role, needs) as (values
            ('pdq_producer', 'INSERT on pdq.jobs and EXECUTE on pdq.enqueue'),
            ('pdq_worker', 'SELECT, UPDATE, DELETE on pdq.jobs and INSERT on pdq.dead_letters'),
            ('pdq_operator', 'SELECT and DELETE on pdq.dead_letters, SELECT on pdq.jobs'))
         select w.role, r.rolname is not null as exists,
                coalesce(case w.role
                    when 'pdq_producer' then
                        has_any_column_privilege(w.role, 'pdq.jobs', 'insert')
                        and has_function_privilege(w.role,
                            'pdq.enqueue(jsonb, uuid, text, uuid, text, text, text, text,
                                         timestamptz, timestamptz, text, integer)', 'execute')
                    when 'pdq_worker' then
                        has_table_privilege(w.role, 'pdq.jobs', 'select')
                        and has_table_privilege(w.role, 'pdq.jobs', 'update')
                        and has_table_privilege(w.role, 'pdq.jobs', 'delete')
                        and has_table_privilege(w.role, 'pdq.dead_letters', 'insert')
                    else
                        has_table_privilege(w.role, 'pdq.dead_letters', 'select')
                        and has_table_privilege(w.role, 'pdq.dead_letters', 'delete')
                        and has_table_privilege(w.role, 'pdq.jobs', 'select')
                    end and r.rolname is not null, false) as granted,
                w.needs
         from wanted w left join pg_roles r on r.rolname = w.role
         order by w.role",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows)
}

/// Worker heartbeats as `pdq doctor` reports them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Heartbeats {
    /// Workers seen within [`HEARTBEAT_FRESH_SECONDS`].
    pub fresh: i64,
    /// Workers not seen for longer.
    pub stale: i64,
    /// Seconds since the newest heartbeat, if any.
    pub newest_age_seconds: Option<f64>,
}

/// Reads `pdq.workers`; `None` while that table does not exist.
pub async fn heartbeats(pool: &PgPool) -> Result<Option<Heartbeats>, Error> {
    let exists: bool = sqlx::query_scalar("select to_regclass('pdq.workers') is not null")
        .fetch_one(pool)
        .await?;
    if !exists {
        return Ok(None);
    }
    let (fresh, stale, newest_age_seconds) = sqlx::query_as(
        "select count(*) filter (where last_seen_at > now() - make_interval(secs => $1)),
                count(*) filter (where last_seen_at <= now() - make_interval(secs => $1)),
                extract(epoch from now() - max(last_seen_at))::float8
         from pdq.workers",
    )
    .bind(HEARTBEAT_FRESH_SECONDS)
    .fetch_one(pool)
    .await?;
    Ok(Some(Heartbeats {
        fresh,
        stale,
        newest_age_seconds,
    }))
}
