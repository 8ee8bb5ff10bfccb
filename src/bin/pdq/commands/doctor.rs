//! `pdq doctor`: checks the Genesys Cloud configuration before a worker runs.

use std::process::ExitCode;

use clap::Args;
use pdq::genesys::{is_loopback, Error, ErrorClass, GenesysClient};
use serde_json::json;
use uuid::Uuid;

use crate::genesys_args::GenesysArgs;

/// What to check.
#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// The Genesys Cloud connection.
    #[command(flatten)]
    pub genesys: GenesysArgs,
    /// Also check that the client can read this conversation.
    #[arg(long)]
    pub conversation_id: Option<Uuid>,
}

/// Exit codes a script can use.
const CONFIGURATION: u8 = 2;
const PERMISSION: u8 = 3;
const UNREACHABLE: u8 = 4;

struct Checks {
    lines: Vec<serde_json::Value>,
    json: bool,
}

impl Checks {
    fn report(&mut self, ok: bool, check: &str, detail: String) {
        if !self.json {
            println!("{} {check}: {detail}", if ok { "✓" } else { "✗" });
        }
        self.lines
            .push(json!({ "check": check, "ok": ok, "detail": detail }));
    }

    fn finish(self, code: u8) -> ExitCode {
        if self.json {
            println!("{}", json!({ "ok": code == 0, "checks": self.lines }));
        }
        ExitCode::from(code)
    }
}

/// Runs the checks in order, stopping at the first failure.
pub async fn run(args: DoctorArgs, json: bool) -> anyhow::Result<ExitCode> {
    let mut checks = Checks {
        lines: Vec::new(),
        json,
    };
    let settings = match args.genesys.settings() {
        Ok(settings) => settings,
        Err(error) => {
            checks.report(false, "configuration", error.to_string());
            return Ok(checks.finish(CONFIGURATION));
        }
    };
    let hosts = format!("API {} · login {}", settings.api_base, settings.login_base);
    for url in [&settings.api_base, &settings.login_base] {
        if is_loopback(url) {
            continue;
        }
        let host = format!(
            "{}:{}",
            url.host_str().unwrap_or(""),
            url.port_or_known_default().unwrap_or(443)
        );
        let resolved = tokio::net::lookup_host(host.clone()).await;
        if let Err(error) = resolved {
            checks.report(false, "hosts", format!("{host} does not resolve: {error}"));
            return Ok(checks.finish(UNREACHABLE));
        }
    }
    checks.report(true, "hosts", hosts);
    let client = GenesysClient::new(settings)?;
    if let Err(error) = client.probe_token().await {
        let code = exit_code(&error);
        checks.report(false, "token", explain(&error));
        return Ok(checks.finish(code));
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
            let code = exit_code(&error);
            checks.report(false, "organization", explain(&error));
            return Ok(checks.finish(code));
        }
    }
    if let Some(id) = args.conversation_id {
        match client.get_conversation(id).await {
            Ok(_) => checks.report(true, "conversation", format!("{id} is readable")),
            Err(error) => {
                let code = exit_code(&error);
                checks.report(false, "conversation", explain(&error));
                return Ok(checks.finish(code));
            }
        }
    }
    Ok(checks.finish(0))
}

fn exit_code(error: &Error) -> u8 {
    match (error.status(), error.class()) {
        (Some(403), _) => PERMISSION,
        (_, ErrorClass::Transient | ErrorClass::Outage) => UNREACHABLE,
        (_, ErrorClass::Configuration | ErrorClass::Unauthorized) => CONFIGURATION,
        _ => 1,
    }
}

/// Turns an API error into advice.
fn explain(error: &Error) -> String {
    if error.code() == Some("invalid_client") {
        return format!(
            "{error}. The client id is unknown or the secret is wrong: check GENESYS_CLIENT_ID / \
             GENESYS_CLIENT_SECRET, and that the OAuth client uses the Client Credentials grant in \
             this region's organization"
        );
    }
    if error.status() == Some(403) {
        let permission = error
            .missing_permission()
            .unwrap_or_else(|| "a permission".into());
        return format!(
            "{error}. The OAuth client lacks {permission}: client-credentials access comes from \
             the client's roles and their divisions (scopes do not apply); add a role granting it \
             on the conversation's division"
        );
    }
    if error.status() == Some(404) {
        return format!("{error}. The conversation does not exist, or is in a division the client's roles do not cover");
    }
    error.to_string()
}
