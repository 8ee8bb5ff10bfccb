//! Terminal escape injection: producer texts with escape sequences (cursor moves, screen
//! clears, OSC 52 clipboard writes), carriage returns and newlines reach the operator's
//! terminal only as visible escapes in every human-format output; `--json` stays exact.

use std::process::{Command, Output};

use pdq::queue::lease::{ClaimOptions, DeadLetterRecord};
use pdq::queue::{self, DeadReason, Locators, NewJob};
use serde_json::{json, Value};

use crate::helpers::TestDb;

const CLIPBOARD: &str = "ORDER-1\u{1b}]52;c;ZXZpbA==\u{7}";
const CLEAR: &str = "x\u{1b}[2J\u{1b}[H\rFORGED\nline\u{9b}31m\u{202e}";

fn pdq(db: &TestDb, args: &[&str]) -> Output {
    let output = Command::new(env!("CARGO_BIN_EXE_pdq"))
        .args(args)
        .env("DATABASE_URL", db.url())
        .env("RUST_LOG", "warn")
        .output()
        .expect("run pdq");
    assert!(
        output.status.success(),
        "pdq {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// The human output of `args`, checked to carry no control character but newlines.
fn human(db: &TestDb, args: &[&str]) -> String {
    let text = String::from_utf8(pdq(db, args).stdout).unwrap();
    let raw: Vec<char> = text
        .chars()
        .filter(|c| (c.is_control() && *c != '\n') || ('\u{202a}'..='\u{202e}').contains(c))
        .collect();
    assert!(
        raw.is_empty(),
        "pdq {args:?} printed {raw:?} raw:\n{text:?}"
    );
    assert!(
        !text.contains("\nline"),
        "a newline in a value does not start a line of its own: {text}"
    );
    text
}

#[tokio::test]
async fn producer_text_reaches_the_terminal_only_as_visible_escapes() {
    let db = TestDb::new().await;
    let pending = queue::enqueue(
        &db.pool,
        &NewJob {
            locators: Locators::external_tag(CLIPBOARD),
            attributes: json!({ "note": CLEAR }),
            idempotency_key: Some(format!("key-{CLEAR}")),
            ..NewJob::default()
        },
    )
    .await
    .unwrap()
    .unwrap();
    let dead = queue::enqueue(
        &db.pool,
        &NewJob {
            locators: Locators::external_tag(CLEAR),
            attributes: json!({ "tier": "gold" }),
            ..NewJob::default()
        },
    )
    .await
    .unwrap()
    .unwrap();
    // Dead-letter the second job with an error text from "the API".
    let units = queue::lease::claim(
        &db.pool,
        &ClaimOptions {
            units: 10,
            ..ClaimOptions::default()
        },
    )
    .await
    .unwrap();
    for unit in units {
        if unit.jobs.iter().any(|j| j.id == dead) {
            let record = DeadLetterRecord::new(DeadReason::NotFound, CLEAR);
            queue::lease::dead_letter(&db.pool, &unit.fence(), None, &record, true)
                .await
                .unwrap();
        } else {
            queue::lease::release(&db.pool, &unit.fence())
                .await
                .unwrap();
        }
    }
    sqlx::query(
        "insert into pdq.workers (id, name, host, pid, version, executors, state, pause_reason)
         values (gen_random_uuid(), $1, $2, 1, '0.1.0', 4, 'paused', $1)",
    )
    .bind(CLEAR)
    .bind(CLIPBOARD)
    .execute(&db.pool)
    .await
    .unwrap();

    let (pending_id, dead_id) = (pending.to_string(), dead.to_string());
    let list = human(&db, &["jobs", "list"]);
    assert!(list.contains("\\u{1b}]52;c;ZXZpbA==\\u{7}"), "{list}");
    let show = human(&db, &["jobs", "show", &pending_id]);
    assert!(show.contains("ORDER-1\\u{1b}]52"), "{show}");
    human(&db, &["jobs", "show", &dead_id]);
    human(&db, &["dlq", "list"]);
    let letter = human(&db, &["dlq", "show", &dead_id]);
    assert!(letter.contains("\\r") && letter.contains("\\n"), "{letter}");
    let status = human(&db, &["status"]);
    assert!(status.contains("\\u{1b}"), "{status}");

    // JSON stays exact: the same text, escaped by JSON only.
    let shown: Value =
        serde_json::from_slice(&pdq(&db, &["jobs", "show", &pending_id, "--json"]).stdout).unwrap();
    let text = shown.to_string();
    assert!(text.contains(&Value::from(CLIPBOARD).to_string()), "{text}");
    let letter: Value =
        serde_json::from_slice(&pdq(&db, &["dlq", "show", &dead_id, "--json"]).stdout).unwrap();
    assert!(letter.to_string().contains(&Value::from(CLEAR).to_string()));
    db.drop_database().await;
}
