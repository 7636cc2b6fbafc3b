//! # falcon-sagas: the sagas as data, and their state machine
//!
//! FalconPay runs its sagas by choreography: no orchestrator, each actor
//! reacts to the previous step's event. This crate writes the choreography
//! down as data ([`definition`]) so that it can be checked (every forward
//! step names its compensation), shown (`falcon saga show`) and enforced (the
//! payment actor refuses transitions the table does not allow), and holds the
//! pure state machine ([`state`]): `(state, event) → transition`, with time
//! passed in.
//!
//! Depends on `falcon-schemas` only; no I/O.

pub mod definition;
pub mod state;

pub use definition::{Actor, Compensation, SagaDef, Step, PAYMENT_SAGA, REFUND_SAGA, SAGAS};
pub use state::{SagaKind, State, Transition, Wait};
