//! Secrets given as flags: every user of the machine can read a process's command line (`ps`,
//! `/proc/<pid>/cmdline`), so pdq warns at start (never showing the value) and names the forms
//! that keep them out of it.

use clap::parser::ValueSource;
use clap::ArgMatches;

/// Logs a warning for `--database-url` with a password and for `--client-secret`, when they
/// came from the command line (the environment and file forms are not warned about).
pub fn warn(matches: &ArgMatches) {
    let url = matches.get_one::<String>("database_url");
    if from_command_line(matches, "database_url") && url.is_some_and(|url| has_password(url)) {
        tracing::warn!(
            "--database-url carries a password, which every user of this machine can read in \
             the process list: give the URL in a file (--database-url-file, DATABASE_URL_FILE) \
             or in the DATABASE_URL environment variable"
        );
    }
    let mut current = matches.subcommand();
    while let Some((_, sub)) = current {
        let has_file_form = sub.try_contains_id("client_secret_file").is_ok();
        if has_file_form && from_command_line(sub, "client_secret") {
            tracing::warn!(
                "--client-secret on the command line can be read by every user of this machine \
                 in the process list: give it in a file (--client-secret-file, \
                 GENESYS_CLIENT_SECRET_FILE) or in the GENESYS_CLIENT_SECRET environment variable"
            );
        }
        current = sub.subcommand();
    }
}

/// Whether argument `id` of `matches` was given as a flag.
fn from_command_line(matches: &ArgMatches, id: &str) -> bool {
    matches.try_contains_id(id).unwrap_or(false)
        && matches.value_source(id) == Some(ValueSource::CommandLine)
}

/// Whether a Postgres URL holds a password (in its user part or as `?password=`).
fn has_password(url: &str) -> bool {
    url::Url::parse(url).is_ok_and(|url| {
        url.password().is_some() || url.query_pairs().any(|(key, _)| key == "password")
    })
}

#[cfg(test)]
mod tests {
    use super::has_password;

    #[test]
    fn a_password_is_found_in_the_user_part_or_the_query() {
        assert!(has_password("postgres://pdq:secret@db/pdq"));
        assert!(has_password("postgres://pdq@db/pdq?password=secret"));
        assert!(!has_password("postgres://pdq@db/pdq?sslmode=require"));
        assert!(!has_password("not a url"));
    }
}
