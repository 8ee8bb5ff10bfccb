//! Applying pdq's migrations in one transaction, so they are correct through a transaction
//! pooler (PgBouncer `pool_mode = transaction`) as well as on a direct connection.
//!
//! Everything a run needs lives inside that transaction: the lock (`pg_advisory_xact_lock`,
//! released by the commit or the rollback, never left behind on a pooled connection), the
//! search path (`set_config(…, true)`), schema-qualified bookkeeping (`pdq._sqlx_migrations`,
//! the table and checks sqlx's migrator uses) and unnamed statements only (a pooler hands the
//! next transaction another server connection, where a named statement would not exist, or
//! would clash with another client's). A migration that fails rolls every one back.

use std::time::Instant;

use sqlx::migrate::MigrateError;
use sqlx::{Connection, PgConnection};

use super::{Error, MIGRATOR};

/// Creates the `pdq` schema if needed and applies every pending migration, all in one
/// transaction on `conn`; returns the versions it applied, oldest first.
pub(super) async fn run(conn: &mut PgConnection) -> Result<Vec<i64>, Error> {
    let mut tx = conn.begin().await?;
    for statement in [
        "select pg_advisory_xact_lock(hashtext('pdq.migrate'))",
        "create schema if not exists pdq",
        "select set_config('search_path', 'pdq, public', true)",
        "create table if not exists pdq._sqlx_migrations (
            version bigint primary key,
            description text not null,
            installed_on timestamptz not null default now(),
            success boolean not null,
            checksum bytea not null,
            execution_time bigint not null
        )",
    ] {
        sqlx::query(statement)
            .persistent(false)
            .execute(&mut *tx)
            .await?;
    }
    let applied: Vec<(i64, bool, Vec<u8>)> =
        sqlx::query_as("select version, success, checksum from pdq._sqlx_migrations order by 1")
            .persistent(false)
            .fetch_all(&mut *tx)
            .await?;
    for (version, success, checksum) in &applied {
        if !success {
            return Err(MigrateError::Dirty(*version).into());
        }
        match MIGRATOR.iter().find(|m| m.version == *version) {
            None => return Err(MigrateError::VersionMissing(*version).into()),
            Some(known) if known.checksum.as_ref() != checksum.as_slice() => {
                return Err(MigrateError::VersionMismatch(*version).into())
            }
            Some(_) => {}
        }
    }
    let mut pending: Vec<_> = MIGRATOR
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
        .filter(|m| !applied.iter().any(|(version, ..)| *version == m.version))
        .collect();
    pending.sort_by_key(|m| m.version);
    let mut done = Vec::with_capacity(pending.len());
    for migration in pending {
        let started = Instant::now();
        sqlx::raw_sql(&migration.sql)
            .execute(&mut *tx)
            .await
            .map_err(|error| MigrateError::ExecuteMigration(error, migration.version))?;
        let elapsed = i64::try_from(started.elapsed().as_nanos()).unwrap_or(i64::MAX);
        sqlx::query(
            "insert into pdq._sqlx_migrations
                 (version, description, success, checksum, execution_time)
             values ($1, $2, true, $3, $4)",
        )
        .bind(migration.version)
        .bind(migration.description.as_ref())
        .bind(migration.checksum.as_ref())
        .bind(elapsed)
        .persistent(false)
        .execute(&mut *tx)
        .await?;
        done.push(migration.version);
    }
    tx.commit().await?;
    Ok(done)
}
