//! The exit codes every command uses, and how an error maps to one.

use std::fmt;
use std::process::ExitCode;

/// An exit status with a documented meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Everything worked (doctor: every check passed).
    Ok,
    /// An unexpected error; the message says what.
    Failure,
    /// A flag, variable, region or credential is wrong (also clap's usage errors).
    Usage,
    /// Refused: the row breaks a rule of pdq.jobs, or a permission or grant is missing.
    Refused,
    /// Genesys Cloud (or its DNS) cannot be reached.
    Unreachable,
    /// Postgres cannot be reached, refused the login, or is a read-only standby.
    Database,
    /// The database has no pdq schema, or one of another version than this binary.
    Schema,
    /// The named job, dead letter or conversation does not exist.
    NotFound,
    /// Workers ran on this database but none has a fresh heartbeat (doctor).
    NoWorkers,
}

impl Exit {
    /// Every exit code, in order.
    pub const ALL: [Exit; 9] = [
        Exit::Ok,
        Exit::Failure,
        Exit::Usage,
        Exit::Refused,
        Exit::Unreachable,
        Exit::Database,
        Exit::Schema,
        Exit::NotFound,
        Exit::NoWorkers,
    ];

    /// The number the process exits with.
    pub fn code(self) -> u8 {
        match self {
            Exit::Ok => 0,
            Exit::Failure => 1,
            Exit::Usage => 2,
            Exit::Refused => 3,
            Exit::Unreachable => 4,
            Exit::Database => 5,
            Exit::Schema => 6,
            Exit::NotFound => 7,
            Exit::NoWorkers => 8,
        }
    }

    /// One line for the table in `--help` and docs/operations.md.
    pub fn meaning(self) -> &'static str {
        match self {
            Exit::Ok => "success (doctor: every check passed)",
            Exit::Failure => "an unexpected error; the message says what",
            Exit::Usage => {
                "usage or configuration: a flag, variable, region or credential is wrong"
            }
            Exit::Refused => "refused: a rule of pdq.jobs, or a missing permission or grant",
            Exit::Unreachable => "Genesys Cloud (or its DNS) cannot be reached",
            Exit::Database => {
                "Postgres cannot be reached, refused the login, or is a read-only standby"
            }
            Exit::Schema => "the database has no pdq schema or another version: run pdq migrate",
            Exit::NotFound => "the named job, dead letter or conversation does not exist",
            Exit::NoWorkers => {
                "workers ran on this database but none has a fresh heartbeat (doctor)"
            }
        }
    }

    /// The exit status.
    pub fn status(self) -> ExitCode {
        ExitCode::from(self.code())
    }

    /// The exit code for an error a command returned.
    pub fn of(error: &anyhow::Error) -> Exit {
        for cause in error.chain() {
            if let Some(failed) = cause.downcast_ref::<Failed>() {
                return failed.exit;
            }
            if let Some(db) = cause.downcast_ref::<pdq::db::Error>() {
                return match db {
                    pdq::db::Error::InvalidUrl(_) => Exit::Usage,
                    pdq::db::Error::Connect { .. } | pdq::db::Error::Standby => Exit::Database,
                    pdq::db::Error::NotMigrated
                    | pdq::db::Error::SchemaOlder { .. }
                    | pdq::db::Error::SchemaNewer { .. } => Exit::Schema,
                    pdq::db::Error::Database(error)
                    | pdq::db::Error::Migrate(sqlx::migrate::MigrateError::Execute(error))
                    | pdq::db::Error::Migrate(sqlx::migrate::MigrateError::ExecuteMigration(
                        error,
                        _,
                    )) => Exit::of_sqlx(error),
                    _ => Exit::Failure,
                };
            }
            if let Some(queue) = cause.downcast_ref::<pdq::queue::Error>() {
                return match queue {
                    pdq::queue::Error::Refused { .. } => Exit::Refused,
                    pdq::queue::Error::Database(error) => Exit::of_sqlx(error),
                    _ => Exit::Failure,
                };
            }
            if let Some(error) = cause.downcast_ref::<sqlx::Error>() {
                return Exit::of_sqlx(error);
            }
            if let Some(pdq::genesys::Error::Settings(_)) = cause.downcast_ref() {
                return Exit::Usage;
            }
        }
        Exit::Failure
    }
}

impl Exit {
    /// A missing pdq table or schema means the database was never migrated; a missing
    /// privilege is a refusal; a lost connection is the database's.
    fn of_sqlx(error: &sqlx::Error) -> Exit {
        match error {
            sqlx::Error::Database(db) => match db.code().as_deref() {
                Some("42P01" | "3F000" | "42883") => Exit::Schema,
                Some("42501") => Exit::Refused,
                Some(code) if code.starts_with("08") || code.starts_with("28") => Exit::Database,
                _ => Exit::Failure,
            },
            sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::Tls(_) => Exit::Database,
            _ => Exit::Failure,
        }
    }
}

/// The table printed after `--help` and kept in docs/operations.md.
pub fn table() -> String {
    let mut text = String::from("Exit codes:\n");
    for exit in Exit::ALL {
        text.push_str(&format!("  {}  {}\n", exit.code(), exit.meaning()));
    }
    text
}

/// An error that names its exit code.
#[derive(Debug)]
pub struct Failed {
    /// The exit code.
    pub exit: Exit,
    message: String,
}

impl Failed {
    /// A failure with `exit` and a message.
    pub fn error(exit: Exit, message: impl Into<String>) -> anyhow::Error {
        anyhow::Error::new(Failed {
            exit,
            message: message.into(),
        })
    }
}

impl fmt::Display for Failed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failed {}

/// The error's chain as one line, each cause said once: a cause whose text the line already
/// holds (a wrapper that repeats its source) is left out.
pub fn describe(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if line.is_empty() || text.contains(&line) {
            line = text;
        } else {
            line = format!("{line}: {text}");
        }
    }
    line
}

/// `45s`, `3m12s`, `2h05m`, `3d04h`.
pub fn human_age(seconds: f64) -> String {
    let secs = seconds.max(0.0) as u64;
    match secs {
        0..=59 => format!("{secs}s"),
        60..=3_599 => format!("{}m{:02}s", secs / 60, secs % 60),
        3_600..=86_399 => format!("{}h{:02}m", secs / 3_600, (secs % 3_600) / 60),
        _ => format!("{}d{:02}h", secs / 86_400, (secs % 86_400) / 3_600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct_and_ordered() {
        for (i, exit) in Exit::ALL.iter().enumerate() {
            assert_eq!(usize::from(exit.code()), i);
        }
    }

    #[test]
    fn a_repeated_cause_is_said_once() {
        let inner = anyhow::anyhow!("connection refused");
        let outer = inner.context("cannot connect to Postgres: connection refused");
        assert_eq!(
            describe(&outer),
            "cannot connect to Postgres: connection refused"
        );
        let chained = anyhow::anyhow!("timed out").context("reading the queue");
        assert_eq!(describe(&chained), "reading the queue: timed out");
    }
}
