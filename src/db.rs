//! Connecting to Postgres and migrating pdq's schema.
//!
//! Everything pdq owns lives in the `pdq` schema, including its migration bookkeeping
//! (`pdq._sqlx_migrations`), so pdq can share a database with another sqlx application.
//!
//! Connections follow libpq's TLS rules (`tls`), send only startup parameters a pooler
//! accepts, and pools are small, let idle connections go and close a connection that does
//! not answer when it is given back (see [`pool_options`]); the worker's sessions also carry
//! a statement timeout ([`connect_bounded`]).

mod migration;
mod server;
mod tls;

pub use migration::{Blocker, MigrateSettings};
pub use server::{async_standbys, is_read_only_error, is_standby};

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
    #[error("cannot connect to Postgres at {at}: {}", describe(.cause))]
    Connect {
        /// The host and port tried (`127.0.0.1:5432`, or a socket directory).
        at: String,
        /// What went wrong.
        cause: sqlx::Error,
    },
    /// A migration failed.
    #[error("migration failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// Every attempt to migrate waited for a lock longer than the lock timeout.
    #[error(
        "pdq migrate gave up after {attempts} attempts, each waiting at most {} ms for a lock: \
         {}. End that transaction (or `select pg_terminate_backend(pid)`) and run pdq migrate \
         again",
        lock_timeout.as_millis(),
        migration::describe_blockers(blockers)
    )]
    MigrateBlocked {
        /// The attempts made.
        attempts: u32,
        /// How long each waited for a lock at most.
        lock_timeout: Duration,
        /// The sessions seen holding the lock during the last attempt.
        blockers: Vec<Blocker>,
    },
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
    /// The server is a hot standby: it reads but no claim or enqueue can succeed.
    #[error("{}", server::STANDBY)]
    Standby,
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
            _ if tls::is_tls_failure(&io.to_string()) => tls::describe(&io.to_string()),
            _ => io.to_string(),
        },
        sqlx::Error::Database(db) => db.message().to_owned(),
        sqlx::Error::PoolTimedOut => "no connection within the timeout".to_owned(),
        sqlx::Error::Configuration(cause) => cause.to_string(),
        sqlx::Error::Tls(cause) => tls::describe(&cause.to_string()),
        other => other.to_string(),
    }
}

/// Maps a connection failure to [`Error::Connect`], naming the host and port `options` name.
pub fn connect_error(options: &PgConnectOptions) -> impl FnOnce(sqlx::Error) -> Error {
    let at = format!("{}:{}", options.get_host(), options.get_port());
    move |cause| Error::Connect { at, cause }
}

/// Refuses a read-only standby ([`Error::Standby`]).
pub async fn check_primary(pool: &PgPool) -> Result<(), Error> {
    match server::is_standby(pool).await? {
        true => Err(Error::Standby),
        false => Ok(()),
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

/// Parses a `postgres://` URL into connect options, naming the application `pdq` (unless the
/// URL's `application_name` or `PGAPPNAME` names it).
///
/// TLS follows libpq (`sslmode` disable, allow, prefer, require, verify-ca, verify-full;
/// `sslrootcert` a file or `system`; `sslcert` and `sslkey`). No `extra_float_digits` goes
/// in the startup packet: PgBouncer refuses startup parameters it does not know, and pdq
/// reads no floating-point value as text.
pub fn connect_options(database_url: &str) -> Result<PgConnectOptions, Error> {
    let options: PgConnectOptions = database_url.parse().map_err(Error::InvalidUrl)?;
    let options = tls::apply(database_url, options)
        .map_err(|problem| Error::InvalidUrl(sqlx::Error::Configuration(problem.into())))?;
    let options = match options.get_application_name() {
        Some(_) => options,
        None => options.application_name("pdq"),
    };
    Ok(options.extra_float_digits(None))
}

/// Connections a worker's pool opens at most unless told otherwise, whatever its executor
/// count: executors wait on the API, and hold a connection only for a statement at a time
/// (the wake-up listener keeps one of these for itself).
pub const DEFAULT_WORKER_CONNECTIONS: u32 = 6;

/// Connections the console's pool opens at most unless told otherwise.
pub const DEFAULT_CONSOLE_CONNECTIONS: u32 = 3;

/// Connections an operator command (status, enqueue, dlq, ...) opens at most unless told
/// otherwise.
pub const DEFAULT_CLI_CONNECTIONS: u32 = 2;

/// How long a pooled connection may sit idle before it is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a pooled connection lives: a busy worker hands its statements round every idle
/// connection, so none would sit idle long enough to close; recycling them lets a pool
/// shrink back after a burst (and reconnects to a new primary after a failover).
pub const MAX_LIFETIME: Duration = Duration::from_secs(60);

/// How long a caller waits for a pooled connection before the call fails.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a connection given back to the pool may take to answer the check that it is
/// still usable; one that does not answer (a silent peer, a call abandoned on it) is closed.
pub const RELEASE_CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// The pool settings every pdq process uses: at most `max_connections`, none kept open
/// beyond need (idle ones close after [`IDLE_TIMEOUT`], every one after [`MAX_LIFETIME`]).
///
/// A connection given back is checked within [`RELEASE_CHECK_TIMEOUT`]: sqlx's own check
/// waits forever on a connection whose peer went silent, and would hold its slot in the
/// pool for good (no TCP keepalive notices a silent peer: sqlx 0.8 sets none).
pub fn pool_options(max_connections: u32) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(max_connections.max(1))
        .min_connections(0)
        .idle_timeout(IDLE_TIMEOUT)
        .max_lifetime(MAX_LIFETIME)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .after_release(|conn, _| {
            Box::pin(async move {
                match tokio::time::timeout(RELEASE_CHECK_TIMEOUT, conn.ping()).await {
                    Ok(checked) => checked.map(|()| true),
                    Err(_) => Err(sqlx::Error::Io(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the connection did not answer its release check",
                    ))),
                }
            })
        })
}

/// `options` with a server-side `statement_timeout` and an
/// `idle_in_transaction_session_timeout` of `timeout` (sent in the startup packet), each
/// unless the URL's own `options` set it. The second frees what a silent connection holds:
/// a transaction whose client can no longer send its `COMMIT` would otherwise keep its row
/// locks (and block every later statement on those rows) until the server notices the peer
/// is gone, which may be never.
pub fn with_statement_timeout(options: PgConnectOptions, timeout: Duration) -> PgConnectOptions {
    let value = format!("{}ms", timeout.as_millis());
    let mut options = options;
    for setting in ["statement_timeout", "idle_in_transaction_session_timeout"] {
        let own = options
            .get_options()
            .is_some_and(|given| given.contains(&format!("{setting}=")));
        if !own {
            options = options.options([(setting, value.clone())]);
        }
    }
    options
}

/// Whether Postgres (or a pooler in front) refused a startup parameter: PgBouncer refuses
/// `options` unless told to ignore it.
fn refuses_startup_options(error: &sqlx::Error) -> bool {
    describe(error).contains("unsupported startup parameter")
}

/// Opens a pool like [`connect`] whose sessions cancel any statement running longer than
/// `statement_timeout` and end any transaction left idle that long; when the server refuses to
/// set it at startup (a pooler), the pool
/// opens without it and says so (set it on the role instead: docs/postgres.md, Poolers).
pub async fn connect_bounded(
    options: PgConnectOptions,
    max_connections: u32,
    statement_timeout: Duration,
) -> Result<PgPool, Error> {
    let bounded = with_statement_timeout(options.clone(), statement_timeout);
    match connect(bounded, max_connections).await {
        Err(Error::Connect { cause, .. }) if refuses_startup_options(&cause) => {
            tracing::warn!(
                "the server refuses the options startup parameter (a pooler?): no \
                 statement_timeout is set on pdq's sessions (set it and \
                 idle_in_transaction_session_timeout on pdq's role: ALTER ROLE ... SET ...); \
                 the worker still abandons calls that \
                 nobody answers"
            );
            connect(options, max_connections).await
        }
        other => other,
    }
}

/// Opens a pool eagerly, so a bad URL or a stopped server fails at once, with the real cause
/// (one plain connection first: a pool would only say it timed out).
pub async fn connect(options: PgConnectOptions, max_connections: u32) -> Result<PgPool, Error> {
    let (probe, options) = tls::connect_one(&options)
        .await
        .map_err(connect_error(&options))?;
    let _ = probe.close().await;
    let failed = connect_error(&options);
    pool_options(max_connections)
        .connect_with(options)
        .await
        .map_err(failed)
}

/// Creates the `pdq` schema if needed and applies every pending migration, with the default
/// [`MigrateSettings`].
///
/// Safe to run from several processes at once (a lock only the schema's owner can take
/// serialises them), through a transaction pooler (the whole run is one transaction), and
/// beside running workers and producers: a lock not granted within the lock timeout rolls the
/// run back and it tries again, naming the session in its way (see `migration`).
pub async fn migrate(options: &PgConnectOptions) -> Result<(), Error> {
    migrate_counting(options).await.map(|_| ())
}

/// [`migrate`], returning the versions it applied, oldest first (none when the schema was
/// already up to date).
pub async fn migrate_counting(options: &PgConnectOptions) -> Result<Vec<i64>, Error> {
    migrate_with(options, &MIGRATOR.migrations, &MigrateSettings::default()).await
}

/// [`migrate`] with `migrations` (this binary's are [`MIGRATOR`]'s) and `settings`; returns
/// the versions it applied, oldest first.
pub async fn migrate_with(
    options: &PgConnectOptions,
    migrations: &[sqlx::migrate::Migration],
    settings: &MigrateSettings,
) -> Result<Vec<i64>, Error> {
    let (mut conn, _) = tls::connect_one(options)
        .await
        .map_err(connect_error(options))?;
    let result = migration::run(&mut conn, options, migrations, settings).await;
    let _ = conn.close().await;
    result
}

/// The Postgres server on this machine that tests, benchmarks and the demo fall back to.
pub const LOCAL_SERVER_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// The server to create scratch databases on: `DATABASE_URL`, or [`LOCAL_SERVER_URL`].
pub fn admin_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| LOCAL_SERVER_URL.to_owned())
}

/// A fresh, migrated database for one test, benchmark or demo run, dropped (`WITH (FORCE)`)
/// when the value is dropped, during a panic too. [`ScratchDatabase::drop_now`] drops it
/// without blocking; [`ScratchDatabase::keep`] keeps it.
pub struct ScratchDatabase {
    name: String,
    admin_url: String,
    admin: PgConnectOptions,
    options: PgConnectOptions,
    pool: PgPool,
    armed: bool,
}

impl ScratchDatabase {
    /// Creates `<prefix><random>` on the server `admin_url` names, migrates it and opens a
    /// pool of `connections` on it.
    pub async fn create(
        admin_url: &str,
        prefix: &str,
        connections: u32,
    ) -> Result<ScratchDatabase, Error> {
        let admin = connect_options(admin_url)?;
        let name = format!("{prefix}{}", uuid::Uuid::new_v4().simple());
        let mut conn = PgConnection::connect_with(&admin)
            .await
            .map_err(connect_error(&admin))?;
        sqlx::query(&format!("create database {name}"))
            .execute(&mut conn)
            .await?;
        let _ = conn.close().await;
        let options = admin.clone().database(&name);
        // From here on a failure drops the database again.
        let mut scratch = ScratchDatabase {
            pool: PgPoolOptions::new().connect_lazy_with(options.clone()),
            name,
            admin_url: admin_url.to_owned(),
            admin,
            options,
            armed: true,
        };
        migrate(&scratch.options).await?;
        scratch.pool = connect(scratch.options.clone(), connections).await?;
        Ok(scratch)
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A pool on the database.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Connect options that reach the database.
    pub fn options(&self) -> &PgConnectOptions {
        &self.options
    }

    /// The admin URL with the database name replaced (host, port, credentials and parameters
    /// carry over), to hand to a `pdq` process. It may hold a password: never print it.
    pub fn url(&self) -> String {
        match url::Url::parse(&self.admin_url) {
            Ok(mut url) if url.has_host() => {
                url.set_path(&format!("/{}", self.name));
                url.to_string()
            }
            _ => format!("{}/{}", self.admin_url.trim_end_matches('/'), self.name),
        }
    }

    /// Keeps the database after this value is gone.
    pub fn keep(&mut self) {
        self.armed = false;
    }

    /// Closes the pool and drops the database, without blocking the runtime.
    pub async fn drop_now(mut self) {
        self.armed = false;
        self.pool.close().await;
        drop_database(&self.admin, &self.name).await;
    }
}

impl Drop for ScratchDatabase {
    /// Drops the database from a thread of its own (a `Drop` cannot await, and may run
    /// inside a runtime or while a panic unwinds); never panics.
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (admin, name) = (self.admin.clone(), self.name.clone());
        let dropper = std::thread::spawn(move || {
            if let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                runtime.block_on(drop_database(&admin, &name));
            }
        });
        let _ = dropper.join();
    }
}

/// `DROP DATABASE … WITH (FORCE)`, ending the sessions still on it; errors are ignored (the
/// database may be gone already).
async fn drop_database(admin: &PgConnectOptions, name: &str) {
    let connecting = PgConnection::connect_with(admin);
    if let Ok(Ok(mut conn)) = tokio::time::timeout(Duration::from_secs(10), connecting).await {
        let _ = sqlx::query(&format!("drop database if exists {name} with (force)"))
            .execute(&mut conn)
            .await;
        let _ = conn.close().await;
    }
}
