//! The worker's health, in two answers: liveness (`/livez`: the process works, its main loop
//! ticks) and readiness (`/readyz`, and `/healthz` kept for compatibility: it can do its job;
//! the conditions that keep it from that, and live jobs waiting longer than the threshold).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

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

/// The word readiness prints before the reason while live jobs are behind.
pub const LIVE_BEHIND: &str = "live behind";

/// Something an operator should know that does not keep the worker from its job: `/healthz`
/// stays 200 and adds it under `ok`, `pdq status` shows it with the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Note {
    /// The wake-up channel never fires: new jobs wait for the poll.
    Wakeups,
}

/// Without a tick of the main loop for this long, `/livez` answers 503.
pub const DEFAULT_LIVENESS_BOUND: Duration = Duration::from_secs(120);

/// Whether the process works (liveness) and whether it can do its job (readiness); `/livez`
/// and `/readyz` answer 503 with the reasons when not.
#[derive(Debug)]
pub struct Health {
    unhealthy: AtomicBool,
    paused: AtomicBool,
    conditions: Mutex<BTreeMap<Condition, String>>,
    notes: Mutex<BTreeMap<Note, String>>,
    /// Why live jobs count as behind (the oldest due one waited past the threshold).
    live_behind: Mutex<Option<String>>,
    liveness: Mutex<Liveness>,
}

#[derive(Debug)]
struct Liveness {
    started: Instant,
    last_tick: Option<Instant>,
    bound: Duration,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            unhealthy: AtomicBool::new(false),
            paused: AtomicBool::new(false),
            conditions: Mutex::default(),
            notes: Mutex::default(),
            live_behind: Mutex::new(None),
            liveness: Mutex::new(Liveness {
                started: Instant::now(),
                last_tick: None,
                bound: DEFAULT_LIVENESS_BOUND,
            }),
        }
    }
}

/// One health answer: 200 when `ok`, else 503; `body` says why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// True: 200.
    pub ok: bool,
    /// The text served, one reason a line.
    pub body: String,
}

impl Health {
    /// Notes that the worker's main loop went round once (what `/livez` watches).
    pub fn tick(&self) {
        self.liveness.lock().unwrap().last_tick = Some(Instant::now());
    }

    /// Sets how long the main loop may go without a tick before `/livez` answers 503.
    pub fn set_liveness_bound(&self, bound: Duration) {
        self.liveness.lock().unwrap().bound = bound;
    }

    /// The liveness answer at `now`: 200 while the main loop ticked within the bound (or the
    /// process started within it and has not ticked yet), 503 once it has not, or when a task
    /// stopped and the process is exiting.
    pub fn liveness_at(&self, now: Instant) -> Answer {
        if let Some(why) = self.conditions.lock().unwrap().get(&Condition::Task) {
            return Answer {
                ok: false,
                body: format!("{}: {why}\n", Condition::Task.as_str()),
            };
        }
        let liveness = self.liveness.lock().unwrap();
        let bound = liveness.bound;
        let secs = |d: Duration| d.as_secs_f64().round();
        match liveness.last_tick {
            Some(at) if now.saturating_duration_since(at) <= bound => Answer {
                ok: true,
                body: "alive\n".to_owned(),
            },
            Some(at) => Answer {
                ok: false,
                body: format!(
                    "main loop stuck: its last tick was {} s ago (bound {} s)\n",
                    secs(now.saturating_duration_since(at)),
                    secs(bound)
                ),
            },
            None if now.saturating_duration_since(liveness.started) <= bound => Answer {
                ok: true,
                body: "starting\n".to_owned(),
            },
            None => Answer {
                ok: false,
                body: format!(
                    "main loop not running: no tick in the {} s since the start\n",
                    secs(now.saturating_duration_since(liveness.started))
                ),
            },
        }
    }

    /// The liveness answer now.
    pub fn liveness(&self) -> Answer {
        self.liveness_at(Instant::now())
    }

    /// The readiness answer (`/readyz`, `/healthz`): 200 `ok` (with the notes) unless a
    /// condition is in force or live jobs are behind; then 503 with one reason a line.
    pub fn readiness(&self) -> Answer {
        let notes = self.notes();
        let notes = match notes.is_empty() {
            true => notes,
            false => format!("{notes}\n"),
        };
        let mut reasons = self.reason();
        if let Some(behind) = self.live_behind.lock().unwrap().as_deref() {
            if !reasons.is_empty() {
                reasons.push('\n');
            }
            reasons.push_str(&format!("{LIVE_BEHIND}: {behind}"));
        }
        match reasons.is_empty() {
            true => Answer {
                ok: true,
                body: format!("ok\n{notes}"),
            },
            false => Answer {
                ok: false,
                body: format!("{reasons}\n{notes}"),
            },
        }
    }

    /// Marks live jobs behind (`Some(why)`) or not (`None`).
    pub fn set_live_behind(&self, why: Option<String>) {
        *self.live_behind.lock().unwrap() = why;
    }

    /// True while live jobs are behind.
    pub fn is_live_behind(&self) -> bool {
        self.live_behind.lock().unwrap().is_some()
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn liveness_follows_the_main_loop_and_ignores_conditions_other_than_a_stopped_task() {
        let health = Health::default();
        health.set_liveness_bound(Duration::from_secs(10));
        let start = Instant::now();
        assert!(health.liveness_at(start).ok, "starting");
        assert!(
            !health.liveness_at(start + Duration::from_secs(11)).ok,
            "never ticked"
        );
        health.tick();
        let ticked = Instant::now();
        health.set(Condition::Outage, "the API is down");
        health.set(Condition::Configuration, "bad secret");
        let answer = health.liveness_at(ticked + Duration::from_secs(9));
        assert_eq!(answer.body, "alive\n");
        assert!(answer.ok, "an outage or a pause is not a dead process");
        let stuck = health.liveness_at(ticked + Duration::from_secs(30));
        assert!(!stuck.ok);
        assert!(stuck.body.starts_with("main loop stuck"), "{}", stuck.body);
        health.set(Condition::Task, "the claimer panicked");
        let exiting = health.liveness_at(ticked);
        assert!(!exiting.ok);
        assert!(
            exiting.body.contains("claimer panicked"),
            "{}",
            exiting.body
        );
    }

    #[test]
    fn readiness_names_every_condition_and_live_behind() {
        let health = Health::default();
        assert_eq!(
            health.readiness(),
            Answer {
                ok: true,
                body: "ok\n".into()
            }
        );
        health.set_live_behind(Some("the oldest due live job waited 90 s".into()));
        let behind = health.readiness();
        assert!(!behind.ok);
        assert_eq!(
            behind.body,
            "live behind: the oldest due live job waited 90 s\n"
        );
        health.set(Condition::Outage, "the API is down");
        let both = health.readiness();
        assert_eq!(
            both.body,
            "paused (outage): the API is down\nlive behind: the oldest due live job waited 90 s\n"
        );
        health.set_live_behind(None);
        health.clear(Condition::Outage);
        assert!(health.readiness().ok);
    }
}
