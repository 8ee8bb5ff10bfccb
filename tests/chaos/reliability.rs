//! The reliability table of `docs/reliability.md`, filled from the suite's own results.
//!
//! Every scenario prints its row. With `PDQ_CHAOS_TABLE=1` (or the older `PDQ_CHAOS_README=1`)
//! it also writes the row into `docs/reliability.md`, between the `reliability-table` markers,
//! replacing the row of the same scenario.
//! A failed run writes its row too, marked failed with the reason, so no old result stays.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::sync::{Mutex, Once};
use std::time::Duration;

const BEGIN: &str = "<!-- reliability-table:begin -->";
const END: &str = "<!-- reliability-table:end -->";
/// The file that holds the table, from the crate's root.
const TABLE_FILE: &str = "docs/reliability.md";
const HEADER: &str = "| scenario | run | result | jobs | applied | lost | stale | duplicates applied | dead-lettered (by reason) | stuck | time to drain | notes |\n|---|---|---|---|---|---|---|---|---|---|---|---|";

/// The table lists scenarios in this order (the order of the suite's brief); others go last.
const ORDER: &[&str] = &[
    super::KILL_9,
    super::KILL_AND_TERM,
    super::LOST_LEASE,
    super::POSTGRES_CRASH,
    super::failover::FAILOVER_SYNC,
    super::failover::FAILOVER_ASYNC,
    super::failover::BLACKHOLE,
    super::API_FAULTS,
    super::API_OUTAGE,
    super::LOGIN_OUTAGE,
    super::CONVERSATIONS_ENDING,
    super::HOSTILE_PRODUCER,
    "generated bad rows (proptest), good rows sent between them",
    super::BACKFILL,
];

/// Scenarios run in parallel threads of one process; they take turns with the table's file.
static TABLE: Mutex<()> = Mutex::new(());

/// What a scenario measured. `None` where a column does not apply ("—").
#[derive(Debug, Default, Clone)]
pub struct Stats {
    /// Jobs the scenario inserted.
    pub jobs: i64,
    /// Jobs whose update reached the API (from the emulator's PATCH history).
    pub applied: Option<i64>,
    /// Jobs neither applied, superseded by a newer applied job, nor dead-lettered.
    pub lost: i64,
    /// PATCHes that wrote a value older than one already applied to the participant.
    pub stale: Option<i64>,
    /// PATCHes that carried an update already applied.
    pub duplicates: Option<i64>,
    /// `pdq.dead_letters` rows of the scenario's jobs, by reason.
    pub dead: BTreeMap<String, i64>,
    /// Jobs still queued when the scenario gave up waiting (measured).
    pub stuck: Option<i64>,
    /// From the first insert to a durably empty queue (worker start excluded).
    pub drain: Option<Duration>,
}

/// One scenario's result.
pub struct Row {
    pub scenario: &'static str,
    /// `Err(reason)` for a failed run: its row says so instead of keeping an old result.
    pub result: Result<(), String>,
    /// What a passing run was allowed that the guarantee does not allow elsewhere, shown
    /// beside "ok" (e.g. "loss allowed: async").
    pub caveat: Option<String>,
    /// `None` when the run failed before it measured anything.
    pub stats: Option<Stats>,
    pub notes: String,
}

impl Row {
    /// The row of a run that failed before it could measure.
    pub fn failed(scenario: &'static str, reason: String) -> Row {
        Row {
            scenario,
            result: Err(reason),
            caveat: None,
            stats: None,
            notes: String::new(),
        }
    }

    fn markdown(&self) -> String {
        let mode = if super::long_mode() { "long" } else { "short" };
        let result = match &self.result {
            Ok(()) => match &self.caveat {
                None => "ok".to_owned(),
                Some(caveat) => format!("ok ({})", cell(caveat)),
            },
            Err(reason) => format!("**FAILED**: {}", cell(reason)),
        };
        let dash = || "—".to_owned();
        let number = |n: Option<i64>| n.map_or_else(dash, |n| n.to_string());
        let columns = match &self.stats {
            None => vec![dash(); 9],
            Some(stats) => vec![
                stats.jobs.to_string(),
                number(stats.applied),
                stats.lost.to_string(),
                number(stats.stale),
                number(stats.duplicates),
                dead_cell(&stats.dead),
                number(stats.stuck),
                stats
                    .drain
                    .map_or_else(dash, |d| format!("{:.1} s", d.as_secs_f64())),
                cell(&self.notes),
            ],
        };
        format!(
            "| {} | {mode}, {} | {result} | {} |",
            self.scenario,
            chrono::Utc::now().date_naive(),
            columns.join(" | ")
        )
    }
}

fn dead_cell(dead: &BTreeMap<String, i64>) -> String {
    if dead.is_empty() {
        return "none".to_owned();
    }
    dead.iter()
        .map(|(reason, n)| format!("`{reason}` {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Text that fits in one table cell.
fn cell(text: &str) -> String {
    let flat: String = text
        .chars()
        .map(|c| if c == '\n' || c == '|' { ' ' } else { c })
        .collect();
    match flat.char_indices().nth(300) {
        Some((end, _)) => format!("{}…", &flat[..end]),
        None => flat,
    }
}

/// Prints the row, and writes it into `docs/reliability.md` when `PDQ_CHAOS_TABLE=1`.
pub fn record(row: &Row) {
    let line = row.markdown();
    println!("{line}");
    let write = ["PDQ_CHAOS_TABLE", "PDQ_CHAOS_README"]
        .iter()
        .any(|name| std::env::var(name).is_ok_and(|v| v == "1"));
    if write {
        let _turn = TABLE
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let path = table_path();
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let updated = with_row(&text, row.scenario, &line);
        std::fs::write(&path, updated).unwrap_or_else(|e| panic!("write {path}: {e}"));
    }
}

/// Where the table lives.
fn table_path() -> String {
    format!("{}/{TABLE_FILE}", env!("CARGO_MANIFEST_DIR"))
}

thread_local! {
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Remembers each thread's last panic message (for the row of a run that failed early).
fn remember_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let payload = info.payload();
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "panic".to_owned());
            LAST_PANIC.with(|last| *last.borrow_mut() = Some(message));
            default(info);
        }));
    });
}

/// A running scenario: if it panics before it records its row, its row is written as failed.
pub struct Scenario {
    pub name: &'static str,
    recorded: Cell<bool>,
}

impl Scenario {
    /// Starts the scenario `name`.
    pub fn start(name: &'static str) -> Scenario {
        remember_panics();
        Scenario {
            name,
            recorded: Cell::new(false),
        }
    }

    /// Records its row.
    pub fn record(&self, row: &Row) {
        record(row);
        self.recorded.set(true);
    }
}

impl Drop for Scenario {
    fn drop(&mut self) {
        if std::thread::panicking() && !self.recorded.get() {
            let reason = LAST_PANIC
                .with(|last| last.borrow_mut().take())
                .unwrap_or_else(|| "panicked".to_owned());
            record(&Row::failed(self.name, reason));
        }
    }
}

/// The number of `|` in a row of the current table.
fn pipes() -> usize {
    HEADER
        .lines()
        .next()
        .unwrap_or_default()
        .matches('|')
        .count()
}

/// The document with `line` as the row of `scenario` inside the markers (replaced, or appended).
/// Rows of an older table layout (another column count) are dropped: their columns would no
/// longer mean what the header says.
fn with_row(readme: &str, scenario: &str, line: &str) -> String {
    let (Some(begin), Some(end)) = (readme.find(BEGIN), readme.find(END)) else {
        panic!("{TABLE_FILE} needs the {BEGIN} and {END} markers around the reliability table");
    };
    let inside = &readme[begin + BEGIN.len()..end];
    let prefix = format!("| {scenario} |");
    let mut rows: Vec<String> = inside
        .lines()
        .filter(|l| l.starts_with("| ") && !HEADER.contains(l))
        .filter(|l| !l.starts_with("| scenario |") && l.matches('|').count() == pipes())
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

#[cfg(test)]
fn sample(name: &str, text: &str) -> String {
    format!("| {name} | {text} |{}", " x |".repeat(pipes() - 3))
}

#[test]
fn a_row_replaces_its_scenario_and_keeps_the_others() {
    let (a_old, b) = (sample("a", "old"), sample("b", "kept"));
    let old_layout = "| a | r | 1 | 0 | 0 | none | 1 s | notes |";
    let old_header = "| scenario | run | jobs | lost | duplicates applied | dead-lettered (by reason) | time to drain | notes |";
    let readme = format!(
        "intro\n{BEGIN}\n{HEADER}\n{old_header}\n{a_old}\n{old_layout}\n{b}\n{END}\nafter\n"
    );
    let a_new = sample("a", "new");
    let replaced = with_row(&readme, "a", &a_new);
    assert_eq!(
        replaced,
        format!("intro\n{BEGIN}\n{HEADER}\n{a_new}\n{b}\n{END}\nafter\n"),
        "replaced in place; rows and header of the old layout gone"
    );
    let c = sample("c", "added");
    let appended = with_row(&replaced, "c", &c);
    assert!(appended.contains(&format!("{b}\n{c}\n<!--")));
    assert_eq!(appended.matches(HEADER).count(), 1);
    let known = sample(ORDER[0], "x");
    let first = with_row(&appended, ORDER[0], &known);
    assert!(
        first.contains(&format!("{HEADER}\n{known}\n{a_new}")),
        "known scenarios come first, in the brief's order"
    );
}

#[test]
fn the_table_lives_in_docs_reliability_and_rewrites_in_place() {
    let text = std::fs::read_to_string(table_path()).unwrap();
    assert_eq!(
        text.matches(BEGIN).count(),
        1,
        "{TABLE_FILE}: one begin marker"
    );
    assert_eq!(text.matches(END).count(), 1, "{TABLE_FILE}: one end marker");
    assert!(
        text.contains(&format!("{BEGIN}\n{HEADER}\n")),
        "the header follows the marker"
    );
    // Writing a row of every scenario already in the table changes nothing else.
    let rows: Vec<&str> = text[text.find(BEGIN).unwrap()..text.find(END).unwrap()]
        .lines()
        .filter(|l| l.starts_with("| ") && !HEADER.contains(l))
        .collect();
    assert!(!rows.is_empty(), "the table has rows");
    let mut again = text.clone();
    for row in &rows {
        let scenario = row[2..].split(" | ").next().unwrap();
        again = with_row(&again, scenario, row);
    }
    assert_eq!(
        again, text,
        "rewriting the same rows leaves {TABLE_FILE} as it is"
    );
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    assert!(
        !readme.contains(BEGIN),
        "the table is no longer in the README"
    );
}

#[test]
fn a_failed_run_says_so_in_its_row() {
    let row = Row::failed("x", "the queue drains | after\nthe chaos".to_owned());
    let line = row.markdown();
    assert!(
        line.contains("| **FAILED**: the queue drains   after the chaos |"),
        "{line}"
    );
    assert_eq!(
        line.matches(" | ").count(),
        HEADER.lines().next().unwrap().matches(" | ").count()
    );
    let ok = Row {
        scenario: "y",
        result: Ok(()),
        caveat: None,
        stats: Some(Stats {
            jobs: 3,
            applied: Some(3),
            drain: Some(Duration::from_millis(1_500)),
            ..Stats::default()
        }),
        notes: "n".to_owned(),
    };
    let line = ok.markdown();
    assert!(
        line.contains("| ok | 3 | 3 | 0 | — | — | none | — | 1.5 s | n |"),
        "{line}"
    );
    let allowed = Row {
        caveat: Some("loss allowed: async".to_owned()),
        ..ok
    };
    let line = allowed.markdown();
    assert!(line.contains("| ok (loss allowed: async) | 3 |"), "{line}");
}
