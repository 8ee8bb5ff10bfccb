//! The command line: clap types only.

use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand, ValueEnum};
use uuid::Uuid;

/// The version line: the crate version, the commit and the build date (see build.rs).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("PDQ_COMMIT"),
    ", built ",
    env!("PDQ_BUILD_DATE"),
    ")"
);

/// pdq: the participant-data queue for Genesys Cloud.
#[derive(Debug, Parser)]
#[command(name = "pdq", version = VERSION, about, propagate_version = true)]
pub struct Cli {
    /// Postgres connection URL.
    #[arg(long, global = true, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Read the Postgres URL from this file instead (systemd credentials, Kubernetes secrets).
    #[arg(
        long,
        global = true,
        env = "DATABASE_URL_FILE",
        value_name = "PATH",
        conflicts_with = "database_url"
    )]
    pub database_url_file: Option<std::path::PathBuf>,
    /// Postgres connections this process opens at most (default: 6 for `run`, 3 for
    /// `console`, 2 for the other commands); idle ones close after 30 s.
    #[arg(long, global = true, env = "PDQ_DB_CONNECTIONS", value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub db_connections: Option<u32>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// Log format.
    #[arg(
        long,
        global = true,
        env = "PDQ_LOG_FORMAT",
        value_enum,
        default_value = "human"
    )]
    pub log_format: LogFormat,
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// How logs are written (filter them with `RUST_LOG`).
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    /// Readable lines.
    Human,
    /// One JSON object per line.
    Json,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Everything end to end: migrate a fresh database, start the emulator, enqueue, work, report.
    Demo(crate::commands::demo::DemoArgs),
    /// Create or upgrade pdq's schema (`pdq`) in the database.
    Migrate(crate::commands::migrate::MigrateArgs),
    /// Enqueue one participant-data update (the shell-friendly INSERT).
    Enqueue(EnqueueArgs),
    /// Is it working, and if not, why: queue per priority, throughput and ETA, the budget and
    /// its pauses, the workers and blocked participants.
    Status(StatusArgs),
    /// Inspect, requeue or purge dead letters.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Find jobs wherever they are (queued, running, applied, dead-lettered, cancelled), show
    /// one's whole story, or cancel pending jobs.
    #[command(subcommand)]
    Jobs(crate::commands::jobs::JobsCommand),
    /// The shared API budget: lift a rate-limit or outage pause by hand.
    #[command(subcommand)]
    Budget(BudgetCommand),
    /// Check region, hosts, credentials, organization and (optionally) access to a conversation.
    Doctor(Box<crate::commands::doctor::DoctorArgs>),
    /// Run the worker pool (serves /metrics, /livez, /readyz and /healthz).
    Run(Box<crate::commands::run::RunArgs>),
    /// Serve the Genesys Cloud emulator (login and API on one port).
    Emulator(Box<crate::commands::emulator::EmulatorArgs>),
    /// Ask a worker's readiness (/healthz) or, with --live, its liveness (/livez): exit 0 on
    /// 200, else 1; for container HEALTHCHECKs without curl.
    Healthcheck(crate::commands::healthcheck::HealthcheckArgs),
    /// Print (or apply) the SQL that creates login roles with only pdq_worker, pdq_operator or
    /// pdq_producer rights.
    Roles(crate::commands::roles::RolesArgs),
    /// Print a shell completion script (bash, zsh, fish).
    Completions(crate::commands::completions::CompletionsArgs),
    /// Print the manual page (roff: `pdq man | man -l -`).
    Man(crate::commands::man::ManArgs),
    /// Serve the operator web console (read-only unless --allow-writes).
    Console(crate::commands::console::ConsoleArgs),
}

/// How `pdq status` shows the queue.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Redraw every --interval seconds until interrupted (with --json: one object per line).
    #[arg(long)]
    pub watch: bool,
    /// Seconds between two redraws with --watch.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub interval: u64,
    /// A due live job older than this many seconds makes live "behind" (as `pdq run`'s flag).
    #[arg(long, env = "PDQ_LIVE_BEHIND_SECS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub live_behind_secs: u64,
}

/// A job, with flags named after the columns of `pdq.jobs`.
#[derive(Debug, Args)]
pub struct EnqueueArgs {
    /// The conversation id (or give --external-tag).
    #[arg(long)]
    pub conversation_id: Option<Uuid>,
    /// The conversation's external tag (or give --conversation-id); at most 256 characters.
    #[arg(long)]
    pub external_tag: Option<String>,
    /// The participant id.
    #[arg(long)]
    pub participant_id: Option<Uuid>,
    /// Pick the live participant with this purpose (default: customer); at most 256 characters.
    #[arg(long)]
    pub participant_purpose: Option<String>,
    /// Pick the participant with this external contact id; at most 256 characters.
    #[arg(long)]
    pub participant_external_contact_id: Option<String>,
    /// Pick the participant with this name; at most 256 characters.
    #[arg(long)]
    pub participant_name: Option<String>,
    /// The attributes as a JSON object of strings, e.g. '{"tier":"gold"}'; keys at most 256
    /// characters.
    #[arg(long)]
    pub attributes: Option<String>,
    /// One attribute as key=value (repeatable; merged over --attributes).
    #[arg(long = "attr", value_name = "KEY=VALUE")]
    pub attr: Vec<String>,
    /// live (default) or backfill.
    #[arg(long, default_value = "live")]
    pub priority: pdq::queue::Priority,
    /// Not before this time (RFC 3339).
    #[arg(long)]
    pub run_at: Option<DateTime<Utc>>,
    /// Dead-letter as expired after this time (RFC 3339).
    #[arg(long)]
    pub expires_at: Option<DateTime<Utc>>,
    /// A repeated enqueue with the same key is a no-op; at most 200 characters.
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// Attempts before retries_exhausted.
    #[arg(long)]
    pub max_attempts: Option<i32>,
}

/// Dead-letter commands.
#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// List dead letters, newest first.
    List(DlqFilterArgs),
    /// Show one dead letter with the API's error body.
    Show {
        /// The job id.
        id: i64,
    },
    /// Put dead letters back in the queue (history is kept). Keys a newer job of the same
    /// participant already wrote are not sent again with the older value, unless --force.
    Requeue {
        /// Which dead letters.
        #[command(flatten)]
        filter: DlqFilterArgs,
        /// Send every key, even over a newer value written since (the requeued job counts as
        /// just inserted).
        #[arg(long)]
        force: bool,
    },
    /// Delete dead letters for good.
    Purge(DlqFilterArgs),
}

/// Shared-budget commands.
#[derive(Debug, Subcommand)]
pub enum BudgetCommand {
    /// Lift the pause of a shared budget now (every paused budget without --name); running
    /// workers notice within their maintenance interval.
    Resume {
        /// Only this budget (named after the OAuth client id; default: every paused one).
        #[arg(long)]
        name: Option<String>,
    },
}

/// Which dead letters a command means.
#[derive(Debug, Args)]
pub struct DlqFilterArgs {
    /// These job ids.
    pub ids: Vec<i64>,
    /// Only this reason.
    #[arg(long, value_parser = dead_reasons())]
    pub reason: Option<pdq::queue::DeadReason>,
    /// Dead-lettered at or after this time (RFC 3339).
    #[arg(long)]
    pub since: Option<DateTime<Utc>>,
    /// Dead-lettered before this time (RFC 3339).
    #[arg(long)]
    pub until: Option<DateTime<Utc>>,
    /// Only jobs for this conversation.
    #[arg(long)]
    pub conversation_id: Option<Uuid>,
    /// Every dead letter (requeue and purge need ids, a filter or this).
    #[arg(long)]
    pub all: bool,
    /// Include dead letters already requeued (list, purge).
    #[arg(long)]
    pub include_requeued: bool,
    /// At most this many rows, the newest first (list: 50 when not given; requeue and purge:
    /// every match when not given).
    #[arg(long, value_parser = clap::value_parser!(i64).range(1..))]
    pub limit: Option<i64>,
}

/// Accepts the known dead-letter reasons only, and lists them in `--help`.
fn dead_reasons() -> impl clap::builder::TypedValueParser<Value = pdq::queue::DeadReason> {
    use clap::builder::TypedValueParser;
    let names = pdq::queue::DeadReason::ALL.map(|reason| reason.as_str());
    clap::builder::PossibleValuesParser::new(names)
        .map(|name| name.parse().expect("a listed reason"))
}
