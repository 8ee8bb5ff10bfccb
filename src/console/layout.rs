//! The page shell: head, navigation and the read-only badge.

use maud::{html, Markup, DOCTYPE};

/// Which section a page belongs to (highlighted in the navigation).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Section {
    Overview,
    Jobs,
    DeadLetters,
}

/// A whole page around `body`.
pub(crate) fn page(title: &str, section: Section, allow_writes: bool, body: Markup) -> Markup {
    let nav = [
        (Section::Overview, "/", "Overview"),
        (Section::Jobs, "/jobs", "Jobs"),
        (Section::DeadLetters, "/dlq", "Dead letters"),
    ];
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · pdq console" }
                link rel="stylesheet" href="/assets/console.css";
                script src="/assets/console.js" defer {}
            }
            body {
                header.top {
                    a.brand href="/" { "pdq" }
                    nav {
                        @for (s, href, label) in nav {
                            @if s == section {
                                a.current href=(href) aria-current="page" { (label) }
                            } @else {
                                a href=(href) { (label) }
                            }
                        }
                    }
                    @if allow_writes {
                        span.badge.writes title="requeue, purge and cancel are enabled" { "writes allowed" }
                    } @else {
                        span.badge.readonly title="start with --allow-writes to act" { "read-only" }
                    }
                }
                main { (body) }
            }
        }
    }
}
