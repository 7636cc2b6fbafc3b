//! # falcon-sagas: the sagas as data, and their state machine
//!
//! FalconPay runs its sagas by choreography: no orchestrator, each actor
//! reacts to the previous step's event. This crate writes the choreography
//! down as data ([`definition`]) so that it can be checked (every forward
//! step names its compensation), shown (`falcon saga show`) and enforced: the
//! table is the one source of which events each actor consumes
//! ([`definition::actor_of_trigger`]: every actor's consumer filter is derived
//! from it, and its steps refuse any other event), and the payment actor
//! refuses transitions it does not allow. It also holds the
//! pure state machine ([`state`]): `(state, event) → transition`, with time
//! passed in.
//!
//! Depends on `falcon-schemas` only; no I/O.

pub mod definition;
pub mod state;

pub use definition::{Actor, Compensation, SagaDef, Step, PAYMENT_SAGA, REFUND_SAGA, SAGAS};
pub use state::{SagaKind, State, Transition, Wait};
