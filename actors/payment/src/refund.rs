//! The refund saga's steps of the payment actor: [`request`]
//! (`payment.refund` of a completed payment: `payment.refund_requested`,
//! or a rejection) and [`finish`] (the wallet's `refund_committed` or
//! `refund_declined`: `payment.refunded` or `payment.refund_failed`).
//!
//! The refund id is the idempotency key. A payment's `refunded_minor`
//! counts the refunds requested or done, raised by a guarded update, so
//! concurrent refunds cannot together exceed the payment; a declined refund
//! gives its amount back.

use falcon_kernel::store::Outbox;
use falcon_kernel::StepError;
use falcon_sagas::State;
use falcon_schemas::command::RefundPayment;
use falcon_schemas::event::{RefundData, RefundFailureData};
use falcon_schemas::{CommandKind, Currency, EventData, Money, Reason};
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{ColumnTrait, DatabaseTransaction, EntityTrait, QueryFilter, Set, TryInsertResult};

use crate::entity::{payment, refund, RefundState};
use crate::rejection::reject;

/// The `request_refund` step.
pub(crate) async fn request(
    txn: &DatabaseTransaction,
    c: &RefundPayment,
    out: &mut Outbox,
) -> Result<(), StepError> {
    const CMD: CommandKind = CommandKind::PaymentRefund;
    let key = &c.refund_id;
    let existing = refund::Entity::find_by_id(c.refund_id.clone())
        .one(txn)
        .await?;
    let payment = payment::Entity::find_by_id(c.payment_id.clone())
        .one(txn)
        .await?;
    if let Some(r) = existing {
        let same_amount = match (c.amount, Currency::from_code(&r.currency)) {
            (None, _) => true,
            (Some(a), Some(cur)) => Money::new(a, cur).is_ok_and(|m| m.minor() == r.amount_minor),
            (Some(_), None) => false,
        };
        if r.payment_id != c.payment_id || !same_amount {
            reject(
                out,
                CMD,
                key,
                Reason::IdempotencyKeyReused,
                format!(
                    "refund {} exists for payment {} ({} minor units)",
                    r.refund_id, r.payment_id, r.amount_minor
                ),
            );
        }
        return Ok(());
    }
    let Some(p) = payment else {
        reject(
            out,
            CMD,
            key,
            Reason::PaymentNotFound,
            format!("payment {} does not exist", c.payment_id),
        );
        return Ok(());
    };
    if p.saga_state() != Some(State::Completed) {
        reject(
            out,
            CMD,
            key,
            Reason::PaymentNotRefundable,
            format!("payment {} is {}, not completed", p.payment_id, p.state),
        );
        return Ok(());
    }
    let pd = p.data()?;
    let remaining = p.amount_minor - p.refunded_minor;
    let amount = match c.amount {
        Some(a) => match Money::positive(a, pd.currency) {
            Ok(m) => m,
            Err(e) => {
                reject(out, CMD, key, e.reason, e.message);
                return Ok(());
            }
        },
        None => Money::from_minor(remaining, pd.currency),
    };
    if amount.minor() > remaining || remaining == 0 {
        let left = Money::from_minor(remaining, pd.currency);
        reject(
            out,
            CMD,
            key,
            Reason::RefundExceedsPayment,
            format!(
                "refund of {amount} exceeds the {left} left to refund of payment {}",
                p.payment_id
            ),
        );
        return Ok(());
    }
    // Guarded: two refunds racing for the same payment cannot both pass.
    let reserved = payment::Entity::update_many()
        .col_expr(
            payment::Column::RefundedMinor,
            Expr::col(payment::Column::RefundedMinor).add(amount.minor()),
        )
        .col_expr(payment::Column::UpdatedAt, Expr::value(out.now))
        .filter(payment::Column::PaymentId.eq(&p.payment_id))
        .filter(payment::Column::RefundedMinor.eq(p.refunded_minor))
        .exec(txn)
        .await?;
    if reserved.rows_affected != 1 {
        return Err(StepError::Conflict(format!(
            "payment {} refunded concurrently",
            p.payment_id
        )));
    }
    let inserted = refund::Entity::insert(refund::ActiveModel {
        refund_id: Set(c.refund_id.clone()),
        payment_id: Set(p.payment_id.clone()),
        amount_minor: Set(amount.minor()),
        currency: Set(p.currency.clone()),
        state: Set(RefundState::Requested.as_str().to_owned()),
        reason: Set(None),
        created_at: Set(out.now),
        updated_at: Set(out.now),
    })
    .on_conflict_do_nothing_on([refund::Column::RefundId])
    .exec(txn)
    .await?;
    if !matches!(inserted, TryInsertResult::Inserted(_)) {
        // Read as absent above: another writer created it since. The retry
        // finds it and judges it as a repeat.
        return Err(StepError::Conflict(format!(
            "refund {} created concurrently",
            c.refund_id
        )));
    }
    out.push(EventData::RefundRequested(RefundData {
        refund_id: c.refund_id.clone(),
        payment_id: p.payment_id.clone(),
        from_wallet: p.from_wallet.clone(),
        to_wallet: p.to_wallet.clone(),
        amount: amount.wire_amount(),
        currency: amount.currency(),
        principal: Some(c.principal.clone()),
    }));
    Ok(())
}

/// The `complete_refund` step (`failure` is `None`) or the `fail_refund`
/// step (the wallet's reason and message).
pub(crate) async fn finish(
    txn: &DatabaseTransaction,
    r: RefundData,
    failure: Option<(Reason, String)>,
    out: &mut Outbox,
) -> Result<(), StepError> {
    let to = if failure.is_some() {
        RefundState::Failed
    } else {
        RefundState::Refunded
    };
    let moved = refund::Entity::update_many()
        .col_expr(refund::Column::State, Expr::value(to.as_str()))
        .col_expr(
            refund::Column::Reason,
            Expr::value(failure.as_ref().map(|(r, _)| r.as_str())),
        )
        .col_expr(refund::Column::UpdatedAt, Expr::value(out.now))
        .filter(refund::Column::RefundId.eq(&r.refund_id))
        .filter(refund::Column::State.eq(RefundState::Requested.as_str()))
        .exec(txn)
        .await?;
    if moved.rows_affected == 0 {
        let existing = refund::Entity::find_by_id(r.refund_id.clone())
            .one(txn)
            .await?;
        let Some(e) = existing else {
            return Err(StepError::Transient(format!(
                "refund {} is not known (yet)",
                r.refund_id
            )));
        };
        return match e.refund_state() {
            // Redelivered: done already.
            Some(s) if s == to => Ok(()),
            // Requested, yet the guarded update missed it: another writer
            // moved it between, and the retry reads it afresh.
            Some(RefundState::Requested) => Err(StepError::Conflict(format!(
                "refund {} changed concurrently",
                e.refund_id
            ))),
            Some(other) => Err(StepError::Poison(format!(
                "refund {} is {other}, cannot become {to}",
                e.refund_id
            ))),
            None => Err(StepError::Poison(format!(
                "refund {} has unknown state {}",
                e.refund_id, e.state
            ))),
        };
    }
    match failure {
        None => out.push(EventData::PaymentRefunded(r)),
        Some((reason, message)) => {
            let amount = r.money().map_err(|e| StepError::Poison(e.to_string()))?;
            // The refund did not happen: its amount is refundable again.
            payment::Entity::update_many()
                .col_expr(
                    payment::Column::RefundedMinor,
                    Expr::col(payment::Column::RefundedMinor).sub(amount.minor()),
                )
                .filter(payment::Column::PaymentId.eq(&r.payment_id))
                .exec(txn)
                .await?;
            out.push(EventData::RefundFailed(RefundFailureData {
                refund: r,
                reason,
                message,
            }));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{db_with, kinds, outbox, row_of};
    use falcon_schemas::EventType;
    use sea_orm::TransactionTrait;

    fn refund_of_p1(id: &str) -> RefundPayment {
        RefundPayment {
            payment_id: "p1".into(),
            refund_id: id.into(),
            amount: None,
            principal: "client".into(),
        }
    }

    async fn refund_state(txn: &DatabaseTransaction, id: &str) -> Option<RefundState> {
        refund::Entity::find_by_id(id.to_owned())
            .one(txn)
            .await
            .expect("read")
            .and_then(|r| r.refund_state())
    }

    /// A refund of a completed payment is requested once, finishes once,
    /// and cannot then take the other outcome; a declined one gives its
    /// amount back.
    #[tokio::test]
    async fn a_refund_moves_from_requested_to_one_outcome() {
        let db = db_with(State::Completed).await;
        let txn = db.begin().await.expect("txn");
        let mut out = outbox();
        request(&txn, &refund_of_p1("r1"), &mut out)
            .await
            .expect("requested");
        request(&txn, &refund_of_p1("r1"), &mut out)
            .await
            .expect("a repeat");
        assert_eq!(kinds(&out), vec![EventType::RefundRequested]);
        assert_eq!(refund_state(&txn, "r1").await, Some(RefundState::Requested));
        assert_eq!(row_of(&txn).await.refunded_minor, 1250);
        let EventData::RefundRequested(data) = out.events[0].data.clone() else {
            unreachable!("checked above")
        };

        let mut out = outbox();
        let declined = || Some((Reason::InsufficientFunds, "payee spent it".to_owned()));
        finish(&txn, data.clone(), declined(), &mut out)
            .await
            .expect("failed");
        finish(&txn, data.clone(), declined(), &mut out)
            .await
            .expect("redelivered");
        assert_eq!(kinds(&out), vec![EventType::RefundFailed]);
        assert_eq!(refund_state(&txn, "r1").await, Some(RefundState::Failed));
        assert_eq!(row_of(&txn).await.refunded_minor, 0);
        let err = finish(&txn, data.clone(), None, &mut out)
            .await
            .expect_err("failed is final");
        assert!(matches!(err, StepError::Poison(_)), "{err}");

        let mut unknown = data;
        unknown.refund_id = "r2".into();
        let err = finish(&txn, unknown, None, &mut out)
            .await
            .expect_err("not recorded");
        assert!(matches!(err, StepError::Transient(_)), "{err}");
    }
}
