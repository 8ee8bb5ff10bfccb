//! Shared benchmark support: a throwaway database, timing statistics and the results file.

#![allow(dead_code)]

use std::io::Write;
use std::time::Duration;

use pdq::db::ScratchDatabase;
use sqlx::postgres::PgConnectOptions;
use sqlx::PgPool;

/// True when cargo runs the benchmark for real (`cargo bench`), false under `cargo test`,
/// where benchmarks run a tiny smoke version so they cannot rot.
pub fn full_run() -> bool {
    std::env::args().any(|arg| arg == "--bench")
}

/// The server the benchmarks use: `DATABASE_URL`, or the local server when it is unset.
pub fn database_url() -> String {
    pdq::db::admin_url()
}

/// A fresh, migrated database (`pdq_bench_…`) for one benchmark run, dropped with it.
pub struct BenchDb {
    /// A pool on it.
    pub pool: PgPool,
    /// Options that reach it.
    pub options: PgConnectOptions,
    scratch: ScratchDatabase,
}

impl BenchDb {
    /// Creates and migrates `pdq_bench_<uuid>` on the server [`database_url`] names.
    pub async fn create(connections: u32) -> BenchDb {
        let scratch = ScratchDatabase::create(&database_url(), "pdq_bench_", connections)
            .await
            .expect("a fresh benchmark database (is Postgres running?)");
        BenchDb {
            pool: scratch.pool().clone(),
            options: scratch.options().clone(),
            scratch,
        }
    }

    /// A URL for this database: `DATABASE_URL` with its database name replaced, so host,
    /// port, credentials and parameters carry over (to hand to a `pdq` process; never print it).
    pub fn url(&self) -> String {
        self.scratch.url()
    }

    /// Drops the database.
    pub async fn drop(self) {
        self.pool.close().await;
        self.scratch.drop_now().await;
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

/// The line [`record`] appends: which benchmark and mode, when, where, on which commit (and
/// whether the work tree had changes), and the figures.
pub fn result_line(benchmark: &str, mode: &str, figures: serde_json::Value) -> serde_json::Value {
    let (commit, dirty) = commit();
    serde_json::json!({
        "benchmark": benchmark,
        "mode": mode,
        "date": chrono::Utc::now().to_rfc3339(),
        "machine": machine(),
        "commit": commit,
        "dirty": dirty,
        "figures": figures,
    })
}

/// Appends the [`result_line`] to `bench/results.jsonl` on a full run (`cargo bench`), so every
/// quoted figure has a recorded run behind it and regressions show up as a diff. A smoke run
/// (`cargo test`) records nothing: its tiny figures mean nothing.
pub fn record(benchmark: &str, mode: &str, figures: serde_json::Value) {
    let line = result_line(benchmark, mode, figures);
    if !full_run() {
        println!("(smoke run, not recorded: {benchmark} {mode})");
        return;
    }
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/bench/results.jsonl");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    writeln!(file, "{line}").unwrap();
    println!("recorded in bench/results.jsonl: {benchmark} {mode}");
}

/// Adds the figures of `more` to `figures` (both JSON objects).
pub fn merge(figures: &mut serde_json::Value, more: serde_json::Value) {
    if let (serde_json::Value::Object(figures), serde_json::Value::Object(more)) = (figures, more) {
        figures.extend(more);
    }
}

/// Prints the figures of one benchmark mode, one per line.
pub fn print_figures(title: &str, figures: &serde_json::Value) {
    println!("{title}");
    for (name, value) in figures.as_object().into_iter().flatten() {
        println!("  {name:<44} {value}");
    }
}

/// The smallest and largest of `values`.
pub fn min_max(values: &[f64]) -> [f64; 2] {
    let low = values.iter().copied().fold(f64::INFINITY, f64::min);
    let high = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    [low, high]
}

/// The commit measured (short hash) and whether the work tree had changes to tracked files
/// (the results file aside).
fn commit() -> (String, bool) {
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
    (head, dirty)
}

fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{} cores, {}", cores, std::env::consts::ARCH)
}
