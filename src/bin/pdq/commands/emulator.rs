//! `pdq emulator`: the Genesys Cloud emulator on a fixed port, for demos and users' CI.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use pdq::emulator::{
    ClientSpec, ConversationSpec, Emulator, EmulatorConfig, EndedBehaviour, Faults, RateLimit,
    RateLimitScope,
};
use tokio_util::sync::CancellationToken;

use crate::exit::{Exit, Failed};

/// Emulator settings; faults can also be changed at run time through `/admin/faults`.
#[derive(Debug, Args)]
pub struct EmulatorArgs {
    /// Port for both the login and the API.
    #[arg(long, env = "PDQ_EMULATOR_PORT", default_value_t = 8710)]
    pub port: u16,
    /// Address to bind.
    #[arg(long, env = "PDQ_EMULATOR_HOST", default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// Seed for injected faults.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// OAuth client id to accept.
    #[arg(long, env = "GENESYS_CLIENT_ID", default_value = pdq::emulator::DEMO_CLIENT_ID)]
    pub client_id: String,
    /// OAuth client secret to accept.
    #[arg(long, env = "GENESYS_CLIENT_SECRET", hide_env_values = true, default_value = pdq::emulator::DEMO_CLIENT_SECRET)]
    pub client_secret: String,
    /// Token lifetime in seconds.
    #[arg(long, default_value_t = 86_400)]
    pub token_lifetime: u64,
    /// Requests per window per token (0 = unlimited).
    #[arg(long, default_value_t = 300)]
    pub rate_limit: u32,
    /// Rate-limit window in seconds.
    #[arg(long, default_value_t = 60)]
    pub rate_window: u64,
    /// Count the budget per OAuth client instead of per token.
    #[arg(long)]
    pub rate_limit_per_client: bool,
    /// Added latency in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// Share of requests answered 500/502/503/504.
    #[arg(long, default_value_t = 0.0)]
    pub error_rate: f64,
    /// Share of connections reset without an answer.
    #[arg(long, default_value_t = 0.0)]
    pub reset_rate: f64,
    /// Share of requests that hang.
    #[arg(long, default_value_t = 0.0)]
    pub hang_rate: f64,
    /// Share of requests applied, then left without an answer (connection closed).
    #[arg(long, default_value_t = 0.0)]
    pub apply_then_reset_rate: f64,
    /// Share of requests applied, then answered 500/502/503/504.
    #[arg(long, default_value_t = 0.0)]
    pub apply_then_error_rate: f64,
    /// Answer every API request 403 `missing.permissions`.
    #[arg(long)]
    pub missing_permissions: bool,
    /// Answer the login endpoint 503 for this many seconds after start.
    #[arg(long, default_value_t = 0)]
    pub login_outage_secs: u64,
    /// PATCH on an ended conversation: conflict (409), bad-request (400) or accepted (202).
    #[arg(long, value_parser = ["conflict", "bad-request", "accepted"], default_value = "conflict")]
    pub ended_conversation: String,
    /// Analytics indexing delay in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub analytics_delay_ms: u64,
    /// Do not serve /admin.
    #[arg(long)]
    pub no_admin: bool,
    /// Require `Authorization: Bearer <token>` on /admin (required off loopback: the admin API
    /// creates conversations, injects faults and reads every PATCH).
    #[arg(
        long,
        env = "PDQ_EMULATOR_ADMIN_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub admin_token: Option<String>,
    /// Read the admin token from this file instead.
    #[arg(
        long,
        env = "PDQ_EMULATOR_ADMIN_TOKEN_FILE",
        value_name = "PATH",
        conflicts_with = "admin_token"
    )]
    pub admin_token_file: Option<PathBuf>,
    /// JSON file: a list of conversations to create at start.
    #[arg(long)]
    pub scenario: Option<PathBuf>,
}

impl EmulatorArgs {
    /// The admin token, from the flag, the variable or the file (an empty one is none).
    fn admin_token(&self) -> anyhow::Result<Option<String>> {
        let token = match &self.admin_token_file {
            Some(path) => Some(super::read_secret_file(path, "admin token")?),
            None => self.admin_token.clone(),
        };
        Ok(token.filter(|token| !token.trim().is_empty()))
    }

    fn config(&self, admin_token: Option<String>) -> EmulatorConfig {
        EmulatorConfig {
            bind: SocketAddr::new(self.host, self.port),
            seed: self.seed,
            clients: vec![ClientSpec {
                id: self.client_id.clone(),
                secret: self.client_secret.clone(),
            }],
            token_lifetime_secs: self.token_lifetime,
            rate_limit: (self.rate_limit > 0).then_some(RateLimit {
                requests: self.rate_limit,
                window_secs: self.rate_window,
                scope: if self.rate_limit_per_client {
                    RateLimitScope::Client
                } else {
                    RateLimitScope::Token
                },
            }),
            faults: Faults {
                latency_ms: self.latency_ms,
                error_rate: self.error_rate,
                reset_rate: self.reset_rate,
                hang_rate: self.hang_rate,
                apply_then_reset_rate: self.apply_then_reset_rate,
                apply_then_error_rate: self.apply_then_error_rate,
                missing_permissions: self.missing_permissions,
                login_outage_secs: self.login_outage_secs,
                ..Faults::default()
            },
            ended_conversation: match self.ended_conversation.as_str() {
                "bad-request" => EndedBehaviour::BadRequest,
                "accepted" => EndedBehaviour::Accepted,
                _ => EndedBehaviour::Conflict,
            },
            analytics_delay_ms: self.analytics_delay_ms,
            admin: !self.no_admin,
            admin_token,
            ..EmulatorConfig::default()
        }
    }
}

/// Serves until SIGINT or SIGTERM.
pub async fn run(args: EmulatorArgs, shutdown: CancellationToken) -> anyhow::Result<ExitCode> {
    let scenario: Vec<ConversationSpec> = match &args.scenario {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            serde_json::from_str(&text)
                .with_context(|| format!("{} is not a list of conversations", path.display()))?
        }
        None => Vec::new(),
    };
    let admin_token = args.admin_token()?;
    if !args.no_admin && admin_token.is_none() && !args.host.is_loopback() {
        return Err(Failed::error(
            Exit::Usage,
            format!(
                "pdq emulator --host {} would serve its admin API (it creates conversations, \
                 injects faults and reads every PATCH) to the network without authentication: \
                 set PDQ_EMULATOR_ADMIN_TOKEN (or --admin-token-file), or pass --no-admin",
                args.host
            ),
        ));
    }
    let emulator = Emulator::start(args.config(admin_token.clone())).await?;
    for spec in scenario {
        let created = emulator.create_conversation(spec);
        println!(
            "conversation {} {}",
            created.id,
            serde_json::to_string(&created.participants)?
        );
    }
    println!(
        "pdq emulator listening on {} (login and API on one base URL)",
        emulator.base_url()
    );
    if admin_token.is_some() {
        println!("the admin API (/admin/…) needs Authorization: Bearer <the admin token>");
    }
    println!("ready");
    shutdown.cancelled().await;
    emulator.shutdown().await;
    Ok(ExitCode::SUCCESS)
}
