//! Smaller defenses: logs that a producer's text cannot forge, secrets kept off the command
//! line, the emulator's admin API off loopback, a dead letter of an unknown reason, and an
//! accurate `pdq migrate`.

use std::process::{Command, Stdio};
use std::time::Duration;

use pdq::emulator::{ConversationSpec, Emulator, EmulatorConfig};
use pdq::queue::{self, Locators, NewJob};
use serde_json::json;

use crate::helpers::{wait_until, TestDb};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn pdq() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_pdq"));
    command
        .env_remove("DATABASE_URL")
        .env_remove("GENESYS_CLIENT_SECRET")
        .env_remove("PDQ_LOG_FORMAT")
        .env("NO_COLOR", "1");
    command
}

/// Stops a child with SIGTERM (a bounded wait, then SIGKILL) and returns its stderr.
fn stop(mut child: std::process::Child) -> String {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    for _ in 0..200 {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    let mut logs = String::new();
    let _ = std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut logs);
    logs
}

/// The worker's logs of a job whose external tag carries a newline and a forged log line: no
/// conversation carries the tag yet, so the worker logs a retry that names it (in the message
/// and in the unit's span).
async fn worker_logs(format: &str) -> (String, String) {
    let db = TestDb::new().await;
    let emulator = Emulator::start(EmulatorConfig::default()).await.unwrap();
    let tag = "order-7\n2026-12-03T00:00:00.000000Z ERROR pdq: fake line \u{1b}[2J";
    emulator.create_conversation(ConversationSpec::voice().customer("Jane"));
    let job = NewJob {
        locators: Locators {
            external_tag: Some(tag.to_owned()),
            participant_purpose: Some("customer".into()),
            ..Locators::default()
        },
        attributes: json!({ "tier": "gold" }),
        ..NewJob::default()
    };
    queue::enqueue(&db.pool, &job).await.unwrap();
    let worker = pdq()
        .args(["run", "--metrics-addr", "127.0.0.1:0"])
        .args(["--log-format", format])
        .env("DATABASE_URL", db.url())
        .env("GENESYS_API_URL", emulator.base_url())
        .env("GENESYS_CLIENT_ID", "pdq-demo")
        .env("GENESYS_CLIENT_SECRET", "pdq-demo-secret")
        .env("RUST_LOG", "pdq=debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start pdq run");
    let retried = wait_until(Duration::from_secs(30), || async {
        db.count("pdq.jobs where attempts >= 1 and state = 'pending'")
            .await
            == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let logs = tokio::task::spawn_blocking(move || stop(worker))
        .await
        .unwrap();
    assert!(retried, "the job was not tried: {logs}");
    db.drop_database().await;
    (logs, tag.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newline_in_an_external_tag_cannot_forge_a_human_log_line() {
    let (logs, _) = worker_logs("human").await;
    assert!(logs.contains("order-7"), "the tag is logged: {logs}");
    for line in logs.lines() {
        assert!(
            !line.starts_with("2026-12-03T00:00:00"),
            "a forged line: {line:?}\n{logs}"
        );
        if line.contains("fake line") {
            assert!(line.contains("order-7\\n2026-12-03"), "{line:?}");
        }
    }
    assert!(!logs.contains('\u{1b}'), "raw escape: {logs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_keep_an_external_tag_exact() {
    let (logs, tag) = worker_logs("json").await;
    let mut seen = false;
    for line in logs.lines() {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
        let message = value["message"].as_str().unwrap_or_default();
        if message.contains("order-7") {
            assert!(message.ends_with(&tag), "{message:?}");
            assert_eq!(value["span"]["external_tag"].as_str(), Some(tag.as_str()));
            seen = true;
        }
    }
    assert!(seen, "the exact tag in a JSON line: {logs}");
}

#[tokio::test]
async fn migrate_by_an_owner_that_may_not_create_roles_says_nothing_misleading() {
    let admin = TestDb::new().await;
    // The usual managed-Postgres owner: owns the database, may not create roles; pdq's groups
    // exist already (an administrator made them, or another database's migrate did).
    let owner = format!("pdq_t_owner_{}", uuid::Uuid::new_v4().simple());
    let name = format!("pdq_test_{}", uuid::Uuid::new_v4().simple());
    for statement in [
        format!("create role {owner} login nocreaterole"),
        format!("create database {name} owner {owner}"),
    ] {
        sqlx::query(&statement).execute(&admin.pool).await.unwrap();
    }
    let mut url = url::Url::parse(&admin.url()).unwrap();
    url.set_username(&owner).unwrap();
    url.set_path(&format!("/{name}"));
    let out = pdq()
        .arg("migrate")
        .env("DATABASE_URL", url.as_str())
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{said}");
    assert!(!said.contains("skipping"), "{said}");
    assert!(said.contains("the pdq schema is now at version"), "{said}");
    // The grants were made, as nothing claimed otherwise.
    let migrated = pdq::db::connect(admin.options.clone().database(&name), 1)
        .await
        .unwrap();
    let granted: bool = sqlx::query_scalar(
        "select has_any_column_privilege('pdq_producer', 'pdq.jobs', 'insert')
            and has_table_privilege('pdq_operator', 'pdq.dead_letters', 'select')
            and has_function_privilege('pdq_worker', 'pdq.prune_dead_letters(interval, integer)', 'execute')",
    )
    .fetch_one(&migrated)
    .await
    .unwrap();
    assert!(granted, "{said}");
    migrated.close().await;
    for statement in [
        format!("drop database {name} with (force)"),
        format!("drop role {owner}"),
    ] {
        sqlx::query(&statement).execute(&admin.pool).await.unwrap();
    }
    admin.drop_database().await;
}

#[test]
fn secrets_on_the_command_line_are_warned_about_without_being_shown() {
    let url = "postgres://postgres:hunter2-in-argv@127.0.0.1:5432/pdq_no_such_database";
    let flagged = pdq()
        .args(["status", "--database-url", url])
        .output()
        .unwrap();
    let stderr = text(&flagged.stderr);
    assert!(!stderr.contains("hunter2-in-argv"), "{stderr}");
    assert!(
        stderr.contains("--database-url carries a password"),
        "{stderr}"
    );
    assert!(stderr.contains("--database-url-file"), "{stderr}");
    assert!(stderr.contains("DATABASE_URL"), "{stderr}");

    let doctor = |secret_flag: bool| {
        let mut command = pdq();
        command.args(["doctor", "--client-id", "pdq-demo"]);
        command.args(["--api-url", "http://127.0.0.1:9"]);
        match secret_flag {
            true => command.args(["--client-secret", "s3cr3t-in-argv"]),
            false => command.env("GENESYS_CLIENT_SECRET", "s3cr3t-in-argv"),
        };
        command.env("DATABASE_URL", url);
        text(&command.output().unwrap().stderr)
    };
    let stderr = doctor(true);
    assert!(!stderr.contains("s3cr3t-in-argv"), "{stderr}");
    assert!(
        stderr.contains("--client-secret on the command line"),
        "{stderr}"
    );
    assert!(stderr.contains("--client-secret-file"), "{stderr}");
    assert!(stderr.contains("GENESYS_CLIENT_SECRET"), "{stderr}");

    // The environment forms are not warned about.
    let stderr = doctor(false);
    assert!(!stderr.contains("on the command line"), "{stderr}");
    assert!(!stderr.contains("carries a password"), "{stderr}");
}

/// Starts `pdq emulator` with `args` and `env`; returns the child once it printed `ready`, or
/// its exit status and stderr when it stopped first (within 20 s).
fn emulator(
    args: &[&str],
    env: &[(&str, &str)],
) -> Result<std::process::Child, (std::process::ExitStatus, String)> {
    use std::io::BufRead;
    let mut command = pdq();
    command
        .arg("emulator")
        .args(args)
        .env_remove("PDQ_EMULATOR_ADMIN_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (name, value) in env {
        command.env(name, value);
    }
    let mut child = command.spawn().unwrap();
    let (said, ready) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line == "ready" {
                let _ = said.send(());
            }
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::time::Instant::now() < deadline {
        if ready.try_recv().is_ok() {
            return Ok(child);
        }
        if let Some(status) = child.try_wait().unwrap() {
            let mut stderr = String::new();
            let _ = std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr);
            return Err((status, stderr));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("pdq emulator neither started nor stopped");
}

#[tokio::test]
async fn the_emulator_off_loopback_requires_an_admin_token() {
    // No token: refused, before anything listens.
    match emulator(&["--host", "0.0.0.0", "--port", "25470"], &[]) {
        Ok(child) => {
            let logs = stop(child);
            panic!("served its admin API off loopback without a token: {logs}");
        }
        Err((status, stderr)) => {
            assert_eq!(status.code(), Some(2), "{stderr}");
            assert!(stderr.contains("PDQ_EMULATOR_ADMIN_TOKEN"), "{stderr}");
            assert!(stderr.contains("--no-admin"), "{stderr}");
        }
    }
    // With one: the admin API answers only requests that carry it; the API itself is as ever.
    let child = emulator(
        &["--host", "0.0.0.0", "--port", "25471"],
        &[("PDQ_EMULATOR_ADMIN_TOKEN", "admin-tok-25471")],
    )
    .expect("starts with a token");
    let http = reqwest::Client::new();
    let base = "http://127.0.0.1:25471";
    let anonymous = http
        .get(format!("{base}/admin/patches"))
        .send()
        .await
        .unwrap();
    let wrong = http
        .get(format!("{base}/admin/patches"))
        .bearer_auth("admin-tok-wrong")
        .send()
        .await
        .unwrap();
    let right = http
        .get(format!("{base}/admin/patches"))
        .bearer_auth("admin-tok-25471")
        .send()
        .await
        .unwrap();
    let login = http
        .post(format!("{base}/oauth/token"))
        .basic_auth("pdq-demo", Some("pdq-demo-secret"))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    let logs = tokio::task::spawn_blocking(move || stop(child))
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401, "{logs}");
    assert_eq!(wrong.status(), 401, "{logs}");
    assert_eq!(right.status(), 200, "{logs}");
    assert_eq!(login.status(), 200, "{logs}");
    assert!(!logs.contains("admin-tok-25471"), "{logs}");
    // Without the admin API, no token is needed.
    let child = emulator(&["--host", "0.0.0.0", "--port", "25472", "--no-admin"], &[])
        .expect("starts without its admin API");
    tokio::task::spawn_blocking(move || stop(child))
        .await
        .unwrap();
}
