//! `pdq console`: the operator web console.

use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use pdq::console::{self, ConsoleConfig};
use secrecy::SecretString;
use tokio_util::sync::CancellationToken;

use super::Database;
use crate::exit::{Exit, Failed};

/// Console settings.
#[derive(Debug, Args)]
pub struct ConsoleArgs {
    /// Where to listen. Anything but loopback requires PDQ_CONSOLE_TOKEN.
    #[arg(long, env = "PDQ_CONSOLE_LISTEN", default_value = "127.0.0.1:9188")]
    pub listen: SocketAddr,
    /// Offer requeue, purge and cancel (otherwise the console and its database sessions are
    /// read-only).
    #[arg(long, env = "PDQ_CONSOLE_ALLOW_WRITES")]
    pub allow_writes: bool,
    /// Seconds between two refreshes of the overview in the browser (0: never).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(0..=3600))]
    pub refresh_secs: u32,
    /// A due live job older than this many seconds makes live "behind" (as `pdq run`'s flag).
    #[arg(long, env = "PDQ_LIVE_BEHIND_SECS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub live_behind_secs: u64,
    /// The URL operators open when the console is behind a reverse proxy
    /// (https://pdq.example.com/): its host name is answered too.
    #[arg(long, env = "PDQ_CONSOLE_PUBLIC_URL")]
    pub public_url: Option<url::Url>,
    /// Another host name the console answers (repeatable, or comma-separated in the
    /// environment). Requests naming any host but these, the listen address and localhost are
    /// refused, so a page on another site cannot reach the console by rebinding its name.
    #[arg(
        long = "allowed-host",
        env = "PDQ_CONSOLE_ALLOWED_HOSTS",
        value_delimiter = ','
    )]
    pub allowed_hosts: Vec<String>,
}

impl ConsoleArgs {
    /// The host names answered besides the listen address and localhost.
    fn hosts(&self) -> Vec<String> {
        let mut hosts = self.allowed_hosts.clone();
        if let Some(host) = self.public_url.as_ref().and_then(|url| url.host_str()) {
            hosts.push(host.to_owned());
        }
        hosts
    }
}

/// The hosts of `PDQ_CONSOLE_ALLOWED_HOSTS` (comma-separated), for `pdq run --console`.
fn allowed_hosts_from_env() -> Vec<String> {
    std::env::var("PDQ_CONSOLE_ALLOWED_HOSTS")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The token from `PDQ_CONSOLE_TOKEN`, if set and not blank.
pub fn token_from_env() -> Option<SecretString> {
    std::env::var(console::TOKEN_ENV)
        .ok()
        .filter(|t| !t.trim().is_empty())
        .map(|t| SecretString::from(t.trim().to_owned()))
}

/// Serves the console until SIGINT or SIGTERM.
pub async fn run(
    db: &Database,
    args: ConsoleArgs,
    shutdown: CancellationToken,
) -> anyhow::Result<ExitCode> {
    let config = ConsoleConfig {
        allow_writes: args.allow_writes,
        token: token_from_env(),
        refresh_secs: args.refresh_secs,
        live_behind_secs: args.live_behind_secs as f64,
        allowed_hosts: args.hosts(),
        ..ConsoleConfig::default()
    };
    console::check_listen(args.listen, &config)
        .map_err(|problem| Failed::error(Exit::Usage, problem.to_string()))?;
    let options = console::connect_options(db.options()?, args.allow_writes);
    let pool = pdq::db::connect(
        options,
        db.connections(pdq::db::DEFAULT_CONSOLE_CONNECTIONS),
    )
    .await?;
    pdq::db::check_schema(&pool).await?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(
        %addr,
        allow_writes = args.allow_writes,
        "pdq console on http://{addr}/ ({})",
        if args.allow_writes { "writes allowed" } else { "read-only" }
    );
    match &args.public_url {
        Some(public) => println!("pdq console: http://{addr}/ (public URL {public})"),
        None => println!("pdq console: http://{addr}/"),
    }
    console::serve(listener, pool, config, shutdown).await?;
    Ok(ExitCode::SUCCESS)
}

/// Serves the read-only console beside a worker (`pdq run --console ADDR`), on its own
/// read-only pool, until `shutdown`; live counts as behind past `live_behind_secs`.
pub async fn spawn_read_only(
    db: &Database,
    addr: SocketAddr,
    live_behind_secs: u64,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let config = ConsoleConfig {
        token: token_from_env(),
        allowed_hosts: allowed_hosts_from_env(),
        live_behind_secs: live_behind_secs as f64,
        ..ConsoleConfig::default()
    };
    console::check_listen(addr, &config)
        .map_err(|problem| Failed::error(Exit::Usage, problem.to_string()))?;
    let pool = pdq::db::connect(console::connect_options(db.options()?, false), 2).await?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the console on {addr}"))?;
    tracing::info!(%addr, "read-only console on http://{addr}/");
    tokio::spawn(async move {
        if let Err(error) = console::serve(listener, pool, config, shutdown).await {
            tracing::error!(%error, "console stopped");
        }
    });
    Ok(())
}

/// The end of `pdq demo`: prints the console's URL and, when stdout is a terminal, serves the
/// console on the demo's database (writes allowed, loopback only) until Ctrl-C.
pub async fn after_demo(pool: &sqlx::PgPool, json_output: bool) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    let wanted: SocketAddr = ([127, 0, 0, 1], 9188).into();
    let listener = match tokio::net::TcpListener::bind(wanted).await {
        Ok(listener) => listener,
        Err(_) => tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?,
    };
    let addr = listener.local_addr()?;
    let interactive = std::io::stdout().is_terminal() && !json_output;
    let line = match interactive {
        true => format!("\nconsole: http://{addr}/ (serving this demo's database until Ctrl-C)"),
        false => format!("\nconsole: http://{addr}/ (not kept up: stdout is not a terminal)"),
    };
    match json_output {
        true => eprintln!("{line}"),
        false => println!("{line}"),
    }
    if !interactive {
        return Ok(());
    }
    let config = ConsoleConfig {
        allow_writes: true,
        ..ConsoleConfig::default()
    };
    let stop = CancellationToken::new();
    let ctrl_c = stop.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        ctrl_c.cancel();
    });
    console::serve(listener, pool.clone(), config, stop).await?;
    Ok(())
}
