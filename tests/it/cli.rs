//! The built `pdq` binary against a fresh database.

use std::process::{Command, Output};

use serde_json::Value;

use crate::helpers::TestDb;

fn pdq(db: &TestDb, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pdq"))
        .args(args)
        .env("DATABASE_URL", db.url())
        .env("RUST_LOG", "warn")
        .output()
        .expect("run pdq")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test]
async fn enqueue_status_and_dlq_work_from_the_shell() {
    let db = TestDb::new().await;
    let migrate = pdq(&db, &["migrate"]);
    assert!(migrate.status.success(), "{migrate:?}");

    let ok = pdq(
        &db,
        &[
            "enqueue",
            "--conversation-id",
            "6f1c2d3e-0000-4000-8000-000000000001",
            "--attributes",
            r#"{"tier":"gold"}"#,
            "--attr",
            "orderStatus=shipped",
            "--json",
        ],
    );
    assert!(ok.status.success(), "{ok:?}");
    let id: Value = serde_json::from_str(&stdout(&ok)).unwrap();
    let attributes: Value = sqlx::query_scalar("select attributes from pdq.jobs where id = $1")
        .bind(id["id"].as_i64().unwrap())
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        attributes,
        serde_json::json!({"tier": "gold", "orderStatus": "shipped"})
    );

    let refused = pdq(
        &db,
        &[
            "enqueue",
            "--external-tag",
            "ORDER-1",
            "--attributes",
            r#"{"vip":true}"#,
        ],
    );
    assert_eq!(refused.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("attribute_values_must_be_strings"),
        "{stderr}"
    );
    assert!(stderr.contains("must be a JSON string"), "{stderr}");

    let status = pdq(&db, &["status", "--json"]);
    let status: Value = serde_json::from_str(&stdout(&status)).unwrap();
    assert_eq!(status["depth"][0]["jobs"], 1);

    let unguarded = pdq(&db, &["dlq", "requeue"]);
    assert!(
        !unguarded.status.success(),
        "requeue needs a filter or --all"
    );
    let listed = pdq(&db, &["dlq", "list"]);
    assert!(listed.status.success());
    assert!(stdout(&listed).starts_with("ID"));
    db.drop_database().await;
}

#[test]
fn a_missing_database_url_is_a_clear_error() {
    let output = Command::new(env!("CARGO_BIN_EXE_pdq"))
        .arg("status")
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("set DATABASE_URL"));
}

/// A misspelt `--reason` is refused before any database is touched (it would otherwise match
/// nothing and requeue or purge nothing, silently), and the refusal lists every valid reason;
/// a valid reason gets past the parser.
#[test]
fn a_misspelt_dead_letter_reason_is_refused_with_the_valid_ones() {
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_pdq"))
            .args(args)
            // Nothing listens on port 1: reaching the database would fail with exit code 5.
            .env("DATABASE_URL", "postgres://postgres@127.0.0.1:1/postgres")
            .env("RUST_LOG", "warn")
            .output()
            .expect("run pdq")
    };
    for command in ["list", "requeue", "purge"] {
        let refused = run(&["dlq", command, "--reason", "conversation_over"]);
        assert_eq!(refused.status.code(), Some(2), "{command}: {refused:?}");
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(stderr.contains("conversation_over"), "{command}: {stderr}");
        for reason in pdq::queue::DeadReason::ALL {
            assert!(
                stderr.contains(reason.as_str()),
                "{command}: {reason} is not listed in {stderr}"
            );
        }
    }
    let valid = run(&["dlq", "list", "--reason", "conversation_ended"]);
    assert_eq!(
        valid.status.code(),
        Some(5),
        "parsed, then the database: {valid:?}"
    );
}

#[tokio::test]
async fn doctor_checks_credentials_and_organization_against_the_emulator() {
    let emulator = pdq::emulator::Emulator::start(pdq::emulator::EmulatorConfig::default())
        .await
        .unwrap();
    let conversation =
        emulator.create_conversation(pdq::emulator::ConversationSpec::voice().customer("Jane"));
    let (base_url, conversation_id) = (emulator.base_url(), conversation.id.to_string());
    let doctor = move |secret: &str| {
        Command::new(env!("CARGO_BIN_EXE_pdq"))
            .args(["doctor", "--conversation-id", &conversation_id])
            .env_remove("DATABASE_URL")
            .env("GENESYS_API_URL", &base_url)
            .env("GENESYS_CLIENT_ID", "pdq-demo")
            .env("GENESYS_CLIENT_SECRET", secret)
            .output()
            .unwrap()
    };
    let good = tokio::task::spawn_blocking({
        let doctor = doctor.clone();
        move || doctor("pdq-demo-secret")
    })
    .await
    .unwrap();
    assert!(good.status.success(), "{good:?}");
    let text = stdout(&good);
    assert!(text.contains("organization pdq emulator org"), "{text}");
    assert!(text.contains("is readable"), "{text}");

    let bad = tokio::task::spawn_blocking(move || doctor("wrong-secret"))
        .await
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    let text = stdout(&bad);
    assert!(
        text.contains("invalid_client") && text.contains("Client Credentials grant"),
        "{text}"
    );
    assert!(!text.contains("wrong-secret"), "the secret never appears");

    let region = Command::new(env!("CARGO_BIN_EXE_pdq"))
        .args([
            "doctor",
            "--region",
            "api.eu.purecloud.com",
            "--client-id",
            "x",
        ])
        .env("GENESYS_CLIENT_SECRET", "y")
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    assert_eq!(region.status.code(), Some(2));
    assert!(stdout(&region).contains("not a Genesys Cloud deployment"));
}

/// Runs `pdq run` with loopback API settings; gives up (and fails) after `secs`.
fn pdq_run(db: &TestDb, args: &[&str], secs: u64) -> (std::process::ExitStatus, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pdq"))
        .arg("run")
        .args(args)
        .args(["--metrics-addr", "127.0.0.1:0"])
        .env("DATABASE_URL", db.url())
        .env("GENESYS_API_URL", "http://127.0.0.1:9")
        .env("GENESYS_CLIENT_ID", "pdq-demo")
        .env("GENESYS_CLIENT_SECRET", "pdq-demo-secret")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run pdq");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut stderr = String::new();
            use std::io::Read;
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut stderr)
                .unwrap();
            return (status, stderr);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("pdq run did not refuse within {secs} s");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[tokio::test]
async fn pdq_run_refuses_a_database_without_the_schema_and_says_to_migrate() {
    let db = TestDb::new().await;
    sqlx::query("drop schema pdq cascade")
        .execute(&db.pool)
        .await
        .unwrap();
    let (status, stderr) = pdq_run(&db, &[], 20);
    assert!(!status.success());
    assert!(stderr.contains("pdq migrate"), "{stderr}");
    db.drop_database().await;
}

#[tokio::test]
async fn pdq_run_refuses_a_request_timeout_that_a_lease_cannot_cover() {
    let db = TestDb::new().await;
    let (status, stderr) = pdq_run(&db, &["--lease-secs", "10"], 20);
    assert!(!status.success());
    assert!(stderr.contains("half the lease"), "{stderr}");
    db.drop_database().await;
}

/// The exit-code table: printed by `--help`, kept in docs/operations.md, and used by the commands.
const EXIT_CODES: [(u8, &str); 9] = [
    (0, "success"),
    (1, "an unexpected error"),
    (2, "usage or configuration"),
    (3, "refused"),
    (4, "Genesys Cloud (or its DNS) cannot be reached"),
    (5, "Postgres cannot be reached"),
    (6, "the database has no pdq schema"),
    (7, "does not exist"),
    (8, "none has a fresh heartbeat"),
];

#[tokio::test]
async fn every_command_uses_the_documented_exit_codes() {
    let help = Command::new(env!("CARGO_BIN_EXE_pdq"))
        .args(["dlq", "show", "--help"])
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    let help = stdout(&help);
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/operations.md"))
            .unwrap();
    for (code, meaning) in EXIT_CODES {
        let row = help
            .lines()
            .find(|line| line.trim_start().starts_with(&format!("{code}  ")))
            .unwrap_or_else(|| panic!("no row {code} in:\n{help}"));
        assert!(row.contains(meaning), "{row}");
        assert!(
            readme.contains(&format!("| {code} | {}", row.trim_start()[3..].trim())),
            "docs/operations.md lacks row {code}: {row}"
        );
    }
    assert!(
        !help.contains("=]"),
        "an unset variable is shown as set:\n{help}"
    );

    let db = TestDb::new().await;
    let migrate = pdq(&db, &["migrate", "--json"]);
    let migrated: Value = serde_json::from_str(&stdout(&migrate)).unwrap();
    assert_eq!(migrated["up_to_date"], true, "{migrate:?}");

    let missing = pdq(&db, &["dlq", "show", "999", "--json"]);
    assert_eq!(missing.status.code(), Some(7), "{missing:?}");
    let error: Value = serde_json::from_str(&stdout(&missing)).unwrap();
    assert_eq!(error["exit_code"], 7);
    assert!(error["error"]
        .as_str()
        .unwrap()
        .contains("no dead letter with id 999"));

    let unguarded = pdq(&db, &["dlq", "purge"]);
    assert_eq!(unguarded.status.code(), Some(2), "{unguarded:?}");
    let unknown = pdq(&db, &["dlq", "list", "--reason", "conversation_over"]);
    assert_eq!(unknown.status.code(), Some(2), "{unknown:?}");
    let stderr = String::from_utf8_lossy(&unknown.stderr);
    assert!(
        stderr.contains("conversation_ended") && stderr.contains("malformed_row"),
        "the known reasons are listed: {stderr}"
    );
    let known = pdq(&db, &["dlq", "list", "--reason", "conversation_ended"]);
    assert!(known.status.success(), "{known:?}");

    sqlx::query("drop schema pdq cascade")
        .execute(&db.pool)
        .await
        .unwrap();
    let unmigrated = pdq(&db, &["status"]);
    assert_eq!(unmigrated.status.code(), Some(6), "{unmigrated:?}");
    assert!(String::from_utf8_lossy(&unmigrated.stderr).contains("pdq migrate"));

    let refused = Command::new(env!("CARGO_BIN_EXE_pdq"))
        .args(["status"])
        .env("DATABASE_URL", "postgres://postgres@127.0.0.1:1/postgres")
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(5), "{refused:?}");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(stderr.matches("connection refused").count(), 1, "{stderr}");
    assert!(!stderr.contains("timed out"), "{stderr}");
    db.drop_database().await;
}
