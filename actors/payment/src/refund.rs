//! The refund saga's steps of the payment actor: [`request`]
//! (`payment.refund` of a completed payment: `payment.refund_requested`,
//! or a rejection) and [`finish`] (the wallet's `refund_committed` or
//! `refund_declined`: `payment.refunded` or `payment.refund_failed`).
//!
//! The refund id is the idempotency key: the same refund again from the
//! same principal is a repeat, anything else under its id is refused. The
//! refund row keeps the principal that asked for it, and its events carry
//! it to the wallet, which refunds only for the payee wallet's owner. A
//! payment's `refunded_minor` counts the refunds requested or done, raised
//! by a guarded update, so concurrent refunds cannot together exceed the
//! payment; a declined refund gives its amount back, checked, never below
//! zero. The wallet's answer is believed only as far as the refund's and
//! the payment's rows agree with it ([`crate::records`]).

use falcon_kernel::store::Outbox;
use falcon_kernel::StepError;
use falcon_sagas::State;
use falcon_schemas::command::RefundPayment;
use falcon_schemas::event::{RefundData, RefundFailureData};
use falcon_schemas::{CommandKind, Currency, EventData, Money, Reason};
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, DatabaseTransaction, EntityTrait, QueryFilter, Set, TryInsertResult};

use crate::entity::{payment, refund, RefundState};
use crate::records::{refund_data, same_refund};
use crate::rejection::reject;

const CMD: CommandKind = CommandKind::PaymentRefund;

/// The `request_refund` step.
pub(crate) async fn request(
    txn: &DatabaseTransaction,
    c: &RefundPayment,
    out: &mut Outbox,
) -> Result<(), StepError> {
    let key = &c.refund_id;
    let existing = refund::Entity::find_by_id(c.refund_id.clone())
        .one(txn)
        .await?;
    if let Some(r) = existing {
        check_same(out, &r, c);
        return Ok(());
    }
    let payment = payment::Entity::find_by_id(c.payment_id.clone())
        .one(txn)
        .await?;
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
    let Some(amount) = refundable(out, &p, c)? else {
        return Ok(());
    };
    count_refunded(txn, &p, amount, out.now).await?;
    let row = refund::Model {
        refund_id: c.refund_id.clone(),
        payment_id: p.payment_id.clone(),
        amount_minor: amount.minor(),
        currency: p.currency.clone(),
        state: RefundState::Requested.as_str().to_owned(),
        reason: None,
        created_at: out.now,
        updated_at: out.now,
        principal: Some(c.principal.clone()),
    };
    let inserted = refund::Entity::insert(refund::ActiveModel {
        refund_id: Set(row.refund_id.clone()),
        payment_id: Set(row.payment_id.clone()),
        amount_minor: Set(row.amount_minor),
        currency: Set(row.currency.clone()),
        state: Set(row.state.clone()),
        reason: Set(None),
        created_at: Set(row.created_at),
        updated_at: Set(row.updated_at),
        principal: Set(row.principal.clone()),
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
    out.push(EventData::RefundRequested(refund_data(&row, &p)?));
    Ok(())
}

/// A refund command for a refund that exists: the same refund again from
/// the same principal is a repeat (nothing to do), anything else reuses its
/// key.
fn check_same(out: &mut Outbox, r: &refund::Model, c: &RefundPayment) {
    let same_amount = match (c.amount, Currency::from_code(&r.currency)) {
        (None, _) => true,
        (Some(a), Some(cur)) => Money::new(a, cur).is_ok_and(|m| m.minor() == r.amount_minor),
        (Some(_), None) => false,
    };
    let same_principal = r.principal.as_deref() == Some(c.principal.as_str());
    if r.payment_id != c.payment_id || !same_amount || !same_principal {
        reject(
            out,
            CMD,
            &c.refund_id,
            Reason::IdempotencyKeyReused,
            format!(
                "refund {} exists for payment {} ({} minor units){}",
                r.refund_id,
                r.payment_id,
                r.amount_minor,
                if same_principal {
                    ""
                } else {
                    ", asked by another principal"
                }
            ),
        );
    }
}

/// The amount the command refunds of completed payment `p`: what it asks
/// (all that is left, when it names no amount), if it is a positive amount
/// within what is left; otherwise the command is rejected (`None`).
fn refundable(
    out: &mut Outbox,
    p: &payment::Model,
    c: &RefundPayment,
) -> Result<Option<Money>, StepError> {
    let currency = p.data()?.currency;
    // Checked, and never below zero: a row whose refunds passed its
    // amount (only a bug could write one) has nothing left.
    let remaining = p
        .amount_minor
        .checked_sub(p.refunded_minor)
        .filter(|r| *r >= 0)
        .unwrap_or(0);
    let amount = match c.amount {
        Some(a) => match Money::positive(a, currency) {
            Ok(m) => m,
            Err(e) => {
                reject(out, CMD, &c.refund_id, e.reason, e.message);
                return Ok(None);
            }
        },
        None => Money::from_minor(remaining, currency),
    };
    if amount.minor() > remaining || remaining == 0 {
        let left = Money::from_minor(remaining, currency);
        reject(
            out,
            CMD,
            &c.refund_id,
            Reason::RefundExceedsPayment,
            format!(
                "refund of {amount} exceeds the {left} left to refund of payment {}",
                p.payment_id
            ),
        );
        return Ok(None);
    }
    Ok(Some(amount))
}

/// Counts `amount` in `p`'s refunds, guarded by the count as read: two
/// refunds racing for the same payment cannot both pass.
async fn count_refunded(
    txn: &DatabaseTransaction,
    p: &payment::Model,
    amount: Money,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<(), StepError> {
    let after = p
        .refunded_minor
        .checked_add(amount.minor())
        .expect("refunded + amount is at most the payment's amount, checked by refundable");
    set_refunded(txn, p, after, now).await
}

/// Sets `p`'s `refunded_minor` to `after`, if it is still as `p` has it.
async fn set_refunded(
    txn: &DatabaseTransaction,
    p: &payment::Model,
    after: i64,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<(), StepError> {
    let written = payment::Entity::update_many()
        .col_expr(payment::Column::RefundedMinor, Expr::value(after))
        .col_expr(payment::Column::UpdatedAt, Expr::value(now))
        .filter(payment::Column::PaymentId.eq(&p.payment_id))
        .filter(payment::Column::RefundedMinor.eq(p.refunded_minor))
        .exec(txn)
        .await?;
    if written.rows_affected != 1 {
        return Err(StepError::Conflict(format!(
            "payment {} refunded concurrently",
            p.payment_id
        )));
    }
    Ok(())
}

/// The `complete_refund` step (`failure` is `None`) or the `fail_refund`
/// step (the wallet's reason and message). The event must be the refund on
/// record, of its payment; the events published are built from the rows.
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
    let Some(row) = refund::Entity::find_by_id(r.refund_id.clone())
        .one(txn)
        .await?
    else {
        return Err(StepError::Transient(format!(
            "refund {} is not known (yet)",
            r.refund_id
        )));
    };
    let Some(p) = payment::Entity::find_by_id(row.payment_id.clone())
        .one(txn)
        .await?
    else {
        return Err(StepError::Poison(format!(
            "record_mismatch: refund {} is of payment {}, which does not exist",
            row.refund_id, row.payment_id
        )));
    };
    same_refund(&row, &p, &r)?;
    match row.refund_state() {
        Some(RefundState::Requested) => {}
        // Redelivered: done already.
        Some(s) if s == to => return Ok(()),
        Some(other) => {
            return Err(StepError::Poison(format!(
                "refund {} is {other}, cannot become {to}",
                row.refund_id
            )))
        }
        None => {
            return Err(StepError::Poison(format!(
                "refund {} has unknown state {}",
                row.refund_id, row.state
            )))
        }
    }
    if failure.is_some() {
        give_back(txn, &p, &row, out.now).await?;
    }
    let moved = refund::Entity::update_many()
        .col_expr(refund::Column::State, Expr::value(to.as_str()))
        .col_expr(
            refund::Column::Reason,
            Expr::value(failure.as_ref().map(|(r, _)| r.as_str())),
        )
        .col_expr(refund::Column::UpdatedAt, Expr::value(out.now))
        .filter(refund::Column::RefundId.eq(&row.refund_id))
        .filter(refund::Column::State.eq(RefundState::Requested.as_str()))
        .exec(txn)
        .await?;
    if moved.rows_affected != 1 {
        // Requested as read, yet the guarded update missed it: another
        // writer moved it between, and the retry reads it afresh.
        return Err(StepError::Conflict(format!(
            "refund {} changed concurrently",
            row.refund_id
        )));
    }
    let refund = refund_data(&row, &p)?;
    out.push(match failure {
        None => EventData::PaymentRefunded(refund),
        Some((reason, message)) => EventData::RefundFailed(RefundFailureData {
            refund,
            reason,
            message,
        }),
    });
    Ok(())
}

/// A declined refund did not happen: its amount is refundable again. The
/// count is lowered checked, and never below zero: a count smaller than the
/// refund it counted is a record that disagrees with itself (poison).
async fn give_back(
    txn: &DatabaseTransaction,
    p: &payment::Model,
    row: &refund::Model,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<(), StepError> {
    let Some(after) = p
        .refunded_minor
        .checked_sub(row.amount_minor)
        .filter(|after| *after >= 0)
    else {
        return Err(StepError::Poison(format!(
            "record_mismatch: payment {} counts {} minor units refunded, less than the {} \
             of its refund {}",
            p.payment_id, p.refunded_minor, row.amount_minor, row.refund_id
        )));
    };
    set_refunded(txn, p, after, now).await
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
