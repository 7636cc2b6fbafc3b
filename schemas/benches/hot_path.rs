//! Micro-benchmarks of the pure code every message goes through:
//!
//! - `command/parse/payment.create`: [`Command::parse`] of a
//!   `falcon.cmd.payment.create` body, as the consumer calls it;
//! - `envelope/encode/*` and `envelope/decode/*`: [`Event::encode`] and
//!   [`Event::decode`] of events as the actors publish them (UUIDv7 id,
//!   causation id, traceparent, sub-second time);
//! - `schema/*`: JSON Schema validation with the compiled-once registry of
//!   [`falcon_schemas::schema`] (compilation happens before measuring).
//!
//! Run with `cargo bench -p falcon-schemas --bench hot_path`; see
//! `docs/MICROBENCH.md`.

use std::hint::black_box;

use chrono::{DateTime, Utc};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use falcon_schemas::event::{CapturedData, PaymentData, RiskData};
use falcon_schemas::schema::{validate_command, validate_event};
use falcon_schemas::{Command, CommandKind, Currency, Event, EventData, Money};
use serde_json::Value;

/// A `falcon.cmd.payment.create` body as a client sends it.
const PAYMENT_CREATE: &str = r#"{"payment_id":"pay_01JDQ3M8ZK4T7W2N","from_wallet":"w_alice","to_wallet":"w_bob","amount":"12.50","currency":"USD"}"#;

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn time() -> DateTime<Utc> {
    DateTime::from_timestamp(1_763_726_413, 123_456_789).expect("a valid timestamp")
}

/// The payment details, built the way the payment actor builds them from
/// the parsed command.
fn payment() -> PaymentData {
    let usd = Currency::from_code("USD").expect("USD is in the table");
    let amount = Money::parse("12.50", usd).expect("a valid amount");
    PaymentData {
        payment_id: "pay_01JDQ3M8ZK4T7W2N".into(),
        from_wallet: "w_alice".into(),
        to_wallet: "w_bob".into(),
        amount: amount.wire_amount(),
        currency: amount.currency(),
        principal: Some("alice".into()),
    }
}

fn event(data: EventData, source: &str) -> Event {
    Event::new(
        data,
        "0193a4c2-7c4e-7d3a-9f1e-2b5c8d9e0a0d".into(),
        time(),
        source,
        "0193a4c2-7c4e-7d3a-9f1e-2b5c8d9e0a01",
        Some(TRACEPARENT.into()),
    )
}

/// `(name, event)`: a plain payment event, one with flattened data and a
/// list, and one with flattened data and an extra string.
fn events() -> Vec<(&'static str, Event)> {
    vec![
        (
            "payment.requested",
            event(EventData::PaymentRequested(payment()), "falcon/payment"),
        ),
        (
            "risk.approved",
            event(
                EventData::RiskApproved(RiskData {
                    payment: payment(),
                    score: 12,
                    risk_reasons: Vec::new(),
                }),
                "falcon/risk",
            ),
        ),
        (
            "payment.captured",
            event(
                EventData::PaymentCaptured(CapturedData {
                    payment: payment(),
                    settlement_id: "stl_9f8e7d".into(),
                }),
                "falcon/payment",
            ),
        ),
    ]
}

fn command(c: &mut Criterion) {
    let subject = CommandKind::PaymentCreate.subject("alice");
    let body = PAYMENT_CREATE.as_bytes();
    assert!(matches!(
        Command::parse(&subject, body),
        Ok(Command::CreatePayment(_))
    ));
    let mut g = c.benchmark_group("command");
    g.throughput(Throughput::Elements(1));
    g.bench_function("parse/payment.create", |b| {
        b.iter(|| Command::parse(black_box(&subject), black_box(body)))
    });
    g.finish();
}

fn envelope(c: &mut Criterion) {
    let mut g = c.benchmark_group("envelope");
    g.throughput(Throughput::Elements(1));
    for (name, ev) in events() {
        let bytes = ev.encode();
        assert_eq!(
            Event::decode(&bytes).expect("own output decodes"),
            ev,
            "{name}"
        );
        g.bench_function(format!("encode/{name}"), |b| {
            b.iter(|| black_box(&ev).encode())
        });
        g.bench_function(format!("decode/{name}"), |b| {
            b.iter(|| Event::decode(black_box(&bytes)))
        });
    }
    g.finish();
}

fn schema(c: &mut Criterion) {
    let mut g = c.benchmark_group("schema");
    g.throughput(Throughput::Elements(1));
    // The first validation compiles every schema; it is not measured.
    let body: Value = serde_json::from_str(PAYMENT_CREATE).expect("the body is JSON");
    validate_command(CommandKind::PaymentCreate, &body).expect("the body is valid");
    g.bench_function("validate_command/payment.create", |b| {
        b.iter(|| validate_command(CommandKind::PaymentCreate, black_box(&body)))
    });
    for (name, ev) in events() {
        let value: Value = serde_json::from_slice(&ev.encode()).expect("an event is JSON");
        validate_event(&value).unwrap_or_else(|e| panic!("{name} is invalid: {e:?}"));
        g.bench_function(format!("validate_event/{name}"), |b| {
            b.iter(|| validate_event(black_box(&value)))
        });
    }
    g.finish();
}

criterion_group!(benches, command, envelope, schema);
criterion_main!(benches);
