//! What kind of server pdq is talking to: a read-only standby, a primary with asynchronous
//! standbys, a transaction pooler in front.

use sqlx::PgPool;

/// Whether the server is a standby in recovery (read-only: no claim can succeed there).
pub async fn is_standby(pool: &PgPool) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("select pg_is_in_recovery()")
        .fetch_one(pool)
        .await
}

/// The standbys that replicate asynchronously from this primary (`application_name` of each,
/// from `pg_stat_replication` where `sync_state` is `async`); empty when the view cannot be
/// read (it needs `pg_monitor` for other roles' rows, so such a check stays quiet).
pub async fn async_standbys(pool: &PgPool) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "select coalesce(nullif(application_name, ''), client_addr::text, 'unnamed')
         from pg_stat_replication where sync_state = 'async' order by 1",
    )
    .fetch_all(pool)
    .await
}

/// Whether `error` is Postgres refusing a write because the server is read-only (SQLSTATE
/// 25006: a standby, or `default_transaction_read_only`).
pub fn is_read_only_error(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.code().as_deref() == Some("25006"))
}

/// The sentence pdq says about a standby.
pub const STANDBY: &str = "the database is a read-only standby (in recovery): point pdq at the \
                           primary";
