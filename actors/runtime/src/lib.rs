//! # falcon-runtime: the registry of actors, and what runs them all
//!
//! FalconPay's actors are crates of their own (`falcon-payment`,
//! `falcon-risk`, `falcon-wallet`), each on the kernel (`falcon-kernel`).
//! This crate lists them once ([`registry`]) and gives every verb that must
//! know the actors its work, iterating that list:
//!
//! - [`registry`]: the one list of actors;
//! - [`auth`]: `falcon auth init`, the keys and the broker's permissions;
//! - [`runtime`]: [`Runtime`], what `falcon run` starts (the supervisor,
//!   each actor's loops, relay and timers), and topology provisioning;
//! - [`stores`]: the actors' databases, opened and migrated;
//! - [`probe`]: readiness and the sampled gauges behind `/metrics`;
//! - [`chaos`]: the kill control subject;
//! - [`dlq`]: re-driving a dead letter through the handler of its consumer;
//! - [`replay`]: re-delivering a stream range to an actor, rebuilding a
//!   read model;
//! - [`invariants`]: the money invariants, checked across the actors;
//! - [`security`]: the security mode, identities, TLS, signing keys;
//! - [`settings`]: every knob, with its default.

pub mod auth;
pub mod chaos;
pub mod databases;
pub mod dlq;
pub mod invariants;
pub mod probe;
pub mod registry;
pub mod replay;
pub mod runtime;
pub mod security;
pub mod settings;
pub mod stores;

pub use falcon_kernel::{telemetry, Error};
pub use runtime::Runtime;
pub use settings::Settings;
