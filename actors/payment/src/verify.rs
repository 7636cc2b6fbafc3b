//! What `falcon verify` checks of the payment actor: every payment and
//! refund is in a known state and, once the system is settled, terminal;
//! no payment is refunded beyond its amount (invariant 3); and each saga's
//! outcome, read a page at a time by the cross-check against the wallet's
//! records ([`falcon_kernel::verify::SagaRecords`]).
//!
//! Each check is one query that returns only the violating rows (the
//! first of each kind listed, the rest counted), and the counts are
//! `GROUP BY`s: nothing here reads a table into memory.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use falcon_kernel::store::bulk::padded_chunks;
use falcon_kernel::verify::{literal, literals, Facts, Finding, Outcome, Read, Saga, SagaRecords};
use falcon_sagas::{SagaKind, State};
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    ColumnTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter, QueryOrder, QueryResult,
    QuerySelect, QueryTrait,
};

use crate::entity::{payment, refund};
use crate::RefundState;

/// Checks the payment database; with `settled`, sagas still in flight are
/// violations.
pub async fn check(db: &DatabaseConnection, settled: bool) -> Result<Facts, DbErr> {
    let mut facts = Facts::default();
    facts.counts.payments_by_state =
        by_state::<payment::Entity>(db, payment::Column::State).await?;
    facts.counts.refunds_by_state = by_state::<refund::Entity>(db, refund::Column::State).await?;
    let known = literals(State::ALL.iter().map(|s| s.as_str()));
    let terminal = literals(
        State::ALL
            .iter()
            .filter(|s| s.is_terminal())
            .map(|s| s.as_str()),
    );
    let mut findings = vec![Finding {
        invariant: 3,
        code: "payment_state_unknown",
        select: format!("SELECT payment_id, state FROM payments WHERE state NOT IN ({known})"),
        order_by: &["payment_id"],
        detail: |r| {
            Ok(format!(
                "payment {} is in unknown state {}",
                text(r, "payment_id")?,
                text(r, "state")?
            ))
        },
    }];
    if settled {
        findings.push(Finding {
            invariant: 3,
            code: "payment_not_terminal",
            select: format!(
                "SELECT payment_id, state FROM payments WHERE state NOT IN ({terminal})"
            ),
            order_by: &["payment_id"],
            detail: |r| {
                Ok(format!(
                    "payment {} is still {}",
                    text(r, "payment_id")?,
                    text(r, "state")?
                ))
            },
        });
    }
    findings.push(Finding {
        invariant: 3,
        code: "refund_exceeds_payment",
        select: "SELECT payment_id, amount_minor, refunded_minor FROM payments \
                 WHERE refunded_minor < 0 OR refunded_minor > amount_minor"
            .into(),
        order_by: &["payment_id"],
        detail: |r| {
            Ok(format!(
                "payment {} of {} has {} refunded",
                text(r, "payment_id")?,
                r.try_get::<i64>("", "amount_minor")?,
                r.try_get::<i64>("", "refunded_minor")?
            ))
        },
    });
    if settled {
        findings.push(Finding {
            invariant: 3,
            code: "refund_not_terminal",
            select: format!(
                "SELECT refund_id FROM refunds WHERE state = {}",
                literal(RefundState::Requested.as_str())
            ),
            order_by: &["refund_id"],
            detail: |r| {
                Ok(format!(
                    "refund {} is still requested",
                    text(r, "refund_id")?
                ))
            },
        });
    }
    facts.find_all(db, &findings).await?;
    facts.sagas = Some(Arc::new(Records { db: db.clone() }));
    Ok(facts)
}

fn text(row: &QueryResult, column: &str) -> Result<String, DbErr> {
    row.try_get("", column)
}

/// Rows per stored state, counted by the database.
async fn by_state<E: EntityTrait>(
    db: &DatabaseConnection,
    state: E::Column,
) -> Result<BTreeMap<String, u64>, DbErr> {
    let rows: Vec<(String, i64)> = E::find()
        .select_only()
        .column(state)
        .column_as(Expr::col(state).count(), "n")
        .group_by(state)
        .into_tuple()
        .all(db)
        .await?;
    Ok(rows
        .into_iter()
        .map(|(s, n)| (s, u64::try_from(n).unwrap_or(0)))
        .collect())
}

/// A payment's outcome, by its stored state.
fn payment_outcome(state: &str) -> Outcome {
    match State::parse(state) {
        Some(State::Completed) => Outcome::Succeeded,
        Some(State::Failed | State::Rejected) => Outcome::Failed,
        _ => Outcome::InFlight,
    }
}

/// A refund's outcome, by its stored state.
fn refund_outcome(state: &str) -> Outcome {
    match RefundState::parse(state) {
        Some(RefundState::Refunded) => Outcome::Succeeded,
        Some(RefundState::Failed) => Outcome::Failed,
        Some(RefundState::Requested) | None => Outcome::InFlight,
    }
}

/// The payment database's sagas, for the cross-check.
#[derive(Debug)]
struct Records {
    db: DatabaseConnection,
}

impl SagaRecords for Records {
    fn sagas_after(
        &self,
        kind: SagaKind,
        after: Option<String>,
        limit: u64,
    ) -> Read<'_, Vec<Saga>> {
        Box::pin(async move {
            let rows: Vec<(String, String)> = match kind {
                SagaKind::Payment => {
                    payment::Entity::find()
                        .select_only()
                        .columns([payment::Column::PaymentId, payment::Column::State])
                        .apply_if(after, |q, a| q.filter(payment::Column::PaymentId.gt(a)))
                        .order_by_asc(payment::Column::PaymentId)
                        .limit(limit)
                        .into_tuple()
                        .all(&self.db)
                        .await?
                }
                SagaKind::Refund => {
                    refund::Entity::find()
                        .select_only()
                        .columns([refund::Column::RefundId, refund::Column::State])
                        .apply_if(after, |q, a| q.filter(refund::Column::RefundId.gt(a)))
                        .order_by_asc(refund::Column::RefundId)
                        .limit(limit)
                        .into_tuple()
                        .all(&self.db)
                        .await?
                }
            };
            let outcome = match kind {
                SagaKind::Payment => payment_outcome,
                SagaKind::Refund => refund_outcome,
            };
            Ok(rows
                .into_iter()
                .map(|(id, state)| Saga {
                    outcome: outcome(&state),
                    id,
                    state,
                })
                .collect())
        })
    }

    fn payments_known(&self, ids: Vec<String>) -> Read<'_, HashSet<String>> {
        Box::pin(async move {
            let mut known = HashSet::with_capacity(ids.len());
            for chunk in padded_chunks(&ids) {
                let found: Vec<String> = payment::Entity::find()
                    .select_only()
                    .column(payment::Column::PaymentId)
                    .filter(payment::Column::PaymentId.is_in(chunk))
                    .into_tuple()
                    .all(&self.db)
                    .await?;
                known.extend(found);
            }
            Ok(known)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{db_with, outbox};
    use falcon_schemas::command::RefundPayment;
    use sea_orm::sea_query::Expr;
    use sea_orm::TransactionTrait;

    /// The outcome of saga `id`, as the cross-check reads it.
    async fn outcome(facts: &Facts, kind: SagaKind, id: &str) -> Outcome {
        let sagas = facts.sagas.as_ref().expect("the payment actor's sagas");
        let page = sagas.sagas_after(kind, None, 10).await.expect("a page");
        page.into_iter()
            .find(|s| s.id == id)
            .map(|s| s.outcome)
            .expect("the saga is recorded")
    }

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
        assert_eq!(
            outcome(&facts, SagaKind::Payment, "p1").await,
            Outcome::Succeeded
        );
        assert_eq!(
            outcome(&facts, SagaKind::Refund, "r1").await,
            Outcome::InFlight
        );
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
        assert_eq!(
            outcome(&facts, SagaKind::Refund, "r1").await,
            Outcome::Succeeded
        );
        assert!(facts.violations.is_empty(), "{:?}", facts.violations);
    }
}
