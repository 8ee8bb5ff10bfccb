//! The console's pages: what every page shares (errors, small formatters, assets); the pages
//! themselves are in `overview_page.rs`, `job_pages.rs` (with a job's story and its
//! cancellation) and `dead_letter_pages.rs` (with requeue and purge).

mod dead_letter_pages;
mod job_pages;
mod overview_page;

pub(crate) use dead_letter_pages::{
    dead_letter, dead_letters, dlq_confirm, dlq_purge, dlq_requeue,
};
pub(crate) use job_pages::{cancel, cancel_confirm, job, jobs};
pub(crate) use overview_page::overview;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use chrono::{DateTime, Utc};
use maud::{html, Markup};

use super::charts::{self, format_number, Kind, Series};
use super::layout::{page, Section};
use super::params::{BadInput, Params};
use super::Shared;
use crate::queue::console::{
    self as data, ChartRange, DeadLetterKey, DeadLetterSearch, JobSearch, PAGE_SIZE,
};
use crate::queue::jobs::{self, JobFilter, JobRecord, JobState};
use crate::queue::{self, dlq, DeadLetter, DeadLetterFilter, DeadReason};

/// Why a page could not be shown.
pub(crate) enum PageError {
    /// The request's input is wrong (400).
    Bad(String),
    /// Nothing has this id (404).
    NotFound(String),
    /// The database failed (500, without internals).
    Database(queue::Error),
}

impl From<BadInput> for PageError {
    fn from(bad: BadInput) -> Self {
        PageError::Bad(bad.0)
    }
}

impl From<queue::Error> for PageError {
    fn from(error: queue::Error) -> Self {
        PageError::Database(error)
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        match self {
            PageError::Bad(message) => error_page(StatusCode::BAD_REQUEST, "Bad request", &message),
            PageError::NotFound(message) => {
                error_page(StatusCode::NOT_FOUND, "Not found", &message)
            }
            PageError::Database(error) => {
                tracing::error!(%error, "console: database error");
                let cause = match &error {
                    queue::Error::Database(sqlx::Error::Database(db)) => db.message().to_owned(),
                    queue::Error::Database(other) => crate::db::describe(other),
                    other => other.to_string(),
                };
                error_page(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Database error",
                    &format!("The database could not answer: {cause}"),
                )
            }
        }
    }
}

type PageResult = Result<Response, PageError>;

/// A stand-alone error page.
pub(crate) fn error_page(status: StatusCode, title: &str, message: &str) -> Response {
    let body = html! {
        (maud::DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { (title) " · pdq console" }
                link rel="stylesheet" href="/assets/console.css";
            }
            body {
                header.top { a.brand href="/" { "pdq" } nav { a href="/" { "Overview" } a href="/jobs" { "Jobs" } a href="/dlq" { "Dead letters" } } }
                main {
                    h1 { (status.as_u16()) " " (title) }
                    div.banner.error.message { (message) }
                }
            }
        }
    };
    (status, Html(body.into_string())).into_response()
}

fn ok(markup: Markup) -> PageResult {
    Ok(Html(markup.into_string()).into_response())
}

fn params(raw: &Option<String>) -> Params {
    Params::parse(raw.as_deref().unwrap_or("").as_bytes())
}

fn time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

fn opt_time(t: Option<DateTime<Utc>>) -> String {
    t.map_or("—".to_owned(), time)
}

fn opt<T: std::fmt::Display>(value: &Option<T>) -> String {
    value.as_ref().map_or("—".to_owned(), |v| v.to_string())
}

fn pretty(value: &serde_json::Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
}

fn parse_id(raw: &str) -> Result<i64, PageError> {
    match raw.parse::<i64>() {
        Ok(id) if id > 0 => Ok(id),
        _ => Err(PageError::Bad(format!(
            "{:?} is not a job id (a positive whole number)",
            raw.chars().take(60).collect::<String>()
        ))),
    }
}

/// The embedded stylesheet.
pub(crate) async fn css() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("../assets/console.css"),
    )
        .into_response()
}

/// The embedded script.
pub(crate) async fn js() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("../assets/console.js"),
    )
        .into_response()
}

/// Any other path.
pub(crate) async fn not_found() -> Response {
    error_page(
        StatusCode::NOT_FOUND,
        "Not found",
        "No such page: try the overview, jobs or dead letters.",
    )
}

fn where_is(locators: &queue::Locators) -> Markup {
    html! {
        @if let Some(cid) = locators.conversation_id {
            a href=(format!("/jobs?conversation={cid}")) { code { (cid) } }
        } @else if let Some(tag) = &locators.external_tag {
            "tag " code { (tag) }
        }
    }
}

fn participant(locators: &queue::Locators) -> String {
    if let Some(pid) = locators.participant_id {
        return pid.to_string();
    }
    if let Some(x) = &locators.participant_external_contact_id {
        return format!("external contact {x}");
    }
    if let Some(n) = &locators.participant_name {
        return format!("name {n}");
    }
    format!(
        "purpose {}",
        locators
            .participant_purpose
            .as_deref()
            .unwrap_or("customer")
    )
}

fn read_only_notice() -> Markup {
    html! {
        div.banner.paused { "This console is read-only: restart it with --allow-writes to requeue, purge or cancel." }
    }
}
