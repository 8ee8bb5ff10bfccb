//! The operator web console: the queue, the budget and the dead letters in a browser.
//!
//! Server-rendered HTML (maud) with embedded CSS, server-side SVG charts and a few lines of
//! JavaScript for live refresh, so it works offline and needs no build step. It is read-only
//! unless started with writes allowed; off loopback it requires a token; every POST carries a
//! CSRF token; a strict Content-Security-Policy forbids inline script.

mod charts;
mod layout;
mod pages;
mod params;
mod security;
mod snapshot;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::{get, post};
use axum::Router;
use secrecy::SecretString;
use sqlx::postgres::PgConnectOptions;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::queue::console::ChartRange;

/// The environment variable that holds the console's access token.
pub const TOKEN_ENV: &str = "PDQ_CONSOLE_TOKEN";

/// How the console is served.
#[derive(Clone)]
pub struct ConsoleConfig {
    /// Whether requeue, purge and cancel are offered (otherwise the console only reads).
    pub allow_writes: bool,
    /// The token every request must carry (bearer header, or basic auth with the token as
    /// password). Required when the console listens on anything but loopback.
    pub token: Option<SecretString>,
    /// Seconds between two refreshes of the overview in the browser (0: never).
    pub refresh_secs: u32,
    /// How long the overview waits for queue figures nobody has read yet before it renders
    /// without them (the read goes on; the next refresh shows them).
    pub first_read_wait: Duration,
    /// A due live job older than this many seconds makes live "behind" (the overview says so).
    pub live_behind_secs: f64,
    /// Host names the console answers besides its listen address and localhost (a reverse
    /// proxy's name: the host of `--public-url`, `--allowed-host`); `host:port` and URLs are
    /// accepted, ports are ignored. Any other `Host` is refused (DNS rebinding).
    pub allowed_hosts: Vec<String>,
}

impl std::fmt::Debug for ConsoleConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleConfig")
            .field("allow_writes", &self.allow_writes)
            .field("token", &self.token.as_ref().map(|_| "[redacted]"))
            .field("refresh_secs", &self.refresh_secs)
            .field("first_read_wait", &self.first_read_wait)
            .field("live_behind_secs", &self.live_behind_secs)
            .field("allowed_hosts", &self.allowed_hosts)
            .finish()
    }
}

/// The default [`ConsoleConfig::first_read_wait`]: a page that waits longer than this is not a
/// page that renders at once.
pub const DEFAULT_FIRST_READ_WAIT: Duration = Duration::from_millis(50);

impl Default for ConsoleConfig {
    fn default() -> Self {
        ConsoleConfig {
            allow_writes: false,
            token: None,
            refresh_secs: 10,
            first_read_wait: DEFAULT_FIRST_READ_WAIT,
            live_behind_secs: crate::queue::DEFAULT_LIVE_BEHIND_SECS,
            allowed_hosts: Vec::new(),
        }
    }
}

/// The console cannot start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A non-loopback address was given without a token.
    #[error(
        "the console listens on {0}, which is not loopback: set {TOKEN_ENV} to a token \
         (at least 16 characters) so requests must carry it, or listen on 127.0.0.1"
    )]
    TokenRequired(SocketAddr),
    /// The token is too short to be worth anything.
    #[error("{TOKEN_ENV} must be at least 16 characters long")]
    TokenTooShort,
    /// Binding or serving failed.
    #[error("console server on {addr}: {source}")]
    Serve {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
}

/// Checks that serving on `addr` with `config` is allowed: anything but loopback needs a token.
pub fn check_listen(addr: SocketAddr, config: &ConsoleConfig) -> Result<(), Error> {
    use secrecy::ExposeSecret;
    if let Some(token) = &config.token {
        if token.expose_secret().chars().count() < 16 {
            return Err(Error::TokenTooShort);
        }
    }
    if !addr.ip().is_loopback() && config.token.is_none() {
        return Err(Error::TokenRequired(addr));
    }
    Ok(())
}

/// Connect options for the console's pool: read-only sessions unless writes are allowed
/// (`default_transaction_read_only=on`, so even a bug cannot write).
pub fn connect_options(options: PgConnectOptions, allow_writes: bool) -> PgConnectOptions {
    let options = options.application_name("pdq console");
    match allow_writes {
        true => options,
        false => options.options([("default_transaction_read_only", "on")]),
    }
}

/// What every handler shares.
pub(crate) struct State {
    pub(crate) pool: PgPool,
    pub(crate) config: ConsoleConfig,
    /// The host names requests may name.
    pub(crate) hosts: security::Hosts,
    /// The CSRF token of this process: every form carries it, every POST must.
    pub(crate) csrf: String,
    /// The last `pdq status` answer, shared by everyone watching the overview.
    pub(crate) status: Arc<snapshot::Snapshots<(), crate::queue::QueueStatus>>,
    /// The last chart series per range.
    pub(crate) charts: Arc<
        snapshot::Snapshots<crate::queue::console::ChartRange, crate::queue::console::ChartSeries>,
    >,
}

pub(crate) type Shared = Arc<State>;

/// `pdq status`'s figures from the shared snapshot, waiting at most `wait` for a read nobody
/// has made yet (`None`: still being read).
pub(crate) async fn queue_status(
    state: &Shared,
    wait: Duration,
) -> Result<Option<Arc<crate::queue::QueueStatus>>, crate::queue::Error> {
    let pool = state.pool.clone();
    let behind = state.config.live_behind_secs;
    let read = move || {
        let pool = pool.clone();
        async move { crate::queue::status_with(&pool, behind).await }
    };
    state.status.get_within((), read, wait).await
}

/// The console's router for a console on loopback (see [`router_on`]).
pub fn router(pool: PgPool, config: ConsoleConfig) -> Router {
    router_on(None, pool, config)
}

/// The console's router for a console listening on `listen` (`None`: loopback), which answers
/// only requests for that address, localhost and [`ConsoleConfig::allowed_hosts`].
pub fn router_on(listen: Option<SocketAddr>, pool: PgPool, config: ConsoleConfig) -> Router {
    let hosts = security::Hosts::new(listen, &config.allowed_hosts);
    let state = Arc::new(State {
        pool,
        hosts,
        config,
        csrf: security::new_csrf_token(),
        status: Arc::default(),
        charts: Arc::default(),
    });
    // Start reading the overview's figures and its hour of charts now, so the first viewer
    // rarely waits for them.
    if tokio::runtime::Handle::try_current().is_ok() {
        let warm = state.clone();
        tokio::spawn(async move { queue_status(&warm, Duration::ZERO).await });
        let pool = state.pool.clone();
        let read = move || {
            let pool = pool.clone();
            async move { crate::queue::console::chart_series(&pool, ChartRange::Hour).await }
        };
        let charts = state.charts.clone();
        tokio::spawn(async move {
            charts
                .get_within(ChartRange::Hour, read, Duration::ZERO)
                .await
        });
    }
    Router::new()
        .route("/", get(pages::overview))
        .route("/jobs", get(pages::jobs))
        .route("/jobs/{id}", get(pages::job))
        .route(
            "/jobs/{id}/cancel",
            get(pages::cancel_confirm).post(pages::cancel),
        )
        .route("/dlq", get(pages::dead_letters))
        .route("/dlq/confirm", post(pages::dlq_confirm))
        .route("/dlq/requeue", post(pages::dlq_requeue))
        .route("/dlq/purge", post(pages::dlq_purge))
        .route("/dlq/{id}", get(pages::dead_letter))
        .route("/assets/console.css", get(pages::css))
        .route("/assets/console.js", get(pages::js))
        .fallback(pages::not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            security::guard,
        ))
        .with_state(state)
}

/// Serves the console on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    pool: PgPool,
    config: ConsoleConfig,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let addr = listener.local_addr().map_err(|source| Error::Serve {
        addr: SocketAddr::from(([0, 0, 0, 0], 0)),
        source,
    })?;
    check_listen(addr, &config)?;
    axum::serve(listener, router_on(Some(addr), pool, config))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
        .map_err(|source| Error::Serve { addr, source })
}
