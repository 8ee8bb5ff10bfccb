//! Emulator throughput: `pdq emulator` pinned to one core, a load client pinned to the other,
//! attribute PATCHes with no faults and no rate limit; PATCH/s and the emulator's RSS as the
//! request count grows (it must stay flat).
//!
//! `cargo bench --bench emulator [-- --requests 1000000]`; appends its line to
//! `bench/results.jsonl`.

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const CONNECTIONS: usize = 64;
const PARTICIPANTS: usize = 100;

const RUNS: usize = 3;

#[tokio::main]
async fn main() {
    let full = common::full_run();
    let total: u64 = arg("--requests").unwrap_or(if full { 1_000_000 } else { 2_000 });
    let _ = Command::new("taskset")
        .args(["-cp", "1", &std::process::id().to_string()])
        .stdout(Stdio::null())
        .status();
    let runs = if full { RUNS } else { 1 };
    let mut overall = Vec::new();
    let mut peak_rss = Vec::new();
    let mut samples = Vec::new();
    for _ in 0..runs {
        let (rate, run_samples) = run_once(total).await;
        overall.push(rate);
        peak_rss.push(
            run_samples
                .iter()
                .filter_map(|s| s["emulator_rss_mb"].as_f64())
                .fold(0.0, f64::max),
        );
        samples.push(json!(run_samples));
    }
    let range = common::min_max(&overall).map(f64::round);
    let figures = json!({
        "requests_per_run": total,
        "connections": CONNECTIONS,
        "runs": runs,
        "patch_per_s_overall": common::median(&mut overall).round(),
        "patch_per_s_min_max": range,
        "emulator_peak_rss_mb": common::median(&mut peak_rss),
        "samples": samples,
    });
    println!("emulator benchmark ({total} PATCHes per run, {CONNECTIONS} connections, median of {runs} runs)");
    for (name, value) in figures.as_object().unwrap() {
        if name != "samples" {
            println!("  {name:<28} {value}");
        }
    }
    println!(
        "  {:<5} {:>10} {:>12} {:>10}",
        "run", "requests", "PATCH/s", "RSS MB"
    );
    for (run, run_samples) in figures["samples"].as_array().unwrap().iter().enumerate() {
        for sample in run_samples.as_array().unwrap() {
            println!(
                "  {:<5} {:>10} {:>12} {:>10}",
                run + 1,
                sample["requests"].to_string(),
                sample["patch_per_s"].to_string(),
                sample["emulator_rss_mb"].to_string()
            );
        }
    }
    common::record("emulator", "suite", figures);
}

/// One fresh emulator, `total` PATCHes; returns PATCH/s overall and, at 10 %, 50 % and 100 % of
/// the requests, the rate in that stretch and the emulator's RSS.
async fn run_once(total: u64) -> (f64, Vec<Value>) {
    let port = free_port();
    let mut emulator = spawn(port);
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(CONNECTIONS)
        .build()
        .unwrap();
    wait_ready(&client, &base).await;
    let token = token(&client, &base).await;
    let targets = create_targets(&client, &base).await;

    let mut samples = Vec::new();
    let checkpoints: Vec<u64> = [0.1, 0.5, 1.0]
        .iter()
        .map(|f| (total as f64 * f) as u64)
        .collect();
    let sent = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut last = (Instant::now(), 0u64);
    for checkpoint in checkpoints {
        run_until(&client, &token, &targets, &sent, checkpoint).await;
        let now = Instant::now();
        let rate = (checkpoint - last.1) as f64 / now.duration_since(last.0).as_secs_f64();
        samples.push(json!({ "requests": checkpoint, "patch_per_s": rate.round(), "emulator_rss_mb": rss_mb(&emulator) }));
        last = (now, checkpoint);
    }
    let overall = total as f64 / started.elapsed().as_secs_f64();
    let _ = Command::new("kill")
        .args(["-TERM", &emulator.id().to_string()])
        .status();
    let _ = emulator.wait();
    (overall, samples)
}

/// A loopback port nothing listens on now: the system picks it (a fixed range would meet the
/// ephemeral ports of outgoing connections).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free loopback port")
}

fn arg(name: &str) -> Option<u64> {
    let args: Vec<String> = std::env::args().collect();
    let at = args.iter().position(|a| a == name)?;
    args.get(at + 1)?.parse().ok()
}

/// `pdq emulator` on core 0, without rate limit, request log or long histories.
fn spawn(port: u16) -> Child {
    Command::new("taskset")
        .args([
            "-c",
            "0",
            env!("CARGO_BIN_EXE_pdq"),
            "emulator",
            "--port",
            &port.to_string(),
            "--rate-limit",
            "0",
        ])
        .stdout(Stdio::null())
        .spawn()
        .expect("taskset and the pdq binary")
}

fn rss_mb(child: &Child) -> f64 {
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap_or_default();
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0.0);
    (kb / 1024.0 * 10.0).round() / 10.0
}

async fn wait_ready(client: &reqwest::Client, base: &str) {
    for _ in 0..100 {
        if client
            .post(format!("{base}/oauth/token"))
            .send()
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("emulator did not start");
}

async fn token(client: &reqwest::Client, base: &str) -> String {
    let body: Value = client
        .post(format!("{base}/oauth/token"))
        .basic_auth("pdq-demo", Some("pdq-demo-secret"))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["access_token"].as_str().unwrap().to_owned()
}

async fn create_targets(client: &reqwest::Client, base: &str) -> Vec<String> {
    let mut urls = Vec::new();
    for _ in 0..PARTICIPANTS {
        let created: Value = client
            .post(format!("{base}/admin/conversations"))
            .json(&json!({"participants": [{"purpose": "customer"}]}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let (cid, pid) = (
            created["id"].as_str().unwrap(),
            created["participants"][0]["id"].as_str().unwrap(),
        );
        urls.push(format!(
            "{base}/api/v2/conversations/{cid}/participants/{pid}/attributes"
        ));
    }
    urls
}

async fn run_until(
    client: &reqwest::Client,
    token: &str,
    targets: &[String],
    sent: &Arc<AtomicU64>,
    until: u64,
) {
    let mut tasks = Vec::new();
    for worker in 0..CONNECTIONS {
        let (client, token, targets, sent) = (
            client.clone(),
            token.to_owned(),
            targets.to_vec(),
            sent.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let body = r#"{"attributes":{"orderStatus":"shipped","tier":"gold"}}"#;
            let mut i = worker;
            while sent.fetch_add(1, Ordering::Relaxed) < until {
                let response = client
                    .patch(&targets[i % targets.len()])
                    .bearer_auth(&token)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 202);
                i += CONNECTIONS;
            }
            sent.fetch_sub(1, Ordering::Relaxed);
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}
