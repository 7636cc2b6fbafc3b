//! # falcon-actors: FalconPay's supervised actors
//!
//! Payment, risk and wallet are ractor actors under one root supervisor
//! ([`runtime`]). Each reads its durable JetStream consumers in batches and
//! handles a batch in one database transaction ([`batch`]): an inbox row
//! per message makes redeliveries harmless, and an outbox row per event,
//! written in the same transaction, is published by the actor's relay
//! ([`relay`]) with `Nats-Msg-Id` = event id. So every effect happens once,
//! whatever is killed when.
//!
//! - [`wallet`], [`risk`], [`payment`]: the actors' steps, entities and
//!   migrations (each actor owns its database);
//! - [`store`]: connections, inbox, outbox; [`migration`]: shared helpers;
//! - [`consumer`]: the ractor actor that runs an actor's consumer loop;
//! - [`relay`]: the ractor actor that publishes an actor's outbox;
//! - [`runtime`]: the root supervisor and [`runtime::Runtime`], what
//!   `falcon run` starts;
//! - [`invariants`]: the money invariants of DESIGN.md, checked across the
//!   actors' databases;
//! - [`settings`]: every knob, with its default.

pub mod batch;
pub mod consumer;
pub mod dlq;
pub mod error;
pub mod invariants;
pub mod migration;
pub mod observe;
pub mod payment;
pub mod relay;
pub mod replay;
pub mod risk;
pub mod runtime;
pub mod settings;
pub mod store;
pub mod telemetry;
pub mod wallet;

pub use error::{Error, StepError};
pub use runtime::Runtime;
pub use settings::Settings;

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
