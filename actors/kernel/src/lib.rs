//! # falcon-kernel: the engine every FalconPay actor runs on
//!
//! An actor is a [`Handler`] (its steps) declared once as an
//! [`ActorDef`] (its name, database, migrations, consumers, checks). The
//! kernel runs it: a consumer loop pulls a batch from the actor's durable
//! JetStream consumers and handles it in one database transaction
//! ([`batch`]); an inbox row per message makes redeliveries harmless, and an
//! outbox row per event, written in the same transaction, is published by
//! the actor's relay ([`relay`]) with `Nats-Msg-Id` = event id. So every
//! effect happens once, whatever is killed when. A [`supervisor`] restarts
//! whatever fails.
//!
//! Modules:
//! - [`actor`]: [`ActorDef`], what an actor declares; [`actor::Loop`], a
//!   consumer loop as the runtime sees it; [`actor::Wiring`];
//! - [`handler`]: the [`Handler`] trait, and which events the saga table
//!   gives an actor ([`handler::events_for`], [`handler::decode_event`]);
//! - [`batch`]: one batch, one transaction (fast path, then careful path);
//! - [`consumer`]: the consumer loop as a ractor actor;
//! - [`owner`]: one owner per consumer loop, spread over the processes;
//! - [`relay`]: the outbox relay as a ractor actor;
//! - [`prune`]: the pruner of inbox and outbox rows past their retention;
//! - [`supervisor`]: the root supervisor and its restart policy;
//! - [`store`]: connecting, the SQLite write gate, inbox, outbox, bulk SQL,
//!   migration helpers;
//! - [`faults`]: fault injection for tests and chaos tooling;
//! - [`stats`]: counters a test or an operator can watch;
//! - [`telemetry`]: the span per message and the metric names;
//! - [`settings`]: the kernel's settings (consumer, relay, SQLite);
//! - [`signing`]: signed events ([`signing::KeyRing`]);
//! - [`verify`]: the vocabulary of `falcon verify`;
//! - [`error`]: [`Error`] and [`StepError`].
//!
//! Depends on `falcon-schemas`, `falcon-sagas` and `falcon-nats`, never on
//! an actor crate.

pub mod actor;
pub mod batch;
pub mod consumer;
pub mod endpoint;
pub mod error;
pub mod faults;
pub mod handler;
pub mod owner;
pub mod prune;
pub mod relay;
pub mod settings;
pub mod signing;
pub mod stats;
pub mod store;
pub mod supervisor;
pub mod telemetry;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod verify;

pub use actor::ActorDef;
pub use error::{Error, StepError};
pub use handler::Handler;
pub use store::Outbox;

use falcon_nats::Delivery;
use falcon_schemas::command::Rejection;
use falcon_schemas::event::RejectedData;

/// The rejection event's data for a refused command. A command without a
/// valid key is keyed by its place in the stream (`unkeyed~<seq>`).
pub fn rejection(r: &Rejection, delivery: &Delivery) -> RejectedData {
    RejectedData {
        command: r.command.clone(),
        key: r
            .key
            .clone()
            .unwrap_or_else(|| format!("unkeyed~{}", delivery.stream_seq)),
        reason: r.error.reason,
        message: r.error.message.clone(),
        field: r.error.field.map(str::to_owned),
    }
}
