//! The deployment files (docker-compose.yml, Dockerfile, the Helm chart, the systemd unit) checked
//! against the real command line: every `pdq` command line they hold must parse with [`Cli`],
//! with the environment variables they set turned into the flags they stand for, so a renamed
//! flag or variable fails `cargo test` instead of a deployment. Compiled into the binary's own
//! tests because the clap types live here, not in the library.

use std::collections::BTreeSet;

use clap::{ArgAction, CommandFactory, FromArgMatches};
use yaml_rust2::{Yaml, YamlLoader};

use crate::cli::Cli;

/// Variables pdq reads that are not flags: logging, proxies, the CA store.
const OTHER_VARIABLES: [&str; 9] = [
    "RUST_LOG",
    "HTTPS_PROXY",
    "HTTP_PROXY",
    "NO_PROXY",
    "ALL_PROXY",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "NO_COLOR",
    "TZ",
];

fn read(path: &str) -> String {
    let full = format!("{}/{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{full}: {e}"))
}

fn yaml(path: &str) -> Yaml {
    let docs = YamlLoader::load_from_str(&read(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
    docs.into_iter()
        .next()
        .unwrap_or_else(|| panic!("{path} is empty"))
}

/// Compose's `${NAME:-default}` / `${NAME-default}` / `${NAME}` with nothing exported: the default.
fn interpolate(value: &str) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}').expect("closed ${") + start;
        let inner = &rest[start + 2..end];
        let default = inner
            .split_once(":-")
            .or_else(|| inner.split_once('-'))
            .map_or("", |(_, d)| d);
        out.push_str(default);
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

fn scalar(value: &Yaml) -> Option<String> {
    match value {
        Yaml::String(s) => Some(s.clone()),
        Yaml::Integer(i) => Some(i.to_string()),
        Yaml::Real(r) => Some(r.clone()),
        Yaml::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

fn strings(value: &Yaml) -> Vec<String> {
    value
        .as_vec()
        .map(|items| items.iter().filter_map(scalar).collect())
        .unwrap_or_default()
}

/// A mapping with its YAML merge keys (`<<: *anchor`) applied, as Compose does.
fn merged(value: &Yaml) -> yaml_rust2::yaml::Hash {
    let mut out = yaml_rust2::yaml::Hash::new();
    if let Some(hash) = value.as_hash() {
        if let Some(base) = hash.get(&Yaml::String("<<".into())) {
            out.extend(merged(base));
        }
        for (key, value) in hash {
            if key.as_str() != Some("<<") {
                out.insert(key.clone(), value.clone());
            }
        }
    }
    out
}

fn get<'a>(hash: &'a yaml_rust2::yaml::Hash, key: &str) -> Option<&'a Yaml> {
    hash.get(&Yaml::String(key.to_owned()))
}

/// `environment:` as a list of `(name, value)`, either form Compose allows.
fn environment(value: Option<&Yaml>) -> Vec<(String, String)> {
    match value {
        Some(Yaml::Hash(hash)) => hash
            .iter()
            .filter_map(|(k, v)| Some((k.as_str()?.to_owned(), scalar(v).unwrap_or_default())))
            .collect(),
        Some(Yaml::Array(items)) => items
            .iter()
            .filter_map(|item| {
                let (k, v) = item.as_str()?.split_once('=')?;
                Some((k.to_owned(), v.to_owned()))
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// Every variable a flag of `pdq` or of `subcommand` reads, with the flag it stands for.
fn env_flags(subcommand: &str) -> Vec<(String, String, bool)> {
    let mut root = Cli::command();
    root.build();
    let mut commands = vec![root.clone()];
    if let Some(sub) = root.find_subcommand(subcommand) {
        commands.push(sub.clone());
    }
    commands
        .iter()
        .flat_map(|command| command.get_arguments())
        .filter_map(|arg| {
            let env = arg.get_env()?.to_str()?.to_owned();
            let long = arg.get_long()?.to_owned();
            let switch = matches!(arg.get_action(), ArgAction::SetTrue);
            Some((env, long, switch))
        })
        .collect()
}

/// Parses `pdq <args>` as if `env` were the process's environment: each variable becomes the
/// flag it stands for (an unknown variable is an error, an empty one is unset).
fn parse_with_env(args: &[String], env: &[(String, String)]) -> Result<Cli, String> {
    let subcommand = args.first().ok_or("no subcommand")?;
    let flags = env_flags(subcommand);
    let mut argv = vec!["pdq".to_owned()];
    argv.extend(args.iter().cloned());
    for (name, value) in env {
        let value = interpolate(value);
        if OTHER_VARIABLES.contains(&name.as_str()) {
            continue;
        }
        let (_, long, switch) = flags
            .iter()
            .find(|(env, _, _)| env == name)
            .ok_or_else(|| format!("`pdq {subcommand}` reads no variable {name}"))?;
        match (value.is_empty(), switch) {
            (true, _) => {}
            (false, true) => {
                if matches!(value.as_str(), "true" | "1" | "yes") {
                    argv.push(format!("--{long}"));
                }
            }
            (false, false) => argv.push(format!("--{long}={value}")),
        }
    }
    let matches = without_env(Cli::command())
        .try_get_matches_from(&argv)
        .map_err(|e| format!("{argv:?}: {e}"))?;
    Cli::from_arg_matches(&matches).map_err(|e| format!("{argv:?}: {e}"))
}

/// The CLI with every `env = …` removed, so the parse sees only the file's variables and never
/// those of the process running the tests (CI exports DATABASE_URL, for one).
fn without_env(command: clap::Command) -> clap::Command {
    command
        .mut_args(|arg| arg.env(None::<&str>))
        .mut_subcommands(without_env)
}

/// `[(name, service)]` of docker-compose.yml, merge keys applied.
fn compose_services() -> Vec<(String, yaml_rust2::yaml::Hash)> {
    let doc = yaml("docker-compose.yml");
    let services = doc["services"].as_hash().expect("services");
    services
        .iter()
        .map(|(name, service)| (name.as_str().unwrap().to_owned(), merged(service)))
        .collect()
}

fn is_pdq(service: &yaml_rust2::yaml::Hash) -> bool {
    get(service, "build").is_some()
        || get(service, "image")
            .and_then(Yaml::as_str)
            .is_some_and(|image| image.starts_with("pdq"))
}

fn profiles(service: &yaml_rust2::yaml::Hash) -> Vec<String> {
    get(service, "profiles").map(strings).unwrap_or_default()
}

#[test]
fn every_pdq_command_line_in_compose_parses_with_its_environment() {
    let services = compose_services();
    let pdq: Vec<_> = services.iter().filter(|(_, s)| is_pdq(s)).collect();
    assert!(pdq.len() >= 5, "the pdq services were found");
    for (name, service) in pdq {
        let command = strings(get(service, "command").expect("an explicit command"));
        let env = environment(get(service, "environment"));
        if let Err(error) = parse_with_env(&command, &env) {
            panic!("service {name}: {error}");
        }
        // A healthcheck running pdq must parse too.
        let test = get(service, "healthcheck").and_then(|h| h["test"].as_vec().map(|_| &h["test"]));
        if let Some(test) = test {
            let test = strings(test);
            if test.get(1).map(String::as_str) == Some("pdq") {
                if let Err(error) = parse_with_env(&test[2..], &[]) {
                    panic!("service {name}'s healthcheck: {error}");
                }
            }
        }
    }
}

#[test]
fn a_typo_in_a_flag_or_a_variable_is_caught() {
    let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let env = |name: &str, value: &str| vec![(name.to_owned(), value.to_owned())];
    assert!(parse_with_env(&args(&["run"]), &env("PDQ_RATE_LIMIT", "300")).is_ok());
    assert!(parse_with_env(&args(&["run", "--metrics-adr", "x"]), &[]).is_err());
    assert!(parse_with_env(&args(&["run"]), &env("GENESYS_REGON", "eu-west-1")).is_err());
    assert!(parse_with_env(&args(&["run"]), &env("PDQ_RATE_LIMIT", "lots")).is_err());
    assert!(parse_with_env(&args(&["migrate"]), &env("PDQ_EXECUTORS", "4")).is_err());
    assert_eq!(interpolate("${PDQ_RATE_LIMIT:-300}"), "300");
    assert_eq!(interpolate("a${X}b"), "ab");
}

#[test]
fn no_compose_service_without_a_profile_reaches_a_real_region() {
    let mut seen_profiles = BTreeSet::new();
    for (name, service) in compose_services() {
        let found = profiles(&service);
        seen_profiles.extend(found.iter().cloned());
        let env = environment(get(&service, "environment"));
        let command = get(&service, "command").map(strings).unwrap_or_default();
        let talks_to_genesys =
            matches!(command.first().map(String::as_str), Some("run" | "doctor"))
                || env.iter().any(|(k, _)| k.starts_with("GENESYS_"));
        let region = env
            .iter()
            .any(|(k, _)| k == "GENESYS_REGION" || k == "GENESYS_LOGIN_URL");
        let api_url = env
            .iter()
            .find(|(k, _)| k == "GENESYS_API_URL")
            .map(|(_, v)| interpolate(v));
        let loopback_api = api_url
            .as_deref()
            .is_some_and(|url| url.starts_with("http://127.0.0.1:"));
        if found.is_empty() {
            assert!(
                !talks_to_genesys,
                "{name} has no profile and talks to Genesys Cloud"
            );
        }
        if found.iter().any(|p| p == "sandbox") && talks_to_genesys {
            assert!(
                loopback_api && !region,
                "{name} is in the sandbox profile but may reach a real region"
            );
        }
        if region {
            assert_eq!(
                found,
                ["org"],
                "{name} reaches a region outside the org profile"
            );
        }
    }
    for profile in ["sandbox", "org"] {
        assert!(seen_profiles.contains(profile), "{profile}");
    }
}

#[test]
fn compose_postgres_matches_the_readme_and_services_are_health_gated() {
    let readme = read("README.md");
    let url = "postgres://postgres@127.0.0.1:5432/postgres";
    assert!(readme.contains(url));
    let services = compose_services();
    let postgres = &services.iter().find(|(n, _)| n == "postgres").unwrap().1;
    let env = environment(get(postgres, "environment"));
    let env = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    assert_eq!(env("POSTGRES_HOST_AUTH_METHOD").as_deref(), Some("trust"));
    assert!(
        env("POSTGRES_PASSWORD").is_none(),
        "the documented URL has no password"
    );
    assert!(env("POSTGRES_DB").is_none_or(|db| db == "postgres"));
    assert!(env("POSTGRES_USER").is_none_or(|user| user == "postgres"));
    assert_eq!(
        strings(&Yaml::Array(vec![
            get(postgres, "ports").unwrap()[0].clone()
        ])),
        ["127.0.0.1:5432:5432"]
    );

    for (name, service) in &services {
        let command = get(service, "command").map(strings).unwrap_or_default();
        let one_shot = matches!(
            command.first().map(String::as_str),
            Some("migrate" | "roles")
        );
        let restart = get(service, "restart").and_then(scalar).unwrap_or_default();
        match one_shot {
            true => assert_eq!(restart, "no", "{name}"),
            false => assert_eq!(restart, "unless-stopped", "{name} has a restart policy"),
        }
        if let Some(depends) = get(service, "depends_on").and_then(Yaml::as_hash) {
            for (on, condition) in depends {
                let condition = condition["condition"].as_str().unwrap_or("");
                assert!(
                    condition == "service_healthy" || condition == "service_completed_successfully",
                    "{name} waits for {on:?} to be healthy or done, not just started"
                );
            }
        }
        // Workers log in with a pdq_worker login, never as the superuser.
        if command.first().map(String::as_str) == Some("run") {
            let env = environment(get(service, "environment"));
            let url = env
                .iter()
                .find(|(k, _)| k == "DATABASE_URL")
                .map(|(_, v)| v);
            assert!(
                url.is_some_and(|u| u.starts_with("postgres://pdq_worker_login@")),
                "{name}: {url:?}"
            );
        }
    }
    // The login role the workers use is the one `roles` creates.
    let roles = &services.iter().find(|(n, _)| n == "roles").unwrap().1;
    let command = strings(get(roles, "command").unwrap());
    assert!(command
        .windows(2)
        .any(|w| w == ["--worker", "pdq_worker_login"]));
    let operations = read("docs/operations.md");
    for profile in ["sandbox", "org"] {
        assert!(
            operations.contains(&format!("--profile {profile}")),
            "{profile}"
        );
    }
}

#[test]
fn the_dockerfile_builds_small_runs_unprivileged_and_checks_health_with_pdq() {
    let dockerfile = read("Dockerfile");
    let lines: Vec<&str> = dockerfile.lines().collect();
    assert!(
        lines.iter().filter(|l| l.starts_with("FROM ")).count() >= 2,
        "multi-stage"
    );
    assert!(
        dockerfile.contains("echo 'fn main() {}'"),
        "a dependency layer over dummies"
    );
    assert!(dockerfile.contains("--strip-all"), "a stripped binary");
    let user = lines
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("USER");
    assert!(
        !user.starts_with('0') && !user.starts_with("root"),
        "{user}"
    );
    for label in ["title", "version", "revision", "licenses", "description"] {
        assert!(
            dockerfile.contains(&format!("org.opencontainers.image.{label}=")),
            "{label}"
        );
    }
    let version = format!(
        "org.opencontainers.image.version=\"{}\"",
        env!("CARGO_PKG_VERSION")
    );
    assert!(
        dockerfile.contains(&version),
        "the label follows Cargo.toml"
    );
    // The JSON array of the (last) line that starts with `prefix`.
    let json_args = |prefix: &str| -> Vec<String> {
        let line = lines
            .iter()
            .rev()
            .find(|l| l.trim_start().starts_with(prefix))
            .unwrap_or_else(|| panic!("{prefix}"));
        serde_json::from_str(&line[line.find('[').unwrap()..]).unwrap()
    };
    assert!(dockerfile.contains("HEALTHCHECK "));
    let health = json_args("CMD [\"pdq\", \"healthcheck\"");
    parse_with_env(&health[1..], &[]).expect("the HEALTHCHECK parses");
    let run = json_args("CMD [");
    parse_with_env(&run, &[("PDQ_METRICS_ADDR".into(), "0.0.0.0:9187".into())])
        .expect("the default command parses");
    let ignore = read(".dockerignore");
    let entries: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    // Of .git only what names the commit reaches the build: everything, then the exceptions.
    for entry in [
        "target/",
        ".git/*",
        "!.git/HEAD",
        "!.git/packed-refs",
        "!.git/refs",
    ] {
        assert!(entries.contains(&entry), "{entry}");
    }
    let position = |entry: &str| entries.iter().position(|l| *l == entry).unwrap();
    assert!(
        position(".git/*") < position("!.git/HEAD"),
        "exceptions after the rule"
    );
    assert!(
        !entries
            .iter()
            .any(|l| l.starts_with("!.git/objects") || *l == "!.git"),
        "the objects stay out of the context"
    );
    // The build copies those files where build.rs looks for them, and its reader too.
    let git_dir = lines
        .iter()
        .find_map(|l| l.strip_prefix("ENV PDQ_GIT_DIR="))
        .expect("ENV PDQ_GIT_DIR");
    assert!(
        lines.iter().any(|l| l.starts_with("COPY ")
            && l.contains(" .gi[t] ")
            && l.trim_end().ends_with(&format!("{git_dir}/"))),
        "COPY … .gi[t] {git_dir}/ (a glob, so a source without .git builds too)"
    );
    assert!(lines.contains(&"COPY build build"), "build/git_head.rs");
}

/// The host ports the services of `profile` (and those without a profile) publish.
fn published_ports(profile: &str) -> Vec<(String, u16)> {
    let mut ports = Vec::new();
    for (name, service) in compose_services() {
        let profiles = profiles(&service);
        if !profiles.is_empty() && !profiles.iter().any(|p| p == profile) {
            continue;
        }
        for port in get(&service, "ports").map(strings).unwrap_or_default() {
            // "127.0.0.1:HOST:CONTAINER" (or "HOST:CONTAINER").
            let parts: Vec<&str> = port.split(':').collect();
            let host = parts[parts.len() - 2]
                .parse()
                .unwrap_or_else(|_| panic!("{port}"));
            ports.push((name.clone(), host));
        }
    }
    ports
}

/// The port of a listen address flag's default (`--listen 127.0.0.1:9188`).
fn default_port(subcommand: &str, flag: &str) -> u16 {
    let mut root = Cli::command();
    root.build();
    let command = root.find_subcommand(subcommand).expect(subcommand);
    let arg = command
        .get_arguments()
        .find(|a| a.get_long() == Some(flag))
        .unwrap_or_else(|| panic!("{subcommand} --{flag}"));
    let default = arg.get_default_values()[0].to_str().unwrap();
    default.rsplit(':').next().unwrap().parse().unwrap()
}

#[test]
fn compose_leaves_the_default_ports_of_the_host_commands_free() {
    let console = default_port("console", "listen");
    let metrics = default_port("run", "metrics-addr");
    assert_ne!(console, metrics);
    for profile in ["sandbox", "org"] {
        let ports = published_ports(profile);
        let mut seen = BTreeSet::new();
        for (name, port) in &ports {
            assert!(seen.insert(*port), "{profile}: port {port} published twice");
            assert_ne!(
                *port, console,
                "{name} publishes {port}, the default of `pdq console` on the host"
            );
        }
    }
    // The sandbox leaves a host `pdq run` its default metrics port too; only the org worker
    // takes it, standing for that worker.
    for (name, port) in published_ports("sandbox") {
        assert_ne!(port, metrics, "{name} publishes `pdq run`'s default {port}");
    }
    let sandbox_metrics: Vec<u16> = published_ports("sandbox")
        .into_iter()
        .filter(|(name, _)| name == "emulator")
        .map(|(_, port)| port)
        .filter(|port| *port != 8710)
        .collect();
    assert_eq!(
        sandbox_metrics.len(),
        1,
        "the sandbox worker's metrics port"
    );
    let operations = read("docs/operations.md");
    assert!(
        operations.contains(&format!("127.0.0.1:{}/metrics", sandbox_metrics[0])),
        "docs/operations.md names the sandbox worker's metrics port"
    );
}

#[test]
fn the_helm_chart_parses_and_its_command_line_parses_with_the_cli() {
    let chart = yaml("deploy/helm/pdq/Chart.yaml");
    assert_eq!(chart["apiVersion"].as_str(), Some("v2"));
    assert_eq!(chart["name"].as_str(), Some("pdq"));
    assert_eq!(
        chart["appVersion"].as_str(),
        Some(env!("CARGO_PKG_VERSION"))
    );
    let values = yaml("deploy/helm/pdq/values.yaml");
    let args = strings(&values["args"]);
    assert_eq!(args.first().map(String::as_str), Some("run"));
    // The variables the Deployment sets, with values.yaml's extra ones.
    let template = read("deploy/helm/pdq/templates/deployment.yaml");
    let mut env: Vec<(String, String)> = template
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- name: "))
        .filter(|name| name.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
        .map(|name| (name.to_owned(), String::new()))
        .collect();
    assert!(env.iter().any(|(k, _)| k == "GENESYS_CLIENT_SECRET_FILE"));
    assert!(env.iter().any(|(k, _)| k == "DATABASE_URL_FILE"));
    if let Some(extra) = values["env"].as_hash() {
        for (k, v) in extra {
            env.push((
                k.as_str().unwrap().to_owned(),
                scalar(v).unwrap_or_default(),
            ));
        }
    }
    // Files stand in for the secrets so the parse sees a complete command line.
    for (name, value) in env.iter_mut() {
        if name.ends_with("_FILE") {
            *value = "/etc/pdq/secrets/x".to_owned();
        }
    }
    parse_with_env(&args, &env).unwrap_or_else(|e| panic!("the chart's worker: {e}"));
    assert!(
        template.contains(".Values.args"),
        "the Deployment runs values.args"
    );
    for (probe, path) in [("livenessProbe", "/livez"), ("readinessProbe", "/readyz")] {
        let at = template.find(probe).unwrap_or_else(|| panic!("{probe}"));
        let first = template[at..]
            .find("path: ")
            .unwrap_or_else(|| panic!("{probe}"));
        assert!(
            template[at + first..].starts_with(&format!("path: {path}\n")),
            "{probe}"
        );
    }
    let secret = read("deploy/helm/pdq/templates/secret.yaml");
    assert!(secret.contains("kind: Secret"));
    let monitor = read("deploy/helm/pdq/templates/servicemonitor.yaml");
    assert!(
        monitor.contains(".Values.serviceMonitor.enabled"),
        "optional"
    );
    assert_eq!(values["serviceMonitor"]["enabled"].as_bool(), Some(false));
}

#[test]
fn the_systemd_unit_is_hardened_and_its_exec_start_parses() {
    let unit = read("deploy/systemd/pdq.service");
    let settings: Vec<(&str, &str)> = unit
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .collect();
    let all = |key: &str| -> Vec<&str> {
        settings
            .iter()
            .filter(|(k, _)| *k == key)
            .map(|(_, v)| *v)
            .collect()
    };
    for (key, value) in [
        ("DynamicUser", "yes"),
        ("ProtectSystem", "strict"),
        ("NoNewPrivileges", "yes"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
    ] {
        assert_eq!(all(key), [value], "{key}");
    }
    let credentials: Vec<&str> = all("LoadCredential")
        .iter()
        .map(|c| c.split(':').next().unwrap())
        .collect();
    let env: Vec<(String, String)> = all("Environment")
        .iter()
        .map(|e| e.trim_matches('"').split_once('=').expect("KEY=VALUE"))
        .map(|(k, v)| {
            (
                k.to_owned(),
                v.replace("%d", "/run/credentials/pdq.service"),
            )
        })
        .collect();
    for (variable, credential) in [
        ("GENESYS_CLIENT_SECRET_FILE", "genesys-client-secret"),
        ("DATABASE_URL_FILE", "database-url"),
    ] {
        assert!(
            credentials.contains(&credential),
            "LoadCredential={credential}"
        );
        let value = env
            .iter()
            .find(|(k, _)| k == variable)
            .map(|(_, v)| v.as_str());
        assert_eq!(
            value,
            Some(format!("/run/credentials/pdq.service/{credential}").as_str()),
            "{variable}"
        );
    }
    // With the settings of the example EnvironmentFile.
    assert_eq!(all("EnvironmentFile"), ["/etc/pdq/pdq.env"]);
    let mut env = env;
    env.extend(
        read("deploy/systemd/pdq.env.example")
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned())),
    );
    let exec = all("ExecStart");
    assert_eq!(exec.len(), 1);
    let words: Vec<String> = exec[0].split_whitespace().map(str::to_owned).collect();
    assert!(words[0].ends_with("/pdq"), "{words:?}");
    parse_with_env(&words[1..], &env).unwrap_or_else(|e| panic!("ExecStart: {e}"));
    let stop: u64 = all("TimeoutStopSec")[0]
        .trim_end_matches('s')
        .parse()
        .unwrap();
    assert!(stop > 25, "systemd waits longer than pdq's shutdown grace");
}
