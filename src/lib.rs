//! pdq: a durable, Postgres-backed queue that writes participant data (participant attributes)
//! onto live Genesys Cloud conversations.
//!
//! The crate has four parts, one module each: [`queue`] (the only module with SQL), [`genesys`]
//! (the Genesys Cloud API client), [`worker`] (turns claimed jobs into API calls and outcomes) and
//! [`emulator`] (a faithful local stand-in for the Genesys Cloud endpoints pdq uses). [`db`]
//! connects and migrates; [`metrics`] serves `/metrics` and `/healthz`; [`console`] serves the
//! operator web console (its SQL is in `queue/console.rs`). The binary (`pdq`, in
//! `src/bin/pdq/`) only parses flags and calls these.
//!
//! # Layout: the path of one job
//!
//! 1. **INSERT.** A producer inserts a row into `pdq.jobs` with plain SQL; the checks and
//!    triggers in `migrations/` refuse bad rows with a named constraint and fire
//!    `NOTIFY pdq_jobs`. `queue/enqueue.rs` is the same contract from Rust.
//! 2. **Claim.** The worker's claimer (`worker/mod.rs`), woken by `worker/wakeup.rs` or its poll,
//!    claims units (one participant's due jobs, coalesced) with `FOR UPDATE SKIP LOCKED`
//!    (`queue/claim.rs`, exported with the rest of the lease protocol from `queue/lease.rs`) and
//!    queues them live-first in `worker/buffer.rs`.
//! 3. **Run.** An executor takes a unit through the pipeline in `worker/execute.rs`: drop the
//!    expired jobs, find the conversation and participant (`worker/resolve.rs`), hold that
//!    participant, then send the PATCH in bodies under the size limit (`worker/send.rs`). Every
//!    call waits for the request budget (`worker/pacer.rs`, shared between processes through
//!    `queue/budget.rs`) and goes through `worker/calls.rs` and `worker/api.rs` to the client in
//!    `genesys/` (token in `genesys/auth.rs`, errors classified once in `genesys/error.rs`,
//!    error texts from the network cut on a character boundary and kept without NUL in
//!    `genesys/text.rs`).
//! 4. **Decide.** A failure goes through the outcome table, a pure function
//!    (`worker/decide.rs`, with backoff from `worker/backoff.rs`); fleet-wide rules (outages in
//!    `worker/outage.rs`, the 403 streak, configuration pauses) and the one log line and metric
//!    per outcome live in `worker/outcome.rs`. The table is written out in `docs/outcomes.md`.
//! 5. **Archive.** An applied unit goes to `worker/completer.rs`, which archives many units per
//!    statement into `pdq.finished_jobs` (`queue/finish.rs`); a retry returns the jobs to
//!    pending with a later `run_at`; a dead letter moves them to `pdq.dead_letters` with the
//!    reason and the API's error body, where `queue/dlq.rs` lists, requeues and purges them.
//! 6. **Upkeep.** `worker/maintenance.rs` renews leases, takes back expired ones, prunes and
//!    checks credentials while paused; `worker/heartbeat.rs` writes the process's row in
//!    `pdq.workers`, which `pdq status` (`queue/stats.rs`), `pdq jobs` (`queue/jobs.rs`) and the
//!    console (`console/`) read.
//!
//! The emulator (`emulator/`) serves the same endpoints with the API's shapes, status codes,
//! error bodies and rate-limit headers; `docs/genesys-api.md` lists the facts it follows and
//! their sources.
#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod console;
pub mod db;
pub mod emulator;
pub mod genesys;
pub mod metrics;
pub mod queue;
pub mod worker;
