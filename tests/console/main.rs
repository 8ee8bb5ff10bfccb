//! The operator console, tested in a real browser (headless Chromium through ChromeDriver)
//! and over plain HTTP for the safety rules.

#[path = "../it/helpers.rs"]
mod helpers;

mod browser;
mod pages;
mod safety;
mod support;
