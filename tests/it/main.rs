//! pdq's integration tests: one test binary, one module per area.
mod cli;
mod emulator;
mod helpers;
mod hostile;
mod http_edges;
mod observability;
mod queue;
mod roles;
mod worker;
