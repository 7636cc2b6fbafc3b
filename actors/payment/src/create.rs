//! The `request` step: `payment.create` records a payment, `requested`,
//! with the principal that sent it, and publishes `payment.requested`
//! (which carries the principal to the wallet, which reserves only for the
//! payer wallet's owner). The payment id is the idempotency key: the same
//! payment again from the same principal is a duplicate (nothing to do), a
//! different one, or the same from another principal, under a used id is
//! rejected (`idempotency_key_reused`).
//!
//! [`create`] inserts at once (careful path); [`stage`] leaves the insert
//! to the batch's flush (fast path). Both decide with [`check_same`].

use chrono::{DateTime, Utc};
use falcon_kernel::store::Outbox;
use falcon_kernel::StepError;
use falcon_sagas::State;
use falcon_schemas::command::CreatePayment;
use falcon_schemas::event::PaymentData;
use falcon_schemas::{CommandKind, EventData, Reason};
use sea_orm::{DatabaseTransaction, EntityTrait, IntoActiveModel, TryInsertResult};

use crate::entity::payment;
use crate::rejection::reject;
use crate::rows::Rows;

/// The row of a new payment, whose saga must reach capture within
/// `deadline`.
fn new_row(c: &CreatePayment, deadline: chrono::Duration, now: DateTime<Utc>) -> payment::Model {
    payment::Model {
        payment_id: c.payment_id.clone(),
        from_wallet: c.from_wallet.clone(),
        to_wallet: c.to_wallet.clone(),
        amount_minor: c.amount.minor(),
        currency: c.amount.currency().code().to_owned(),
        state: State::Requested.as_str().to_owned(),
        reason: None,
        settlement_id: None,
        refunded_minor: 0,
        created_at: now,
        updated_at: now,
        deadline_at: now + deadline,
        principal: Some(c.principal.clone()),
        capture_started_at: None,
    }
}

/// `create` on the fast path: the batch read the payment's row (if any)
/// already, and a new one is inserted by [`Rows::flush`].
pub(crate) fn stage(
    rows: &mut Rows,
    c: &CreatePayment,
    deadline: chrono::Duration,
    out: &mut Outbox,
) {
    if let Some(p) = rows.cached(&c.payment_id) {
        check_same(out, p, c);
        return;
    }
    rows.create(new_row(c, deadline, out.now));
    out.push(requested(c));
}

/// `create` on the careful path: inserted now, unless the payment exists.
pub(crate) async fn create(
    txn: &DatabaseTransaction,
    c: &CreatePayment,
    deadline: chrono::Duration,
    out: &mut Outbox,
) -> Result<(), StepError> {
    let row = new_row(c, deadline, out.now).into_active_model();
    let inserted = payment::Entity::insert(row)
        .on_conflict_do_nothing_on([payment::Column::PaymentId])
        .exec(txn)
        .await?;
    if matches!(inserted, TryInsertResult::Inserted(_)) {
        out.push(requested(c));
        return Ok(());
    }
    match payment::Entity::find_by_id(c.payment_id.clone())
        .one(txn)
        .await?
    {
        Some(p) => {
            check_same(out, &p, c);
            Ok(())
        }
        // Payments are never deleted: the row that stopped the insert was
        // another writer's, not yet visible. The retry sees it.
        None => Err(StepError::Conflict(format!(
            "payment {} is being created concurrently",
            c.payment_id
        ))),
    }
}

/// The event of a payment just created.
fn requested(c: &CreatePayment) -> EventData {
    EventData::PaymentRequested(PaymentData {
        payment_id: c.payment_id.clone(),
        from_wallet: c.from_wallet.clone(),
        to_wallet: c.to_wallet.clone(),
        amount: c.amount.wire_amount(),
        currency: c.amount.currency(),
        principal: Some(c.principal.clone()),
    })
}

/// A create for a payment that exists: the same payment again from the
/// same principal is a duplicate (nothing to do), anything else reuses its
/// key.
fn check_same(out: &mut Outbox, p: &payment::Model, c: &CreatePayment) {
    let same = p.from_wallet == c.from_wallet
        && p.to_wallet == c.to_wallet
        && p.amount_minor == c.amount.minor()
        && p.currency == c.amount.currency().code()
        && p.principal.as_deref() == Some(c.principal.as_str());
    if !same {
        reject(
            out,
            CommandKind::PaymentCreate,
            &c.payment_id,
            Reason::IdempotencyKeyReused,
            format!(
                "payment {} exists: {} {} from {} to {}{}",
                p.payment_id,
                p.amount_minor,
                p.currency,
                p.from_wallet,
                p.to_wallet,
                if p.principal.as_deref() == Some(c.principal.as_str()) {
                    ""
                } else {
                    ", created by another principal"
                }
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{db_with, kinds, outbox, usd, PRINCIPAL};
    use falcon_schemas::{EventType, Money};
    use sea_orm::TransactionTrait;

    fn command(id: &str, minor: i64) -> CreatePayment {
        CreatePayment {
            payment_id: id.into(),
            from_wallet: "a".into(),
            to_wallet: "b".into(),
            amount: Money::from_minor(minor, usd()),
            principal: PRINCIPAL.into(),
        }
    }

    /// The same command from another principal.
    fn from_mallory(c: CreatePayment) -> CreatePayment {
        CreatePayment {
            principal: "mallory".into(),
            ..c
        }
    }

    fn deadline() -> chrono::Duration {
        chrono::Duration::seconds(60)
    }

    async fn p2(db: &impl sea_orm::ConnectionTrait) -> payment::Model {
        payment::Entity::find_by_id("p2".to_owned())
            .one(db)
            .await
            .expect("read")
            .expect("created")
    }

    /// Creates on the fast path: a new payment is requested once however
    /// often the batch repeats it, the existing one (p1) is a duplicate,
    /// and a different payment under a used key is rejected; one insert
    /// writes the new rows at the flush.
    #[tokio::test]
    async fn a_batch_creates_payments_like_its_commands_one_by_one() {
        let db = db_with(State::Requested).await;
        let txn = db.begin().await.expect("txn");
        let mut rows = Rows::read(&txn, ["p1", "p2"].into_iter())
            .await
            .expect("read");
        let mut out = outbox();
        stage(&mut rows, &command("p2", 500), deadline(), &mut out);
        stage(&mut rows, &command("p2", 500), deadline(), &mut out);
        stage(&mut rows, &command("p1", 1250), deadline(), &mut out);
        stage(&mut rows, &command("p2", 999), deadline(), &mut out);
        stage(
            &mut rows,
            &from_mallory(command("p2", 500)),
            deadline(),
            &mut out,
        );
        stage(
            &mut rows,
            &from_mallory(command("p1", 1250)),
            deadline(),
            &mut out,
        );
        assert_eq!(
            kinds(&out),
            vec![
                EventType::PaymentRequested,
                EventType::PaymentRejected,
                EventType::PaymentRejected,
                EventType::PaymentRejected
            ]
        );
        assert_requested_by_its_sender(&out);
        rows.flush(&txn).await.expect("flush");
        txn.commit().await.expect("commit");
        let p2 = p2(&db).await;
        assert_eq!(
            (p2.amount_minor, p2.saga_state()),
            (500, Some(State::Requested))
        );
        assert_eq!(p2.principal.as_deref(), Some(PRINCIPAL));
    }

    /// The requested event carries its sender; each rejection is a reused
    /// key.
    fn assert_requested_by_its_sender(out: &Outbox) {
        for e in &out.events {
            match &e.data {
                EventData::PaymentRequested(p) => {
                    assert_eq!(p.principal.as_deref(), Some(PRINCIPAL))
                }
                EventData::PaymentRejected(r) => {
                    assert_eq!(r.reason, Reason::IdempotencyKeyReused)
                }
                other => panic!("{other:?}"),
            }
        }
    }

    /// The same commands one by one, as the careful path runs them.
    #[tokio::test]
    async fn commands_one_by_one_create_each_payment_once() {
        let db = db_with(State::Requested).await;
        let txn = db.begin().await.expect("txn");
        let mut out = outbox();
        for c in [
            command("p2", 500),
            command("p2", 500),
            command("p1", 1250),
            command("p2", 999),
            from_mallory(command("p2", 500)),
            from_mallory(command("p1", 1250)),
        ] {
            create(&txn, &c, deadline(), &mut out)
                .await
                .expect("a step");
        }
        assert_eq!(
            kinds(&out),
            vec![
                EventType::PaymentRequested,
                EventType::PaymentRejected,
                EventType::PaymentRejected,
                EventType::PaymentRejected
            ]
        );
        assert_requested_by_its_sender(&out);
        let p2 = p2(&txn).await;
        assert_eq!(
            (p2.amount_minor, p2.saga_state()),
            (500, Some(State::Requested))
        );
        assert_eq!(p2.deadline_at, p2.created_at + deadline());
    }
}
