//! `pdq completions SHELL`: the shell completion script, on stdout.

use std::process::ExitCode;

use clap::{Args, CommandFactory};
use clap_complete::Shell;

/// Which shell to complete for.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// bash, zsh, fish (also elvish, powershell).
    pub shell: Shell,
}

/// Writes the script; see docs/operations.md for where each shell looks for it.
pub fn run(args: CompletionsArgs) -> anyhow::Result<ExitCode> {
    let mut command = crate::cli::Cli::command();
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut command, "pdq", &mut script);
    super::print_bytes(&script)
}
