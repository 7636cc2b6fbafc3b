//! [`Rows`]: the payment rows a step reads and writes, through one cache
//! for both paths. The steps decide the same way on either path; only when
//! their writes reach the database differs (at once, or at the batch's
//! flush), and both write with the same guarded statement.

use std::collections::HashMap;

use falcon_kernel::store::{insert_all_new, rows_by_key, update_guarded};
use falcon_kernel::StepError;
use sea_orm::{DatabaseTransaction, EntityTrait, IntoActiveModel};

use crate::entity::payment;

/// The columns a step changes; the rest of a payment row is written once,
/// when it is created (and `refunded_minor` by the refund steps, directly).
const STEP_COLUMNS: [payment::Column; 4] = [
    payment::Column::State,
    payment::Column::Reason,
    payment::Column::SettlementId,
    payment::Column::UpdatedAt,
];

/// A row is written only from the state it was read in, so two processes
/// cannot both take a step.
const GUARD: [payment::Column; 1] = [payment::Column::State];

/// Payment rows read in this transaction, by id. The fast path reads a
/// batch's rows with one query ([`Rows::read`]), keeps them current as its
/// steps move them, and writes the moved ones back with one guarded
/// statement at the end of the batch ([`Rows::flush`]); the careful path
/// starts each message with none ([`Rows::default`]), so every step reads
/// its own row and writes it at once. A row another process changed
/// meanwhile fails the guard (state as read): a conflict, and the retry
/// reads the row afresh.
#[derive(Default)]
pub(crate) struct Rows {
    current: HashMap<String, payment::Model>,
    /// Fast path only: the rows its steps moved, as read from the database.
    moved: Option<HashMap<String, payment::Model>>,
    /// New payments, inserted by `flush`.
    created: Vec<payment::Model>,
}

impl Rows {
    /// The fast path's cache: the rows of `ids` (repeats allowed), read with
    /// one query; moves are kept until [`Rows::flush`].
    pub(crate) async fn read(
        txn: &DatabaseTransaction,
        ids: impl Iterator<Item = &str>,
    ) -> Result<Rows, StepError> {
        let rows = rows_by_key::<payment::Entity, _>(txn, payment::Column::PaymentId, ids, |r| {
            r.payment_id.clone()
        })
        .await?;
        Ok(Rows {
            current: rows,
            moved: Some(HashMap::new()),
            created: Vec::new(),
        })
    }

    /// The payment's row as this transaction has it, read now if this cache
    /// does not hold it.
    pub(crate) async fn get(
        &mut self,
        txn: &DatabaseTransaction,
        payment_id: &str,
    ) -> Result<Option<payment::Model>, StepError> {
        if let Some(row) = self.current.get(payment_id) {
            return Ok(Some(row.clone()));
        }
        let row = payment::Entity::find_by_id(payment_id.to_owned())
            .one(txn)
            .await?;
        if let Some(r) = &row {
            self.current.insert(payment_id.to_owned(), r.clone());
        }
        Ok(row)
    }

    /// The row the batch read (or created) for `payment_id`, without a read.
    pub(crate) fn cached(&self, payment_id: &str) -> Option<&payment::Model> {
        self.current.get(payment_id)
    }

    /// A new payment, inserted by [`Rows::flush`] (which fails as a
    /// conflict if another writer created it meanwhile).
    pub(crate) fn create(&mut self, row: payment::Model) {
        self.current.insert(row.payment_id.clone(), row.clone());
        self.created.push(row);
    }

    /// A step moved the row `before` (as this cache had it) to `after`. On
    /// the fast path the move is kept for [`Rows::flush`], guarded by the
    /// state first read; on the careful path it is written now.
    pub(crate) async fn put(
        &mut self,
        txn: &DatabaseTransaction,
        before: payment::Model,
        after: payment::Model,
    ) -> Result<(), StepError> {
        let id = after.payment_id.clone();
        if let Some(moved) = self.moved.as_mut() {
            moved.entry(id.clone()).or_insert(before);
            self.current.insert(id, after);
            return Ok(());
        }
        if let Err(e) = write(txn, &[(&before, &after)]).await {
            self.current.remove(&id);
            return Err(match e {
                StepError::Conflict(_) => {
                    StepError::Conflict(format!("payment {id} changed concurrently"))
                }
                other => other,
            });
        }
        self.current.insert(id, after);
        Ok(())
    }

    /// Writes the payments created (all new, or the batch is retried) and
    /// the rows moved (fast path), each guarded by its state as read.
    pub(crate) async fn flush(&mut self, txn: &DatabaseTransaction) -> Result<(), StepError> {
        let created: Vec<payment::ActiveModel> = self
            .created
            .drain(..)
            .map(IntoActiveModel::into_active_model)
            .collect();
        insert_all_new(txn, created, payment::Column::PaymentId, "payments").await?;
        let Some(moved) = self.moved.as_mut() else {
            return Ok(());
        };
        let pairs: Vec<(&payment::Model, &payment::Model)> = moved
            .iter()
            .filter_map(|(id, before)| Some((before, self.current.get(id)?)))
            .collect();
        write(txn, &pairs).await?;
        moved.clear();
        Ok(())
    }

    /// A step is about to change the row in a way this cache does not
    /// follow: the moves so far are written first.
    pub(crate) async fn forget(
        &mut self,
        txn: &DatabaseTransaction,
        payment_id: &str,
    ) -> Result<(), StepError> {
        self.flush(txn).await?;
        self.current.remove(payment_id);
        Ok(())
    }
}

/// The one write of moved rows, `(as read, as moved)`, on both paths.
async fn write(
    txn: &DatabaseTransaction,
    pairs: &[(&payment::Model, &payment::Model)],
) -> Result<(), StepError> {
    update_guarded::<payment::Entity>(
        txn,
        payment::Column::PaymentId,
        &STEP_COLUMNS,
        &GUARD,
        pairs,
        "payments",
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::steps::{advance, Change};
    use crate::testing::{db_with, row_of};
    use chrono::Utc;
    use falcon_sagas::State;
    use falcon_schemas::EventType;
    use sea_orm::sea_query::Expr;
    use sea_orm::{ColumnTrait, QueryFilter, TransactionTrait};

    /// The batch's rows are read once and kept current: steps of one
    /// payment in one batch see each other's moves, and the row is written
    /// once, at the flush, guarded by the state first read.
    #[tokio::test]
    async fn rows_read_for_a_batch_follow_its_steps() {
        let db = db_with(State::Requested).await;
        let txn = db.begin().await.expect("txn");
        let mut rows = Rows::read(&txn, ["p1", "p1", "unknown"].into_iter())
            .await
            .expect("read");
        assert_eq!(rows.current.len(), 1);
        let now = Utc::now();
        let none = Change::default;
        advance(
            &txn,
            &mut rows,
            "p1",
            &[EventType::RiskApproved],
            none(),
            now,
        )
        .await
        .expect("approved");
        assert_eq!(rows.current["p1"].saga_state(), Some(State::Approved));
        // Already applied: a duplicate, judged from the kept row.
        let again = advance(
            &txn,
            &mut rows,
            "p1",
            &[EventType::RiskApproved],
            none(),
            now,
        )
        .await
        .expect("duplicate");
        assert_eq!(again, None);
        let settled = Change {
            reason: None,
            settlement_id: Some("s-1".to_owned()),
        };
        advance(
            &txn,
            &mut rows,
            "p1",
            &[EventType::FundsReserved, EventType::PaymentCaptured],
            settled,
            now,
        )
        .await
        .expect("captured");
        assert_eq!(
            row_of(&txn).await.saga_state(),
            Some(State::Requested),
            "not yet written"
        );
        rows.flush(&txn).await.expect("flush");
        txn.commit().await.expect("commit");
        let row = row_of(&db).await;
        assert_eq!(row.saga_state(), Some(State::Captured));
        assert_eq!(row.settlement_id.as_deref(), Some("s-1"));
    }

    /// A row changed after the batch read it (another process) fails the
    /// guarded write as a conflict; the retry, step by step, reads it
    /// afresh.
    #[tokio::test]
    async fn a_row_changed_after_the_read_is_a_conflict() {
        let db = db_with(State::Requested).await;
        let mut rows = Rows::read(&db.begin().await.expect("txn"), ["p1"].into_iter())
            .await
            .expect("read");
        payment::Entity::update_many()
            .col_expr(
                payment::Column::State,
                Expr::value(State::Approved.as_str()),
            )
            .filter(payment::Column::PaymentId.eq("p1"))
            .exec(&db)
            .await
            .expect("changed meanwhile");
        let txn = db.begin().await.expect("txn");
        advance(
            &txn,
            &mut rows,
            "p1",
            &[EventType::RiskApproved],
            Change::default(),
            Utc::now(),
        )
        .await
        .expect("moved in memory");
        let err = rows.flush(&txn).await.expect_err("stale");
        assert!(matches!(err, StepError::Conflict(_)), "{err}");
        let again = advance(
            &txn,
            &mut Rows::default(),
            "p1",
            &[EventType::RiskApproved],
            Change::default(),
            Utc::now(),
        )
        .await
        .expect("read afresh: a duplicate");
        assert_eq!(again, None);
    }

    /// On the careful path a row changed between the step's read and its
    /// write is a conflict naming the payment, and is not kept.
    #[tokio::test]
    async fn a_careful_write_over_a_changed_row_is_a_conflict() {
        let db = db_with(State::Requested).await;
        let txn = db.begin().await.expect("txn");
        let mut rows = Rows::default();
        let mut before = rows.get(&txn, "p1").await.expect("read").expect("p1");
        before.state = State::Approved.as_str().to_owned();
        let mut after = before.clone();
        after.state = State::Reserved.as_str().to_owned();
        let err = rows.put(&txn, before, after).await.expect_err("stale");
        assert!(
            matches!(&err, StepError::Conflict(m) if m.contains("p1")),
            "{err}"
        );
        assert!(rows.cached("p1").is_none());
        assert_eq!(row_of(&txn).await.saga_state(), Some(State::Requested));
    }
}
