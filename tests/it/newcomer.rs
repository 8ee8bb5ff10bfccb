//! What a newcomer meets first: exit codes as documented, errors that name what
//! is missing, quiet ends on a closed pipe, refused out-of-range flags, a worker that checks
//! its credentials at start, and docs whose links all lead somewhere.

use std::io::Read;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::helpers::TestDb;

/// The built binary with no database and quiet logs; callers add what they need.
fn pdq_command(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_pdq"));
    command
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("PDQ_BACKFILL_SHARE")
        .env("RUST_LOG", "warn");
    command
}

fn pdq_on(db: &TestDb, args: &[&str]) -> Output {
    pdq_command(args)
        .env("DATABASE_URL", db.url())
        .output()
        .expect("run pdq")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The code the "### Exit codes" table of docs/operations.md gives the row whose meaning
/// contains `meaning`.
fn documented_code(meaning: &str) -> i32 {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/operations.md"))
            .unwrap();
    let table = readme
        .split("### Exit codes")
        .nth(1)
        .expect("docs/operations.md has an exit-code table");
    let rows: Vec<(i32, &str)> = table
        .lines()
        .skip_while(|line| !line.starts_with('|'))
        .take_while(|line| line.starts_with('|'))
        .filter_map(|line| {
            let mut cells = line.trim_matches('|').split('|').map(str::trim);
            Some((cells.next()?.parse().ok()?, cells.next()?))
        })
        .collect();
    let found: Vec<i32> = rows
        .iter()
        .filter(|(_, text)| text.contains(meaning))
        .map(|(code, _)| *code)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one exit-code row says {meaning:?}: {rows:?}"
    );
    found[0]
}

/// Asserts that `output` exited with the code docs/operations.md documents for `meaning`.
fn assert_documented(output: &Output, meaning: &str) {
    assert_eq!(
        output.status.code(),
        Some(documented_code(meaning)),
        "expected the code for {meaning:?}: {output:?}"
    );
}

#[tokio::test]
async fn jobs_show_of_an_unknown_job_exits_with_the_not_found_code() {
    let db = TestDb::new().await;
    let missing = pdq_on(&db, &["jobs", "show", "999999"]);
    assert_documented(&missing, "does not exist");
    assert!(
        stderr(&missing).contains("no job with id 999999"),
        "{missing:?}"
    );
    let by_key = pdq_on(&db, &["jobs", "show", "--key", "never-queued"]);
    assert_documented(&by_key, "does not exist");
    db.drop_database().await;
}

#[tokio::test]
async fn dlq_show_of_an_unknown_dead_letter_exits_with_the_not_found_code() {
    let db = TestDb::new().await;
    let missing = pdq_on(&db, &["dlq", "show", "999999"]);
    assert_documented(&missing, "does not exist");
    db.drop_database().await;
}

#[test]
fn no_database_url_is_a_configuration_error() {
    for args in [
        &["status"][..],
        &["jobs", "list"],
        &["dlq", "list"],
        &["migrate"],
    ] {
        let output = pdq_command(args).output().unwrap();
        assert_documented(&output, "usage or configuration");
        assert!(stderr(&output).contains("set DATABASE_URL"), "{output:?}");
    }
}

#[tokio::test]
async fn cancel_and_requeue_without_a_filter_are_usage_errors() {
    let db = TestDb::new().await;
    let cancel = pdq_on(&db, &["jobs", "cancel"]);
    assert_documented(&cancel, "usage or configuration");
    assert!(stderr(&cancel).contains("--all"), "{cancel:?}");
    let requeue = pdq_on(&db, &["dlq", "requeue"]);
    assert_documented(&requeue, "usage or configuration");
    db.drop_database().await;
}

#[tokio::test]
async fn migrate_without_the_right_is_refused() {
    let db = TestDb::new().await;
    let role = format!("pdq_test_weak_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("create role {role} login"))
        .execute(&db.pool)
        .await
        .unwrap();
    let mut url = url::Url::parse(&db.url()).unwrap();
    url.set_username(&role).unwrap();
    let output = pdq_command(&["migrate"])
        .env("DATABASE_URL", url.as_str())
        .output()
        .unwrap();
    sqlx::query(&format!("drop role {role}"))
        .execute(&db.pool)
        .await
        .unwrap();
    assert_documented(&output, "a missing permission or grant");
    let text = stderr(&output);
    assert!(
        text.contains("permission denied") && text.contains("owner"),
        "{text}"
    );
    db.drop_database().await;
}

#[test]
fn cannot_connect_names_the_host_and_port_it_tried() {
    // Nothing listens on this port (the range these tests may use).
    let output = pdq_command(&["status"])
        .env(
            "DATABASE_URL",
            "postgres://postgres@127.0.0.1:25499/postgres",
        )
        .output()
        .unwrap();
    assert_documented(&output, "Postgres cannot be reached");
    let text = stderr(&output);
    assert!(text.contains("127.0.0.1:25499"), "{text}");
}

#[test]
fn doctor_with_no_settings_names_the_missing_database() {
    let output = pdq_command(&["doctor"])
        .env_remove("GENESYS_REGION")
        .env_remove("GENESYS_API_URL")
        .env_remove("GENESYS_CLIENT_ID")
        .output()
        .unwrap();
    assert_documented(&output, "usage or configuration");
    let text = stdout(&output);
    assert!(
        text.contains("database") && text.contains("DATABASE_URL"),
        "{text}"
    );
}

/// Runs `command` with its stdout already closed by the reader, as `| head -1` does.
fn with_closed_stdout(mut command: Command) -> Output {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let mut text = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    let status = child.wait().unwrap();
    Output {
        status,
        stdout: Vec::new(),
        stderr: text.into_bytes(),
    }
}

#[tokio::test]
async fn every_command_ends_quietly_on_a_closed_pipe() {
    let db = TestDb::new().await;
    for n in 0..5 {
        let enqueued = pdq_on(
            &db,
            &[
                "enqueue",
                "--conversation-id",
                &format!("6f1c2d3e-0000-4000-8000-00000000000{n}"),
                "--attr",
                "tier=gold",
            ],
        );
        assert!(enqueued.status.success(), "{enqueued:?}");
    }
    let commands: [&[&str]; 9] = [
        &["jobs", "list"],
        &["jobs", "list", "--json"],
        &["jobs", "show", "1"],
        &["status"],
        &["dlq", "list"],
        &["migrate"],
        &["--help"],
        &["man"],
        &["completions", "bash"],
    ];
    for args in commands {
        let mut command = pdq_command(args);
        command.env("DATABASE_URL", db.url());
        let output = with_closed_stdout(command);
        let text = stderr(&output);
        assert!(
            !text.contains("panicked") && !text.contains("Broken pipe"),
            "{args:?}: {text}"
        );
        assert_eq!(output.status.code(), Some(0), "{args:?}: {text}");
    }
    db.drop_database().await;
}

#[test]
fn a_backfill_share_out_of_range_is_refused_with_the_range() {
    for value in ["2", "-0.1", "half"] {
        let output = pdq_command(&["run", &format!("--backfill-share={value}")])
            .output()
            .unwrap();
        assert_documented(&output, "usage or configuration");
        let text = stderr(&output);
        assert!(text.contains("0.0 to 1.0"), "{value}: {text}");
    }
    let from_env = pdq_command(&["run"])
        .env("PDQ_BACKFILL_SHARE", "1.5")
        .output()
        .unwrap();
    assert_documented(&from_env, "usage or configuration");
    assert!(stderr(&from_env).contains("0.0 to 1.0"), "{from_env:?}");
}

#[tokio::test]
async fn migrate_says_what_it_applied_and_keeps_server_notices_out_of_the_log() {
    let db = TestDb::new().await;
    sqlx::query("drop schema pdq cascade")
        .execute(&db.pool)
        .await
        .unwrap();
    let run = || {
        pdq_command(&["migrate"])
            .env("DATABASE_URL", db.url())
            .env_remove("RUST_LOG")
            .output()
            .unwrap()
    };
    let fresh = run();
    assert!(fresh.status.success(), "{fresh:?}");
    let text = stdout(&fresh);
    assert!(!text.contains("up to date"), "{text}");
    assert!(text.contains("applied"), "{text}");
    let again = run();
    assert!(again.status.success(), "{again:?}");
    assert!(stdout(&again).contains("up to date"), "{again:?}");
    for output in [&fresh, &again] {
        let log = stderr(output);
        assert!(
            !log.contains("sqlx::postgres::notice") && !log.contains("already exists"),
            "{log}"
        );
    }
    db.drop_database().await;
}

#[tokio::test]
async fn a_wrong_client_secret_pauses_the_worker_at_start() {
    let db = TestDb::new().await;
    let emulator = pdq::emulator::Emulator::start(pdq::emulator::EmulatorConfig::default())
        .await
        .unwrap();
    let metrics = "127.0.0.1:25490";
    let mut child = pdq_command(&["run", "--metrics-addr", metrics])
        .env("DATABASE_URL", db.url())
        .env("GENESYS_API_URL", emulator.base_url())
        .env("GENESYS_CLIENT_ID", "pdq-demo")
        .env("GENESYS_CLIENT_SECRET", "not-the-secret")
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = None;
    while Instant::now() < deadline {
        if let Ok(response) = client.get(format!("http://{metrics}/healthz")).send().await {
            seen = Some((response.status().as_u16(), response.text().await.unwrap()));
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = child.kill();
    let mut log = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    let _ = child.wait();
    let (status, body) = seen.expect("/healthz answered");
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("invalid_client") && body.contains("GENESYS_CLIENT_SECRET"),
        "the reason and the advice: {body}"
    );
    assert!(!log.contains("pdq worker running"), "{log}");
    assert!(
        log.contains("paused") && log.contains("invalid_client"),
        "{log}"
    );
    assert!(!log.contains("not-the-secret"), "the secret never appears");
    db.drop_database().await;
}

/// `pdq demo` on the local server with `args`, `RUST_LOG` unset.
async fn demo(args: &'static [&'static str]) -> Output {
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_pdq"))
            .arg("demo")
            .args(args)
            .env("DATABASE_URL", crate::helpers::database_url())
            .env_remove("RUST_LOG")
            .env("NO_COLOR", "1")
            .output()
            .expect("run pdq demo")
    })
    .await
    .unwrap()
}

/// The two bad rows of the demo, by the constraint that refuses each.
const DEMO_REFUSALS: [&str; 2] = [
    "attribute_values_must_be_strings",
    "attribute_keys_must_not_use_a_protected_prefix",
];

#[tokio::test]
async fn the_demo_shows_progress_and_its_report_and_no_log_lines() {
    let output = demo(&["--no-console"]).await;
    let (out, err) = (stdout(&output), stderr(&output));
    assert!(output.status.success(), "{out}\n{err}");
    assert!(err.contains("working: "), "progress: {err}");
    assert!(
        !err.contains(" INFO ") && !err.contains(" WARN ") && !err.contains("participant_busy"),
        "no log lines without -v: {err}"
    );
    assert!(out.contains("== pdq demo report =="), "{out}");
    for constraint in DEMO_REFUSALS {
        assert!(
            out.lines()
                .any(|line| line.contains("refused by") && line.contains(constraint)),
            "the row {constraint} refused is named: {out}"
        );
    }
}

#[tokio::test]
async fn the_demo_json_is_one_document_that_names_each_refused_row_and_its_rule() {
    let output = demo(&["--json", "-v", "--no-console"]).await;
    let (out, err) = (stdout(&output), stderr(&output));
    assert!(output.status.success(), "{out}\n{err}");
    let report: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("one JSON document ({e}): {out}"));
    let refused = report["refused_at_insert"]
        .as_array()
        .expect("the refused rows");
    let constraints: Vec<&str> = refused
        .iter()
        .map(|row| row["constraint"].as_str().unwrap())
        .collect();
    assert_eq!(constraints, DEMO_REFUSALS, "{report}");
    for row in refused {
        assert!(row["attributes"].is_object(), "{row}");
        assert!(!row["meaning"].as_str().unwrap().is_empty(), "{row}");
    }
    assert!(err.contains(" INFO "), "-v shows the log: {err}");
}

#[tokio::test]
async fn a_hangup_drops_the_demo_database() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pdq"))
        .args(["demo", "--json", "--no-console", "--timeout-secs", "60"])
        .env("DATABASE_URL", crate::helpers::database_url())
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(child.stderr.take().unwrap()));
    let name = lines
        .by_ref()
        .take(20)
        .map_while(Result::ok)
        .find_map(|line| line.strip_prefix("demo database: ").map(str::to_owned))
        .expect("the demo names its database");
    let admin = sqlx::PgPool::connect(&crate::helpers::database_url())
        .await
        .unwrap();
    let exists = || async {
        sqlx::query_scalar::<_, bool>("select exists (select from pg_database where datname = $1)")
            .bind(&name)
            .fetch_one(&admin)
            .await
            .unwrap()
    };
    assert!(exists().await, "{name} while the demo runs");
    let hup = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the demo did not stop on SIGHUP");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert_eq!(status.code(), Some(129), "{rest:?}");
    assert!(
        rest.iter()
            .any(|line| line.contains("SIGHUP") && line.contains("dropped")),
        "{rest:?}"
    );
    assert!(!exists().await, "{name} was dropped");
    admin.close().await;
}

/// `PUT /admin/faults` refuses unknown fields with a 400 that names each of them in JSON.
#[tokio::test]
async fn put_faults_refuses_unknown_fields_and_names_them() {
    let emulator = pdq::emulator::Emulator::start(pdq::emulator::EmulatorConfig::default())
        .await
        .unwrap();
    let url = format!("{}/admin/faults", emulator.base_url());
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let put = |body: &'static str| {
        client
            .put(&url)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let misspelt = put(r#"{"error_rat":0.5,"latency_ms":20,"hang_rat":1}"#)
        .await
        .unwrap();
    assert_eq!(misspelt.status(), 400);
    assert!(misspelt.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    let body: serde_json::Value = misspelt.json().await.unwrap();
    assert_eq!(
        body["unknown_fields"],
        serde_json::json!(["error_rat", "hang_rat"]),
        "{body}"
    );
    let message = body["error"].as_str().unwrap();
    assert!(
        message.contains("error_rat") && message.contains("hang_rat"),
        "{body}"
    );
    assert!(
        body["known_fields"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!("error_rate")),
        "{body}"
    );
    assert_eq!(
        emulator.faults(),
        pdq::emulator::Faults::default(),
        "a refused PUT changes nothing"
    );

    let wrong_type = put(r#"{"error_rate":"high"}"#).await.unwrap();
    assert_eq!(wrong_type.status(), 400);
    let body: serde_json::Value = wrong_type.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("invalid"),
        "{body}"
    );
    let not_json = put("error_rate=0.5").await.unwrap();
    assert_eq!(not_json.status(), 400);
    let body: serde_json::Value = not_json.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("not JSON"),
        "{body}"
    );

    let good = put(r#"{"latency_ms":20}"#).await.unwrap();
    assert_eq!(good.status(), 204);
    assert_eq!(emulator.faults().latency_ms, 20);
}

/// `PATCH /admin/faults` changes only the fields given, where a PUT replaces the whole set.
#[tokio::test]
async fn patch_faults_merges_where_put_replaces() {
    let emulator = pdq::emulator::Emulator::start(pdq::emulator::EmulatorConfig::default())
        .await
        .unwrap();
    let url = format!("{}/admin/faults", emulator.base_url());
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let send = |method: reqwest::Method, body: &'static str| {
        client
            .request(method, &url)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let put = send(reqwest::Method::PUT, r#"{"latency_ms":20}"#)
        .await
        .unwrap();
    assert_eq!(put.status(), 204);
    let patched = send(
        reqwest::Method::PATCH,
        r#"{"error_rate":0.1,"missing_permissions":true}"#,
    )
    .await
    .unwrap();
    assert_eq!(patched.status(), 200);
    let answered: serde_json::Value = patched.json().await.unwrap();
    assert_eq!(answered["latency_ms"], 20, "kept: {answered}");
    assert_eq!(answered["error_rate"], 0.1, "{answered}");
    let faults = emulator.faults();
    assert_eq!(
        (
            faults.latency_ms,
            faults.error_rate,
            faults.missing_permissions
        ),
        (20, 0.1, true)
    );

    let refused = send(reqwest::Method::PATCH, r#"{"latency":5}"#)
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["unknown_fields"], serde_json::json!(["latency"]));
    assert_eq!(emulator.faults(), faults, "a refused PATCH changes nothing");

    let replaced = send(reqwest::Method::PUT, r#"{"error_rate":0.2}"#)
        .await
        .unwrap();
    assert_eq!(replaced.status(), 204);
    let faults = emulator.faults();
    assert_eq!(
        (
            faults.latency_ms,
            faults.error_rate,
            faults.missing_permissions
        ),
        (0, 0.2, false),
        "PUT replaces the whole set"
    );
}

/// The README's blocks marked `sh tested` and `sql tested`, in order, as one bash script: a
/// SQL block goes to `psql "$DATABASE_URL"`.
fn readme_tested_script() -> (String, usize) {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let mut script = String::new();
    let mut blocks = 0;
    let mut lines = readme.lines();
    while let Some(line) = lines.next() {
        let kind = match line.trim_end() {
            "```sh tested" => "sh",
            "```sql tested" => "sql",
            _ => continue,
        };
        let body: Vec<&str> = lines
            .by_ref()
            .take_while(|l| !l.starts_with("```"))
            .collect();
        blocks += 1;
        match kind {
            "sh" => script.push_str(&body.join("\n")),
            _ => script.push_str(&format!(
                "psql \"$DATABASE_URL\" -v ON_ERROR_STOP=1 -q <<'PDQ_README_SQL'\n{}\nPDQ_README_SQL",
                body.join("\n")
            )),
        }
        script.push('\n');
    }
    (script, blocks)
}

/// "Your first job" runs as pasted: a fresh database, the emulator, a job inserted with psql,
/// the worker, the value on the emulator and in `pdq jobs show`. Only the ports are moved to
/// this suite's range.
#[tokio::test]
async fn the_readme_tested_blocks_run_as_written() {
    use std::os::unix::process::CommandExt;
    let (script, blocks) = readme_tested_script();
    assert!(
        blocks >= 6,
        "the README's tested blocks: {blocks}\n{script}"
    );
    assert!(script.contains("pdq emulator") && script.contains("insert into pdq.jobs"));
    let script = script
        .replace("8710", "25493")
        .replace("127.0.0.1:9187", "127.0.0.1:25494");
    let db = TestDb::new().await;
    sqlx::query("drop schema pdq cascade")
        .execute(&db.pool)
        .await
        .unwrap();
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_pdq"))
        .parent()
        .unwrap()
        .to_owned();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let dir = std::env::temp_dir().join(format!("pdq-readme-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut child = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .current_dir(&dir)
        .env("PATH", path)
        .env("DATABASE_URL", db.url())
        .env("NO_COLOR", "1")
        .env_remove("RUST_LOG")
        .env_remove("GENESYS_REGION")
        .process_group(0)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("bash");
    let group = child.id();
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let readers = std::thread::spawn(move || {
        let (mut o, mut e) = (String::new(), String::new());
        let stderr = std::thread::spawn(move || {
            let _ = err.read_to_string(&mut e);
            e
        });
        let _ = out.read_to_string(&mut o);
        (o, stderr.join().unwrap())
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Whatever the script left running (it stops both itself; a failure may not).
    let _ = Command::new("kill")
        .args(["-TERM", "--", &format!("-{group}")])
        .stderr(Stdio::null())
        .status();
    let _ = child.wait();
    let (out, err) = readers.join().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let status =
        status.unwrap_or_else(|| panic!("the README's blocks ran over 120 s\n{out}\n{err}"));
    assert!(status.success(), "{status}\n{out}\n{err}");
    assert!(
        out.contains(r#"{"orderStatus":"shipped"}"#),
        "the value is on the emulator:\n{out}\n{err}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("job ") && l.ends_with(" applied")),
        "pdq jobs show says applied:\n{out}\n{err}"
    );
    assert!(!err.contains("error:"), "{err}");
    db.drop_database().await;
}

#[test]
fn the_man_page_has_the_exit_codes() {
    let page = pdq_command(&["man"]).output().unwrap();
    assert!(page.status.success(), "{page:?}");
    let text = stdout(&page);
    let section = text
        .split(".SH \"EXIT STATUS\"")
        .nth(1)
        .unwrap_or_else(|| panic!("no EXIT STATUS section:\n{text}"));
    for (code, meaning) in [
        (0, "success"),
        (2, "usage or configuration"),
        (7, "does not exist"),
    ] {
        assert_eq!(documented_code(meaning), code);
        assert!(
            section.contains(&format!(".TP\n{code}\n")) && section.contains(meaning),
            "{code} {meaning}:\n{section}"
        );
    }
    let dir = std::env::temp_dir().join(format!("pdq-man-{}", uuid::Uuid::new_v4().simple()));
    let written = pdq_command(&["man", "--out-dir", dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(written.status.success(), "{written:?}");
    let main = std::fs::read_to_string(dir.join("pdq.1")).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(main.contains(".SH \"EXIT STATUS\""), "{main}");
}

/// GitHub's anchor for a heading: lower case, punctuation dropped (word characters, spaces,
/// hyphens kept), spaces to hyphens; a repeated heading gets `-1`, `-2`, ….
fn anchors(markdown: &str) -> Vec<String> {
    let mut seen: Vec<String> = Vec::new();
    let mut bases: Vec<String> = Vec::new();
    for line in prose_lines(markdown) {
        let Some(title) = line
            .strip_prefix('#')
            .map(|rest| rest.trim_start_matches('#'))
            .and_then(|rest| rest.strip_prefix(' '))
        else {
            continue;
        };
        let slug: String = title
            .trim()
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | ' '))
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        let repeats = bases.iter().filter(|s| **s == slug).count();
        bases.push(slug.clone());
        seen.push(match repeats {
            0 => slug,
            n => format!("{slug}-{n}"),
        });
    }
    seen
}

/// The lines outside fenced code blocks.
fn prose_lines(markdown: &str) -> Vec<&str> {
    let mut fenced = false;
    markdown
        .lines()
        .filter(|line| {
            if line.trim_start().starts_with("```") {
                fenced = !fenced;
                return false;
            }
            !fenced
        })
        .collect()
}

/// The targets of the `[text](target)` links (and images) of `markdown`, outside code.
fn link_targets(markdown: &str) -> Vec<String> {
    let mut targets = Vec::new();
    for line in prose_lines(markdown) {
        // Inline code is not a link: drop the spans between backticks.
        let prose: String = line
            .split('`')
            .enumerate()
            .filter(|(i, _)| i % 2 == 0)
            .map(|(_, part)| part)
            .collect::<Vec<_>>()
            .join(" ");
        let mut rest = prose.as_str();
        while let Some(at) = rest.find("](") {
            let tail = &rest[at + 2..];
            let Some(end) = tail.find(')') else { break };
            let target = &tail[..end];
            if !target.is_empty() && !target.contains(char::is_whitespace) {
                targets.push(target.to_owned());
            }
            rest = &tail[end..];
        }
    }
    targets
}

/// What is wrong with the relative links of the file `from` (relative to the crate's root):
/// a file that does not exist, or an `#anchor` no heading of the target gives.
fn broken_links(root: &std::path::Path, from: &str, text: &str) -> Vec<String> {
    let here = root.join(from);
    let dir = here.parent().unwrap();
    let mut broken = Vec::new();
    for target in link_targets(text) {
        if target.contains("://") || target.starts_with("mailto:") {
            continue;
        }
        let (path, anchor) = target.split_once('#').unwrap_or((&target, ""));
        let file = if path.is_empty() {
            here.clone()
        } else {
            dir.join(path)
        };
        if !file.exists() {
            broken.push(format!("{from}: {target}: no file {path}"));
            continue;
        }
        if !anchor.is_empty() {
            // A link within the file is judged against the text given, not the file on disk.
            let content = match path.is_empty() {
                true => text.to_owned(),
                false => match std::fs::read_to_string(&file) {
                    Ok(content) => content,
                    Err(_) => {
                        broken.push(format!("{from}: {target}: not a text file"));
                        continue;
                    }
                },
            };
            if !anchors(&content).iter().any(|a| a == anchor) {
                broken.push(format!("{from}: {target}: no heading #{anchor}"));
            }
        }
    }
    broken
}

#[test]
fn anchors_and_link_checks_follow_the_markdown() {
    assert_eq!(
        anchors(
            "# A b c\n# A b\n## Is it working? `pdq status`\n```sh\n# not a heading\n```\n## A b\n"
        ),
        ["a-b-c", "a-b", "is-it-working-pdq-status", "a-b-1"]
    );
    assert_eq!(
        link_targets("see [x](a.md#b), `[no](c.md)` and ![i](d.png)\n```\n[no](e.md)\n```"),
        ["a.md#b", "d.png"]
    );
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = "# Top\n[ok](#top) [ok](docs/outcomes.md) [bad](#nowhere) [bad](docs/none.md)";
    let broken = broken_links(root, "README.md", text);
    assert_eq!(broken.len(), 2, "{broken:?}");
    assert!(broken[0].contains("#nowhere") && broken[1].contains("docs/none.md"));
}

/// Every relative link of the README and of docs/ (and the other guides they link to) reaches
/// a file that exists, and every `#anchor` a heading of that file.
#[test]
fn every_relative_link_of_the_docs_reaches_a_file_and_a_heading() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![
        "README.md".to_owned(),
        "BENCHMARKS.md".to_owned(),
        "examples/README.md".to_owned(),
        "deploy/systemd/README.md".to_owned(),
        "deploy/helm/pdq/README.md".to_owned(),
    ];
    for entry in std::fs::read_dir(root.join("docs")).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name.ends_with(".md") {
            files.push(format!("docs/{name}"));
        }
    }
    assert!(files.len() >= 12, "{files:?}");
    let mut broken = Vec::new();
    let mut links = 0;
    for file in &files {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        links += link_targets(&text).len();
        broken.extend(broken_links(root, file, &text));
    }
    assert!(links > 50, "only {links} links found");
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}
