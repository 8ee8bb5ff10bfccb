//! The worker's health: the conditions that keep it from doing its job, as `/healthz` reports
//! them.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// Something that keeps the worker from doing its job; `/healthz` names each one in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Condition {
    /// The setup is wrong (credentials, base URL, a permission every call needs): paused.
    Configuration,
    /// The API or its login host cannot be reached: paused, probing with backoff.
    Outage,
    /// Claiming from Postgres keeps failing.
    Claims,
    /// Applied units cannot be recorded: they are held (and renewed) until they are; while
    /// nothing can be recorded, claiming stops.
    Recording,
    /// No claim has completed for a while although the worker wants work (a silent
    /// connection, a Postgres that does not answer).
    Stalled,
    /// A background task of the worker stopped; the process is exiting.
    Task,
}

impl Condition {
    /// Every condition.
    pub const ALL: [Condition; 6] = [
        Condition::Configuration,
        Condition::Outage,
        Condition::Claims,
        Condition::Recording,
        Condition::Stalled,
        Condition::Task,
    ];

    /// The label value in `/metrics`.
    pub fn label(self) -> &'static str {
        match self {
            Condition::Configuration => "configuration",
            Condition::Outage => "outage",
            Condition::Claims => "claims",
            Condition::Recording => "recording",
            Condition::Stalled => "stalled",
            Condition::Task => "task",
        }
    }

    /// The word `/healthz` prints before the reason.
    pub fn as_str(self) -> &'static str {
        match self {
            Condition::Configuration => "paused (configuration)",
            Condition::Outage => "paused (outage)",
            Condition::Claims => "claims failing",
            Condition::Recording => "recording failing",
            Condition::Stalled => "claims stalled",
            Condition::Task => "task stopped",
        }
    }
}

/// Something an operator should know that does not keep the worker from its job: `/healthz`
/// stays 200 and adds it under `ok`, `pdq status` shows it with the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Note {
    /// The wake-up channel never fires: new jobs wait for the poll.
    Wakeups,
}

/// Whether the worker can do its job; `/healthz` answers 503 with the reasons when it cannot.
#[derive(Debug, Default)]
pub struct Health {
    unhealthy: AtomicBool,
    paused: AtomicBool,
    conditions: Mutex<BTreeMap<Condition, String>>,
    notes: Mutex<BTreeMap<Note, String>>,
}

impl Health {
    /// Pauses the worker on a configuration problem, with a reason.
    pub fn fail(&self, reason: impl Into<String>) {
        self.set(Condition::Configuration, reason);
    }

    /// Clears the configuration pause.
    pub fn recover(&self) {
        self.clear(Condition::Configuration);
    }

    /// Records `condition` with a reason (replacing an earlier reason for it).
    pub fn set(&self, condition: Condition, reason: impl Into<String>) {
        let mut conditions = self.conditions.lock().unwrap();
        conditions.insert(condition, reason.into());
        self.publish(&conditions);
    }

    /// Ends `condition`.
    pub fn clear(&self, condition: Condition) {
        let mut conditions = self.conditions.lock().unwrap();
        if conditions.remove(&condition).is_some() {
            self.publish(&conditions);
        }
    }

    fn publish(&self, conditions: &BTreeMap<Condition, String>) {
        self.unhealthy
            .store(!conditions.is_empty(), Ordering::Release);
        self.paused.store(
            conditions.contains_key(&Condition::Configuration),
            Ordering::Release,
        );
    }

    /// True while any condition is in force (`/healthz` answers 503).
    pub fn is_unhealthy(&self) -> bool {
        self.unhealthy.load(Ordering::Acquire)
    }

    /// True while the worker is paused by a configuration problem (no claims, no calls).
    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::Acquire)
    }

    /// True while `condition` is in force.
    pub fn has(&self, condition: Condition) -> bool {
        self.conditions.lock().unwrap().contains_key(&condition)
    }

    /// Records `note` (replacing an earlier text for it).
    pub fn note(&self, note: Note, text: impl Into<String>) {
        self.notes.lock().unwrap().insert(note, text.into());
    }

    /// Ends `note`.
    pub fn clear_note(&self, note: Note) {
        self.notes.lock().unwrap().remove(&note);
    }

    /// Every note in force, one per line (empty when there is none).
    pub fn notes(&self) -> String {
        let notes = self.notes.lock().unwrap();
        let lines: Vec<String> = notes.values().map(|text| format!("note: {text}")).collect();
        lines.join("\n")
    }

    /// Every condition in force with its reason, one per line.
    pub fn reason(&self) -> String {
        let conditions = self.conditions.lock().unwrap();
        let lines: Vec<String> = conditions
            .iter()
            .map(|(condition, reason)| format!("{}: {reason}", condition.as_str()))
            .collect();
        lines.join("\n")
    }
}
