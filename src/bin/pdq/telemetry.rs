//! Installs the one tracing subscriber: human or JSON lines, filtered by `RUST_LOG`.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::cli::LogFormat;

/// The server's notices (`schema "pdq" already exists, skipping`) are sqlx INFO events: kept
/// out of the log unless `RUST_LOG` names sqlx.
const QUIET_NOTICES: &str = "sqlx::postgres::notice=warn";

/// Installs the subscriber; logs go to stderr so tables and JSON on stdout stay clean.
/// Colour only when stderr is a terminal and `NO_COLOR` is unset or empty.
/// `default` is the filter when `RUST_LOG` is unset (`info`; `error` for a quiet demo).
pub fn init(format: LogFormat, default: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let filter = match std::env::var("RUST_LOG") {
        Ok(asked) if asked.contains("sqlx") => filter,
        _ => filter.add_directive(QUIET_NOTICES.parse().expect("a valid directive")),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.with_ansi(colour()).init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_ansi(false)
            .init(),
    }
}

/// Whether log lines may carry ANSI colour codes.
fn colour() -> bool {
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    !no_color && std::io::stderr().is_terminal()
}
