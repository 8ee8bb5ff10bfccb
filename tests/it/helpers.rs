//! Shared test support: a fresh, migrated database per test on the local Postgres.

#![allow(dead_code)]

use std::future::Future;
use std::time::{Duration, Instant};

use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection, PgPool};

/// The server tests talk to: `DATABASE_URL`, or the local default.
pub fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A database created for one test, migrated, with a pool of `connections`.
pub struct TestDb {
    /// A pool on the test database.
    pub pool: PgPool,
    /// Options that reach the test database.
    pub options: PgConnectOptions,
    /// The database's name.
    pub name: String,
    /// The server's URL (any database on it).
    pub server: String,
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
        let admin_options = pdq::db::connect_options(server).expect("server URL");
        let mut admin = PgConnection::connect_with(&admin_options)
            .await
            .expect("Postgres must be running (see README: Tests)");
        let name = format!("pdq_test_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(&format!("create database {name}"))
            .execute(&mut admin)
            .await
            .expect("create test database");
        let options = admin_options.database(&name);
        pdq::db::migrate(&options).await.expect("migrate");
        let pool = pdq::db::connect(options.clone(), connections)
            .await
            .expect("connect to test database");
        TestDb {
            pool,
            options,
            name,
            server: server.to_owned(),
        }
    }

    /// The URL of the test database, for child processes.
    pub fn url(&self) -> String {
        let base = &self.server;
        match base.rsplit_once('/') {
            Some((server, _)) if server.contains("://") && server.matches('/').count() >= 2 => {
                format!("{server}/{}", self.name)
            }
            _ => format!("{base}/{}", self.name),
        }
    }

    /// Closes the pool and drops the database.
    pub async fn drop_database(self) {
        self.pool.close().await;
        let admin_options = pdq::db::connect_options(&self.server).unwrap();
        if let Ok(mut admin) = PgConnection::connect_with(&admin_options).await {
            let _ = sqlx::query(&format!(
                "drop database if exists {} with (force)",
                self.name
            ))
            .execute(&mut admin)
            .await;
        }
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
