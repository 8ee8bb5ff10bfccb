//! `pdq man`: the manual page in roff, on stdout (`pdq man | man -l -`), or one page per
//! subcommand written into a folder.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, CommandFactory};

/// Where the pages go.
#[derive(Debug, Args)]
pub struct ManArgs {
    /// Write pdq.1 and one page per subcommand (pdq-run.1, …) into this folder instead.
    #[arg(long, value_name = "DIR")]
    pub out_dir: Option<PathBuf>,
}

/// Renders the page(s).
pub fn run(args: ManArgs) -> anyhow::Result<ExitCode> {
    let command = crate::cli::Cli::command();
    match args.out_dir {
        Some(dir) => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            clap_mangen::generate_to(command, &dir)
                .with_context(|| format!("writing man pages into {}", dir.display()))?;
        }
        None => {
            let mut page = Vec::new();
            clap_mangen::Man::new(command).render(&mut page)?;
            return super::print_bytes(&page);
        }
    }
    Ok(ExitCode::SUCCESS)
}
