//! Installs the one tracing subscriber: human or JSON lines, filtered by `RUST_LOG`.

use std::fmt;
use std::io::IsTerminal;

use tracing::field::{Field, Visit};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::EnvFilter;

use crate::cli::LogFormat;

/// The server's notices (`schema "pdq" already exists, skipping`) are sqlx INFO events: kept
/// out of the log unless `RUST_LOG` names sqlx.
const QUIET_NOTICES: &str = "sqlx::postgres::notice=warn";

/// Installs the subscriber; logs go to stderr so tables and JSON on stdout stay clean.
/// Colour only when stderr is a terminal and `NO_COLOR` is unset or empty.
/// `default` is the filter when `RUST_LOG` is unset (`info`; `error` for a quiet demo).
///
/// Human lines show every field (the message, the event's and its spans' fields) through
/// [`crate::output::visible`]: a newline or escape sequence in a text from a producer or the
/// API (an external tag, an error body) is written as `\n` or `\u{1b}`, so it cannot forge a
/// log line or act on the terminal. JSON lines carry the texts exactly (JSON escapes them).
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
        LogFormat::Human => builder.fmt_fields(VisibleFields).with_ansi(colour()).init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_ansi(false)
            .init(),
    }
}

/// Fields as `name=value` separated by spaces (the message bare), each value made visible.
struct VisibleFields;

impl<'w> FormatFields<'w> for VisibleFields {
    fn format_fields<R: RecordFields>(&self, mut writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut visitor = VisibleVisitor {
            writer: &mut writer,
            first: true,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct VisibleVisitor<'a, 'w> {
    writer: &'a mut Writer<'w>,
    first: bool,
    result: fmt::Result,
}

impl Visit for VisibleVisitor<'_, '_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        // A `log` record's metadata, which the line's prefix already shows.
        if self.result.is_err() || field.name().starts_with("log.") {
            return;
        }
        let shown = format!("{value:?}");
        let shown = crate::output::visible(&shown);
        let pad = if self.first { "" } else { " " };
        self.first = false;
        self.result = match field.name() {
            "message" => write!(self.writer, "{pad}{shown}"),
            name => write!(
                self.writer,
                "{pad}{}={shown}",
                name.trim_start_matches("r#")
            ),
        };
    }
}

/// Whether log lines may carry ANSI colour codes.
fn colour() -> bool {
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    !no_color && std::io::stderr().is_terminal()
}
