//! `pdq doctor`: checks the database and the Genesys Cloud configuration before a worker runs.

use std::process::ExitCode;

use clap::Args;
use pdq::genesys::{is_loopback, Error, Failure, GenesysClient};
use serde_json::json;
use uuid::Uuid;

use super::Database;
use crate::exit::Exit;
use crate::genesys_args::GenesysArgs;

/// What to check: the database when a database URL is set, Genesys Cloud when any of its
/// settings is given (or no database is).
#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// The Genesys Cloud address as the browser shows it (https://apps.mypurecloud.ie/…);
    /// names the region when --region is not given.
    #[arg(value_name = "BROWSER_URL")]
    pub browser_url: Option<String>,
    /// The Genesys Cloud connection.
    #[command(flatten)]
    pub genesys: GenesysArgs,
    /// Also check that the client can read this conversation.
    #[arg(long)]
    pub conversation_id: Option<Uuid>,
}

const CONFIGURATION: Exit = Exit::Usage;
const PERMISSION: Exit = Exit::Refused;
const UNREACHABLE: Exit = Exit::Unreachable;

struct Checks {
    lines: Vec<serde_json::Value>,
    json: bool,
    failed: Option<Exit>,
}

impl Checks {
    fn report(&mut self, ok: bool, check: &str, detail: String) {
        if !self.json {
            println!("{} {check}: {detail}", if ok { "✓" } else { "✗" });
        }
        self.lines
            .push(json!({ "check": check, "ok": ok, "detail": detail }));
    }

    /// Reports a failed check; the first failure decides the exit code.
    fn fail(&mut self, exit: Exit, check: &str, detail: String) {
        self.report(false, check, detail);
        self.failed.get_or_insert(exit);
    }

    fn finish(self) -> ExitCode {
        let exit = self.failed.unwrap_or(Exit::Ok);
        if self.json {
            let body =
                json!({ "ok": exit == Exit::Ok, "exit_code": exit.code(), "checks": self.lines });
            let _ = crate::output::json(&body);
        }
        exit.status()
    }
}

/// Runs the database checks (when a database is set), then the Genesys Cloud checks in order,
/// stopping each part at its first failure; the first failure decides the exit code.
pub async fn run(db: &Database, mut args: DoctorArgs, json: bool) -> anyhow::Result<ExitCode> {
    let mut checks = Checks {
        lines: Vec::new(),
        json,
        failed: None,
    };
    if args.genesys.region.is_none() {
        args.genesys.region = args.browser_url.take();
    }
    let genesys = &args.genesys;
    let genesys_given =
        genesys.region.is_some() || genesys.api_url.is_some() || genesys.client_id.is_some();
    if db.is_set() {
        check_database(db, &mut checks).await;
    } else if !genesys_given {
        checks.fail(
            CONFIGURATION,
            "database",
            "no database: set DATABASE_URL or pass --database-url postgres://…".into(),
        );
    }
    if genesys_given || !db.is_set() {
        check_genesys(&args, &mut checks).await?;
    }
    Ok(checks.finish())
}

/// Reachable, schema version, roles and grants, worker heartbeats.
async fn check_database(db: &Database, checks: &mut Checks) {
    let pool = match db.pool().await {
        Ok(pool) => pool,
        Err(error) => {
            let exit = Exit::of(&error);
            checks.fail(exit, "database", crate::exit::describe(&error));
            return;
        }
    };
    match pdq::db::check_primary(&pool).await {
        Ok(()) => checks.report(true, "database", "Postgres answers (a primary)".into()),
        Err(error) => {
            let detail = error.to_string();
            checks.fail(Exit::of(&anyhow::Error::new(error)), "database", detail);
            return;
        }
    }
    if let Ok(standbys) = pdq::db::async_standbys(&pool).await {
        if !standbys.is_empty() {
            checks.report(
                true,
                "replication",
                format!(
                    "asynchronous standbys ({}): a failover to one can lose recent jobs (docs/postgres.md)",
                    standbys.join(", ")
                ),
            );
        }
    }
    let binary = pdq::db::MIGRATOR
        .iter()
        .map(|m| m.version)
        .max()
        .unwrap_or(0);
    match pdq::db::check_schema(&pool).await {
        Ok(()) => checks.report(
            true,
            "schema",
            format!("version {binary}, as this binary expects"),
        ),
        Err(error) => {
            let detail = error.to_string();
            checks.fail(Exit::of(&anyhow::Error::new(error)), "schema", detail);
            return;
        }
    }
    match pdq::queue::checks::roles(&pool).await {
        Ok(roles) => {
            for role in roles {
                let name = format!("role {}", role.role);
                match (role.exists, role.granted) {
                    (false, _) => checks.report(
                        true,
                        &name,
                        "not created (optional: create it to run with least privilege)".into(),
                    ),
                    (true, true) => checks.report(true, &name, format!("has {}", role.needs)),
                    (true, false) => checks.fail(
                        PERMISSION,
                        &name,
                        format!("lacks {}: run `pdq migrate` again to grant it", role.needs),
                    ),
                }
            }
        }
        Err(error) => checks.fail(Exit::Failure, "roles", error.to_string()),
    }
    match pdq::queue::checks::heartbeats(&pool).await {
        Ok(None) => checks.report(
            true,
            "workers",
            "this schema keeps no worker heartbeats (pdq.workers)".into(),
        ),
        Ok(Some(beats)) if beats.fresh > 0 => checks.report(
            true,
            "workers",
            format!("{} worker(s) alive, {} gone", beats.fresh, beats.stale),
        ),
        Ok(Some(beats)) => match beats.newest_age_seconds {
            // Before the first `pdq run` there is nothing to miss: doctor is for that moment too.
            None => checks.report(
                true,
                "workers",
                "no worker has run on this database yet (start `pdq run`)".into(),
            ),
            Some(age) => checks.fail(
                Exit::NoWorkers,
                "workers",
                format!(
                    "no worker alive: {} gone, the newest heartbeat is {} old",
                    beats.stale,
                    crate::exit::human_age(age)
                ),
            ),
        },
        Err(error) => checks.fail(Exit::Failure, "workers", error.to_string()),
    }
}

/// Region, hosts, credentials, organization and (optionally) one conversation.
async fn check_genesys(args: &DoctorArgs, checks: &mut Checks) -> anyhow::Result<()> {
    let settings = match args.genesys.settings() {
        Ok(settings) => settings,
        Err(error) => {
            let detail = match error {
                Error::Settings(problem) => problem.to_string(),
                other => other.to_string(),
            };
            checks.fail(CONFIGURATION, "configuration", detail);
            return Ok(());
        }
    };
    let hosts = format!("API {} · login {}", settings.api_base, settings.login_base);
    // Behind a proxy the proxy resolves the hosts; the machine itself may have no outside DNS.
    let proxied = ["HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"]
        .iter()
        .any(|name| std::env::var(name).is_ok_and(|proxy| !proxy.trim().is_empty()));
    for url in [&settings.api_base, &settings.login_base] {
        if is_loopback(url) || proxied {
            continue;
        }
        let host = format!(
            "{}:{}",
            url.host_str().unwrap_or(""),
            url.port_or_known_default().unwrap_or(443)
        );
        let resolved = tokio::net::lookup_host(host.clone()).await;
        if let Err(error) = resolved {
            checks.fail(
                UNREACHABLE,
                "hosts",
                format!("{host} does not resolve: {error}"),
            );
            return Ok(());
        }
    }
    checks.report(true, "hosts", hosts);
    let client = GenesysClient::new(settings)?;
    if let Err(error) = client.probe_token().await {
        checks.fail(exit_code(&error), "token", explain(&error));
        return Ok(());
    }
    checks.report(true, "token", "client credentials accepted".into());
    match client.token_info().await {
        Ok(info) => {
            let org = info.value.organization.unwrap_or_default();
            let detail = format!(
                "organization {} ({})",
                org.name.unwrap_or_default(),
                org.id.unwrap_or_default()
            );
            checks.report(true, "organization", detail);
        }
        Err(error) => {
            checks.fail(exit_code(&error), "organization", explain(&error));
            return Ok(());
        }
    }
    if let Some(id) = args.conversation_id {
        match client.get_conversation(id).await {
            Ok(_) => checks.report(true, "conversation", format!("{id} is readable")),
            Err(error) => {
                checks.fail(exit_code(&error), "conversation", explain(&error));
                return Ok(());
            }
        }
    }
    Ok(())
}

fn exit_code(error: &Error) -> Exit {
    match (error.status(), error.class()) {
        (Some(403), _) => PERMISSION,
        (Some(404), _) => Exit::NotFound,
        (_, Failure::Transient | Failure::Outage) => UNREACHABLE,
        (_, Failure::Configuration) => CONFIGURATION,
        _ => Exit::Failure,
    }
}

/// An API error with the advice that goes with it (the same words `/healthz` gives).
fn explain(error: &Error) -> String {
    error.with_advice()
}
