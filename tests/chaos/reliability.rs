//! The README's reliability table, filled from the suite's own results.
//!
//! Every scenario prints its row. With `PDQ_CHAOS_README=1` it also writes the row into
//! `README.md`, between the `reliability-table` markers, replacing the row of the same scenario.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

const BEGIN: &str = "<!-- reliability-table:begin -->";
const END: &str = "<!-- reliability-table:end -->";
const HEADER: &str = "| scenario | run | jobs | lost | duplicates applied | dead-lettered (by reason) | time to drain | notes |\n|---|---|---|---|---|---|---|---|";

/// The table lists scenarios in this order (the order of the suite's brief); others go last.
const ORDER: &[&str] = &[
    "kill -9 ×3 mid-drain, restarted",
    "3 workers: one kill -9, one SIGTERM",
    "Postgres restarted mid-drain",
    "API faults: 10% 5xx, 5% resets, 2% hangs, 429 storm, token revocation",
    "conversations ending mid-run",
    "generated bad rows (proptest), good rows sent between them",
    "big backfill in one INSERT while live updates arrive",
];

/// Scenarios run in parallel threads of one process; they take turns with the README.
static README: Mutex<()> = Mutex::new(());

/// One scenario's result.
pub struct Row {
    pub scenario: &'static str,
    pub jobs: i64,
    pub lost: i64,
    pub duplicates: usize,
    pub dead: BTreeMap<String, i64>,
    /// From the first chaos to an empty queue; `None` where the scenario does not drain.
    pub drain: Option<Duration>,
    pub notes: String,
}

impl Row {
    fn markdown(&self) -> String {
        let mode = if super::long_mode() { "long" } else { "short" };
        let dead = if self.dead.is_empty() {
            "none".to_owned()
        } else {
            self.dead
                .iter()
                .map(|(reason, n)| format!("`{reason}` {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let drain = self
            .drain
            .map_or("—".to_owned(), |d| format!("{:.1} s", d.as_secs_f64()));
        format!(
            "| {} | {mode}, {} | {} | {} | {} | {dead} | {drain} | {} |",
            self.scenario,
            chrono::Utc::now().date_naive(),
            self.jobs,
            self.lost,
            self.duplicates,
            self.notes
        )
    }
}

/// Prints the row, and writes it into the README when `PDQ_CHAOS_README=1`.
pub fn record(row: &Row) {
    let line = row.markdown();
    println!("{line}");
    if std::env::var("PDQ_CHAOS_README").is_ok_and(|v| v == "1") {
        let _turn = README
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/README.md");
        let readme = std::fs::read_to_string(path).expect("README.md");
        let updated = with_row(&readme, row.scenario, &line);
        std::fs::write(path, updated).expect("write README.md");
    }
}

/// The README with `line` as the row of `scenario` inside the markers (replaced, or appended).
fn with_row(readme: &str, scenario: &str, line: &str) -> String {
    let (Some(begin), Some(end)) = (readme.find(BEGIN), readme.find(END)) else {
        panic!("README.md needs the {BEGIN} and {END} markers around the reliability table");
    };
    let inside = &readme[begin + BEGIN.len()..end];
    let prefix = format!("| {scenario} |");
    let mut rows: Vec<String> = inside
        .lines()
        .filter(|l| l.starts_with("| ") && !HEADER.contains(l))
        .map(str::to_owned)
        .collect();
    match rows.iter_mut().find(|l| l.starts_with(&prefix)) {
        Some(existing) => *existing = line.to_owned(),
        None => rows.push(line.to_owned()),
    }
    rows.sort_by_key(|row| {
        ORDER
            .iter()
            .position(|name| row.starts_with(&format!("| {name} |")))
            .unwrap_or(ORDER.len())
    });
    format!(
        "{}{BEGIN}\n{HEADER}\n{}\n{}",
        &readme[..begin],
        rows.join("\n"),
        &readme[end..]
    )
}

#[test]
fn a_row_replaces_its_scenario_and_keeps_the_others() {
    let readme = format!("intro\n{BEGIN}\n{HEADER}\n| a | old |\n| b | kept |\n{END}\nafter\n");
    let replaced = with_row(&readme, "a", "| a | new |");
    assert_eq!(
        replaced,
        format!("intro\n{BEGIN}\n{HEADER}\n| a | new |\n| b | kept |\n{END}\nafter\n")
    );
    let appended = with_row(&replaced, "c", "| c | added |");
    assert!(appended.contains("| b | kept |\n| c | added |\n<!--"));
    assert_eq!(appended.matches(HEADER).count(), 1);
    let first = with_row(&appended, ORDER[0], &format!("| {} | x |", ORDER[0]));
    assert!(
        first.contains(&format!("{HEADER}\n| {} | x |\n| a |", ORDER[0])),
        "known scenarios come first, in the brief's order"
    );
}
