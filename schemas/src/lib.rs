//! # falcon-schemas: FalconPay's wire contract
//!
//! Everything that crosses a process boundary is defined here, and nothing
//! here does I/O (no tokio, no NATS, no database):
//!
//! - [`currency`]: ISO 4217 currencies with their minor units, from a table;
//! - [`money`]: [`Money`], a `rust_decimal::Decimal` amount in one currency,
//!   built only through fallible constructors that check the minor units;
//! - [`ids`]: the id rule (1–64 characters of `[A-Za-z0-9_-]`);
//! - [`reason`]: machine-readable rejection reasons and the [`Invalid`] error;
//! - [`command`]: the client commands and their parsing/validation;
//! - [`event`]: the CloudEvents 1.0 envelope and every event's data;
//! - [`subject`]: stream names, subjects and header names;
//! - [`schema`]: the JSON Schema files under `schemas/json/`, compiled once.
//!
//! Money is never a float: on the wire it is a decimal string, in Rust a
//! [`Money`], in SQL an `i64` count of minor units.

pub mod command;
pub mod currency;
pub mod event;
pub mod ids;
pub mod money;
pub mod reason;
pub mod schema;
pub mod subject;

pub use command::{Command, CommandKind, ParseError};
pub use currency::Currency;
pub use event::{Envelope, Event, EventData, EventType};
pub use money::Money;
pub use reason::{Invalid, Reason};

/// A value from the network as shown in a refusal: quoted, control
/// characters escaped, and at most 64 characters of it (with the length
/// when cut), so a refusal never echoes an unbounded input.
pub fn shown(s: &str) -> String {
    const MAX: usize = 64;
    let mut out: String = s.chars().take(MAX).flat_map(char::escape_debug).collect();
    let n = s.chars().count();
    if n > MAX {
        out.push_str(&format!("… ({n} characters)"));
    }
    format!("\"{out}\"")
}
