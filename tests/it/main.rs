//! pdq's integration tests: one test binary, one module per area.
mod app;
mod cli;
mod clusters;
mod emulator;
mod helpers;
mod hostile;
mod http_edges;
mod jobs;
mod observability;
mod packaging;
mod paths;
mod postgres_setups;
mod queue;
mod roles;
mod scratch;
mod status;
mod worker;
