//! The cost of signed events: signing one ~600-byte envelope, checking it,
//! and checking a forged one (the refusal path).
//!
//!     cargo bench -p falcon-kernel --bench signing

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use falcon_kernel::signing::KeyRing;
use falcon_sagas::Actor;

const SUBJECT: &str = "falcon.evt.wallet.funds_reserved.pay-0190f2c1a3b44c7d9e8f0a1b2c3d4e5f";

/// An envelope of the size FalconPay's saga events have (about 600 bytes).
fn envelope() -> Vec<u8> {
    let body = serde_json::json!({
        "specversion": "1.0",
        "id": "0190f2c1-a3b4-7c7d-9e8f-0a1b2c3d4e5f",
        "source": "falcon/wallet",
        "type": "falcon.wallet.funds_reserved.v1",
        "subject": "pay-0190f2c1a3b44c7d9e8f0a1b2c3d4e5f",
        "time": "2026-12-02T01:00:00.123456Z",
        "datacontenttype": "application/json",
        "sagaid": "pay-0190f2c1a3b44c7d9e8f0a1b2c3d4e5f",
        "causationid": "0190f2c1-a3b4-7c7d-9e8f-0a1b2c3d4e60",
        "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "data": {
            "payment_id": "pay-0190f2c1a3b44c7d9e8f0a1b2c3d4e5f",
            "from_wallet": "bench-3f2a1b0c-payer-17",
            "to_wallet": "bench-3f2a1b0c-payee-17",
            "amount": "12.50",
            "currency": "USD",
            "principal": "client"
        }
    });
    serde_json::to_vec(&body).unwrap_or_default()
}

fn signing(c: &mut Criterion) {
    let ring = KeyRing::from_keys(Actor::ALL.map(|a| (a, vec![vec![a as u8 + 1; 32]])))
        .unwrap_or_default();
    let body = envelope();
    let signed = ring.sign(Actor::Wallet, SUBJECT, &body).unwrap_or_default();
    let mut forged = signed.clone();
    if let Some(b) = forged.get_mut(40) {
        *b ^= 1;
    }
    let mut g = c.benchmark_group(format!("signing ({} byte envelope)", signed.len()));
    g.bench_function("sign", |b| {
        b.iter(|| ring.sign(Actor::Wallet, black_box(SUBJECT), black_box(&body)))
    });
    g.bench_function("check", |b| {
        b.iter(|| ring.check(black_box(SUBJECT), black_box(&signed)))
    });
    g.bench_function("check a forgery", |b| {
        b.iter(|| ring.check(black_box(SUBJECT), black_box(&forged)))
    });
    g.finish();
}

criterion_group!(benches, signing);
criterion_main!(benches);
