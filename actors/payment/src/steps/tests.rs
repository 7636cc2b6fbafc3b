//! The saga steps with duplicated, late and out-of-order events: first the
//! pure rule ([`decide`], [`implied_first`]), then the steps on a database.

use super::*;
use crate::provider::Settlement;
use crate::testing::{db_with, kinds, outbox, p1, row_of};
use chrono::Duration;
use falcon_kernel::store::Outbox;
use sea_orm::{DatabaseConnection, TransactionTrait};
use EventType as E;

fn settled(id: &str) -> Captures {
    Captures::from([(
        "p1".to_owned(),
        Ok(Settlement {
            settlement_id: id.to_owned(),
        }),
    )])
}

/// `capture` of p1's `funds_reserved`, careful path, committed.
async fn capture_p1(db: &DatabaseConnection, captures: &Captures) -> Result<Outbox, StepError> {
    let txn = db.begin().await.expect("txn");
    let mut out = outbox();
    capture(&txn, &mut Rows::default(), &p1(), captures, &mut out).await?;
    txn.commit().await.expect("commit");
    Ok(out)
}

fn declined() -> Failing {
    Failing {
        cause: E::ReservationDeclined,
        reason: Reason::InsufficientFunds,
        message: "not enough".into(),
        compensated: false,
    }
}

#[test]
fn the_wallets_answers_to_risk_approved_imply_it() {
    use Transition::{Invalid, Moved};
    let s = State::Requested;
    assert_eq!(implied_first(s, E::FundsReserved), Moved(State::Reserved));
    assert_eq!(
        implied_first(s, E::ReservationDeclined),
        Moved(State::ReservationDeclined)
    );
    // Answers to the payment actor's own events imply nothing: the row
    // would show them.
    assert!(matches!(
        implied_first(s, E::TransferCommitted),
        Invalid { .. }
    ));
    assert!(matches!(implied_first(s, E::FundsReleased), Invalid { .. }));
    assert!(matches!(
        implied_first(State::Approved, E::FundsReleased),
        Invalid { .. }
    ));
}

#[test]
fn the_rule_refuses_what_is_early_and_skips_what_is_done() {
    let captured = [E::FundsReserved, E::PaymentCaptured];
    assert_eq!(
        decide("p1", State::Requested, &captured).ok(),
        Some(Some(State::Captured))
    );
    assert_eq!(decide("p1", State::Captured, &captured).ok(), Some(None));
    assert_eq!(
        decide("p1", State::CaptureFailed, &captured).ok(),
        Some(None)
    );
    let completed = [E::TransferCommitted, E::PaymentCompleted];
    assert!(matches!(
        decide("p1", State::Requested, &completed),
        Err(StepError::Transient(_))
    ));
    assert!(matches!(
        decide("p1", State::Failed, &completed),
        Err(StepError::Poison(_))
    ));
}

/// `funds_reserved` at a payment still `requested` moves it to reserved,
/// through approved (which only the wallet consumed).
#[tokio::test]
async fn a_requested_payment_takes_funds_reserved() {
    let db = db_with(State::Requested).await;
    let txn = db.begin().await.expect("txn");
    let moved = advance(
        &txn,
        &mut Rows::default(),
        "p1",
        &[E::FundsReserved],
        Change::default(),
        Utc::now(),
    )
    .await
    .expect("reserved");
    assert!(moved.is_some());
    assert_eq!(row_of(&txn).await.saga_state(), Some(State::Reserved));
}

/// The capture step on a payment still `requested`, on both paths: the
/// same row and the same event.
#[tokio::test]
async fn a_requested_payment_is_captured_on_funds_reserved() {
    let db = db_with(State::Requested).await;
    let out = capture_p1(&db, &settled("s-1")).await.expect("captured");
    assert_eq!(kinds(&out), vec![E::PaymentCaptured]);
    let careful = row_of(&db).await;
    assert_eq!(careful.saga_state(), Some(State::Captured));
    assert_eq!(careful.settlement_id.as_deref(), Some("s-1"));

    let db = db_with(State::Requested).await;
    let txn = db.begin().await.expect("txn");
    let mut rows = Rows::read(&txn, ["p1"].into_iter()).await.expect("read");
    let mut out = outbox();
    capture(&txn, &mut rows, &p1(), &settled("s-1"), &mut out)
        .await
        .expect("captured");
    rows.flush(&txn).await.expect("flush");
    txn.commit().await.expect("commit");
    assert_eq!(kinds(&out), vec![E::PaymentCaptured]);
    let fast = row_of(&db).await;
    assert_eq!(
        (fast.state, fast.settlement_id),
        (careful.state, careful.settlement_id)
    );
}

/// `reservation_declined` at a payment still `requested` fails it.
#[tokio::test]
async fn a_requested_payment_takes_reservation_declined() {
    let db = db_with(State::Requested).await;
    let txn = db.begin().await.expect("txn");
    let mut out = outbox();
    fail(&txn, &mut Rows::default(), &p1(), declined(), &mut out)
        .await
        .expect("failed");
    assert_eq!(kinds(&out), vec![E::PaymentFailed]);
    assert!(out
        .ended
        .as_ref()
        .is_some_and(|e| e.failure == Some(Reason::InsufficientFunds) && !e.compensated));
    let row = row_of(&txn).await;
    assert_eq!(row.saga_state(), Some(State::Failed));
    assert_eq!(
        row.reason.as_deref(),
        Some(Reason::InsufficientFunds.as_str())
    );
    // Redelivered: nothing more.
    let mut again = outbox();
    fail(&txn, &mut Rows::default(), &p1(), declined(), &mut again)
        .await
        .expect("a duplicate");
    assert!(again.events.is_empty());
}

/// A second `funds_reserved` (a redelivery) changes nothing and publishes
/// nothing, whatever the provider answers this time.
#[tokio::test]
async fn a_duplicate_funds_reserved_is_a_no_op() {
    let db = db_with(State::Requested).await;
    capture_p1(&db, &settled("s-1")).await.expect("captured");
    let first = row_of(&db).await;
    for captures in [settled("s-2"), Captures::new()] {
        let out = capture_p1(&db, &captures).await.expect("a duplicate");
        assert!(out.events.is_empty());
        assert_eq!(row_of(&db).await, first);
    }
}

/// `transfer_committed` at a payment still `requested` is ahead of its
/// predecessors: it waits (transient), and the row stays as it is. So does
/// `funds_released`, which answers the payment actor's own
/// `capture_failed`.
#[tokio::test]
async fn an_event_out_of_order_waits() {
    let db = db_with(State::Requested).await;
    let txn = db.begin().await.expect("txn");
    let mut out = outbox();
    let err = complete(&txn, &mut Rows::default(), &p1(), &mut out)
        .await
        .expect_err("too early");
    assert!(matches!(err, StepError::Transient(_)), "{err}");
    let released = Failing {
        cause: E::FundsReleased,
        reason: Reason::DeadlineExceeded,
        message: "released".into(),
        compensated: true,
    };
    let err = fail(&txn, &mut Rows::default(), &p1(), released, &mut out)
        .await
        .expect_err("too early");
    assert!(matches!(err, StepError::Transient(_)), "{err}");
    assert!(out.events.is_empty() && out.ended.is_none());
    assert_eq!(row_of(&txn).await.saga_state(), Some(State::Requested));
}

/// After the deadline compensated the saga (`capture_failed`), a late
/// `funds_reserved` is ignored: no capture, no event, and no wait for a
/// provider answer (the wallet's release covers the hold).
#[tokio::test]
async fn a_late_funds_reserved_after_the_deadline_is_ignored() {
    let db = db_with(State::Requested).await;
    let swept = crate::deadline::sweep(&db, Utc::now() + Duration::seconds(1), 10)
        .await
        .expect("sweep");
    assert_eq!(swept, 1);
    let compensated = row_of(&db).await;
    assert_eq!(compensated.saga_state(), Some(State::CaptureFailed));
    for captures in [settled("s-1"), Captures::new()] {
        let out = capture_p1(&db, &captures).await.expect("ignored");
        assert!(out.events.is_empty());
        assert_eq!(row_of(&db).await, compensated);
    }
}

/// A provider outage is transient, and the nak's reason keeps its cause.
#[tokio::test]
async fn a_provider_outage_waits_and_names_its_cause() {
    let db = db_with(State::Requested).await;
    let cause = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
    let captures = Captures::from([(
        "p1".to_owned(),
        Err(ProviderError::unavailable_because("connecting", cause)),
    )]);
    let err = capture_p1(&db, &captures).await.expect_err("unavailable");
    assert!(
        matches!(&err, StepError::Transient(m) if m.contains("connecting") && m.contains("refused")),
        "{err}"
    );
    assert_eq!(row_of(&db).await.saga_state(), Some(State::Requested));
}
