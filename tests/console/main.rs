//! The operator console, tested in a real browser (headless Chromium through ChromeDriver)
//! and over plain HTTP for the safety rules.

#[path = "../it/helpers.rs"]
mod helpers;

#[allow(dead_code)]
#[path = "../it/app.rs"]
mod app;

mod browser;
mod heartbeat;
mod host;
mod pages;
mod safety;
mod support;
