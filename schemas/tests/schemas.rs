//! The JSON Schema files under `schemas/json/` against the Rust types:
//! every file parses and compiles, every example validates and round-trips
//! through the Rust parser/decoder, every invalid command example is
//! refused with its listed reason, every command and event type has a file,
//! and what Rust emits validates against the schema.
//!
//! Over 600 lines: one test per property of the whole contract, each over
//! every file; they share the loaders at the top.

use std::collections::BTreeSet;

use chrono::{TimeZone, Utc};
use falcon_schemas::event::{
    CapturedData, DepositedData, PaymentData, PaymentFailedData, RejectedData, RiskData,
    WalletOpenedData,
};
use falcon_schemas::schema::{
    self, command_file, command_validator, event_file, event_validator, validate_command,
    validate_event, ENVELOPE_FILE, ID_BASE,
};
use falcon_schemas::{
    Command, CommandKind, Currency, Event, EventData, EventType, Money, ParseError, Reason,
};
use serde_json::{json, Value};

const DRAFT_2020_12: &str = "https://json-schema.org/draft/2020-12/schema";
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// What a schema file describes, from its name.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Command(CommandKind),
    Envelope,
    Event(EventType),
}

fn kind_of(name: &str) -> Kind {
    if name == ENVELOPE_FILE {
        return Kind::Envelope;
    }
    if let Some(k) = CommandKind::ALL
        .into_iter()
        .find(|k| command_file(*k) == name)
    {
        return Kind::Command(k);
    }
    if let Some(t) = EventType::ALL.iter().find(|t| event_file(**t) == name) {
        return Kind::Event(*t);
    }
    panic!("{name} is neither a command, the envelope, nor an event type")
}

fn doc(name: &str) -> Value {
    let text = schema::file(name).unwrap_or_else(|| panic!("{name} is not embedded"));
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{name} is not valid JSON: {e}"))
}

fn examples<'a>(name: &str, doc: &'a Value) -> &'a Vec<Value> {
    doc["examples"]
        .as_array()
        .unwrap_or_else(|| panic!("{name} has no `examples` array"))
}

fn invalid_examples<'a>(name: &str, doc: &'a Value) -> &'a Vec<Value> {
    doc["x-invalid-examples"]
        .as_array()
        .unwrap_or_else(|| panic!("{name} has no `x-invalid-examples` array"))
}

/// The envelope schema on its own (event files use it through `$ref`).
fn envelope_validator() -> jsonschema::Validator {
    jsonschema::options()
        .should_validate_formats(true)
        .build(&doc(ENVELOPE_FILE))
        .expect("envelope.json compiles")
}

fn bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).expect("a JSON value serializes")
}

fn cur(code: &str) -> Currency {
    Currency::from_code(code).expect("test currency is in the table")
}

/// Every `Reason`. The `match` has no wildcard, so a new variant fails to
/// compile here until it is listed (and then must be in `envelope.json`).
fn every_reason() -> Vec<Reason> {
    use Reason::*;
    let all = [
        MissingField,
        InvalidField,
        InvalidId,
        InvalidAmount,
        AmountNotPositive,
        AmountScaleExceedsCurrency,
        AmountTooLarge,
        UnknownCurrency,
        CurrencyMismatch,
        SameWallet,
        IdempotencyKeyReused,
        UnknownCommand,
        WalletNotFound,
        PaymentNotFound,
        PaymentNotRefundable,
        RefundExceedsPayment,
        InsufficientFunds,
        RiskRejected,
        AmountLimitExceeded,
        VelocityExceeded,
        WalletBlocked,
        CaptureDeclined,
        DeadlineExceeded,
        Unauthenticated,
        NotWalletOwner,
        NotTreasury,
        RecordMismatch,
    ];
    for r in all {
        match r {
            MissingField
            | InvalidField
            | InvalidId
            | InvalidAmount
            | AmountNotPositive
            | AmountScaleExceedsCurrency
            | AmountTooLarge
            | UnknownCurrency
            | CurrencyMismatch
            | SameWallet
            | IdempotencyKeyReused
            | UnknownCommand
            | WalletNotFound
            | PaymentNotFound
            | PaymentNotRefundable
            | RefundExceedsPayment
            | InsufficientFunds
            | RiskRejected
            | AmountLimitExceeded
            | VelocityExceeded
            | WalletBlocked
            | CaptureDeclined
            | DeadlineExceeded
            | Unauthenticated
            | NotWalletOwner
            | NotTreasury
            | RecordMismatch => {}
        }
    }
    all.to_vec()
}

/// Reasons for a body whose shape is wrong: the command schema must refuse
/// these too (the others need the currency table or business rules).
fn schema_catches(reason: &str) -> bool {
    matches!(
        reason,
        "missing_field" | "invalid_field" | "invalid_id" | "invalid_amount" | "amount_not_positive"
    )
}

// (a) ------------------------------------------------------------------

#[test]
fn every_file_is_json_and_compiles() {
    let mut names = BTreeSet::new();
    for (name, text) in schema::files() {
        assert!(names.insert(*name), "{name} is listed twice");
        let doc: Value =
            serde_json::from_str(text).unwrap_or_else(|e| panic!("{name} is not JSON: {e}"));
        assert_eq!(doc["$schema"], DRAFT_2020_12, "{name}: $schema");
        assert_eq!(doc["$id"], format!("{ID_BASE}{name}"), "{name}: $id");
        assert!(doc["title"].is_string(), "{name}: title");
        assert!(doc["description"].is_string(), "{name}: description");
        if let Err(e) = jsonschema::meta::validate(&doc) {
            panic!("{name} is not a valid draft 2020-12 schema: {e}");
        }
        match kind_of(name) {
            Kind::Command(k) => {
                let _ = command_validator(k);
            }
            Kind::Event(t) => {
                let _ = event_validator(t);
            }
            Kind::Envelope => {
                let _ = envelope_validator();
            }
        }
    }
}

#[test]
fn every_file_on_disk_is_embedded() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/json");
    let on_disk: BTreeSet<String> = std::fs::read_dir(dir)
        .expect("schemas/json is readable")
        .map(|e| {
            e.expect("directory entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|n| n.ends_with(".json"))
        .collect();
    let embedded: BTreeSet<String> = schema::files().iter().map(|(n, _)| n.to_string()).collect();
    assert_eq!(on_disk, embedded);
    for (name, text) in schema::files() {
        let disk = std::fs::read_to_string(format!("{dir}/{name}")).expect("file is readable");
        assert_eq!(&disk, text, "{name}");
    }
}

// (b) ------------------------------------------------------------------

#[test]
fn every_example_validates_against_its_schema() {
    let envelope = envelope_validator();
    for (name, _) in schema::files() {
        let doc = doc(name);
        let examples = examples(name, &doc);
        assert!(!examples.is_empty(), "{name} has no example");
        for ex in examples {
            let result = match kind_of(name) {
                Kind::Command(k) => validate_command(k, ex),
                Kind::Event(t) => {
                    assert!(event_validator(t).is_valid(ex), "{name}: {ex}");
                    validate_event(ex)
                }
                Kind::Envelope => envelope.validate(ex).map_err(|e| vec![e.to_string()]),
            };
            if let Err(errors) = result {
                panic!("{name}: example {ex} is invalid: {errors:#?}");
            }
            // Every example is also a valid envelope... of its own type only.
            if let Kind::Event(t) = kind_of(name) {
                assert!(envelope.is_valid(ex), "{name}: {ex}");
                for other in EventType::ALL.iter().filter(|o| **o != t) {
                    assert!(
                        !event_validator(*other).is_valid(ex),
                        "{name}: example validates as {other:?} too"
                    );
                }
            }
        }
    }
}

// (c) ------------------------------------------------------------------

#[test]
fn command_examples_round_trip_through_the_parser() {
    for kind in CommandKind::ALL {
        let name = command_file(kind);
        let doc = doc(&name);
        for ex in examples(&name, &doc) {
            let cmd = Command::parse(&kind.subject("alice"), &bytes(ex))
                .unwrap_or_else(|e| panic!("{name}: {ex} does not parse: {e}"));
            assert_eq!(cmd.kind(), kind, "{name}");
            assert_eq!(
                Some(cmd.key()),
                ex[kind.key_field()].as_str(),
                "{name}: idempotency key"
            );
            let out = cmd.to_json();
            if let Err(errors) = validate_command(kind, &out) {
                panic!("{name}: Rust's own output {out} is invalid: {errors:#?}");
            }
            let again = Command::parse(&kind.subject("alice"), &bytes(&out))
                .unwrap_or_else(|e| panic!("{name}: {out} does not parse again: {e}"));
            assert_eq!(cmd, again, "{name}");
        }
    }
}

#[test]
fn event_examples_round_trip_through_the_decoder() {
    for (name, _) in schema::files() {
        let expected = match kind_of(name) {
            Kind::Event(t) => Some(t),
            Kind::Envelope => None,
            Kind::Command(_) => continue,
        };
        let doc = doc(name);
        for ex in examples(name, &doc) {
            let ev = Event::decode(&bytes(ex))
                .unwrap_or_else(|e| panic!("{name}: {ex} does not decode: {e}"));
            if let Some(t) = expected {
                assert_eq!(ev.event_type(), t, "{name}: decoded type");
            }
            assert_eq!(ev.ty, ev.event_type().type_str(), "{name}");
            assert_eq!(ev.subject, ev.data.key(), "{name}: subject is the key");
            assert_eq!(ev.sagaid, ev.data.key(), "{name}: sagaid is the key");
            assert_eq!(
                ev.nats_subject(),
                format!("falcon.evt.{}.{}", ev.event_type().short(), ev.subject),
                "{name}"
            );
            let encoded = ev.encode();
            let out: Value = serde_json::from_slice(&encoded).expect("Rust emits JSON");
            // Examples are written in Rust's canonical form: field for field.
            assert_eq!(&out, ex, "{name}: Rust re-encodes the example differently");
            if let Err(errors) = validate_event(&out) {
                panic!("{name}: Rust's own output {out} is invalid: {errors:#?}");
            }
            let again = Event::decode(&encoded).expect("own output decodes");
            assert_eq!(ev, again, "{name}");
        }
    }
}

/// Dropping any one field of an example: the schema refuses it exactly when
/// the Rust parser/decoder does, so `required` matches the Rust types.
#[test]
fn schema_and_rust_agree_on_required_fields() {
    for (name, _) in schema::files() {
        let doc = doc(name);
        for ex in examples(name, &doc) {
            let obj = ex.as_object().expect("examples are objects");
            let mut cases: Vec<(String, Value)> = Vec::new();
            for field in obj.keys() {
                let mut v = ex.clone();
                v.as_object_mut().expect("object").remove(field);
                cases.push((field.clone(), v));
            }
            if let Some(data) = ex["data"].as_object() {
                for field in data.keys() {
                    let mut v = ex.clone();
                    v["data"].as_object_mut().expect("object").remove(field);
                    cases.push((format!("data.{field}"), v));
                }
            }
            for (field, v) in cases {
                let (rust_ok, schema_ok) = match kind_of(name) {
                    Kind::Command(k) => (
                        Command::parse(&k.subject("alice"), &bytes(&v)).is_ok(),
                        validate_command(k, &v).is_ok(),
                    ),
                    Kind::Event(_) | Kind::Envelope => (
                        Event::decode(&bytes(&v)).is_ok(),
                        validate_event(&v).is_ok(),
                    ),
                };
                assert_eq!(
                    rust_ok, schema_ok,
                    "{name}: without `{field}` Rust ok={rust_ok}, schema ok={schema_ok}"
                );
            }
        }
    }
}

/// The `data` properties of every event schema are exactly the fields the
/// Rust struct emits (optional ones included, from the examples).
#[test]
fn event_data_properties_match_rust_fields() {
    for &ty in EventType::ALL {
        let name = event_file(ty);
        let doc = doc(&name);
        let data = &doc["properties"]["data"];
        let props: BTreeSet<&str> = data["properties"]
            .as_object()
            .unwrap_or_else(|| panic!("{name}: data has no properties"))
            .keys()
            .map(String::as_str)
            .collect();
        let required: BTreeSet<&str> = data["required"]
            .as_array()
            .unwrap_or_else(|| panic!("{name}: data has no required"))
            .iter()
            .map(|v| v.as_str().expect("required names are strings"))
            .collect();
        assert!(required.is_subset(&props), "{name}: required ⊄ properties");
        let mut emitted = BTreeSet::new();
        for ex in examples(&name, &doc) {
            let ev = Event::decode(&bytes(ex)).expect("examples decode");
            let out = serde_json::to_value(&ev.data).expect("data serializes");
            let keys: BTreeSet<String> = out
                .as_object()
                .expect("data is an object")
                .keys()
                .cloned()
                .collect();
            for k in &required {
                assert!(keys.contains(*k), "{name}: Rust does not emit required {k}");
            }
            emitted.extend(keys);
        }
        let emitted: BTreeSet<&str> = emitted.iter().map(String::as_str).collect();
        assert_eq!(emitted, props, "{name}: schema properties vs Rust fields");
        assert_eq!(doc["properties"]["type"]["const"], ty.type_str(), "{name}");
        assert_eq!(doc["title"], ty.type_str(), "{name}");
        assert_eq!(doc["allOf"][0]["$ref"], ENVELOPE_FILE, "{name}");
    }
}

#[test]
fn reason_enum_is_every_reason() {
    let env = doc(ENVELOPE_FILE);
    let listed: Vec<&str> = env["$defs"]["reason"]["enum"]
        .as_array()
        .expect("envelope.json $defs/reason has an enum")
        .iter()
        .map(|v| v.as_str().expect("reasons are strings"))
        .collect();
    let rust: Vec<&str> = every_reason().iter().map(Reason::as_str).collect();
    assert_eq!(listed, rust);
    for s in listed {
        let r: Reason = serde_json::from_value(json!(s)).expect("a listed reason deserializes");
        assert_eq!(r.as_str(), s);
    }
}

// (d) ------------------------------------------------------------------

#[test]
fn invalid_command_examples_are_refused_with_their_reason() {
    let known: BTreeSet<&str> = every_reason().iter().map(Reason::as_str).collect();
    for kind in CommandKind::ALL {
        let name = command_file(kind);
        let doc = doc(&name);
        let invalid = invalid_examples(&name, &doc);
        assert!(!invalid.is_empty(), "{name} has no x-invalid-examples");
        for case in invalid {
            let body = &case["body"];
            let reason = case["reason"]
                .as_str()
                .unwrap_or_else(|| panic!("{name}: {case} has no reason"));
            assert!(known.contains(reason), "{name}: {reason} is not a Reason");
            match Command::parse(&kind.subject("alice"), &bytes(body)) {
                Err(ParseError::Rejected(r)) => {
                    assert_eq!(r.error.reason.as_str(), reason, "{name}: {body}");
                    assert_eq!(r.kind, Some(kind), "{name}: {body}");
                }
                other => panic!("{name}: {body} should be rejected ({reason}), got {other:?}"),
            }
            if schema_catches(reason) {
                assert!(
                    validate_command(kind, body).is_err(),
                    "{name}: the schema accepts {body} ({reason})"
                );
            }
        }
    }
}

// (e) ------------------------------------------------------------------

#[test]
fn every_command_and_event_type_has_a_file() {
    let names: BTreeSet<&str> = schema::files().iter().map(|(n, _)| *n).collect();
    for kind in CommandKind::ALL {
        assert!(names.contains(command_file(kind).as_str()), "{kind:?}");
    }
    for &ty in EventType::ALL {
        assert!(names.contains(event_file(ty).as_str()), "{ty:?}");
    }
    assert!(names.contains(ENVELOPE_FILE));
    assert_eq!(
        names.len(),
        CommandKind::ALL.len() + EventType::ALL.len() + 1,
        "no stray files"
    );
}

// (f) ------------------------------------------------------------------

fn payment(amount: &str, currency: &str) -> PaymentData {
    let money = Money::parse(amount, cur(currency)).expect("valid test amount");
    PaymentData {
        payment_id: "pay_rust_1".into(),
        from_wallet: "w_a".into(),
        to_wallet: "w_b".into(),
        amount: money.amount(),
        currency: money.currency(),
        principal: Some("alice".into()),
    }
}

fn rust_events() -> Vec<Event> {
    let t = Utc
        .with_ymd_and_hms(2025, 11, 21, 12, 0, 0)
        .single()
        .expect("a valid time");
    let now = Utc::now(); // nanosecond precision
    let tp = || Some(TRACEPARENT.to_owned());
    vec![
        Event::new(
            EventData::PaymentRequested(payment("12.5", "USD")),
            "e1".into(),
            t,
            "falcon/payment",
            "cmd-1",
            tp(),
        ),
        Event::new(
            EventData::FundsReserved(payment("1000", "JPY")),
            "e2".into(),
            now,
            "falcon/wallet",
            "e1",
            None,
        ),
        Event::new(
            EventData::PaymentCaptured(CapturedData {
                payment: payment("1.505", "OMR"),
                settlement_id: "stl-1".into(),
            }),
            "e3".into(),
            now,
            "falcon/payment",
            "e2",
            tp(),
        ),
        Event::new(
            EventData::RiskRejected(RiskData {
                payment: payment("9999.99", "EUR"),
                score: 100,
                risk_reasons: vec![Reason::AmountLimitExceeded, Reason::WalletBlocked],
            }),
            "e4".into(),
            t,
            "falcon/risk",
            "e1",
            tp(),
        ),
        Event::new(
            EventData::PaymentFailed(PaymentFailedData {
                payment: payment("0.01", "USD"),
                reason: Reason::DeadlineExceeded,
                message: "deadline passed".into(),
                compensated: true,
            }),
            "e5".into(),
            t,
            "falcon/payment",
            "e4",
            None,
        ),
        Event::new(
            EventData::PaymentRejected(RejectedData {
                command: "payment.create".into(),
                key: "unkeyed~17".into(),
                reason: Reason::MissingField,
                message: "payment_id is required".into(),
                field: None,
            }),
            "e6".into(),
            t,
            "falcon/payment",
            "FALCON_CMD-17",
            tp(),
        ),
        Event::new(
            EventData::WalletOpened(WalletOpenedData {
                wallet_id: "w_a".into(),
                owner: "Ada Lovelace".into(),
                currency: cur("GBP"),
            }),
            "e7".into(),
            t,
            "falcon/wallet",
            "cmd-w_a",
            tp(),
        ),
        Event::new(
            EventData::WalletDeposited(DepositedData {
                wallet_id: "w_a".into(),
                reference: "dep-1".into(),
                amount: Money::parse("250", cur("GBP")).expect("valid").amount(),
                currency: cur("GBP"),
            }),
            "e8".into(),
            t,
            "falcon/wallet",
            "cmd-dep-1",
            None,
        ),
    ]
}

#[test]
fn events_built_in_rust_validate_against_their_schema() {
    for ev in rust_events() {
        let value: Value = serde_json::from_slice(&ev.encode()).expect("Rust emits JSON");
        if let Err(errors) = validate_event(&value) {
            panic!("{:?}: {value} is invalid: {errors:#?}", ev.event_type());
        }
        assert!(event_validator(ev.event_type()).is_valid(&value));
    }
}

#[test]
fn broken_events_are_refused() {
    let ev = &rust_events()[0];
    let good: Value = serde_json::from_slice(&ev.encode()).expect("Rust emits JSON");
    assert!(validate_event(&good).is_ok());
    // (what, JSON pointer, replacement)
    let broken = [
        ("amount as a number", "/data/amount", json!(12.5)),
        ("negative amount", "/data/amount", json!("-12.50")),
        ("zero amount", "/data/amount", json!("0.00")),
        ("amount with exponent", "/data/amount", json!("1e3")),
        ("lower-case currency", "/data/currency", json!("usd")),
        ("bad id", "/data/payment_id", json!("pay.1")),
        ("time not date-time", "/time", json!("yesterday")),
        ("bad traceparent", "/traceparent", json!("00-xyz")),
        ("specversion 0.3", "/specversion", json!("0.3")),
        ("not JSON data", "/datacontenttype", json!("text/plain")),
        ("data not an object", "/data", json!("x")),
        ("unknown type", "/type", json!("falcon.payment.exploded.v1")),
        ("type not a string", "/type", json!(1)),
    ];
    for (what, pointer, replacement) in broken {
        let mut v = good.clone();
        *v.pointer_mut(pointer).expect("the field exists") = replacement;
        assert!(validate_event(&v).is_err(), "{what}: {v}");
    }
    let mut untyped = good.clone();
    untyped.as_object_mut().expect("object").remove("type");
    assert!(validate_event(&untyped).is_err(), "no type");
    let mut risk: Value =
        serde_json::from_slice(&rust_events()[3].encode()).expect("Rust emits JSON");
    risk["data"]["risk_reasons"] = json!(["not_a_reason"]);
    assert!(validate_event(&risk).is_err(), "unknown reason");
    risk["data"]["risk_reasons"] = json!(["wallet_blocked"]);
    risk["data"]["score"] = json!(101);
    assert!(validate_event(&risk).is_err(), "score above 100");
}

#[test]
fn unknown_fields_are_allowed() {
    let mut ev: Value =
        serde_json::from_slice(&rust_events()[0].encode()).expect("Rust emits JSON");
    ev["falconextension"] = json!("x");
    ev["data"]["new_optional_field"] = json!(1);
    assert!(validate_event(&ev).is_ok());
    assert!(Event::decode(&bytes(&ev)).is_ok());
    let body = json!({
        "payment_id": "p1", "from_wallet": "a", "to_wallet": "b",
        "amount": "1", "currency": "USD", "future": true
    });
    assert!(validate_command(CommandKind::PaymentCreate, &body).is_ok());
    assert!(Command::parse(&CommandKind::PaymentCreate.subject("alice"), &bytes(&body)).is_ok());
}

#[test]
fn validation_errors_point_at_the_field() {
    let body = json!({
        "payment_id": "p1", "from_wallet": "a", "to_wallet": "b",
        "amount": 12.5, "currency": "USD"
    });
    let errors = validate_command(CommandKind::PaymentCreate, &body).expect_err("number amount");
    assert!(
        errors.iter().any(|e| e.starts_with("/amount")),
        "{errors:?}"
    );
}
