//! Shared test support: a fresh, migrated database per test on the local Postgres.

#![allow(dead_code)]

use std::future::Future;
use std::time::{Duration, Instant};

use pdq::db::ScratchDatabase;
use sqlx::postgres::PgConnectOptions;
use sqlx::PgPool;

/// The server tests talk to: `DATABASE_URL`, or the local default.
pub fn database_url() -> String {
    pdq::db::admin_url()
}

/// A database created for one test (`pdq_test_…`), migrated, with a pool of `connections`;
/// dropped when the test ends, even by a panic.
pub struct TestDb {
    /// A pool on the test database.
    pub pool: PgPool,
    /// Options that reach the test database.
    pub options: PgConnectOptions,
    /// The database's name.
    pub name: String,
    /// The server's URL (any database on it).
    pub server: String,
    scratch: ScratchDatabase,
}

impl TestDb {
    /// Creates and migrates a fresh database.
    pub async fn new() -> TestDb {
        TestDb::with_connections(10).await
    }

    /// Creates and migrates a fresh database with a pool of `connections`.
    pub async fn with_connections(connections: u32) -> TestDb {
        TestDb::on_server(&database_url(), connections).await
    }

    /// Creates and migrates a fresh database on the server at `server`.
    pub async fn on_server(server: &str, connections: u32) -> TestDb {
        let scratch = ScratchDatabase::create(server, "pdq_test_", connections)
            .await
            .expect("a fresh test database (is Postgres running? see README: Tests)");
        TestDb {
            pool: scratch.pool().clone(),
            options: scratch.options().clone(),
            name: scratch.name().to_owned(),
            server: server.to_owned(),
            scratch,
        }
    }

    /// The URL of the test database, for child processes.
    pub fn url(&self) -> String {
        self.scratch.url()
    }

    /// Closes the pool and drops the database.
    pub async fn drop_database(self) {
        self.pool.close().await;
        self.scratch.drop_now().await;
    }

    /// Counts the rows of a table.
    pub async fn count(&self, table: &str) -> i64 {
        sqlx::query_scalar(&format!("select count(*) from {table}"))
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }
}

/// Polls `condition` until it holds or `timeout` passes; returns whether it held.
pub async fn wait_until<F, Fut>(timeout: Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if condition().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Lets ids repeat as after a reset of the id sequence that nothing noticed (one above the
/// last check's position, whose earlier holders were pruned): the insert trigger that would
/// repair it is switched off, so what reads and archives jobs by id can be tried on repeats.
pub async fn let_ids_repeat(pool: &sqlx::PgPool) {
    sqlx::query("alter table pdq.jobs disable trigger jobs_assign_unused_id")
        .execute(pool)
        .await
        .unwrap();
}
