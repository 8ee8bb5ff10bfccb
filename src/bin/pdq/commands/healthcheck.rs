//! `pdq healthcheck`: asks a worker's readiness (`/healthz`) or, with `--live`, its liveness
//! (`/livez`), for container `HEALTHCHECK`s and probes on hosts without curl. Exit 0 on 200,
//! 1 otherwise.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

/// Where the worker's health endpoint is.
#[derive(Debug, Args)]
pub struct HealthcheckArgs {
    /// The worker's health URL [default: /healthz on PDQ_METRICS_ADDR's port, on loopback when
    /// it listens on every address; else http://127.0.0.1:9187/healthz].
    #[arg(long, env = "PDQ_HEALTHCHECK_URL")]
    pub url: Option<String>,
    /// Ask the liveness answer (/livez: the process works) instead of readiness (/healthz:
    /// it can do its job); what a container HEALTHCHECK should ask, so that a long API outage
    /// never restarts the process. Ignored with --url.
    #[arg(long)]
    pub live: bool,
    /// Give up after this many milliseconds.
    #[arg(long, default_value_t = 3_000, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub timeout_ms: u64,
}

impl HealthcheckArgs {
    /// The URL to ask: --url, else the one `pdq run` serves with the same PDQ_METRICS_ADDR
    /// (`/livez` with --live, else `/healthz`).
    pub fn url(&self) -> String {
        if let Some(url) = &self.url {
            return url.clone();
        }
        let path = match self.live {
            true => "/livez",
            false => "/healthz",
        };
        let metrics = std::env::var("PDQ_METRICS_ADDR").ok();
        let addr = metrics.and_then(|addr| addr.trim().parse::<std::net::SocketAddr>().ok());
        match addr {
            Some(mut addr) => {
                if addr.ip().is_unspecified() {
                    addr.set_ip(match addr {
                        std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                        std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
                    });
                }
                format!("http://{addr}{path}")
            }
            None => format!("http://127.0.0.1:9187{path}"),
        }
    }
}

/// Prints one line saying why, and exits 0 when `/healthz` answered 200.
pub async fn run(args: HealthcheckArgs) -> anyhow::Result<ExitCode> {
    let (healthy, line) = check(&args.url(), Duration::from_millis(args.timeout_ms)).await;
    println!("{line}");
    Ok(match healthy {
        true => ExitCode::SUCCESS,
        false => ExitCode::FAILURE,
    })
}

/// The verdict and the line that explains it.
async fn check(url: &str, timeout: Duration) -> (bool, String) {
    // Never through HTTPS_PROXY/HTTP_PROXY: the worker is local to the probe.
    let client = match reqwest::Client::builder()
        .no_proxy()
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
    {
        Ok(client) => client,
        Err(error) => return (false, format!("unhealthy: HTTP client: {error}")),
    };
    let response = match client.get(url).send().await {
        Ok(response) => response,
        Err(error) => return (false, format!("unhealthy: {url}: {}", cause(&error))),
    };
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    let reason = body.lines().next().unwrap_or("").trim();
    let reason: String = reason.chars().take(200).collect();
    let healthy = status == reqwest::StatusCode::OK;
    let verdict = if healthy { "healthy" } else { "unhealthy" };
    match reason.is_empty() {
        true => (healthy, format!("{verdict}: {url} answered {status}")),
        false => (
            healthy,
            format!("{verdict}: {url} answered {status}: {reason}"),
        ),
    }
}

/// The innermost cause ("Connection refused"), or a timeout said as such.
fn cause(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        return "no answer within the timeout".to_owned();
    }
    let mut source: &dyn std::error::Error = error;
    while let Some(next) = source.source() {
        source = next;
    }
    match source.to_string() {
        text if error.is_connect() => format!("cannot connect ({text})"),
        text => text,
    }
}
