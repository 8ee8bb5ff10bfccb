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
            clap_mangen::generate_to(command.clone(), &dir)
                .with_context(|| format!("writing man pages into {}", dir.display()))?;
            let main = dir.join("pdq.1");
            std::fs::write(&main, page(command)?)
                .with_context(|| format!("writing {}", main.display()))?;
        }
        None => return super::print_bytes(&page(command)?),
    }
    Ok(ExitCode::SUCCESS)
}

/// pdq(1): clap's sections, with an EXIT STATUS section (the exit-code table) before VERSION.
fn page(command: clap::Command) -> std::io::Result<Vec<u8>> {
    let man = clap_mangen::Man::new(command);
    let mut page = Vec::new();
    man.render_title(&mut page)?;
    man.render_name_section(&mut page)?;
    man.render_synopsis_section(&mut page)?;
    man.render_description_section(&mut page)?;
    man.render_options_section(&mut page)?;
    man.render_subcommands_section(&mut page)?;
    page.extend_from_slice(b".SH \"EXIT STATUS\"\n");
    for exit in crate::exit::Exit::ALL {
        page.extend_from_slice(format!(".TP\n{}\n{}\n", exit.code(), exit.meaning()).as_bytes());
    }
    man.render_version_section(&mut page)?;
    Ok(page)
}
