//! Applying pdq's migrations in one transaction, so they are correct through a transaction
//! pooler (PgBouncer `pool_mode = transaction`) as well as on a direct connection.
//!
//! Everything a run needs lives inside that transaction: the lock, the search path
//! (`set_config(…, true)`), schema-qualified bookkeeping (`pdq._sqlx_migrations`, the table and
//! checks sqlx's migrator uses) and unnamed statements only (a pooler hands the next
//! transaction another server connection, where a named statement would not exist, or would
//! clash with another client's). A migration that fails rolls every one back.
//!
//! **Nobody can stall it.** Runs are serialised by `LOCK TABLE pdq._sqlx_migrations IN
//! EXCLUSIVE MODE`: the table belongs to the migrating owner, and pdq's groups may only read it
//! (which takes no conflicting lock), so no other login can take or hold that lock, unlike an
//! advisory key, which any login may hold. Every lock the run waits for (that one, and those
//! its DDL needs) is waited for at most [`MigrateSettings::lock_timeout`]: a migration waiting
//! behind a producer's open transaction gives up, rolls back and tries again later, instead of
//! leaving a queued `ACCESS EXCLUSIVE` request that every worker statement on the table would
//! queue behind. While it waits, a second connection asks `pg_blocking_pids` who is in the way,
//! so every retry, and the error after the last one, names the blocking sessions.

use std::fmt;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::migrate::{MigrateError, Migration};
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection};

use super::Error;

/// How `pdq migrate` waits for the locks it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrateSettings {
    /// The longest one attempt waits for a lock (Postgres `lock_timeout`), and so the longest
    /// a worker statement can queue behind a waiting migration.
    pub lock_timeout: Duration,
    /// Attempts before giving up.
    pub attempts: u32,
    /// The pause between two attempts.
    pub pause: Duration,
}

impl Default for MigrateSettings {
    fn default() -> Self {
        MigrateSettings {
            lock_timeout: Duration::from_secs(2),
            attempts: 10,
            pause: Duration::from_secs(1),
        }
    }
}

/// A session that held a lock a migration waited for (from `pg_stat_activity`; the fields a
/// role may not see of another role's session are `None`).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Blocker {
    /// The server process id (`pg_terminate_backend(pid)` ends the session).
    pub pid: i32,
    /// The role it logged in as.
    pub login: Option<String>,
    /// Its `application_name`.
    pub application_name: Option<String>,
    /// `active`, `idle in transaction`, …
    pub state: Option<String>,
    /// When its transaction began.
    pub transaction_start: Option<DateTime<Utc>>,
    /// When its last statement began.
    pub query_start: Option<DateTime<Utc>>,
}

impl fmt::Display for Blocker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = |value: &Option<String>| {
            value
                .as_deref()
                .map_or_else(|| "?".to_owned(), |v| v.escape_debug().to_string())
        };
        let time = |value: &Option<DateTime<Utc>>| {
            value.map_or_else(
                || "?".to_owned(),
                |t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
            )
        };
        write!(
            f,
            "session pid {} (user {}, application {:?}, {}, transaction started {}, last query \
             started {})",
            self.pid,
            text(&self.login),
            text(&self.application_name),
            self.state
                .as_deref()
                .unwrap_or("state not visible to this role"),
            time(&self.transaction_start),
            time(&self.query_start),
        )
    }
}

/// The blocking sessions, said in one line.
pub(super) fn describe_blockers(blockers: &[Blocker]) -> String {
    match blockers {
        [] => "the blocking session ended before it could be named".to_owned(),
        _ => {
            let said: Vec<String> = blockers.iter().map(ToString::to_string).collect();
            format!("blocked by {}", said.join("; "))
        }
    }
}

/// Creates the `pdq` schema if needed and applies every pending one of `migrations`, all in
/// one transaction on `conn`, retrying as `settings` says when a lock is not granted in time;
/// returns the versions it applied, oldest first.
pub(super) async fn run(
    conn: &mut PgConnection,
    options: &PgConnectOptions,
    migrations: &[Migration],
    settings: &MigrateSettings,
) -> Result<Vec<i64>, Error> {
    let attempts = settings.attempts.max(1);
    let mut watcher = Watcher::new(options, settings.lock_timeout);
    for attempt in 1..=attempts {
        let pid = Arc::new(AtomicI32::new(0));
        let tried = attempt_once(conn, migrations, settings, pid.clone());
        let outcome = watcher.watch(tried, &pid).await;
        match outcome {
            Err(error) if is_lock_wait(&error) => {
                let blockers = watcher.take();
                if attempt == attempts {
                    watcher.close().await;
                    return Err(Error::MigrateBlocked {
                        attempts,
                        lock_timeout: settings.lock_timeout,
                        blockers,
                    });
                }
                tracing::warn!(
                    attempt,
                    attempts,
                    "pdq migrate: a lock was not granted within {} ms ({}); rolled back, \
                     trying again in {} ms",
                    settings.lock_timeout.as_millis(),
                    describe_blockers(&blockers),
                    settings.pause.as_millis(),
                );
                tokio::time::sleep(settings.pause).await;
            }
            other => {
                watcher.close().await;
                return other;
            }
        }
    }
    unreachable!("the last attempt returns")
}

/// A lock not granted in time (`lock_timeout`) or a deadlock, anywhere; or, in the run's own
/// statements, two first runs creating the schema or the bookkeeping at once: all worth
/// another attempt (a migration's own unique violation is not).
fn is_lock_wait(error: &Error) -> bool {
    fn code(error: &sqlx::Error) -> Option<std::borrow::Cow<'_, str>> {
        error.as_database_error().and_then(|e| e.code())
    }
    match error {
        Error::Database(error) => matches!(
            code(error).as_deref(),
            Some("55P03" | "40P01" | "23505" | "42P06" | "42P07")
        ),
        Error::Migrate(MigrateError::ExecuteMigration(error, _)) => {
            matches!(code(error).as_deref(), Some("55P03" | "40P01"))
        }
        _ => false,
    }
}

/// One attempt: the whole run in one transaction, rolled back by any error.
async fn attempt_once(
    conn: &mut PgConnection,
    migrations: &[Migration],
    settings: &MigrateSettings,
    pid: Arc<AtomicI32>,
) -> Result<Vec<i64>, Error> {
    let mut tx = conn.begin().await?;
    pid.store(backend_pid(&mut tx).await?, Ordering::Relaxed);
    let lock_timeout = format!("{}ms", settings.lock_timeout.as_millis().max(1));
    set_local(&mut tx, "lock_timeout", lock_timeout).await?;
    // The notices of `… if not exists` and of the migrations' own checks are not for the
    // person running migrate; `pdq migrate` reports what matters itself.
    set_local(&mut tx, "client_min_messages", "warning".to_owned()).await?;
    set_local(&mut tx, "search_path", "pdq, public".to_owned()).await?;
    for statement in [
        "create schema if not exists pdq",
        "create table if not exists pdq._sqlx_migrations (
            version bigint primary key,
            description text not null,
            installed_on timestamptz not null default now(),
            success boolean not null,
            checksum bytea not null,
            execution_time bigint not null
        )",
        "lock table pdq._sqlx_migrations in exclusive mode",
    ] {
        exec(&mut tx, statement).await?;
    }
    let applied = applied(&mut tx).await?;
    let mut done = Vec::new();
    for migration in pending(migrations, &applied)? {
        let started = Instant::now();
        run_script(&mut tx, &migration.sql)
            .await
            .map_err(|error| MigrateError::ExecuteMigration(error, migration.version))?;
        let elapsed = i64::try_from(started.elapsed().as_nanos()).unwrap_or(i64::MAX);
        record(&mut tx, &migration, elapsed).await?;
        done.push(migration.version);
    }
    tx.commit().await?;
    Ok(done)
}

/// The server process of the connection (through a pooler: of this transaction).
async fn backend_pid(conn: &mut PgConnection) -> Result<i32, sqlx::Error> {
    sqlx::query_scalar("select pg_backend_pid()")
        .persistent(false)
        .fetch_one(conn)
        .await
}

/// `SET LOCAL name = value`.
async fn set_local(
    conn: &mut PgConnection,
    name: &'static str,
    value: String,
) -> Result<(), sqlx::Error> {
    sqlx::query("select set_config($1, $2, true)")
        .bind(name)
        .bind(value)
        .persistent(false)
        .execute(conn)
        .await
        .map(|_| ())
}

/// The bookkeeping: (version, success, checksum) of every migration applied.
async fn applied(conn: &mut PgConnection) -> Result<Vec<(i64, bool, Vec<u8>)>, sqlx::Error> {
    sqlx::query_as("select version, success, checksum from pdq._sqlx_migrations order by 1")
        .persistent(false)
        .fetch_all(conn)
        .await
}

/// Records `migration` as applied.
async fn record(
    conn: &mut PgConnection,
    migration: &Migration,
    elapsed: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "insert into pdq._sqlx_migrations
             (version, description, success, checksum, execution_time)
         values ($1, $2, true, $3, $4)",
    )
    .bind(migration.version)
    .bind(migration.description.to_string())
    .bind(migration.checksum.to_vec())
    .bind(elapsed)
    .persistent(false)
    .execute(conn)
    .await
    .map(|_| ())
}

/// Runs one statement of the run's own (unnamed, for poolers).
async fn exec(conn: &mut PgConnection, statement: &'static str) -> Result<(), sqlx::Error> {
    sqlx::query(statement)
        .persistent(false)
        .execute(conn)
        .await
        .map(|_| ())
}

/// Runs one migration's statements.
async fn run_script(conn: &mut PgConnection, sql: &str) -> Result<(), sqlx::Error> {
    sqlx::raw_sql(sql).execute(conn).await.map(|_| ())
}

/// Checks the applied migrations against `migrations`; returns the pending ones, in order.
fn pending(
    migrations: &[Migration],
    applied: &[(i64, bool, Vec<u8>)],
) -> Result<Vec<Migration>, MigrateError> {
    for (version, success, checksum) in applied {
        if !success {
            return Err(MigrateError::Dirty(*version));
        }
        match migrations.iter().find(|m| m.version == *version) {
            None => return Err(MigrateError::VersionMissing(*version)),
            Some(known) if known.checksum.as_ref() != checksum.as_slice() => {
                return Err(MigrateError::VersionMismatch(*version))
            }
            Some(_) => {}
        }
    }
    let mut pending: Vec<Migration> = migrations
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
        .filter(|m| !applied.iter().any(|(version, ..)| *version == m.version))
        .cloned()
        .collect();
    pending.sort_by_key(|m| m.version);
    Ok(pending)
}

/// Asks, on a connection of its own, which sessions block the migrating one, while it waits.
struct Watcher {
    options: PgConnectOptions,
    every: Duration,
    conn: Option<PgConnection>,
    seen: Vec<Blocker>,
}

impl Watcher {
    fn new(options: &PgConnectOptions, lock_timeout: Duration) -> Watcher {
        Watcher {
            options: options.clone(),
            every: (lock_timeout / 4).clamp(Duration::from_millis(20), Duration::from_millis(500)),
            conn: None,
            seen: Vec::new(),
        }
    }

    /// Drives `attempt` to its end, looking for blockers every so often meanwhile.
    async fn watch(
        &mut self,
        attempt: impl std::future::Future<Output = Result<Vec<i64>, Error>>,
        pid: &AtomicI32,
    ) -> Result<Vec<i64>, Error> {
        tokio::pin!(attempt);
        let mut tick = tokio::time::interval(self.every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                biased;
                outcome = &mut attempt => return outcome,
                _ = tick.tick() => {
                    let pid = pid.load(Ordering::Relaxed);
                    if pid != 0 {
                        self.look(pid).await;
                    }
                }
            }
        }
    }

    /// Records the sessions blocking `pid` now, if any (a failed look is not an error: the
    /// migration goes on, only unnamed blockers are reported).
    async fn look(&mut self, pid: i32) {
        if self.conn.is_none() {
            let connecting = super::tls::connect_one(&self.options);
            match tokio::time::timeout(Duration::from_secs(5), connecting).await {
                Ok(Ok((conn, _))) => self.conn = Some(conn),
                _ => return,
            }
        }
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        let asked = sqlx::query_as::<_, Blocker>(
            "select pid, usename::text as login, application_name, state,
                    xact_start as transaction_start, query_start
             from pg_stat_activity
             where pid = any(pg_blocking_pids($1))
             order by xact_start nulls last, pid
             limit 5",
        )
        .bind(pid)
        .persistent(false)
        .fetch_all(&mut *conn);
        match tokio::time::timeout(Duration::from_secs(5), asked).await {
            Ok(Ok(blockers)) if !blockers.is_empty() => self.seen = blockers,
            Ok(Ok(_)) => {}
            _ => self.conn = None,
        }
    }

    /// The blockers seen during the last attempt.
    fn take(&mut self) -> Vec<Blocker> {
        std::mem::take(&mut self.seen)
    }

    async fn close(&mut self) {
        if let Some(conn) = self.conn.take() {
            let _ = conn.close().await;
        }
    }
}
