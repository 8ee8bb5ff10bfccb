//! pdq's integration tests: one test binary, one module per area.
mod app;
mod cli;
mod emulator;
mod escapes;
mod helpers;
mod hostile;
mod http_edges;
mod isolation;
mod jobs;
mod observability;
mod packaging;
mod paths;
mod queue;
mod roles;
mod scratch;
mod status;
mod worker;
