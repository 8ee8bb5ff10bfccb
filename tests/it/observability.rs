//! What operators see: the log lines and stored errors of a real `pdq run`, its `/metrics`
//! against the Grafana dashboard, and `pdq doctor`'s database checks.

use std::collections::BTreeSet;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

use pdq::emulator::{ConversationSpec, Emulator, EmulatorConfig, RateLimit, RateLimitScope};
use pdq::queue::{self, Locators, NewJob, Priority};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{wait_until, TestDb};

/// Text that only a Rust `Debug` dump produces.
const DEBUG_MARKS: [&str; 8] = [
    "{ ",
    "Some(",
    "None",
    "Purpose(",
    "Id(",
    "Retry {",
    "Permanent(",
    "\\\"",
];

fn job(locators: Locators) -> NewJob {
    NewJob {
        locators,
        attributes: json!({ "tier": "gold" }),
        priority: None,
        run_at: None,
        expires_at: None,
        idempotency_key: None,
        max_attempts: None,
    }
}

/// A free port on 127.0.0.1 for `--metrics-addr`.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Jobs that end each way: applied, dead-lettered three ways, retrying, scheduled for later.
async fn enqueue_every_outcome(db: &TestDb, emulator: &pdq::emulator::EmulatorHandle) {
    let live = emulator.create_conversation(ConversationSpec::voice().customer("Jane").agent());
    let ended = emulator.create_conversation(ConversationSpec::voice().customer("Joe").agent());
    emulator.end_conversation(ended.id);
    let by_purpose = |id| Locators {
        conversation_id: Some(id),
        participant_purpose: Some("customer".into()),
        ..Locators::default()
    };
    let jobs = [
        job(by_purpose(live.id)),
        job(by_purpose(ended.id)),
        job(Locators {
            conversation_id: Some(live.id),
            participant_name: Some("Nobody".into()),
            ..Locators::default()
        }),
        job(Locators {
            conversation_id: Some(Uuid::new_v4()),
            participant_id: Some(Uuid::new_v4()),
            ..Locators::default()
        }),
        job(Locators {
            external_tag: Some("ORDER-MISSING".into()),
            ..Locators::default()
        }),
        NewJob {
            priority: Some(Priority::Backfill),
            run_at: Some(chrono::Utc::now() + chrono::Duration::hours(1)),
            ..job(by_purpose(live.id))
        },
    ];
    for new in &jobs {
        queue::enqueue(&db.pool, new).await.unwrap();
    }
}

/// The names `/metrics` declares with `# TYPE`, with the histogram series names added.
fn declared_metrics(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if let (Some("#"), Some("TYPE"), Some(name), Some(kind)) =
            (words.next(), words.next(), words.next(), words.next())
        {
            names.insert(name.to_owned());
            if kind == "histogram" {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
            }
        }
    }
    names
}

/// Every `pdq_…` name the dashboard's queries use.
fn dashboard_metrics() -> BTreeSet<String> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/grafana/pdq-dashboard.json"
    );
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut names = BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            let mut rest = expr;
            while let Some(start) = rest.find("pdq_") {
                let tail = &rest[start..];
                let end = tail
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(tail.len());
                names.insert(tail[..end].to_owned());
                rest = &tail[end..];
            }
        }
    }
    names
}

/// Every `pdq_…` name the alert rules' expressions use, with each rule's name.
fn alert_rule_metrics() -> Vec<(String, BTreeSet<String>)> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/prometheus/pdq-alerts.yml"
    );
    let text = std::fs::read_to_string(path).unwrap();
    let doc = yaml_rust2::YamlLoader::load_from_str(&text)
        .unwrap()
        .remove(0);
    let mut rules = Vec::new();
    for group in doc["groups"].as_vec().unwrap() {
        for rule in group["rules"].as_vec().unwrap() {
            let name = rule["alert"].as_str().unwrap().to_owned();
            // The expression and the annotations' queries.
            let mut texts = vec![rule["expr"].as_str().unwrap().to_owned()];
            if let Some(annotations) = rule["annotations"].as_hash() {
                texts.extend(
                    annotations
                        .values()
                        .filter_map(|v| v.as_str().map(str::to_owned)),
                );
            }
            let mut names = BTreeSet::new();
            for text in texts {
                let mut rest = text.as_str();
                while let Some(start) = rest.find("pdq_") {
                    let tail = &rest[start..];
                    let end = tail
                        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                        .unwrap_or(tail.len());
                    names.insert(tail[..end].to_owned());
                    rest = &tail[end..];
                }
            }
            rules.push((name, names));
        }
    }
    rules
}

async fn scrape(port: u16) -> String {
    let url = format!("http://127.0.0.1:{port}/metrics");
    match reqwest::get(&url).await {
        Ok(response) => response.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// A `pdq run` child with piped stderr (read on a thread so the pipe never fills).
struct RunningWorker {
    child: std::process::Child,
    port: u16,
    stderr: std::thread::JoinHandle<String>,
}

impl RunningWorker {
    fn start(db: &TestDb, emulator: &pdq::emulator::EmulatorHandle, args: &[&str]) -> Self {
        let port = free_port();
        let mut child = Command::new(env!("CARGO_BIN_EXE_pdq"))
            .args(["run", "--metrics-addr", &format!("127.0.0.1:{port}")])
            .args(args)
            .env("DATABASE_URL", db.url())
            .envs(emulator.client_env())
            .env("RUST_LOG", "info")
            .env_remove("NO_COLOR")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start pdq run");
        let mut pipe = child.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        });
        RunningWorker {
            child,
            port,
            stderr,
        }
    }

    /// SIGTERM, then the logs (killed after 30 s if it does not stop).
    async fn stop(mut self) -> String {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        for _ in 0..300 {
            if self.child.try_wait().map(|s| s.is_some()).unwrap_or(true) {
                return self.stderr.join().unwrap();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.stderr.join().unwrap()
    }
}

#[tokio::test]
async fn a_worker_logs_sentences_stores_json_errors_and_serves_every_dashboard_metric() {
    let db = TestDb::new().await;
    let emulator = Emulator::start(EmulatorConfig::default()).await.unwrap();
    enqueue_every_outcome(&db, &emulator).await;
    let worker = RunningWorker::start(&db, &emulator, &[]);
    let port = worker.port;
    let settled = wait_until(Duration::from_secs(30), || async {
        let dead = db.count("pdq.dead_letters").await;
        let applied = db.count("pdq.finished_jobs").await;
        let retried: i64 =
            sqlx::query_scalar("select count(*) from pdq.jobs where last_error is not null")
                .fetch_one(&db.pool)
                .await
                .unwrap();
        dead == 3 && applied == 1 && retried == 1
    })
    .await;
    let mut metrics = String::new();
    let mut sampled = false;
    for _ in 0..40 {
        metrics = scrape(port).await;
        sampled = metrics.contains("pdq_jobs{state=\"scheduled\",priority=\"backfill\"} 1")
            && metrics.contains("pdq_dead_letters{reason=\"not_found\"} 1");
        if sampled {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let logs = worker.stop().await;
    assert!(settled, "the jobs did not settle; logs:\n{logs}");
    assert!(sampled, "the gauges were not sampled:\n{metrics}");

    // The metrics answer questions, with outcome and reason as separate labels.
    for sample in [
        "pdq_jobs_total{outcome=\"applied\",reason=\"\"} 1",
        "pdq_jobs_total{outcome=\"dead_lettered\",reason=\"conversation_ended\"} 1",
        "pdq_jobs_total{outcome=\"retried\",reason=\"not_yet_visible\"}",
        "pdq_jobs{state=\"retrying\",priority=\"live\"} ",
        "pdq_paused{reason=\"rate_limited\"} 0",
        "pdq_budget_allowed_requests_per_minute 300",
        "pdq_build_info{version=\"",
    ] {
        assert!(
            metrics.contains(sample),
            "{sample} missing from:\n{metrics}"
        );
    }
    // Every metric of the dashboard is one the worker serves.
    let served = declared_metrics(&metrics);
    let workers_table: bool = sqlx::query_scalar("select to_regclass('pdq.workers') is not null")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let used = dashboard_metrics();
    assert!(used.len() >= 15, "{used:?}");
    for name in &used {
        if name == "pdq_workers_alive" && !workers_table {
            continue; // served once pdq.workers exists
        }
        assert!(
            served.contains(name),
            "the dashboard uses {name}, /metrics has {served:?}"
        );
    }

    // Every metric the alert rules use is one the worker serves.
    let rules = alert_rule_metrics();
    let names: Vec<&str> = rules.iter().map(|(name, _)| name.as_str()).collect();
    for expected in [
        "PdqLiveBehind",
        "PdqNotReady",
        "PdqDeadLettersRising",
        "PdqBudgetPausedLong",
    ] {
        assert!(names.contains(&expected), "{expected} missing: {names:?}");
    }
    for (rule, used) in &rules {
        assert!(!used.is_empty(), "{rule} uses no pdq metric");
        for name in used {
            assert!(
                served.contains(name),
                "alert {rule} uses {name}, /metrics has {served:?}"
            );
        }
    }
    for sample in [
        "pdq_ready ",
        "pdq_live_behind ",
        "pdq_live_behind_threshold_seconds 60",
    ] {
        assert!(
            metrics.contains(sample),
            "{sample} missing from:\n{metrics}"
        );
    }

    // Logs: sentences with fields, no Debug dumps, no colour codes on a pipe.
    assert!(!logs.contains('\u{1b}'), "escape codes on a pipe:\n{logs}");
    for line in logs.lines() {
        for mark in DEBUG_MARKS {
            assert!(!line.contains(mark), "Debug output {mark:?} in: {line}");
        }
    }
    let line_with = |needle: &str| {
        logs.lines()
            .find(|line| line.contains(needle))
            .unwrap_or_else(|| panic!("no line with {needle:?} in:\n{logs}"))
            .to_owned()
    };
    let ended = line_with("as conversation_ended");
    assert!(ended.contains("has ended"), "{ended}");
    assert!(ended.contains("conversation.id="), "{ended}");
    assert!(ended.contains("outcome=\"dead_lettered\""), "{ended}");
    let retry = line_with("retrying job");
    assert!(
        retry.contains("(attempt 1 of 20): no active conversation has external tag ORDER-MISSING"),
        "{retry}"
    );
    let not_found = line_with("as not_found");
    assert!(
        not_found.contains("http.status=404") && not_found.contains("correlation_id="),
        "{not_found}"
    );

    // Stored errors are JSON objects with the documented fields.
    let last_error: Value =
        sqlx::query_scalar("select last_error from pdq.jobs where last_error is not null")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    for field in [
        "at",
        "attempt",
        "failure",
        "status",
        "code",
        "correlation_id",
        "message",
    ] {
        assert!(
            last_error.get(field).is_some(),
            "{field} missing: {last_error}"
        );
    }
    assert_eq!(last_error["failure"], "not_yet_visible");
    let details: Vec<(String, String)> =
        sqlx::query_as("select reason, detail from pdq.dead_letters order by id")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    for (reason, detail) in &details {
        for mark in DEBUG_MARKS {
            assert!(!detail.contains(mark), "Debug output in {reason}: {detail}");
        }
        let parsed: Value = serde_json::from_str(detail).expect("detail is JSON");
        assert_eq!(parsed["failure"], reason.as_str(), "{detail}");
        assert!(parsed["message"].as_str().is_some_and(|m| !m.is_empty()));
        assert!(
            parsed["at"].is_string() && parsed["attempt"].is_number(),
            "{detail}"
        );
    }
    let not_found: Value = details
        .iter()
        .find(|(reason, _)| reason == "not_found")
        .map(|(_, detail)| serde_json::from_str(detail).unwrap())
        .unwrap();
    assert_eq!(not_found["status"], 404);
    assert!(not_found["correlation_id"].is_string(), "{not_found}");
    db.drop_database().await;
}

#[tokio::test]
async fn the_fleet_logs_when_it_pauses_for_a_rate_limit_and_when_it_resumes() {
    let db = TestDb::new().await;
    let emulator = Emulator::start(EmulatorConfig {
        rate_limit: Some(RateLimit {
            requests: 3,
            window_secs: 2,
            scope: RateLimitScope::Token,
        }),
        ..EmulatorConfig::default()
    })
    .await
    .unwrap();
    let mut jobs = 0;
    for _ in 0..4 {
        let conversation =
            emulator.create_conversation(ConversationSpec::voice().customer("Jane").agent());
        for participant in &conversation.participants {
            let locators = Locators {
                conversation_id: Some(conversation.id),
                participant_id: Some(participant.id),
                ..Locators::default()
            };
            queue::enqueue(&db.pool, &job(locators)).await.unwrap();
            jobs += 1;
        }
    }
    let worker = RunningWorker::start(&db, &emulator, &["--rate-limit", "0", "--executors", "4"]);
    let applied = wait_until(Duration::from_secs(40), || async {
        db.count("pdq.finished_jobs").await == jobs
    })
    .await;
    let mut metrics = String::new();
    for _ in 0..20 {
        metrics = scrape(worker.port).await;
        if !metrics.contains("pdq_limiter_pauses_total 0") && !metrics.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let logs = worker.stop().await;
    assert!(applied, "not every job was applied:\n{logs}");
    let pause = logs
        .lines()
        .find(|line| line.contains("pausing every executor for"))
        .unwrap_or_else(|| panic!("no pause line:\n{logs}"));
    assert!(
        pause.contains("reason=\"rate_limited\"") || pause.contains("reason=\"window_spent\""),
        "{pause}"
    );
    assert!(pause.contains("until="), "{pause}");
    assert!(
        logs.contains("resuming: the API takes requests again"),
        "no resume line:\n{logs}"
    );
    assert!(
        metrics.contains("pdq_limiter_pauses_total ")
            && !metrics.contains("pdq_limiter_pauses_total 0\n"),
        "the pacer's pauses are not exported:\n{metrics}"
    );
    db.drop_database().await;
}

fn doctor(url: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_pdq"))
        .args(["doctor", "--json"])
        .env("DATABASE_URL", url)
        .env("RUST_LOG", "warn")
        .env_remove("GENESYS_REGION")
        .env_remove("GENESYS_API_URL")
        .env_remove("GENESYS_CLIENT_ID")
        .output()
        .expect("run pdq doctor")
}

fn checks(output: &std::process::Output) -> Value {
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|_| panic!("doctor --json printed no JSON: {output:?}"))
}

fn check<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == name)
        .unwrap_or_else(|| panic!("no {name} check in {report}"))
}

#[tokio::test]
async fn doctor_checks_reachability_schema_grants_and_heartbeats_with_documented_codes() {
    let db = TestDb::new().await;
    let workers_table: bool = sqlx::query_scalar("select to_regclass('pdq.workers') is not null")
        .fetch_one(&db.pool)
        .await
        .unwrap();

    let healthy = doctor(&db.url());
    let report = checks(&healthy);
    assert_eq!(check(&report, "database")["ok"], true, "{report}");
    assert_eq!(check(&report, "schema")["ok"], true, "{report}");
    assert_eq!(
        healthy.status.code(),
        Some(0),
        "before any worker ran: {report}"
    );
    assert_eq!(report["ok"], true);
    if workers_table {
        // A worker ran and fell silent: no worker is alive.
        sqlx::query(
            "insert into pdq.workers (id, name, host, pid, version, started_at, last_seen_at, executors, state)
             values (gen_random_uuid(), 'pdq-1', 'host', 1, '0.1.0', now() - interval '2 hours',
                     now() - interval '10 minutes', 16, 'running')",
        )
        .execute(&db.pool)
        .await
        .unwrap();
        let silent = doctor(&db.url());
        let report = checks(&silent);
        assert_eq!(silent.status.code(), Some(8), "{report}");
        assert_eq!(report["exit_code"], 8);
        sqlx::query("delete from pdq.workers")
            .execute(&db.pool)
            .await
            .unwrap();
    }

    let roles: i64 = sqlx::query_scalar(
        "select count(*) from pg_roles where rolname in ('pdq_worker', 'pdq_producer', 'pdq_operator')",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    if roles == 3 {
        sqlx::query("revoke update on pdq.jobs from pdq_worker")
            .execute(&db.pool)
            .await
            .unwrap();
        let revoked = doctor(&db.url());
        let report = checks(&revoked);
        let worker = check(&report, "role pdq_worker");
        assert_eq!(worker["ok"], false, "{report}");
        assert!(
            worker["detail"].as_str().unwrap().contains("lacks"),
            "{report}"
        );
        assert_eq!(revoked.status.code(), Some(3), "{report}");
    }

    sqlx::query("delete from pdq._sqlx_migrations where version = (select max(version) from pdq._sqlx_migrations)")
        .execute(&db.pool)
        .await
        .unwrap();
    let older = doctor(&db.url());
    let report = checks(&older);
    let schema = check(&report, "schema");
    assert!(
        schema["detail"]
            .as_str()
            .unwrap()
            .contains("older than this binary"),
        "{report}"
    );
    assert_eq!(older.status.code(), Some(6), "{report}");

    let refused = doctor("postgres://postgres@127.0.0.1:1/postgres");
    let report = checks(&refused);
    let database = check(&report, "database")["detail"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(database.contains("connection refused"), "{database}");
    assert!(!database.contains("pool timed out"), "{database}");
    assert_eq!(
        database.matches("connection refused").count(),
        1,
        "{database}"
    );
    assert_eq!(refused.status.code(), Some(5), "{report}");
    db.drop_database().await;
}
