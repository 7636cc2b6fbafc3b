//! The one-message path, which the kernel's careful path runs (in a
//! savepoint per message) and which is the reference for what a message
//! does: read the rows the message needs, each with its own query; let
//! [`decide`](crate::decide) decide; write the decision with guarded SQL.
//!
//! A new row is an insert that must not meet an existing one, and a changed
//! row is an update guarded by every value the decision read (a wallet's
//! balance and held amount, a hold's state and refunded amount, a
//! currency's circulation). A
//! row another writer (another process sharing the consumers) wrote since
//! the read is left alone and makes the step a [`StepError::Conflict`]:
//! the message is retried and decides again on the row afresh. So no
//! wallet is overdrawn and no step applies twice.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, IntoActiveModel, QueryFilter,
    TryInsertResult,
};

use crate::decide::{self, Decision, Policy, Rows};
use crate::entity::{circulation, deposit, hold, ledger_entry, refund, wallet};
use crate::message::Message;
use falcon_kernel::store::Outbox;
use falcon_kernel::StepError;

/// One message's step.
pub(crate) async fn apply(
    txn: &impl ConnectionTrait,
    message: &Message,
    policy: &Policy,
    out: &mut Outbox,
) -> Result<(), StepError> {
    let read = Read::of(txn, message).await?;
    let decision = decide::decide(message, &read, policy, out.now)?;
    write(txn, &read, &decision, out.now).await?;
    if let Some(event) = decision.event {
        out.push(event);
    }
    Ok(())
}

/// The rows one message's step reads.
#[derive(Debug, Default)]
struct Read {
    wallets: Vec<wallet::Model>,
    hold: Option<hold::Model>,
    refund: Option<refund::Model>,
    deposit: Option<deposit::Model>,
    circulation: Option<circulation::Model>,
}

impl Read {
    /// The message's hold, the wallets it and its hold name, and the
    /// refund, deposit and circulation rows it is keyed by.
    async fn of(txn: &impl ConnectionTrait, message: &Message) -> Result<Read, StepError> {
        let mut read = Read::default();
        if let Some(payment_id) = message.payment_id() {
            read.hold = hold::Entity::find_by_id(payment_id.to_owned())
                .one(txn)
                .await?;
        }
        let mut wallet_ids = message.wallet_ids();
        if let Some(h) = &read.hold {
            wallet_ids.extend([h.wallet_id.as_str(), h.to_wallet.as_str()]);
        }
        wallet_ids.sort_unstable();
        wallet_ids.dedup();
        for wallet_id in wallet_ids {
            let found = wallet::Entity::find_by_id(wallet_id.to_owned())
                .one(txn)
                .await?;
            read.wallets.extend(found);
        }
        match message {
            Message::Deposit(c) => {
                read.deposit = deposit::Entity::find_by_id(c.reference.clone())
                    .one(txn)
                    .await?;
                read.circulation =
                    circulation::Entity::find_by_id(c.amount.currency().code().to_owned())
                        .one(txn)
                        .await?;
            }
            Message::Refund(r) => {
                read.refund = refund::Entity::find_by_id(r.refund_id.clone())
                    .one(txn)
                    .await?;
            }
            _ => {}
        }
        Ok(read)
    }
}

impl Rows for Read {
    fn wallet(&self, wallet_id: &str) -> Option<&wallet::Model> {
        self.wallets.iter().find(|w| w.wallet_id == wallet_id)
    }

    fn hold(&self, payment_id: &str) -> Option<&hold::Model> {
        self.hold.as_ref().filter(|h| h.payment_id == payment_id)
    }

    fn refund(&self, refund_id: &str) -> Option<&refund::Model> {
        self.refund.as_ref().filter(|r| r.refund_id == refund_id)
    }

    fn deposit(&self, reference: &str) -> Option<&deposit::Model> {
        self.deposit.as_ref().filter(|d| d.reference == reference)
    }

    fn circulation(&self, currency: &str) -> Option<&circulation::Model> {
        self.circulation.as_ref().filter(|c| c.currency == currency)
    }
}

/// Writes a decision: each row inserted if the step did not read it,
/// updated under the guard of its read values if it did.
async fn write(
    txn: &impl ConnectionTrait,
    read: &Read,
    d: &Decision,
    now: DateTime<Utc>,
) -> Result<(), StepError> {
    if let Some(h) = &d.hold {
        match read.hold(&h.payment_id) {
            None => {
                insert_new(
                    txn,
                    h.clone().into_active_model(),
                    hold::Column::PaymentId,
                    "hold",
                )
                .await?
            }
            Some(was) => {
                let r = hold::Entity::update_many()
                    .col_expr(hold::Column::State, Expr::value(h.state))
                    .col_expr(hold::Column::Reason, Expr::value(h.reason.clone()))
                    .col_expr(hold::Column::RefundedMinor, Expr::value(h.refunded_minor))
                    .col_expr(hold::Column::UpdatedAt, Expr::value(h.updated_at))
                    .filter(hold::Column::PaymentId.eq(&h.payment_id))
                    .filter(hold::Column::State.eq(was.state))
                    .filter(hold::Column::RefundedMinor.eq(was.refunded_minor))
                    .exec(txn)
                    .await?;
                guarded(r.rows_affected, || format!("hold {}", h.payment_id))?;
            }
        }
    }
    // In lock order (by key), as every writer.
    let mut wallets: Vec<&wallet::Model> = d.wallets.iter().collect();
    wallets.sort_by(|a, b| a.wallet_id.cmp(&b.wallet_id));
    for w in wallets {
        match read.wallet(&w.wallet_id) {
            None => {
                insert_new(
                    txn,
                    w.clone().into_active_model(),
                    wallet::Column::WalletId,
                    "wallet",
                )
                .await?
            }
            Some(was) => {
                let r = wallet::Entity::update_many()
                    .col_expr(wallet::Column::BalanceMinor, Expr::value(w.balance_minor))
                    .col_expr(wallet::Column::HeldMinor, Expr::value(w.held_minor))
                    .col_expr(wallet::Column::UpdatedAt, Expr::value(w.updated_at))
                    .filter(wallet::Column::WalletId.eq(&w.wallet_id))
                    .filter(wallet::Column::BalanceMinor.eq(was.balance_minor))
                    .filter(wallet::Column::HeldMinor.eq(was.held_minor))
                    .exec(txn)
                    .await?;
                guarded(r.rows_affected, || format!("wallet {}", w.wallet_id))?;
            }
        }
    }
    if let Some(r) = &d.refund {
        assert!(
            read.refund(&r.refund_id).is_none(),
            "a refund row is written once, by the step that claims it"
        );
        insert_new(
            txn,
            r.clone().into_active_model(),
            refund::Column::RefundId,
            "refund",
        )
        .await?;
    }
    if let Some(p) = &d.deposit {
        assert!(
            read.deposit(&p.reference).is_none(),
            "a deposit row is written once, by the step that claims it"
        );
        insert_new(
            txn,
            p.clone().into_active_model(),
            deposit::Column::Reference,
            "deposit",
        )
        .await?;
    }
    if let Some(c) = &d.circulation {
        match read.circulation(&c.currency) {
            None => {
                insert_new(
                    txn,
                    c.clone().into_active_model(),
                    circulation::Column::Currency,
                    "circulation",
                )
                .await?
            }
            Some(was) => {
                let r = circulation::Entity::update_many()
                    .col_expr(
                        circulation::Column::DepositedMinor,
                        Expr::value(c.deposited_minor),
                    )
                    .col_expr(circulation::Column::UpdatedAt, Expr::value(c.updated_at))
                    .filter(circulation::Column::Currency.eq(&c.currency))
                    .filter(circulation::Column::DepositedMinor.eq(was.deposited_minor))
                    .exec(txn)
                    .await?;
                guarded(r.rows_affected, || format!("circulation of {}", c.currency))?;
            }
        }
    }
    if let Some(m) = &d.movement {
        ledger_entry::Entity::insert_many(m.rows(now))
            .exec(txn)
            .await?;
    }
    Ok(())
}

/// Inserts a row the step found absent; another writer's row with the same
/// key, written since, is a conflict (the retry reads it).
async fn insert_new<A>(
    txn: &impl ConnectionTrait,
    row: A,
    key: <A::Entity as EntityTrait>::Column,
    what: &str,
) -> Result<(), StepError>
where
    A: ActiveModelTrait + Send,
{
    let inserted = A::Entity::insert(row)
        .on_conflict_do_nothing_on([key])
        .exec_without_returning(txn)
        .await?;
    match inserted {
        TryInsertResult::Inserted(1) => Ok(()),
        _ => Err(StepError::Conflict(format!(
            "a {what} was written concurrently"
        ))),
    }
}

/// A guarded update wrote its one row, or the row changed since the read.
fn guarded(rows_affected: u64, what: impl FnOnce() -> String) -> Result<(), StepError> {
    if rows_affected == 1 {
        Ok(())
    } else {
        Err(StepError::Conflict(format!(
            "{} changed concurrently",
            what()
        )))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use sea_orm::{DatabaseConnection, TransactionTrait};

    /// A step whose rows another writer changes between its read and its
    /// write (`meanwhile`, on the same database).
    pub(crate) async fn read_then_write<F, Fut>(
        db: &DatabaseConnection,
        message: &Message,
        meanwhile: F,
    ) -> Result<(), StepError>
    where
        F: FnOnce(DatabaseConnection) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let now = Utc::now();
        let read = Read::of(db, message).await?;
        let decision = decide::decide(message, &read, &Policy::default(), now)?;
        meanwhile(db.clone()).await;
        let txn = db.begin().await?;
        let written = write(&txn, &read, &decision, now).await;
        match written {
            Ok(()) => txn.commit().await?,
            Err(_) => txn.rollback().await?,
        }
        written
    }
}
