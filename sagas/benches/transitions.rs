//! Micro-benchmarks of the saga state machine:
//!
//! - `apply/*`: [`State::apply`] of each event of a completed payment saga,
//!   from the state before it, and of a redelivered event (a duplicate);
//! - `fold/*`: [`fold`] of every event of a completed saga and of a saga
//!   compensated after a failed capture.
//!
//! The inputs are real events built with `falcon_schemas::Event::new`, as
//! the actors publish them; the state machine reads their type.
//!
//! Run with `cargo bench -p falcon-sagas --bench transitions`; see
//! `docs/MICROBENCH.md`.

use std::hint::black_box;

use chrono::DateTime;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use falcon_sagas::state::fold;
use falcon_sagas::{State, Transition};
use falcon_schemas::event::{CapturedData, FailureData, PaymentData, PaymentFailedData, RiskData};
use falcon_schemas::{Currency, Event, EventData, Money, Reason};

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

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

fn event(data: EventData, source: &str, n: u32) -> Event {
    let time = DateTime::from_timestamp(1_763_726_413 + i64::from(n), 123_456_789)
        .expect("a valid timestamp");
    Event::new(
        data,
        format!("0193a4c2-7c4e-7d3a-9f1e-2b5c8d9e0a{n:02x}"),
        time,
        source,
        &format!("0193a4c2-7c4e-7d3a-9f1e-2b5c8d9e0b{n:02x}"),
        Some(TRACEPARENT.into()),
    )
}

fn failure(reason: Reason, message: &str) -> FailureData {
    FailureData {
        payment: payment(),
        reason,
        message: message.into(),
    }
}

/// requested → approved → reserved → captured → committed → completed.
fn completed_saga() -> Vec<Event> {
    vec![
        event(EventData::PaymentRequested(payment()), "falcon/payment", 1),
        event(
            EventData::RiskApproved(RiskData {
                payment: payment(),
                score: 12,
                risk_reasons: Vec::new(),
            }),
            "falcon/risk",
            2,
        ),
        event(EventData::FundsReserved(payment()), "falcon/wallet", 3),
        event(
            EventData::PaymentCaptured(CapturedData {
                payment: payment(),
                settlement_id: "stl_9f8e7d".into(),
            }),
            "falcon/payment",
            4,
        ),
        event(EventData::TransferCommitted(payment()), "falcon/wallet", 5),
        event(EventData::PaymentCompleted(payment()), "falcon/payment", 6),
    ]
}

/// requested → approved → reserved → capture failed → released → failed.
fn compensated_saga() -> Vec<Event> {
    let mut events = completed_saga();
    events.truncate(3);
    events.push(event(
        EventData::PaymentCaptureFailed(failure(
            Reason::CaptureDeclined,
            "the provider declined the capture",
        )),
        "falcon/payment",
        4,
    ));
    events.push(event(
        EventData::FundsReleased(failure(
            Reason::CaptureDeclined,
            "the provider declined the capture",
        )),
        "falcon/wallet",
        5,
    ));
    events.push(event(
        EventData::PaymentFailed(PaymentFailedData {
            payment: payment(),
            reason: Reason::CaptureDeclined,
            message: "the provider declined the capture".into(),
            compensated: true,
        }),
        "falcon/payment",
        6,
    ));
    events
}

fn apply(c: &mut Criterion) {
    let mut g = c.benchmark_group("apply");
    g.throughput(Throughput::Elements(1));
    let mut state = None;
    for ev in completed_saga() {
        let before = state;
        let Transition::Moved(after) = State::apply(before, ev.event_type()) else {
            panic!("{:?} does not move {before:?}", ev.event_type());
        };
        g.bench_function(ev.event_type().short(), |b| {
            b.iter(|| State::apply(black_box(before), black_box(&ev).event_type()))
        });
        state = Some(after);
    }
    assert_eq!(state, Some(State::Completed));
    // A redelivery after completion: the machine walks the state's path to
    // recognise it.
    let redelivered = completed_saga().swap_remove(4);
    assert_eq!(
        State::apply(state, redelivered.event_type()),
        Transition::Duplicate
    );
    g.bench_function("duplicate/wallet.transfer_committed", |b| {
        b.iter(|| State::apply(black_box(state), black_box(&redelivered).event_type()))
    });
    g.finish();
}

fn fold_saga(c: &mut Criterion) {
    let mut g = c.benchmark_group("fold");
    g.throughput(Throughput::Elements(1));
    for (name, events, end) in [
        ("completed", completed_saga(), State::Completed),
        ("compensated", compensated_saga(), State::Failed),
    ] {
        let (state, anomalies) = fold(events.iter().map(Event::event_type));
        assert_eq!((state, anomalies.len()), (Some(end), 0), "{name}");
        g.bench_function(name, |b| {
            b.iter(|| fold(black_box(&events).iter().map(Event::event_type)))
        });
    }
    g.finish();
}

criterion_group!(benches, apply, fold_saga);
criterion_main!(benches);
