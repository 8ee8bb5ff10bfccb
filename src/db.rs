//! Connecting to Postgres and migrating pdq's schema.
//!
//! Everything pdq owns lives in the `pdq` schema, including its migration bookkeeping
//! (`pdq._sqlx_migrations`), so pdq can share a database with another sqlx application.

use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};

/// pdq's migrations, embedded in the binary.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// Errors from connecting or migrating.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database URL could not be parsed.
    #[error("invalid database URL: {}", describe(.0))]
    InvalidUrl(sqlx::Error),
    /// Postgres refused or could not be reached.
    #[error("cannot connect to Postgres: {}", describe(.0))]
    Connect(sqlx::Error),
    /// A migration failed.
    #[error("migration failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The database has no pdq schema yet.
    #[error("the database has no pdq schema: run `pdq migrate` first")]
    NotMigrated,
    /// The database's schema is older than this binary.
    #[error("the database schema (version {database}) is older than this binary's ({binary}): run `pdq migrate`")]
    SchemaOlder {
        /// The newest migration applied to the database.
        database: i64,
        /// The newest migration this binary carries.
        binary: i64,
    },
    /// The database was migrated by a newer pdq than this binary.
    #[error("the database schema (version {database}) is newer than this binary knows ({binary}): run a newer pdq")]
    SchemaNewer {
        /// The newest migration applied to the database.
        database: i64,
        /// The newest migration this binary carries.
        binary: i64,
    },
    /// Any other database error.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// One short sentence for a connection error: the cause itself, said once ("connection
/// refused", "password authentication failed …") rather than sqlx's wrappers.
pub fn describe(error: &sqlx::Error) -> String {
    match error {
        sqlx::Error::Io(io) => match io.kind() {
            std::io::ErrorKind::ConnectionRefused => {
                "connection refused (is Postgres running, and on this host and port?)".to_owned()
            }
            std::io::ErrorKind::TimedOut => "the connection timed out".to_owned(),
            _ => io.to_string(),
        },
        sqlx::Error::Database(db) => db.message().to_owned(),
        sqlx::Error::PoolTimedOut => "no connection within the timeout".to_owned(),
        sqlx::Error::Configuration(cause) => cause.to_string(),
        other => other.to_string(),
    }
}

/// Checks that the database carries exactly the schema this binary was built for.
pub async fn check_schema(pool: &PgPool) -> Result<(), Error> {
    let binary = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
    let exists: bool = sqlx::query_scalar("select to_regclass('pdq._sqlx_migrations') is not null")
        .fetch_one(pool)
        .await?;
    if !exists {
        return Err(Error::NotMigrated);
    }
    let database: Option<i64> =
        sqlx::query_scalar("select max(version) from pdq._sqlx_migrations where success")
            .fetch_one(pool)
            .await?;
    match database {
        None => Err(Error::NotMigrated),
        Some(database) if database < binary => Err(Error::SchemaOlder { database, binary }),
        Some(database) if database > binary => Err(Error::SchemaNewer { database, binary }),
        Some(_) => Ok(()),
    }
}

/// Parses a `postgres://` URL into connect options, naming the application `pdq`.
pub fn connect_options(database_url: &str) -> Result<PgConnectOptions, Error> {
    let options: PgConnectOptions = database_url.parse().map_err(Error::InvalidUrl)?;
    Ok(options.application_name("pdq"))
}

/// Opens a pool eagerly, so a bad URL or a stopped server fails at once, with the real cause
/// (one plain connection first: a pool would only say it timed out).
pub async fn connect(options: PgConnectOptions, max_connections: u32) -> Result<PgPool, Error> {
    let probe = PgConnection::connect_with(&options)
        .await
        .map_err(Error::Connect)?;
    let _ = probe.close().await;
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options)
        .await
        .map_err(Error::Connect)
}

/// Creates the `pdq` schema if needed and applies every pending migration.
///
/// Safe to run from several processes at once: a session advisory lock serialises them.
pub async fn migrate(options: &PgConnectOptions) -> Result<(), Error> {
    let mut conn = PgConnection::connect_with(options)
        .await
        .map_err(Error::Connect)?;
    sqlx::query("select pg_advisory_lock(hashtext('pdq.migrate'))")
        .execute(&mut conn)
        .await?;
    let result = migrate_locked(&mut conn).await;
    let _ = sqlx::query("select pg_advisory_unlock(hashtext('pdq.migrate'))")
        .execute(&mut conn)
        .await;
    let _ = conn.close().await;
    result
}

async fn migrate_locked(conn: &mut PgConnection) -> Result<(), Error> {
    sqlx::query("create schema if not exists pdq")
        .execute(&mut *conn)
        .await?;
    sqlx::query("set search_path to pdq, public")
        .execute(&mut *conn)
        .await?;
    MIGRATOR.run_direct(&mut *conn).await?;
    Ok(())
}
