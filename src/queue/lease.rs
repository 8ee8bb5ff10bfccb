//! The lease protocol, for workers holding a lease.
//!
//! A worker [`claim`]s units; each comes with a lease token and the ids of its jobs, together
//! its [`Fence`](super::Fence). Everything that extends or finishes a unit takes that fence (or
//! the token) and touches only the jobs still held under it:
//!
//! | call | a caller that does not (or no longer) hold the lease gets |
//! |---|---|
//! | [`retry`], [`retry_jobs`], [`release`], [`release_jobs`], [`dead_letter`], [`hold_target`] | [`Error::LeaseLost`](super::Error::LeaseLost); nothing changed |
//! | [`succeed_batch`] | its lease among those returned as no longer held; its jobs untouched |
//! | [`renew_leases`] | its lease among those returned as lost; nothing renewed |
//! | [`end_lease`] | a no-op (no participant is held under an unknown token) |
//!
//! [`rescue_expired_leases`] is the other side of the protocol: it takes back the units whose
//! lease ran out (their worker died or stalled), so another worker may claim them.
//!
//! Producers and operators never need this module: they write with
//! [`enqueue`](super::enqueue) and read with [`jobs`](super::jobs), [`dlq`](super::dlq) and
//! [`status`](super::status).

pub use super::claim::{
    claim, claim_on, rescue_expired_leases, ClaimOptions, DEFAULT_CLAIM_BATCH, DEFAULT_LEASE,
    DEFAULT_MAX_COALESCE,
};
pub use super::finish::{
    dead_letter, end_lease, hold_target, probe_recording, release, release_jobs, renew_leases,
    retry, retry_jobs, succeed_batch, target_key, DeadLetterRecord, Sent, Success, TargetHold,
    Uncertain,
};
