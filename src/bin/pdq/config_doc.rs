//! docs/configuration.md, generated from the command line's definitions ([`Cli`]) so it cannot
//! drift: every flag of every command with its variable, default and meaning. The test fails
//! when the file differs from what the definitions give; `PDQ_WRITE_DOCS=1 cargo test --bin
//! pdq configuration` rewrites it. Compiled into the binary's own tests, where the clap types
//! live.

use clap::{Arg, ArgAction, Command, CommandFactory};

use crate::cli::Cli;

const PATH: &str = "docs/configuration.md";

/// A table cell: one line, pipes escaped.
fn cell(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|")
}

/// `--name <VALUE>`, `-v, --verbose`, or `<ID>` for a positional argument.
fn flag(arg: &Arg) -> String {
    let takes_value = matches!(arg.get_action(), ArgAction::Set | ArgAction::Append);
    let value = arg
        .get_value_names()
        .and_then(|names| names.first())
        .map(|name| name.to_string())
        .unwrap_or_else(|| arg.get_id().as_str().to_uppercase());
    match (arg.get_short(), arg.get_long()) {
        (_, None) => format!("`<{value}>`"),
        (short, Some(long)) => {
            let short = short.map(|s| format!("`-{s}`, ")).unwrap_or_default();
            match takes_value {
                true => format!("{short}`--{long} <{value}>`"),
                false => format!("{short}`--{long}`"),
            }
        }
    }
}

fn row(arg: &Arg) -> String {
    let env = arg
        .get_env()
        .map(|name| format!("`{}`", name.to_string_lossy()))
        .unwrap_or_default();
    let switch = matches!(
        arg.get_action(),
        ArgAction::SetTrue | ArgAction::SetFalse | ArgAction::Count
    );
    let defaults: Vec<String> = match switch {
        true => Vec::new(),
        false => arg
            .get_default_values()
            .iter()
            .map(|value| format!("`{}`", value.to_string_lossy()))
            .collect(),
    };
    let help = arg
        .get_long_help()
        .or(arg.get_help())
        .map(|help| help.to_string())
        .unwrap_or_default();
    let choices: Vec<String> = match arg.get_action() {
        ArgAction::Set | ArgAction::Append => arg
            .get_possible_values()
            .iter()
            .filter(|value| !value.is_hide_set())
            .map(|value| format!("`{}`", value.get_name()))
            .collect(),
        _ => Vec::new(),
    };
    let help = match (choices.is_empty(), help.trim_end().ends_with('.')) {
        (true, _) => help,
        (false, true) => format!("{help} One of {}.", choices.join(", ")),
        (false, false) => format!("{help}. One of {}.", choices.join(", ")),
    };
    format!(
        "| {} | {env} | {} | {} |\n",
        flag(arg),
        defaults.join(", "),
        cell(&help)
    )
}

fn shown(arg: &Arg) -> bool {
    !arg.is_hide_set() && !matches!(arg.get_id().as_str(), "help" | "version")
}

fn section(out: &mut String, path: &str, command: &Command, globals: &[String]) {
    let args: Vec<&Arg> = command
        .get_arguments()
        .filter(|arg| shown(arg) && !globals.contains(&arg.get_id().to_string()))
        .collect();
    let about = command
        .get_long_about()
        .or(command.get_about())
        .map(|about| about.to_string())
        .unwrap_or_default();
    let anchor_level = path.matches(' ').count().min(2);
    let hashes = "#".repeat(anchor_level + 2);
    out.push_str(&format!("{hashes} `{path}`\n\n{}\n\n", cell(&about)));
    if !args.is_empty() {
        out.push_str("| flag | variable | default | meaning |\n|---|---|---|---|\n");
        for arg in args {
            out.push_str(&row(arg));
        }
        out.push('\n');
    }
    for sub in command.get_subcommands().filter(|sub| !sub.is_hide_set()) {
        if sub.get_name() == "help" {
            continue;
        }
        section(out, &format!("{path} {}", sub.get_name()), sub, globals);
    }
}

/// The whole reference.
pub fn render() -> String {
    let mut command = Cli::command();
    command.build();
    let globals: Vec<String> = command
        .get_arguments()
        .filter(|arg| arg.is_global_set())
        .map(|arg| arg.get_id().to_string())
        .collect();
    let mut out = String::from(
        "# Configuration reference\n\n\
         Generated from pdq's command-line definitions (`src/bin/pdq/config_doc.rs`; a test fails \
         when this file and the definitions differ, and `PDQ_WRITE_DOCS=1 cargo test --bin pdq \
         configuration` rewrites it). Every flag with a variable can be set either way; the flag \
         wins. Exit codes: [operations.md](operations.md#exit-codes).\n\n\
         ## Every command\n\n\
         | flag | variable | default | meaning |\n|---|---|---|---|\n",
    );
    for arg in command
        .get_arguments()
        .filter(|arg| arg.is_global_set() && shown(arg))
    {
        out.push_str(&row(arg));
    }
    out.push('\n');
    for sub in command.get_subcommands().filter(|sub| !sub.is_hide_set()) {
        if sub.get_name() == "help" {
            continue;
        }
        section(&mut out, &format!("pdq {}", sub.get_name()), sub, &globals);
    }
    out
}

#[test]
fn the_configuration_reference_matches_the_command_line() {
    let path = format!("{}/{PATH}", env!("CARGO_MANIFEST_DIR"));
    let rendered = render();
    if std::env::var_os("PDQ_WRITE_DOCS").is_some() {
        std::fs::write(&path, &rendered).unwrap();
    }
    let written = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        written == rendered,
        "{PATH} is out of date: run PDQ_WRITE_DOCS=1 cargo test --bin pdq configuration"
    );
    for variable in ["DATABASE_URL", "PDQ_RATE_LIMIT", "PDQ_BACKFILL_SHARE"] {
        assert!(rendered.contains(&format!("`{variable}`")), "{variable}");
    }
}
