//! The checker: seeded random workloads and fault schedules against the real `pdq run`
//! binary, judged from the API side (see [`judge`]).
//!
//! - Short mode (every `cargo test`): the seeds in [`SHORT_SEEDS`] and every seed in
//!   `tests/check/regression_seeds.txt`.
//! - Replay one seed: `PDQ_CHECK_SEED=123 cargo test --release --test check -- --nocapture`.
//! - Long mode: `PDQ_CHECK=long PDQ_CHECK_SEEDS=200 cargo test --release --test check --
//!   --nocapture` runs seeds from `PDQ_CHECK_FIRST_SEED` (default 1000) and appends one summary
//!   line to `bench/results.jsonl`. With `PDQ_CHECK_STOP=first` it stops at the first failing
//!   seed and records nothing (the mutant script's mode).

#[path = "../chaos/cluster.rs"]
mod cluster;
#[path = "../../bench/common/mod.rs"]
mod common;
#[path = "../it/helpers.rs"]
mod helpers;
mod judge;
mod plan;
mod procs;
mod run;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use judge::{Verdict, Violation};
use plan::Plan;
use run::RunResult;

/// The seeds every short run checks (besides the regression seeds).
const SHORT_SEEDS: [u64; 3] = [1, 2, 5];

/// Seeds that once found a defect that is fixed, one per line (`seed  # what it found`).
const REGRESSION_SEEDS: &str = include_str!("regression_seeds.txt");

/// Seeds that find a defect still open, one per line (`seed  # the violation`): run with
/// `PDQ_CHECK=open`; a seed moves to `regression_seeds.txt` once its defect is fixed.
const OPEN_SEEDS: &str = include_str!("open_seeds.txt");

/// The command that replays `seed`.
fn replay_command(seed: u64) -> String {
    format!("PDQ_CHECK_SEED={seed} cargo test --release --test check -- --nocapture")
}

fn regression_seeds() -> Vec<u64> {
    seeds_in(REGRESSION_SEEDS)
}

fn seeds_in(list: &str) -> Vec<u64> {
    list.lines()
        .filter_map(|line| line.split('#').next()?.trim().parse().ok())
        .collect()
}

/// One seed: plan, run, judge.
struct Checked {
    seed: u64,
    result: RunResult,
    verdict: Verdict,
}

async fn check_seed(seed: u64) -> Checked {
    let plan = Plan::of(seed);
    let result = run::run(&plan).await;
    let mut verdict = judge::judge(&result.evidence);
    if !result.settled {
        verdict.violations.insert(
            0,
            Violation {
                what: "the queue did not settle within the quiet period's bound".to_owned(),
                jobs: Vec::new(),
                participant: None,
            },
        );
    }
    let checked = Checked {
        seed,
        result,
        verdict,
    };
    println!("{}", summary_line(&checked));
    if !checked.verdict.violations.is_empty() {
        println!("{}", report(&plan, &checked));
    }
    checked
}

fn summary_line(checked: &Checked) -> String {
    let v = &checked.verdict;
    format!(
        "seed {}: {} in {:.1} s; {} jobs, {} applied, dead {:?}, {} cancelled, {} PATCHes, \
         duplicates {:?}; faults {:?}",
        checked.seed,
        if v.violations.is_empty() {
            "ok".to_owned()
        } else {
            format!("{} VIOLATIONS", v.violations.len())
        },
        checked.result.elapsed.as_secs_f64(),
        v.jobs,
        v.applied,
        v.dead,
        v.cancelled,
        v.patches,
        v.duplicates,
        checked.result.injected
    )
}

/// The violations of a run: what broke, the jobs, the PATCH history around them, the replay.
fn report(plan: &Plan, checked: &Checked) -> String {
    const SHOWN: usize = 10;
    let evidence = &checked.result.evidence;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "seed {} broke the guarantee ({} violations); replay with:\n    {}",
        checked.seed,
        checked.verdict.violations.len(),
        replay_command(checked.seed)
    );
    let _ = writeln!(out, "schedule: {:?}", plan.faults);
    let _ = writeln!(out, "actions: {:?}", plan.actions);
    for window in &evidence.windows {
        let _ = writeln!(
            out,
            "  fault {} {} → {}",
            window.kind.name(),
            window.start.format("%H:%M:%S%.3f"),
            window.end.format("%H:%M:%S%.3f")
        );
    }
    for violation in checked.verdict.violations.iter().take(SHOWN) {
        let _ = writeln!(out, "- {}", violation.what);
        for n in &violation.jobs {
            let spec = plan.jobs.iter().find(|j| j.n == *n);
            let update = evidence.updates.iter().find(|u| u.n == *n);
            let state = evidence.finals.get(n);
            let _ = writeln!(
                out,
                "    u{n}: {:?}; job {:?}; final {:?}",
                spec.map(|s| (
                    s.at_ms,
                    s.locator,
                    &s.keys,
                    s.backfill,
                    s.run_ahead_ms,
                    s.expires_in_ms,
                    &s.idempotency_key,
                    s.max_attempts,
                    s.long_value
                )),
                update.map(|u| (u.id, u.place, u.forced.map(|f| f.1), u.cancelled)),
                state
            );
        }
        let Some(participant) = violation.participant else {
            continue;
        };
        let markers: Vec<String> = violation.jobs.iter().map(|n| format!("u{n}")).collect();
        let lines: Vec<String> = evidence
            .history
            .iter()
            .filter(|p| (p.conversation_id, p.participant_id) == participant)
            .filter(|p| {
                p.attributes
                    .values()
                    .any(|v| markers.iter().any(|m| v.split('-').next() == Some(m)))
            })
            .map(|p| {
                let values: BTreeMap<&str, String> = p
                    .attributes
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.chars().take(12).collect()))
                    .collect();
                format!(
                    "    PATCH #{} {} status {} {:?}",
                    p.seq,
                    p.at.format("%H:%M:%S%.3f"),
                    p.status,
                    values
                )
            })
            .collect();
        let _ = writeln!(
            out,
            "  history of participant {} ({} PATCHes with these values):",
            participant.1,
            lines.len()
        );
        for line in lines.iter().take(12) {
            let _ = writeln!(out, "{line}");
        }
    }
    if checked.verdict.violations.len() > SHOWN {
        let _ = writeln!(
            out,
            "… and {} more",
            checked.verdict.violations.len() - SHOWN
        );
    }
    if std::env::var_os("PDQ_CHECK_KEEP_LOGS").is_some() {
        for log in &checked.result.logs {
            let _ = writeln!(out, "worker log: {}", log.display());
        }
    }
    out
}

fn mode() -> String {
    std::env::var("PDQ_CHECK").unwrap_or_default()
}

/// Short mode: a fixed handful of seeds and the regression seeds, in every `cargo test`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_mode_seeds_keep_the_guarantee() {
    if !mode().is_empty() || std::env::var_os("PDQ_CHECK_SEED").is_some() {
        return;
    }
    let mut seeds: Vec<u64> = SHORT_SEEDS.to_vec();
    for seed in regression_seeds() {
        if !seeds.contains(&seed) {
            seeds.push(seed);
        }
    }
    let mut failed = Vec::new();
    for seed in seeds {
        let checked = check_seed(seed).await;
        if !checked.verdict.violations.is_empty() {
            failed.push(format!(
                "seed {seed}: {} (replay: {})",
                checked.verdict.violations[0].what,
                replay_command(seed)
            ));
        }
    }
    assert!(
        failed.is_empty(),
        "seeds that broke the guarantee:\n{}",
        failed.join("\n")
    );
}

/// `PDQ_CHECK=open`: the seeds of the defects still open; fails while any of them does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_seeds_still_break_the_guarantee() {
    if mode() != "open" {
        return;
    }
    let mut failed = Vec::new();
    for seed in seeds_in(OPEN_SEEDS) {
        let checked = check_seed(seed).await;
        println!(
            "seed {seed}: {} violation(s)",
            checked.verdict.violations.len()
        );
        if let Some(first) = checked.verdict.violations.first() {
            failed.push(format!("seed {seed}: {}", first.what));
        }
    }
    assert!(failed.is_empty(), "open seeds:\n{}", failed.join("\n"));
}

/// `PDQ_CHECK_SEED=N`: one seed, with the full report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_one_seed() {
    let Some(seed) = std::env::var("PDQ_CHECK_SEED")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
    else {
        return;
    };
    let checked = check_seed(seed).await;
    assert!(
        checked.verdict.violations.is_empty(),
        "seed {seed} broke the guarantee (report above)"
    );
}

/// `PDQ_CHECK=long`: many seeds and one summary line in `bench/results.jsonl`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_mode_many_seeds() {
    if mode() != "long" {
        return;
    }
    let env = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(default)
    };
    let (first, count) = (
        env("PDQ_CHECK_FIRST_SEED", 1_000),
        env("PDQ_CHECK_SEEDS", 200),
    );
    let stop_at_first = std::env::var("PDQ_CHECK_STOP").is_ok_and(|v| v == "first");
    let started = Instant::now();
    let (mut faults, mut duplicates) = (BTreeMap::new(), BTreeMap::new());
    let (mut jobs, mut patches, mut seeds_run) = (0usize, 0usize, 0u64);
    let mut failing: Vec<serde_json::Value> = Vec::new();
    let mut times: Vec<Duration> = Vec::new();
    let mut violations = 0usize;
    for seed in first..first + count {
        let checked = check_seed(seed).await;
        seeds_run += 1;
        times.push(checked.result.elapsed);
        jobs += checked.verdict.jobs;
        patches += checked.verdict.patches;
        for (kind, n) in &checked.result.injected {
            *faults.entry(*kind).or_insert(0usize) += n;
        }
        for (kind, n) in &checked.verdict.duplicates {
            *duplicates.entry(*kind).or_insert(0usize) += n;
        }
        if !checked.verdict.violations.is_empty() {
            violations += checked.verdict.violations.len();
            failing.push(serde_json::json!({
                "seed": seed,
                "violations": checked.verdict.violations.len(),
                "first": checked.verdict.violations[0].what,
            }));
            if stop_at_first {
                println!(
                    "check-caught: {}",
                    serde_json::json!({ "seed": seed, "seeds_run": seeds_run,
                                        "first": checked.verdict.violations[0].what })
                );
                panic!("seed {seed} broke the guarantee after {seeds_run} seeds");
            }
        }
    }
    times.sort();
    let seconds = |d: Duration| (d.as_secs_f64() * 10.0).round() / 10.0;
    let figures = serde_json::json!({
        "profile": if cfg!(debug_assertions) { "debug" } else { "release" },
        "first_seed": first,
        "seeds_run": seeds_run,
        "jobs": jobs,
        "patches": patches,
        "faults_injected": faults,
        "duplicates_by_fault": duplicates,
        "violations": violations,
        "failing_seeds": failing,
        "seed_seconds_median": seconds(times[times.len() / 2]),
        "seed_seconds_max": seconds(*times.last().unwrap()),
        "wall_seconds": seconds(started.elapsed()),
    });
    let line = common::result_line("check", "long", figures);
    println!("check-summary: {line}");
    if stop_at_first {
        println!("check-caught: none");
    } else {
        use std::io::Write;
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/bench/results.jsonl");
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .expect("bench/results.jsonl");
        writeln!(file, "{line}").expect("write bench/results.jsonl");
    }
    assert!(failing.is_empty(), "failing seeds: {failing:?}");
}
