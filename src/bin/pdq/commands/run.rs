//! `pdq run`: the worker pool, with `/metrics` and the health answers (`/livez`, `/readyz`,
//! and `/healthz` as readiness).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use pdq::genesys::GenesysClient;
use pdq::queue;
use pdq::worker::{self, Api, Backoff, Budget, Wakeup, Worker, WorkerConfig};
use tokio_util::sync::CancellationToken;

use super::Database;
use crate::exit::{Exit, Failed};
use crate::genesys_args::GenesysArgs;

/// Worker settings; every flag also reads a `PDQ_*` variable.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The Genesys Cloud connection.
    #[command(flatten)]
    pub genesys: GenesysArgs,
    /// Concurrent API calls.
    #[arg(long, env = "PDQ_EXECUTORS", default_value_t = worker::DEFAULT_EXECUTORS)]
    pub executors: usize,
    /// API requests per minute for all pdq processes on this database (0 = unlimited).
    #[arg(long, env = "PDQ_RATE_LIMIT", default_value_t = worker::DEFAULT_RATE_LIMIT)]
    pub rate_limit: u32,
    /// Share of the budget backfill may use while live updates wait (0.0–1.0).
    #[arg(long, env = "PDQ_BACKFILL_SHARE", default_value_t = worker::DEFAULT_BACKFILL_SHARE,
          value_parser = share)]
    pub backfill_share: f64,
    /// Pace this process alone instead of sharing the budget through Postgres.
    #[arg(long, env = "PDQ_LOCAL_BUDGET")]
    pub local_budget: bool,
    /// Units claimed per statement.
    #[arg(long, env = "PDQ_CLAIM_BATCH", default_value_t = queue::lease::DEFAULT_CLAIM_BATCH)]
    pub claim_batch: u32,
    /// Jobs of one participant coalesced into one PATCH at most.
    #[arg(long, env = "PDQ_MAX_COALESCE", default_value_t = queue::lease::DEFAULT_MAX_COALESCE)]
    pub max_coalesce: u32,
    /// Lease on claimed units, in seconds.
    #[arg(long, env = "PDQ_LEASE_SECS", default_value_t = queue::lease::DEFAULT_LEASE.as_secs())]
    pub lease_secs: u64,
    /// Bound on one claim from Postgres, in seconds: a claim on a silent connection is
    /// abandoned with the connection; three bounds without a claim turn /healthz red.
    #[arg(long, env = "PDQ_CLAIM_TIMEOUT_SECS", default_value_t = worker::DEFAULT_CLAIM_TIMEOUT.as_secs())]
    pub claim_timeout_secs: u64,
    /// Server-side statement_timeout of the worker's sessions, in seconds; any other call
    /// to Postgres not answered within this plus 5 s is abandoned with its connection.
    #[arg(long, env = "PDQ_STATEMENT_TIMEOUT_SECS", default_value_t = worker::DEFAULT_STATEMENT_TIMEOUT.as_secs())]
    pub statement_timeout_secs: u64,
    /// A due live job older than this many seconds makes live "behind": readiness (/readyz,
    /// /healthz) answers 503 naming it, `pdq_live_behind` is 1, `pdq status` says so.
    #[arg(long, env = "PDQ_LIVE_BEHIND_SECS", default_value_t = worker::DEFAULT_LIVE_BEHIND.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub live_behind_secs: u64,
    /// How new jobs wake the worker: `listen` (LISTEN pdq_jobs, with a poll as safety net)
    /// or `poll` (the poll only: through a transaction pooler without a direct connection).
    #[arg(long, env = "PDQ_WAKEUP", value_enum, default_value_t = WakeupArg::Listen)]
    pub wakeup: WakeupArg,
    /// How often the worker looks for due jobs besides wake-ups, in milliseconds [default:
    /// 1000 with --wakeup listen, 100 with --wakeup poll].
    #[arg(long, env = "PDQ_POLL_INTERVAL_MS")]
    pub poll_interval_ms: Option<u64>,
    /// A direct connection to Postgres for LISTEN, when DATABASE_URL goes through a
    /// transaction pooler (where notifications never arrive); same TLS rules.
    #[arg(long, env = "PDQ_LISTEN_URL", hide_env_values = true)]
    pub listen_url: Option<String>,
    /// How long an external tag may stay unfindable before conversation_not_found, in seconds.
    #[arg(long, env = "PDQ_LOOKUP_WINDOW_SECS", default_value_t = worker::DEFAULT_LOOKUP_WINDOW.as_secs())]
    pub lookup_window_secs: u64,
    /// Grace period for in-flight units at shutdown, in seconds.
    #[arg(long, env = "PDQ_SHUTDOWN_GRACE_SECS", default_value_t = worker::DEFAULT_SHUTDOWN_GRACE.as_secs())]
    pub shutdown_grace_secs: u64,
    /// Days applied jobs stay in pdq.finished_jobs.
    #[arg(long, env = "PDQ_RETENTION_DAYS", default_value_t = days(worker::DEFAULT_RETENTION))]
    pub retention_days: u64,
    /// Days dead letters are kept before they are pruned (they hold customer data).
    #[arg(long, env = "PDQ_DEAD_LETTER_RETENTION_DAYS", default_value_t = days(queue::DEFAULT_DEAD_LETTER_RETENTION))]
    pub dead_letter_retention_days: u64,
    /// Days an idempotency key is remembered (at least --retention-days).
    #[arg(long, env = "PDQ_IDEMPOTENCY_HORIZON_DAYS", default_value_t = days(queue::DEFAULT_IDEMPOTENCY_KEY_HORIZON))]
    pub idempotency_horizon_days: u64,
    /// Where /metrics and the health answers listen: /livez (liveness), /readyz (readiness)
    /// and /healthz (readiness, kept for compatibility).
    #[arg(long, env = "PDQ_METRICS_ADDR", default_value = "127.0.0.1:9187")]
    pub metrics_addr: SocketAddr,
    /// Apply pending migrations before starting.
    #[arg(long, env = "PDQ_MIGRATE")]
    pub migrate: bool,
    /// Also serve the read-only operator console here (off loopback: needs PDQ_CONSOLE_TOKEN).
    #[arg(long, env = "PDQ_CONSOLE_ADDR")]
    pub console: Option<SocketAddr>,
}

/// `--wakeup`'s values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WakeupArg {
    /// LISTEN pdq_jobs, with a poll as safety net.
    Listen,
    /// The poll only.
    Poll,
}

/// A share of the budget: a number from 0.0 to 1.0; anything else is refused with the range.
fn share(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(value) if (0.0..=1.0).contains(&value) => Ok(value),
        _ => Err(format!(
            "{text} is not a share of the budget: give a number from 0.0 to 1.0"
        )),
    }
}

/// Whole days in a default duration, for the `*_DAYS` flags.
fn days(duration: Duration) -> u64 {
    duration.as_secs() / 86_400
}

impl RunArgs {
    /// The worker configuration these flags describe.
    pub fn config(&self) -> WorkerConfig {
        WorkerConfig {
            executors: self.executors.max(1),
            claim_batch: self.claim_batch.max(1),
            max_coalesce: self.max_coalesce.max(1),
            lease: Duration::from_secs(self.lease_secs.max(5)),
            lookup_window: Duration::from_secs(self.lookup_window_secs),
            claim_timeout: Duration::from_secs(self.claim_timeout_secs.max(1)),
            statement_timeout: Duration::from_secs(self.statement_timeout_secs.max(1)),
            live_behind: Duration::from_secs(self.live_behind_secs),
            wakeup: match self.wakeup {
                WakeupArg::Listen => Wakeup::Listen,
                WakeupArg::Poll => Wakeup::Poll,
            },
            poll_interval: match (self.poll_interval_ms, self.wakeup) {
                (Some(ms), _) => Duration::from_millis(ms.max(10)),
                (None, WakeupArg::Listen) => worker::DEFAULT_POLL_INTERVAL,
                (None, WakeupArg::Poll) => worker::DEFAULT_POLL_ONLY_INTERVAL,
            },
            shutdown_grace: Duration::from_secs(self.shutdown_grace_secs),
            retention: Duration::from_secs(self.retention_days * 86_400),
            dead_letter_retention: Duration::from_secs(self.dead_letter_retention_days * 86_400),
            idempotency_horizon: Duration::from_secs(self.idempotency_horizon_days * 86_400),
            backoff: Backoff::default(),
            budget: Budget {
                per_minute: self.rate_limit,
                backfill_share: self.backfill_share.clamp(0.0, 1.0),
                shared: !self.local_budget,
                name: self.genesys.client_id.clone().unwrap_or_default(),
            },
            ..WorkerConfig::default()
        }
    }
}

/// A failover to an asynchronous standby can lose the last jobs and apply older values over
/// newer ones: say so at start (docs/postgres.md).
async fn warn_about_async_standbys(pool: &sqlx::PgPool) {
    if let Ok(standbys) = pdq::db::async_standbys(pool).await {
        if !standbys.is_empty() {
            let names = standbys.join(", ");
            tracing::warn!(
                standbys = %names,
                "the primary replicates asynchronously to {names}: a failover to one of them can \
                 lose jobs whose INSERT succeeded and send older values over newer ones; use \
                 synchronous replication (synchronous_standby_names) or accept that window"
            );
        }
    }
}

/// Asks for a token before the first job: credentials the login refuses pause the worker at
/// once (the reason with its advice), instead of running until a job arrives. An unreachable
/// or slow login host (no answer within [`CREDENTIAL_CHECK_BOUND`]) is left to the worker's
/// outage handling.
async fn check_credentials(client: &GenesysClient) -> Option<String> {
    match tokio::time::timeout(CREDENTIAL_CHECK_BOUND, client.probe_token()).await {
        Ok(Err(error)) if error.class() == pdq::genesys::Failure::Configuration => {
            Some(error.with_advice())
        }
        Ok(Err(error)) => {
            tracing::warn!(%error, "cannot check the credentials at start: {error}");
            None
        }
        Err(_) => {
            tracing::warn!(
                "cannot check the credentials at start: the login host did not answer within {} s",
                CREDENTIAL_CHECK_BOUND.as_secs()
            );
            None
        }
        Ok(Ok(())) => None,
    }
}

/// How long the start-up credential check waits for the login host.
const CREDENTIAL_CHECK_BOUND: Duration = Duration::from_secs(5);

/// Runs the worker until SIGINT or SIGTERM.
pub async fn run(
    db: &Database,
    args: RunArgs,
    shutdown: CancellationToken,
) -> anyhow::Result<ExitCode> {
    let settings = args.genesys.settings()?;
    let request_timeout = settings.request_timeout;
    let client = GenesysClient::new(settings).context("building the API client")?;
    let options = db.options()?;
    if args.migrate {
        pdq::db::migrate(&options).await?;
    }
    let config = args.config();
    config
        .check_timing(request_timeout)
        .map_err(|problem| Failed::error(Exit::Usage, problem))?;
    if args.listen_url.is_some() && args.wakeup == WakeupArg::Poll {
        return Err(Failed::error(
            Exit::Usage,
            "--listen-url needs --wakeup listen (with --wakeup poll nothing listens)",
        ));
    }
    let pool = pdq::db::connect_bounded(
        options,
        db.connections(pdq::db::DEFAULT_WORKER_CONNECTIONS),
        config.statement_timeout,
    )
    .await?;
    pdq::db::check_primary(&pool).await?;
    pdq::db::check_schema(&pool).await?;
    warn_about_async_standbys(&pool).await;
    let listen_pool = match &args.listen_url {
        Some(url) => {
            let listen = pdq::db::connect(pdq::db::connect_options(url)?, 1).await?;
            pdq::db::check_primary(&listen).await?;
            pdq::db::check_schema(&listen).await?;
            Some(listen)
        }
        None => None,
    };
    if let Some(addr) = args.console {
        super::console::spawn_read_only(db, addr, args.live_behind_secs, shutdown.clone()).await?;
    }
    let paused = check_credentials(&client).await;
    let worker = Worker::new(pool, Api::new(client), config);
    if let Some(listen) = listen_pool {
        worker.listen_through(listen);
    }
    if let Some(reason) = &paused {
        worker.health().fail(reason.clone());
    }
    let listener = tokio::net::TcpListener::bind(args.metrics_addr)
        .await
        .with_context(|| format!("binding {}", args.metrics_addr))?;
    let router = pdq::metrics::router(worker.metrics(), worker.health());
    let server_stop = shutdown.clone();
    tokio::spawn(async move {
        let served =
            axum::serve(listener, router).with_graceful_shutdown(server_stop.cancelled_owned());
        if let Err(error) = served.await {
            tracing::error!(%error, "metrics server stopped");
        }
    });
    if let Some(reason) = &paused {
        tracing::error!(
            reason = "configuration",
            metrics = %args.metrics_addr,
            "pdq worker started paused (configuration): {reason}; no job is claimed, checking \
             again with backoff (/healthz on {} answers 503 until then)",
            args.metrics_addr
        );
    } else {
        tracing::info!(
            metrics = %args.metrics_addr,
            executors = args.executors,
            rate_limit = args.rate_limit,
            version = env!("CARGO_PKG_VERSION"),
            "pdq worker running: {} executors, {} requests per minute, /metrics and /healthz on {}",
            args.executors,
            args.rate_limit,
            args.metrics_addr
        );
    }
    worker.run(shutdown).await?;
    tracing::info!("pdq worker stopped");
    Ok(ExitCode::SUCCESS)
}
