//! pdq: a durable, Postgres-backed queue that writes participant data (participant attributes)
//! onto live Genesys Cloud conversations.
//!
//! The crate has four parts, one module each: [`queue`] (the only module with SQL), [`genesys`]
//! (the Genesys Cloud API client), [`worker`] (turns claimed jobs into API calls and outcomes) and
//! [`emulator`] (a faithful local stand-in for the Genesys Cloud endpoints pdq uses).
#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod console;
pub mod db;
pub mod emulator;
pub mod genesys;
pub mod metrics;
pub mod queue;
pub mod worker;
