//! The JSON Schema files of the contract, embedded and compiled once.
//!
//! `schemas/json/` holds one JSON Schema (draft 2020-12) per command body
//! (`cmd.<aggregate>.<name>.json`), the CloudEvents envelope
//! (`envelope.json`), and one file per event type
//! (`evt.<aggregate>.<name>.json`) describing the whole envelope of that
//! type: it refers to `envelope.json` through `allOf`/`$ref`, pins `type`,
//! and describes `data` field for field as the Rust struct serializes it.
//! The files are what clients in other languages validate against; the
//! tests in `schemas/tests/schemas.rs` keep them and the Rust types in step
//! (examples parse, Rust output validates, every type has a file).
//!
//! The files are embedded with `include_str!` (no I/O at run time) and
//! compiled the first time a validator is asked for; the `$ref`s to
//! `https://falconpay.dev/schemas/envelope.json` resolve against an
//! in-memory registry, never the network. Formats (`date-time`,
//! `uri-reference`) are asserted, not just annotated.
//!
//! A schema checks shape. [`Command::parse`](crate::Command::parse) stays
//! the authority on commands: it also checks what a schema cannot (the
//! currency table, the amount's scale against the currency's minor units,
//! the 64-bit ledger limit, `from_wallet != to_wallet`), and it is what
//! yields the machine-readable rejection reason. Command and event schemas
//! allow unknown properties, for forward compatibility.

use std::collections::HashMap;
use std::sync::OnceLock;

use jsonschema::{Registry, Validator};
use serde_json::Value;

use crate::{CommandKind, EventType};

/// The base of every file's `$id`: `https://falconpay.dev/schemas/<file>`.
pub const ID_BASE: &str = "https://falconpay.dev/schemas/";

/// The envelope schema's file name; event files `$ref` it.
pub const ENVELOPE_FILE: &str = "envelope.json";

macro_rules! embed {
    ($($name:literal),* $(,)?) => {
        &[$(($name, include_str!(concat!("../json/", $name)))),*]
    };
}

/// Every schema file, `(file name, text)`.
const FILES: &[(&str, &str)] = embed![
    "cmd.wallet.open.json",
    "cmd.wallet.deposit.json",
    "cmd.payment.create.json",
    "cmd.payment.refund.json",
    "envelope.json",
    "evt.payment.requested.json",
    "evt.payment.rejected.json",
    "evt.payment.captured.json",
    "evt.payment.capture_failed.json",
    "evt.payment.completed.json",
    "evt.payment.failed.json",
    "evt.payment.refund_requested.json",
    "evt.payment.refunded.json",
    "evt.payment.refund_failed.json",
    "evt.risk.approved.json",
    "evt.risk.rejected.json",
    "evt.wallet.opened.json",
    "evt.wallet.deposited.json",
    "evt.wallet.rejected.json",
    "evt.wallet.funds_reserved.json",
    "evt.wallet.reservation_declined.json",
    "evt.wallet.transfer_committed.json",
    "evt.wallet.funds_released.json",
    "evt.wallet.refund_committed.json",
    "evt.wallet.refund_declined.json",
    "evt.recon.mismatch.json",
];

/// Every schema file as `(file name, text)`: the four command schemas,
/// `envelope.json`, and one file per event type.
pub fn files() -> &'static [(&'static str, &'static str)] {
    FILES
}

/// The file name of a command's schema, e.g. `cmd.payment.create.json`.
pub fn command_file(kind: CommandKind) -> String {
    format!("cmd.{}.json", kind.as_str())
}

/// The file name of an event type's schema, e.g. `evt.wallet.funds_reserved.json`.
pub fn event_file(ty: EventType) -> String {
    format!("evt.{}.json", ty.short())
}

/// The text of the schema file `name`, if there is one.
pub fn file(name: &str) -> Option<&'static str> {
    FILES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, text)| *text)
}

struct Compiled {
    commands: HashMap<CommandKind, Validator>,
    events: HashMap<EventType, Validator>,
}

fn parsed(name: &str) -> Value {
    let text = file(name).unwrap_or_else(|| panic!("schemas/json/{name} is not embedded"));
    serde_json::from_str(text)
        .unwrap_or_else(|e| panic!("schemas/json/{name} is not valid JSON: {e}"))
}

fn compiled() -> &'static Compiled {
    static COMPILED: OnceLock<Compiled> = OnceLock::new();
    COMPILED.get_or_init(|| {
        // The files are embedded and covered by tests, so a failure here is
        // a build defect, not a run-time condition.
        let registry = Registry::new()
            .add(format!("{ID_BASE}{ENVELOPE_FILE}"), parsed(ENVELOPE_FILE))
            .and_then(|builder| builder.prepare())
            .unwrap_or_else(|e| panic!("schemas/json/{ENVELOPE_FILE} does not register: {e}"));
        let options = jsonschema::options()
            .with_draft(jsonschema::Draft::Draft202012)
            .with_registry(&registry)
            .should_validate_formats(true);
        let build = |name: &str| {
            options
                .build(&parsed(name))
                .unwrap_or_else(|e| panic!("schemas/json/{name} does not compile: {e}"))
        };
        Compiled {
            commands: CommandKind::ALL
                .into_iter()
                .map(|kind| (kind, build(&command_file(kind))))
                .collect(),
            events: EventType::ALL
                .iter()
                .map(|&ty| (ty, build(&event_file(ty))))
                .collect(),
        }
    })
}

/// The compiled schema of a command body (`schemas/json/cmd.<kind>.json`).
pub fn command_validator(kind: CommandKind) -> &'static Validator {
    compiled()
        .commands
        .get(&kind)
        .expect("every CommandKind::ALL entry is compiled")
}

/// The compiled schema of a whole event envelope of type `ty`
/// (`schemas/json/evt.<aggregate>.<name>.json`).
pub fn event_validator(ty: EventType) -> &'static Validator {
    compiled()
        .events
        .get(&ty)
        .expect("every EventType::ALL entry is compiled")
}

fn check(validator: &Validator, instance: &Value) -> Result<(), Vec<String>> {
    let errors: Vec<String> = validator
        .iter_errors(instance)
        .map(|e| {
            let path = e.instance_path().to_string();
            if path.is_empty() {
                e.to_string()
            } else {
                format!("{path}: {e}")
            }
        })
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// Validates a command body against its schema; the errors are one line
/// each, prefixed with the JSON pointer of the offending value.
pub fn validate_command(kind: CommandKind, body: &Value) -> Result<(), Vec<String>> {
    check(command_validator(kind), body)
}

/// Validates a whole event envelope against the schema of its `type`. An
/// envelope without a string `type`, or with a type FalconPay does not
/// define, is an error.
pub fn validate_event(envelope: &Value) -> Result<(), Vec<String>> {
    let ty = match envelope.get("type") {
        Some(Value::String(s)) => s,
        Some(_) => return Err(vec!["/type: must be a string".to_owned()]),
        None => return Err(vec!["\"type\" is a required property".to_owned()]),
    };
    let Some(ty) = EventType::from_type_str(ty) else {
        return Err(vec![format!("/type: unknown event type {ty:?}")]);
    };
    check(event_validator(ty), envelope)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_has_a_compiled_validator() {
        for kind in CommandKind::ALL {
            assert!(file(&command_file(kind)).is_some(), "{kind:?}");
            let _ = command_validator(kind);
        }
        for &ty in EventType::ALL {
            assert!(file(&event_file(ty)).is_some(), "{ty:?}");
            let _ = event_validator(ty);
        }
        assert_eq!(
            files().len(),
            CommandKind::ALL.len() + 1 + EventType::ALL.len()
        );
    }

    #[test]
    fn unknown_or_missing_type_is_an_error() {
        let unknown = serde_json::json!({ "type": "falcon.payment.exploded.v1" });
        assert!(validate_event(&unknown).is_err());
        assert!(validate_event(&serde_json::json!({})).is_err());
        assert!(validate_event(&serde_json::json!({ "type": 1 })).is_err());
    }
}
