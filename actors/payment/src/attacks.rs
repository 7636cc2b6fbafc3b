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
use crate::provider::{
    CaptureRequest, Held, ProviderError, Resilient, Settlement, SettlementProvider,
};
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
    async fn lookup(&self, _key: &str) -> Result<Option<Held>, ProviderError> {
        Ok(None)
    }

    async fn close(&self, _request: &CaptureRequest) -> Result<Held, ProviderError> {
        Ok(Held::Voided)
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

/// A `funds_reserved` for a payment past capture (a duplicate, a replay of
/// the stream, a dead letter redriven, a saga the deadline compensated)
/// asks the provider nothing, on either path, and moves nothing.
#[tokio::test]
async fn a_funds_reserved_past_capture_asks_no_provider() {
    // The payment saga's states from `Captured` to `Failed`.
    let past: Vec<State> = State::ALL
        .into_iter()
        .skip_while(|s| *s != State::Captured)
        .take_while(|s| *s != State::Rejected)
        .collect();
    assert_eq!(past.len(), 6, "{past:?}");
    for backend in backends() {
        for (seq, state) in (1..).zip(past.iter().copied()) {
            let fresh = migrated(&backend).await;
            let (handler, provider) = payment_actor(&fresh, state).await;
            let d = event(EventData::FundsReserved(p1()), seq);
            let careful_events = careful(&handler, &d).await.expect("a no-op");
            let fast_events = fast(&handler, &d).await.expect("a no-op");
            assert!(
                careful_events.is_empty() && fast_events.is_empty(),
                "{state:?} on {}: {careful_events:?} {fast_events:?}",
                fresh.backend
            );
            assert_eq!(
                provider.0.load(Ordering::SeqCst),
                0,
                "{state:?}: the provider was asked, on {}",
                fresh.backend
            );
            assert_eq!(row_of(&fresh.db).await.saga_state(), Some(state));
        }
    }
}

/// A provider in an outage until `up`, that runs the deadline sweeper (a
/// day late) while each capture is in flight, and records what it swept.
struct SweepsWhileCapturing {
    db: sea_orm::DatabaseConnection,
    up: std::sync::atomic::AtomicBool,
    swept: AtomicUsize,
    calls: AtomicUsize,
}

#[async_trait::async_trait]
impl SettlementProvider for SweepsWhileCapturing {
    async fn capture(&self, request: &CaptureRequest) -> Result<Settlement, ProviderError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.swept
            .fetch_add(sweep_a_day_late(&self.db).await, Ordering::SeqCst);
        if !self.up.load(Ordering::SeqCst) {
            return Err(ProviderError::unavailable("outage"));
        }
        Ok(Settlement {
            settlement_id: format!("s-{}", request.payment_id),
        })
    }
    async fn lookup(&self, _key: &str) -> Result<Option<Held>, ProviderError> {
        Ok(None)
    }

    async fn close(&self, _request: &CaptureRequest) -> Result<Held, ProviderError> {
        Ok(Held::Voided)
    }
}

/// What the deadline sweeper compensates a day from now.
async fn sweep_a_day_late(db: &sea_orm::DatabaseConnection) -> usize {
    let late = Utc::now() + chrono::Duration::days(1);
    crate::deadline::sweep(db, late, 100)
        .await
        .expect("a sweep")
}

/// Once a payment is marked capturing (before the provider is asked), its
/// deadline no longer compensates it: not while the call is in flight, not
/// through a provider outage, not after; the provider's answer, asked again
/// by the payment id, captures it. Without the mark the same sweep
/// compensates.
#[tokio::test]
async fn a_payment_being_captured_is_not_compensated_by_its_deadline() {
    for backend in backends() {
        let control = migrated(&backend).await;
        insert_p1(&control.db, State::Requested).await;
        assert_eq!(
            sweep_a_day_late(&control.db).await,
            1,
            "unmarked, the deadline compensates, on {}",
            control.backend
        );

        let fresh = migrated(&backend).await;
        insert_p1(&fresh.db, State::Requested).await;
        let provider = Arc::new(SweepsWhileCapturing {
            db: fresh.db.clone(),
            up: std::sync::atomic::AtomicBool::new(false),
            swept: AtomicUsize::new(0),
            calls: AtomicUsize::new(0),
        });
        let handler = Payment::new(
            fresh.db.clone(),
            Arc::new(Resilient::new(
                provider.clone(),
                &ProviderSettings {
                    retry_attempts_max: 1,
                    ..Default::default()
                },
            )),
            std::time::Duration::from_secs(60),
        );
        let d = event(EventData::FundsReserved(p1()), 1);
        // The outage: the capture waits (a transient error, nak'd).
        let outage = careful(&handler, &d).await;
        assert!(
            matches!(outage, Err(StepError::Transient(_))),
            "{outage:?} on {}",
            fresh.backend
        );
        let marked = row_of(&fresh.db).await;
        assert_eq!(marked.saga_state(), Some(State::Requested));
        let first_mark = marked.capture_started_at.expect("marked capturing");
        assert_eq!(
            sweep_a_day_late(&fresh.db).await,
            0,
            "a payment marked capturing was compensated, on {}",
            fresh.backend
        );
        // The provider is back: the redelivery asks again and captures.
        provider.up.store(true, Ordering::SeqCst);
        let events = careful(&handler, &d).await.expect("captured");
        assert!(
            matches!(&events[..], [EventData::PaymentCaptured(_)]),
            "{events:?}"
        );
        let row = row_of(&fresh.db).await;
        assert_eq!(row.saga_state(), Some(State::Captured));
        assert_eq!(
            row.capture_started_at,
            Some(first_mark),
            "the first mark is kept"
        );
        assert_eq!(provider.calls.load(Ordering::SeqCst), 2);
        assert_eq!(
            provider.swept.load(Ordering::SeqCst),
            0,
            "the deadline compensated a payment while its capture was in flight, on {}",
            fresh.backend
        );
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

/// `p1` marked capturing a minute ago, its deadline past: a capture in
/// doubt, as a provider outage or a dead capturing process leaves it.
async fn in_doubt(db: &sea_orm::DatabaseConnection) {
    insert_p1(db, State::Approved).await;
    let a_minute_ago = Utc::now() - chrono::Duration::minutes(1);
    payment::Entity::update_many()
        .col_expr(
            payment::Column::CaptureStartedAt,
            sea_orm::sea_query::Expr::value(a_minute_ago),
        )
        .col_expr(
            payment::Column::DeadlineAt,
            sea_orm::sea_query::Expr::value(a_minute_ago),
        )
        .exec(db)
        .await
        .expect("marked");
}

/// The event types the outbox holds, oldest first.
async fn outbox_types(db: &sea_orm::DatabaseConnection) -> Vec<String> {
    use falcon_kernel::store::outbox;
    use sea_orm::QueryOrder;
    outbox::Entity::find()
        .order_by_asc(outbox::Column::Id)
        .all(db)
        .await
        .expect("the outbox")
        .into_iter()
        .map(|r| r.subject)
        .collect()
}

/// A capture in doubt is settled by what the provider holds for its key,
/// never guessed: a charge completes it, a key never charged is closed
/// (a capture still on its way then charges nothing) and the saga is
/// compensated, and a provider that does not answer leaves it waiting. A
/// capture not yet in doubt, or not past its deadline, is left alone.
#[tokio::test]
async fn a_capture_in_doubt_is_settled_by_the_providers_record() {
    use crate::provider::Simulator;
    let doubt = std::time::Duration::from_secs(30);
    for backend in backends() {
        let settings = ProviderSettings {
            retry_attempts_max: 1,
            ..Default::default()
        };
        // Charged before the outage hid the answer: completed.
        let charged = migrated(&backend).await;
        in_doubt(&charged.db).await;
        let sim = Arc::new(Simulator::new(&settings));
        let request = CaptureRequest {
            payment_id: "p1".into(),
            amount: falcon_schemas::Money::from_minor(1250, crate::testing::usd()),
        };
        sim.capture(&request).await.expect("charged");
        let provider = Resilient::new(sim.clone(), &settings);
        let moved = crate::deadline::resolve(&charged.db, &provider, Utc::now(), doubt, 10)
            .await
            .expect("resolved");
        assert_eq!(moved, 1, "on {}", charged.backend);
        let row = row_of(&charged.db).await;
        assert_eq!(
            row.saga_state(),
            Some(State::Captured),
            "on {}",
            charged.backend
        );
        assert!(row.settlement_id.is_some());
        assert_eq!(
            outbox_types(&charged.db).await,
            ["falcon.evt.payment.captured.p1"]
        );
        assert_eq!(sim.charges().len(), 1, "charged once");

        // Never charged: the key is closed first, then the saga fails.
        let unused = migrated(&backend).await;
        in_doubt(&unused.db).await;
        let sim = Arc::new(Simulator::new(&settings));
        let provider = Resilient::new(sim.clone(), &settings);
        let moved = crate::deadline::resolve(&unused.db, &provider, Utc::now(), doubt, 10)
            .await
            .expect("resolved");
        assert_eq!(moved, 1, "on {}", unused.backend);
        let row = row_of(&unused.db).await;
        assert_eq!(
            row.saga_state(),
            Some(State::CaptureFailed),
            "on {}",
            unused.backend
        );
        assert_eq!(
            outbox_types(&unused.db).await,
            ["falcon.evt.payment.capture_failed.p1"]
        );
        let late = sim.capture(&request).await;
        assert!(
            matches!(&late, Err(ProviderError::Declined(m)) if m.contains("voided")),
            "a capture arriving after the close charged: {late:?}"
        );
        assert!(sim.charges().is_empty(), "{:?}", sim.charges());

        // The provider is out: nothing is guessed, the saga waits.
        let out = migrated(&backend).await;
        in_doubt(&out.db).await;
        let failing = ProviderSettings {
            transient_error_bps: 10_000,
            ..settings.clone()
        };
        let provider = Resilient::new(Arc::new(Simulator::new(&failing)), &failing);
        let moved = crate::deadline::resolve(&out.db, &provider, Utc::now(), doubt, 10)
            .await
            .expect("a round");
        assert_eq!(moved, 0);
        assert_eq!(row_of(&out.db).await.saga_state(), Some(State::Approved));
        assert!(outbox_types(&out.db).await.is_empty());

        // Marked a moment ago, or before its deadline: not in doubt yet.
        let fresh = migrated(&backend).await;
        insert_p1(&fresh.db, State::Approved).await;
        payment::Entity::update_many()
            .col_expr(
                payment::Column::CaptureStartedAt,
                sea_orm::sea_query::Expr::value(Utc::now()),
            )
            .exec(&fresh.db)
            .await
            .expect("marked");
        let sim = Arc::new(Simulator::new(&settings));
        let provider = Resilient::new(sim.clone(), &settings);
        let later = Utc::now() + chrono::Duration::seconds(5);
        assert_eq!(
            crate::deadline::resolve(&fresh.db, &provider, later, doubt, 10)
                .await
                .expect("a round"),
            0,
            "a capture marked 5 s ago is not in doubt"
        );
        assert_eq!(row_of(&fresh.db).await.saga_state(), Some(State::Approved));
    }
}

/// The actor's own capture of a payment in doubt (its retry once the
/// provider is back), with the resolver settling the same payment while
/// that capture is in flight: before the charge reaches the provider, or
/// just after it charged.
struct ResolvesDuringCapture {
    db: sea_orm::DatabaseConnection,
    sim: Arc<crate::provider::Simulator>,
    resolver: Resilient,
    charge_first: bool,
}

#[async_trait::async_trait]
impl SettlementProvider for ResolvesDuringCapture {
    async fn capture(&self, request: &CaptureRequest) -> Result<Settlement, ProviderError> {
        let resolve = || {
            crate::deadline::resolve(
                &self.db,
                &self.resolver,
                Utc::now(),
                std::time::Duration::from_secs(30),
                10,
            )
        };
        if self.charge_first {
            let answer = self.sim.capture(request).await;
            resolve().await.expect("resolved");
            answer
        } else {
            resolve().await.expect("resolved");
            self.sim.capture(request).await
        }
    }
    async fn lookup(&self, key: &str) -> Result<Option<Held>, ProviderError> {
        self.sim.lookup(key).await
    }
    async fn close(&self, request: &CaptureRequest) -> Result<Held, ProviderError> {
        self.sim.close(request).await
    }
}

/// The resolver and the actor's own capture race for one payment in doubt,
/// in both orders at the provider, and end where the provider's record
/// says: a charge that landed an instant before the resolver gave up
/// stands and the payment completes (it is never undone, and never
/// compensated while the money moved); a close that came first makes the
/// late capture charge nothing, and the payment fails compensated. Either
/// way the provider charged exactly when the payment captured.
#[tokio::test]
async fn a_capture_racing_its_resolution_ends_as_the_provider_says() {
    use crate::provider::Simulator;
    for backend in backends() {
        for charge_first in [true, false] {
            let settings = ProviderSettings {
                retry_attempts_max: 1,
                ..Default::default()
            };
            let fresh = migrated(&backend).await;
            in_doubt(&fresh.db).await;
            let sim = Arc::new(Simulator::new(&settings));
            let provider = Arc::new(ResolvesDuringCapture {
                db: fresh.db.clone(),
                sim: sim.clone(),
                resolver: Resilient::new(sim.clone(), &settings),
                charge_first,
            });
            let handler = Payment::new(
                fresh.db.clone(),
                Arc::new(Resilient::new(provider, &settings)),
                std::time::Duration::from_secs(60),
            );
            let d = event(EventData::FundsReserved(p1()), 1);
            let events = careful(&handler, &d).await.expect("a step");
            let row = row_of(&fresh.db).await;
            let outbox = outbox_types(&fresh.db).await;
            let on = format!("charge first: {charge_first}, on {}", fresh.backend);
            if charge_first {
                assert_eq!(row.saga_state(), Some(State::Captured), "{on}");
                assert_eq!(outbox, ["falcon.evt.payment.captured.p1"], "{on}");
                assert_eq!(sim.charges().len(), 1, "{on}");
                assert_eq!(
                    sim.lookup("p1").await.expect("a record"),
                    Some(Held::Charged(Settlement {
                        settlement_id: row.settlement_id.clone().expect("settled"),
                    })),
                    "the charge stands, {on}"
                );
            } else {
                assert_eq!(row.saga_state(), Some(State::CaptureFailed), "{on}");
                assert_eq!(outbox, ["falcon.evt.payment.capture_failed.p1"], "{on}");
                assert!(sim.charges().is_empty(), "{:?}, {on}", sim.charges());
            }
            // The actor's own step found the saga settled: nothing more.
            assert!(events.is_empty(), "{events:?}, {on}");
        }
    }
}
