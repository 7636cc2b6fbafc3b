//! Attacks on the payment actor, through its handler (`prepare`, then
//! `apply` one message at a time, or `apply_batch`), on a SQLite file and
//! (when `FALCON_TEST_DATABASE_URL` is set) on PostgreSQL: events that
//! disagree with the payment's or the refund's row, refunds re-sent by
//! another principal, and a refund count that a decline would take below
//! zero. Each refused event moves nothing: the row is as it was, nothing is
//! published, and no provider is called.

mod backend;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use chrono::Utc;
use falcon_kernel::handler::Item;
use falcon_kernel::store::Outbox;
use falcon_kernel::{Handler, StepError};
use falcon_nats::dlq::Origin;
use falcon_nats::trace::TraceParent;
use falcon_nats::Delivery;
use falcon_sagas::State;
use falcon_schemas::event::{FailureData, PaymentData, RefundData, RefundFailureData};
use falcon_schemas::subject::{STREAM_CMD, STREAM_EVT};
use falcon_schemas::{Currency, Event, EventData, Reason};
use rust_decimal::Decimal;
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, TransactionTrait};
use sea_orm_migration::MigratorTrait;

use self::backend::{backends, empty, migrated, Fresh};
use crate::entity::{payment, refund, RefundState};
use crate::provider::{CaptureRequest, ProviderError, Resilient, Settlement, SettlementProvider};
use crate::settings::ProviderSettings;
use crate::testing::{insert_p1, p1, row_of, PRINCIPAL};
use crate::{Payment, SOURCE};

/// A provider that settles everything and counts what it was asked.
#[derive(Default)]
struct Counting(AtomicUsize);

#[async_trait::async_trait]
impl SettlementProvider for Counting {
    async fn capture(&self, request: &CaptureRequest) -> Result<Settlement, ProviderError> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(Settlement {
            settlement_id: format!("s-{}", request.payment_id),
        })
    }
}

/// The payment actor on `fresh`'s database, with `p1` in `state`, and the
/// provider it asks.
async fn payment_actor(fresh: &Fresh, state: State) -> (Payment, Arc<Counting>) {
    insert_p1(&fresh.db, state).await;
    let counting = Arc::new(Counting::default());
    let provider = Arc::new(Resilient::new(
        counting.clone(),
        &ProviderSettings::default(),
    ));
    let handler = Payment::new(
        fresh.db.clone(),
        provider,
        std::time::Duration::from_secs(60),
    );
    (handler, counting)
}

/// An event as the stream delivers it to the payment actor.
fn event(data: EventData, seq: u64) -> Delivery {
    let event = Event::new(
        data,
        format!("e{seq}"),
        Utc::now(),
        "falcon/wallet",
        "cause",
        None,
    );
    let origin = Origin {
        subject: event.nats_subject(),
        stream: STREAM_EVT.into(),
        stream_seq: seq,
        consumer: "payment-evt".into(),
        delivered: 1,
        msg_id: Some(format!("e{seq}")),
        traceparent: None,
    };
    Delivery::detached(&origin, Bytes::from(event.encode()))
}

/// A command `principal` sent.
fn command(verb: &str, principal: &str, body: &str, seq: u64) -> Delivery {
    let origin = Origin {
        subject: format!("falcon.cmd.payment.{verb}.{principal}"),
        stream: STREAM_CMD.into(),
        stream_seq: seq,
        consumer: "payment-cmd".into(),
        delivered: 1,
        msg_id: Some(format!("c{seq}")),
        traceparent: None,
    };
    Delivery::detached(&origin, Bytes::from(body.as_bytes().to_vec()))
}

/// One delivery as the careful path takes it: `prepare`, then `apply` in a
/// transaction of its own, committed, or rolled back on an error.
async fn careful(handler: &Payment, d: &Delivery) -> Result<Vec<EventData>, StepError> {
    let captures = handler.prepare(std::slice::from_ref(d)).await;
    let txn = handler.db().begin().await?;
    let mut out = Outbox::new(SOURCE, d, Utc::now(), TraceParent::new_root());
    match handler.apply(&txn, d, &captures, &mut out).await {
        Ok(()) => {
            txn.commit().await?;
            Ok(out.events.into_iter().map(|e| e.data).collect())
        }
        Err(e) => {
            txn.rollback().await?;
            Err(e)
        }
    }
}

/// One delivery as a batch of the fast path; rolled back on an error.
async fn fast(handler: &Payment, d: &Delivery) -> Result<Vec<EventData>, StepError> {
    let span = tracing::Span::none();
    let captures = handler.prepare(std::slice::from_ref(d)).await;
    let mut items = [Item {
        delivery: d,
        span: &span,
        out: Outbox::new(SOURCE, d, Utc::now(), TraceParent::new_root()),
    }];
    let txn = handler.db().begin().await?;
    match handler.apply_batch(&txn, &mut items, &captures).await {
        Ok(()) => {
            txn.commit().await?;
            let [item] = items;
            Ok(item.out.events.into_iter().map(|e| e.data).collect())
        }
        Err(e) => {
            txn.rollback().await?;
            Err(e)
        }
    }
}

/// `d` is poison on both paths, with a message starting `prefix`, and
/// leaves p1's row (and its refunds) as they were.
async fn assert_refused(handler: &Payment, d: &Delivery, prefix: &str) {
    let db = handler.db();
    let before = (row_of(db).await, refunds(db).await);
    for path in ["careful", "fast"] {
        let outcome = if path == "careful" {
            careful(handler, d).await
        } else {
            fast(handler, d).await
        };
        match outcome {
            Err(StepError::Poison(m)) => assert!(m.starts_with(prefix), "{path}: {m}"),
            other => panic!("{path}: not poison: {other:?}"),
        }
        assert_eq!((row_of(db).await, refunds(db).await), before, "{path}");
    }
}

async fn refunds(db: &impl ConnectionTrait) -> Vec<refund::Model> {
    refund::Entity::find().all(db).await.expect("refunds")
}

fn eur() -> Currency {
    Currency::from_code("EUR").expect("EUR")
}

/// `p1` as an attacker would have it: each field that matters changed.
fn tampered() -> Vec<(PaymentData, &'static str)> {
    let mismatch = "record_mismatch: payment p1";
    vec![
        (
            PaymentData {
                amount: Decimal::new(999_999, 2),
                ..p1()
            },
            mismatch,
        ),
        (
            PaymentData {
                to_wallet: "mallory".into(),
                ..p1()
            },
            mismatch,
        ),
        (
            PaymentData {
                from_wallet: "someone".into(),
                ..p1()
            },
            mismatch,
        ),
        (
            PaymentData {
                currency: eur(),
                ..p1()
            },
            mismatch,
        ),
        (
            PaymentData {
                amount: Decimal::new(-1250, 2),
                ..p1()
            },
            "invalid amount in event: payment p1",
        ),
        (
            PaymentData {
                amount: Decimal::new(12_501, 3),
                ..p1()
            },
            "invalid amount in event: payment p1",
        ),
    ]
}

/// A `funds_reserved` that disagrees with the payment's row calls no
/// provider, captures nothing and publishes nothing; the one that agrees
/// (even naming no principal) is captured, and the capture carries the
/// row's principal.
#[tokio::test]
async fn a_funds_reserved_that_disagrees_with_the_payment_is_poison() {
    for backend in backends() {
        let fresh = migrated(&backend).await;
        let (handler, provider) = payment_actor(&fresh, State::Requested).await;
        for (seq, (p, prefix)) in (1..).zip(tampered()) {
            assert_refused(&handler, &event(EventData::FundsReserved(p), seq), prefix).await;
        }
        assert_eq!(
            provider.0.load(Ordering::SeqCst),
            0,
            "no provider call, on {}",
            fresh.backend
        );
        assert_eq!(row_of(&fresh.db).await.saga_state(), Some(State::Requested));

        let unnamed = PaymentData {
            principal: None,
            ..p1()
        };
        let events = careful(&handler, &event(EventData::FundsReserved(unnamed), 99))
            .await
            .expect("captured");
        match &events[..] {
            [EventData::PaymentCaptured(c)] => {
                assert_eq!(c.payment, p1());
                assert_eq!(c.payment.principal.as_deref(), Some(PRINCIPAL));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(provider.0.load(Ordering::SeqCst), 1);
        assert_eq!(row_of(&fresh.db).await.saga_state(), Some(State::Captured));
    }
}

/// An event of the payment saga around a payment.
type Wrap = fn(PaymentData) -> EventData;

/// The steps after the capture check their event too: a
/// `transfer_committed`, a `funds_released` or a `reservation_declined`
/// that disagrees with the row is poison and moves nothing.
#[tokio::test]
async fn later_steps_that_disagree_with_the_payment_are_poison() {
    for backend in backends() {
        let cases: [(State, Wrap); 3] = [
            (State::Captured, EventData::TransferCommitted),
            (State::CaptureFailed, |p| {
                EventData::FundsReleased(FailureData {
                    payment: p,
                    reason: Reason::CaptureDeclined,
                    message: "declined".into(),
                })
            }),
            (State::Requested, |p| {
                EventData::ReservationDeclined(FailureData {
                    payment: p,
                    reason: Reason::InsufficientFunds,
                    message: "no money".into(),
                })
            }),
        ];
        for (state, data) in cases {
            let fresh = migrated(&backend).await;
            let (handler, _) = payment_actor(&fresh, state).await;
            for (seq, (p, prefix)) in (1..).zip(tampered()) {
                assert_refused(&handler, &event(data(p), seq), prefix).await;
            }
            // The event that agrees moves the payment, and what it
            // publishes carries the row's principal.
            let unnamed = PaymentData {
                principal: None,
                ..p1()
            };
            let events = careful(&handler, &event(data(unnamed), 99))
                .await
                .expect("a step");
            let published = match &events[..] {
                [EventData::PaymentCompleted(p)] => p,
                [EventData::PaymentFailed(f)] => &f.payment,
                other => panic!("{other:?}"),
            };
            assert_eq!(published, &p1(), "from {state}");
        }
    }
}

/// A refund of p1 (completed) asked by bob, and the `payment.refunded`
/// data the wallet's answer would carry.
async fn requested_refund(handler: &Payment) -> RefundData {
    let ask = command(
        "refund",
        "bob",
        r#"{"payment_id":"p1","refund_id":"r1"}"#,
        1,
    );
    let events = careful(handler, &ask).await.expect("requested");
    let [EventData::RefundRequested(r)] = &events[..] else {
        panic!("{events:?}");
    };
    r.clone()
}

/// A refund keeps who asked for it, and carries it to the wallet; the same
/// refund re-sent by another principal reuses its key; the wallet's answer
/// is believed only as far as the rows agree with it.
#[tokio::test]
async fn refund_events_that_disagree_with_the_refund_are_poison() {
    for backend in backends() {
        let fresh = migrated(&backend).await;
        let (handler, _) = payment_actor(&fresh, State::Completed).await;
        let r = requested_refund(&handler).await;
        assert_eq!(r.principal.as_deref(), Some("bob"));
        let stored = refunds(&fresh.db).await;
        assert_eq!(stored[0].principal.as_deref(), Some("bob"));

        let body = r#"{"payment_id":"p1","refund_id":"r1"}"#;
        let again = careful(&handler, &command("refund", "mallory", body, 2))
            .await
            .expect("refused");
        assert!(
            matches!(&again[..], [EventData::PaymentRejected(x)] if x.reason == Reason::IdempotencyKeyReused),
            "{again:?}"
        );
        let repeat = careful(&handler, &command("refund", "bob", body, 3))
            .await
            .expect("a repeat");
        assert!(repeat.is_empty(), "{repeat:?}");

        let mismatch = "record_mismatch: refund r1";
        let bent = [
            (
                RefundData {
                    amount: Decimal::new(999_999, 2),
                    ..r.clone()
                },
                mismatch,
            ),
            (
                RefundData {
                    from_wallet: "mallory".into(),
                    ..r.clone()
                },
                mismatch,
            ),
            (
                RefundData {
                    to_wallet: "a".into(),
                    ..r.clone()
                },
                mismatch,
            ),
            (
                RefundData {
                    currency: eur(),
                    ..r.clone()
                },
                mismatch,
            ),
            (
                RefundData {
                    payment_id: "p2".into(),
                    ..r.clone()
                },
                mismatch,
            ),
            (
                RefundData {
                    amount: Decimal::new(-700, 2),
                    ..r.clone()
                },
                "invalid amount in event: refund r1",
            ),
        ];
        for (seq, (bent, prefix)) in (10..).zip(bent) {
            assert_refused(
                &handler,
                &event(EventData::RefundCommitted(bent.clone()), seq),
                prefix,
            )
            .await;
            let declined = EventData::RefundDeclined(RefundFailureData {
                refund: bent,
                reason: Reason::InsufficientFunds,
                message: "no money".into(),
            });
            assert_refused(&handler, &event(declined, seq + 100), prefix).await;
        }
        assert_eq!(row_of(&fresh.db).await.refunded_minor, 1250);

        // The answer that agrees is taken, and its event carries bob.
        let unnamed = RefundData {
            principal: None,
            ..r.clone()
        };
        let declined = EventData::RefundDeclined(RefundFailureData {
            refund: unnamed,
            reason: Reason::NotWalletOwner,
            message: "not bob's".into(),
        });
        let events = careful(&handler, &event(declined, 999))
            .await
            .expect("failed");
        match &events[..] {
            [EventData::RefundFailed(f)] => assert_eq!(f.refund, r),
            other => panic!("{other:?}"),
        }
        assert_eq!(row_of(&fresh.db).await.refunded_minor, 0);
    }
}

/// A declined refund gives its amount back to the payment, checked: a
/// count smaller than the refund (a record that disagrees with itself) is
/// poison, and the count never goes below zero.
#[tokio::test]
async fn a_refund_failure_never_takes_the_refunded_count_below_zero() {
    for backend in backends() {
        let fresh = migrated(&backend).await;
        let (handler, _) = payment_actor(&fresh, State::Completed).await;
        let r = requested_refund(&handler).await;
        payment::Entity::update_many()
            .col_expr(payment::Column::RefundedMinor, Expr::value(100_i64))
            .filter(payment::Column::PaymentId.eq("p1"))
            .exec(&fresh.db)
            .await
            .expect("a count lowered by hand");
        let declined = EventData::RefundDeclined(RefundFailureData {
            refund: r,
            reason: Reason::InsufficientFunds,
            message: "no money".into(),
        });
        assert_refused(
            &handler,
            &event(declined, 2),
            "record_mismatch: payment p1 counts 100 minor units refunded",
        )
        .await;
        assert_eq!(row_of(&fresh.db).await.refunded_minor, 100);
        let stored = refunds(&fresh.db).await;
        assert_eq!(stored[0].refund_state(), Some(RefundState::Requested));
    }
}

/// A database from before the principal columns gets them, empty: its
/// payments' events carry no principal (and the wallet pays none of them).
#[tokio::test]
async fn the_migration_adds_the_principal_columns() {
    for backend in backends() {
        let fresh = empty(&backend).await;
        let db = &fresh.db;
        crate::migration::Migrator::up(db, Some(2))
            .await
            .expect("m0001 and m0002");
        insert_p1(db, State::Completed).await;
        for table in ["payments", "refunds"] {
            db.execute_unprepared(&format!("ALTER TABLE {table} DROP COLUMN principal"))
                .await
                .expect("the old shape");
        }
        crate::migration::Migrator::up(db, None)
            .await
            .expect("m0003");
        let row = row_of(db).await;
        assert_eq!(row.principal, None);
        assert_eq!(row.data().expect("data").principal, None);
    }
}
