//! The batch path, which the kernel's fast path runs: a whole batch's
//! messages decided in memory over the rows they touch, read with one
//! query per table, then written with a few statements: new rows in
//! multi-row inserts that must all be new, changed rows in one guarded
//! multi-row update per table (guarded by the values read, as the
//! one-message path guards its updates), ledger entries in multi-row
//! inserts. A row another writer wrote since the read is a
//! [`StepError::Conflict`]: the batch is rolled back and runs again on the
//! careful path.
//!
//! The book decides nothing itself: each message goes to
//! [`decide`](crate::decide), as on the one-message path, and a later
//! message of the batch sees what an earlier one left. A message that
//! fails leaves the book as it was.

use std::collections::hash_map::Entry;
use std::collections::HashMap;

use sea_orm::{ConnectionTrait, EntityTrait, IntoActiveModel};

use crate::decide::{self, Decision, Policy, Rows};
use crate::entity::{circulation, deposit, hold, ledger_entry, refund, wallet};
use crate::message::Message;
use falcon_kernel::store::{
    insert_all_new, insert_chunks, rows_by_key, rows_by_key_locked, update_guarded, Outbox,
};
use falcon_kernel::StepError;

/// A row as read (`None`: not in the table) and as the batch leaves it.
struct Row<M> {
    read: Option<M>,
    now: M,
}

/// Rows by key, as read.
type Table<M> = HashMap<String, Row<M>>;

fn table<M: Clone>(rows: HashMap<String, M>) -> Table<M> {
    rows.into_iter()
        .map(|(key, m)| {
            let row = Row {
                read: Some(m.clone()),
                now: m,
            };
            (key, row)
        })
        .collect()
}

/// Sets a row as a decision leaves it: a change of a row read (or created
/// earlier in the batch), or a new row.
fn put<M>(table: &mut Table<M>, key: String, now: M) {
    match table.entry(key) {
        Entry::Occupied(e) => e.into_mut().now = now,
        Entry::Vacant(e) => {
            e.insert(Row { read: None, now });
        }
    }
}

/// A table's rows to write: the new ones, and the changed ones with the
/// values they were read with.
fn split<M, A>(table: &Table<M>) -> (Vec<A>, Vec<(&M, &M)>)
where
    M: Clone + PartialEq + IntoActiveModel<A>,
    A: sea_orm::ActiveModelTrait,
{
    let mut new = Vec::new();
    let mut changed = Vec::new();
    for row in table.values() {
        match &row.read {
            None => new.push(row.now.clone().into_active_model()),
            Some(read) if *read != row.now => changed.push((read, &row.now)),
            Some(_) => {}
        }
    }
    (new, changed)
}

/// The rows a batch touches, kept in memory, and the ledger entries it
/// adds.
pub(crate) struct Book {
    wallets: Table<wallet::Model>,
    holds: Table<hold::Model>,
    refunds: Table<refund::Model>,
    deposits: Table<deposit::Model>,
    circulation: Table<circulation::Model>,
    ledger: Vec<ledger_entry::ActiveModel>,
}

impl Rows for Book {
    fn wallet(&self, wallet_id: &str) -> Option<&wallet::Model> {
        self.wallets.get(wallet_id).map(|r| &r.now)
    }

    fn hold(&self, payment_id: &str) -> Option<&hold::Model> {
        self.holds.get(payment_id).map(|r| &r.now)
    }

    fn refund(&self, refund_id: &str) -> Option<&refund::Model> {
        self.refunds.get(refund_id).map(|r| &r.now)
    }

    fn deposit(&self, reference: &str) -> Option<&deposit::Model> {
        self.deposits.get(reference).map(|r| &r.now)
    }

    fn circulation(&self, currency: &str) -> Option<&circulation::Model> {
        self.circulation.get(currency).map(|r| &r.now)
    }
}

impl Book {
    /// Reads the holds of the batch's payments, every wallet they or the
    /// messages name, and the refund, deposit and circulation rows the
    /// messages are keyed by.
    pub(crate) async fn read(
        txn: &impl ConnectionTrait,
        messages: &[Message],
    ) -> Result<Book, StepError> {
        let holds = rows_by_key::<hold::Entity, _>(
            txn,
            hold::Column::PaymentId,
            messages.iter().filter_map(Message::payment_id),
            |h| h.payment_id.clone(),
        )
        .await?;
        let wallet_ids = messages.iter().flat_map(Message::wallet_ids).chain(
            holds
                .values()
                .flat_map(|h| [h.wallet_id.as_str(), h.to_wallet.as_str()]),
        );
        // Wallets are what every partition's sagas share: locked as read,
        // in key order (the circulation rows, read last, too).
        let wallets = rows_by_key_locked::<wallet::Entity, _>(
            txn,
            wallet::Column::WalletId,
            wallet_ids,
            |w| w.wallet_id.clone(),
        )
        .await?;
        let refunds = rows_by_key::<refund::Entity, _>(
            txn,
            refund::Column::RefundId,
            messages.iter().filter_map(|m| match m {
                Message::Refund(r) => Some(r.refund_id.as_str()),
                _ => None,
            }),
            |r| r.refund_id.clone(),
        )
        .await?;
        let deposits_of = || {
            messages.iter().filter_map(|m| match m {
                Message::Deposit(c) => Some(c),
                _ => None,
            })
        };
        let deposits = rows_by_key::<deposit::Entity, _>(
            txn,
            deposit::Column::Reference,
            deposits_of().map(|c| c.reference.as_str()),
            |d| d.reference.clone(),
        )
        .await?;
        let circulation = rows_by_key_locked::<circulation::Entity, _>(
            txn,
            circulation::Column::Currency,
            deposits_of().map(|c| c.amount.currency().code()),
            |c| c.currency.clone(),
        )
        .await?;
        Ok(Book {
            wallets: table(wallets),
            holds: table(holds),
            refunds: table(refunds),
            deposits: table(deposits),
            circulation: table(circulation),
            ledger: Vec::new(),
        })
    }

    /// One message's step, in memory.
    pub(crate) fn apply(
        &mut self,
        message: &Message,
        policy: &Policy,
        out: &mut Outbox,
    ) -> Result<(), StepError> {
        let decision = decide::decide(message, &*self, policy, out.now)?;
        self.take(decision, out);
        Ok(())
    }

    /// Keeps a decision's rows, queues its ledger entries and its event.
    fn take(&mut self, d: Decision, out: &mut Outbox) {
        let Decision {
            event,
            wallets,
            hold,
            refund,
            deposit,
            circulation,
            movement,
        } = d;
        for w in wallets {
            put(&mut self.wallets, w.wallet_id.clone(), w);
        }
        if let Some(h) = hold {
            put(&mut self.holds, h.payment_id.clone(), h);
        }
        if let Some(r) = refund {
            put(&mut self.refunds, r.refund_id.clone(), r);
        }
        if let Some(p) = deposit {
            put(&mut self.deposits, p.reference.clone(), p);
        }
        if let Some(c) = circulation {
            put(&mut self.circulation, c.currency.clone(), c);
        }
        if let Some(m) = movement {
            self.ledger.extend(m.rows(out.now));
        }
        if let Some(event) = event {
            out.push(event);
        }
    }

    /// Writes what the batch did.
    pub(crate) async fn write(self, txn: &impl ConnectionTrait) -> Result<(), StepError> {
        let (new, moved) = split::<_, hold::ActiveModel>(&self.holds);
        insert_all_new(txn, new, hold::Column::PaymentId, "holds").await?;
        update_guarded::<hold::Entity>(
            txn,
            hold::Column::PaymentId,
            &[
                hold::Column::State,
                hold::Column::Reason,
                hold::Column::RefundedMinor,
                hold::Column::UpdatedAt,
            ],
            &[hold::Column::State, hold::Column::RefundedMinor],
            &moved,
            "holds",
        )
        .await?;
        let (new, changed) = split::<_, wallet::ActiveModel>(&self.wallets);
        insert_all_new(txn, new, wallet::Column::WalletId, "wallets").await?;
        update_guarded::<wallet::Entity>(
            txn,
            wallet::Column::WalletId,
            &[
                wallet::Column::BalanceMinor,
                wallet::Column::HeldMinor,
                wallet::Column::UpdatedAt,
            ],
            &[wallet::Column::BalanceMinor, wallet::Column::HeldMinor],
            &changed,
            "wallets",
        )
        .await?;
        let (new, changed) = split::<_, refund::ActiveModel>(&self.refunds);
        assert!(
            changed.is_empty(),
            "a refund row is written once, by the step that claims it"
        );
        insert_all_new(txn, new, refund::Column::RefundId, "refunds").await?;
        let (new, changed) = split::<_, deposit::ActiveModel>(&self.deposits);
        assert!(
            changed.is_empty(),
            "a deposit row is written once, by the step that claims it"
        );
        insert_all_new(txn, new, deposit::Column::Reference, "deposits").await?;
        let (new, changed) = split::<_, circulation::ActiveModel>(&self.circulation);
        insert_all_new(txn, new, circulation::Column::Currency, "circulation rows").await?;
        update_guarded::<circulation::Entity>(
            txn,
            circulation::Column::Currency,
            &[
                circulation::Column::DepositedMinor,
                circulation::Column::UpdatedAt,
            ],
            &[circulation::Column::DepositedMinor],
            &changed,
            "circulation rows",
        )
        .await?;
        for chunk in insert_chunks(self.ledger) {
            ledger_entry::Entity::insert_many(chunk).exec(txn).await?;
        }
        Ok(())
    }
}
