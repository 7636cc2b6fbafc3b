//! The payment actor: accepts `payment.create` and `payment.refund`, runs
//! its steps of the payment saga (capture with the settlement provider,
//! completion, failure) and of the refund saga, keeps each saga's state,
//! compensates sagas past their deadline, and keeps the saga view that
//! `falcon saga list` and `falcon saga stuck` read.
//!
//! Every transition goes through `falcon_sagas::State::apply`: a duplicate
//! event is a no-op, an event ahead of its predecessor is nak'd until the
//! predecessor has been handled, and a row is updated only from the state
//! it was read in, so two processes cannot both take a step. Provider calls
//! happen before the batch transaction opens (they are slow and idempotent
//! by payment id); their results are applied inside it.
//!
//! Who asked: a payment and a refund keep the principal whose command
//! created them (the last token of its subject), and every event built
//! from their rows carries it, so that the wallet pays and refunds only for
//! its owner. Nothing is trusted that the rows can check: an event whose
//! amount, currency or wallets are not its payment's (or refund's) is
//! poison, and moves nothing; on `funds_reserved` no provider is called.
//!
//! Shutdown and failure: as every actor, it stops between batches and is
//! restarted by its supervisor from the database.
//!
//! # Modules
//!
//! - [`actor`]: [`PaymentActor`], the actor as the runtime's registry lists
//!   it: settings, database, its two loops, the deadline sweeper, gauges,
//!   checks.
//! - `handler`: [`Payment`], the [`falcon_kernel::Handler`]: consumers,
//!   the provider calls of `prepare`, and the routing of each message to
//!   its step, one by one (`apply`) or a batch at once (`apply_batch`).
//! - `rows`: the payment rows a step reads and writes, cached for a batch
//!   on the fast path and written with one guarded statement.
//! - `create`: the `request` step (`payment.create`).
//! - `steps`: the payment saga's steps: capture, complete, fail, and
//!   `advance`, through which they all move a payment.
//! - `rejection`: the `payment.rejected` event of a refused command.
//! - `records`: events checked against the payment's and refund's rows
//!   (`record_mismatch`, `invalid amount in event`), and refund events
//!   built from the rows.
//! - `refund`: the refund saga's steps (`payment.refund`, the wallet's
//!   answer).
//! - [`deadline`]: the sweeper that compensates sagas past their deadline.
//! - [`provider`]: the settlement provider port, its simulator, retry with
//!   backoff and the circuit breaker.
//! - [`entity`]: the payment and refund tables, and [`RefundState`].
//! - [`migration`]: their migrations (and the saga view's).
//! - [`settings`]: sections `payment`, `provider` and `saga` of the config.
//! - [`verify`]: what `falcon verify` checks of the payment database.
//! - [`view`]: the saga view, a read model of FALCON_EVT with its own
//!   consumer.
//!
//! Depends on the kernel, sagas, schemas and nats crates, never on another
//! actor's crate.

pub mod actor;
mod create;
pub mod deadline;
pub mod entity;
mod handler;
pub mod migration;
pub mod provider;
mod records;
mod refund;
mod rejection;
mod rows;
pub mod settings;
mod steps;
pub mod verify;
pub mod view;

#[cfg(test)]
mod attacks;
#[cfg(test)]
mod testing;

pub use actor::PaymentActor;
pub use entity::RefundState;
pub use handler::Payment;
pub use provider::Captures;

/// The CloudEvents `source` of the payment actor's events.
pub const SOURCE: &str = "falcon/payment";
