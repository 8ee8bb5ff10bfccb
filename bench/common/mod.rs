//! Shared benchmark support: a throwaway database, timing statistics and the results file.

#![allow(dead_code)]

use std::io::Write;
use std::time::Duration;

use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection, PgPool};

/// True when cargo runs the benchmark for real (`cargo bench`), false under `cargo test`,
/// where benchmarks run a tiny smoke version so they cannot rot.
pub fn full_run() -> bool {
    std::env::args().any(|arg| arg == "--bench")
}

/// A fresh, migrated database for one benchmark run.
pub struct BenchDb {
    /// A pool on it.
    pub pool: PgPool,
    /// Options that reach it.
    pub options: PgConnectOptions,
    name: String,
    admin: PgConnectOptions,
}

impl BenchDb {
    /// Creates and migrates `pdq_bench_<uuid>` on `DATABASE_URL` (or the local server).
    pub async fn create(connections: u32) -> BenchDb {
        let url = std::env::var("DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
        let admin = pdq::db::connect_options(&url).unwrap();
        let mut conn = PgConnection::connect_with(&admin).await.expect("Postgres");
        let name = format!("pdq_bench_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(&format!("create database {name}"))
            .execute(&mut conn)
            .await
            .unwrap();
        let options = admin.clone().database(&name);
        pdq::db::migrate(&options).await.unwrap();
        let pool = pdq::db::connect(options.clone(), connections)
            .await
            .unwrap();
        BenchDb {
            pool,
            options,
            name,
            admin,
        }
    }

    /// Drops the database.
    pub async fn drop(self) {
        self.pool.close().await;
        let mut conn = PgConnection::connect_with(&self.admin).await.unwrap();
        let _ = sqlx::query(&format!(
            "drop database if exists {} with (force)",
            self.name
        ))
        .execute(&mut conn)
        .await;
    }
}

/// The p-th percentile (0–100) of `samples`, which it sorts.
pub fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    samples.sort_unstable();
    let rank = ((p / 100.0) * (samples.len() - 1) as f64).round() as usize;
    samples[rank.min(samples.len() - 1)]
}

/// The median of some figures.
pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap());
    values[values.len() / 2]
}

/// Milliseconds with two decimals.
pub fn ms(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 100_000.0).round() / 100.0
}

/// Appends one JSON line to `bench/results.jsonl`, so regressions show up as a diff.
pub fn record(benchmark: &str, figures: serde_json::Value) {
    let line = serde_json::json!({
        "benchmark": benchmark,
        "date": chrono::Utc::now().to_rfc3339(),
        "machine": machine(),
        "commit": commit(),
        "figures": figures,
    });
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/bench/results.jsonl");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    writeln!(file, "{line}").unwrap();
}

/// The smallest and largest of `values`.
pub fn min_max(values: &[f64]) -> [f64; 2] {
    let low = values.iter().copied().fold(f64::INFINITY, f64::min);
    let high = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    [low, high]
}

/// The commit measured, marked `-dirty` when the work tree has changes.
fn commit() -> String {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .ok()
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
            .unwrap_or_default()
    };
    let head = git(&["rev-parse", "--short", "HEAD"]);
    let dirty = !git(&[
        "status",
        "--porcelain",
        "--untracked-files=no",
        "--",
        ".",
        ":!bench/results.jsonl",
    ])
    .is_empty();
    format!("{head}{}", if dirty { "-dirty" } else { "" })
}

fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{} cores, {}", cores, std::env::consts::ARCH)
}
