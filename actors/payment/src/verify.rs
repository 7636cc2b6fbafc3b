//! What `falcon verify` checks of the payment actor: every payment and
//! refund is in a known state and, once the system is settled, terminal;
//! no payment is refunded beyond its amount (invariant 3); and each saga's
//! outcome, for the cross-check against the wallet's records.

use falcon_kernel::verify::{Facts, Outcome};
use falcon_sagas::State;
use sea_orm::{DatabaseConnection, DbErr, EntityTrait};

use crate::entity::{payment, refund};
use crate::RefundState;

/// Checks the payment database; with `settled`, sagas still in flight are
/// violations.
pub async fn check(db: &DatabaseConnection, settled: bool) -> Result<Facts, DbErr> {
    let payments = payment::Entity::find().all(db).await?;
    let refunds = refund::Entity::find().all(db).await?;
    let mut facts = Facts::default();
    for p in payments {
        *facts
            .counts
            .payments_by_state
            .entry(p.state.clone())
            .or_default() += 1;
        let state = p.saga_state();
        let terminal = state.is_some_and(|s| s.is_terminal());
        if state.is_none() {
            facts.violate(
                3,
                "payment_state_unknown",
                format!("payment {} is in unknown state {}", p.payment_id, p.state),
            );
        }
        if settled && !terminal {
            facts.violate(
                3,
                "payment_not_terminal",
                format!("payment {} is still {}", p.payment_id, p.state),
            );
        }
        if p.refunded_minor < 0 || p.refunded_minor > p.amount_minor {
            facts.violate(
                3,
                "refund_exceeds_payment",
                format!(
                    "payment {} of {} has {} refunded",
                    p.payment_id, p.amount_minor, p.refunded_minor
                ),
            );
        }
        let outcome = match state {
            Some(State::Completed) => Outcome::Succeeded,
            Some(State::Failed | State::Rejected) => Outcome::Failed,
            _ => Outcome::InFlight,
        };
        facts.payments.insert(p.payment_id, (outcome, p.state));
    }
    for r in refunds {
        *facts
            .counts
            .refunds_by_state
            .entry(r.state.clone())
            .or_default() += 1;
        let state = r.refund_state();
        if settled && state == Some(RefundState::Requested) {
            facts.violate(
                3,
                "refund_not_terminal",
                format!("refund {} is still requested", r.refund_id),
            );
        }
        let outcome = match state {
            Some(RefundState::Refunded) => Outcome::Succeeded,
            Some(RefundState::Failed) => Outcome::Failed,
            Some(RefundState::Requested) | None => Outcome::InFlight,
        };
        facts.refunds.insert(r.refund_id, (outcome, r.state));
    }
    Ok(facts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{db_with, outbox};
    use falcon_schemas::command::RefundPayment;
    use sea_orm::sea_query::Expr;
    use sea_orm::{ColumnTrait, QueryFilter, TransactionTrait};

    /// A completed payment with a refund in flight: the refund is in
    /// flight (a violation once settled); refunded, it has succeeded.
    #[tokio::test]
    async fn refunds_are_judged_by_their_state() {
        let db = db_with(State::Completed).await;
        let txn = db.begin().await.expect("txn");
        let refund = RefundPayment {
            payment_id: "p1".into(),
            refund_id: "r1".into(),
            amount: None,
            principal: "client".into(),
        };
        crate::refund::request(&txn, &refund, &mut outbox())
            .await
            .expect("requested");
        txn.commit().await.expect("commit");
        let facts = check(&db, true).await.expect("checked");
        assert_eq!(facts.payments["p1"].0, Outcome::Succeeded);
        assert_eq!(facts.refunds["r1"].0, Outcome::InFlight);
        let codes: Vec<&str> = facts.violations.iter().map(|v| v.code).collect();
        assert_eq!(codes, ["refund_not_terminal"]);
        refund::Entity::update_many()
            .col_expr(
                refund::Column::State,
                Expr::value(RefundState::Refunded.as_str()),
            )
            .filter(refund::Column::RefundId.eq("r1"))
            .exec(&db)
            .await
            .expect("refunded");
        let facts = check(&db, true).await.expect("checked");
        assert_eq!(facts.refunds["r1"].0, Outcome::Succeeded);
        assert!(facts.violations.is_empty(), "{:?}", facts.violations);
    }
}
