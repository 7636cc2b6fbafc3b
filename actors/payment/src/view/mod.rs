//! The saga view: a projection of FALCON_EVT into one row per saga (payment
//! and refund sagas, and commands rejected before a saga began), kept by
//! its own durable consumer (`payment-view`) in the payment database. It is
//! what `falcon saga list` and `falcon saga stuck` read, and it is derived
//! state: `falcon replay --rebuild saga-view` deletes it and folds the
//! stream again into the same answer.
//!
//! - `handler`: [`SagaView`], the [`falcon_kernel::Handler`] of the
//!   `payment-view` loop, and [`saga_event_types`], its filter, derived
//!   from the saga table.
//! - `entity`: the table, [`saga_view`].
//! - `fold`: the rule, pure: which state a saga's set of event types folds
//!   to ([`fold_seen`]) and the row an event leaves.
//! - `projection`: [`project`], the set-based writes of a batch's rows.
//! - [`history`]: every saga event it folds, kept in the payment database
//!   beyond the stream's retention ([`saga_history`]).
//! - `queries`: what the CLI and the gauges read ([`list`], [`stuck`],
//!   [`stuck_count`], as [`SagaRow`]s).

mod entity;
mod fold;
mod handler;
pub mod history;
mod projection;
mod queries;

pub use entity::saga_view;
pub use fold::{fold_seen, CANONICAL, UNKNOWN};
pub use handler::{saga_event_types, SagaView};
pub use history::saga_history;
pub use projection::project;
pub use queries::{list, stuck, stuck_count, SagaRow};

/// The view's durable consumer (and its loop's label).
pub const CONSUMER: &str = "payment-view";

/// The read model's name, for `falcon replay --rebuild`.
pub const READ_MODEL: &str = "saga-view";
