//! The wallet's fast path for the payment saga's steps: a batch's
//! reservations, commits and releases applied in memory to the wallets and
//! holds they touch (read with two queries), then written with a few
//! statements: the new holds in one multi-row insert, the moved holds and
//! the changed wallets each in one guarded update (a row another writer
//! changed since the read is a transient error: the batch reruns step by
//! step), the ledger entries in one multi-row insert.
//!
//! Each step here makes the same decisions, in the same order, as its
//! one-message counterpart in the parent module, which the careful path
//! runs; a test checks that a batch leaves the same rows and events.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use falcon_schemas::event::{FailureData, PaymentData};
use falcon_schemas::{EventData, Money, Reason};
use sea_orm::{ConnectionTrait, EntityTrait, IntoActiveModel};

use super::entity::{hold, ledger_entry, wallet};
use super::{hold_state, ledger_rows, money};
use falcon_kernel::store::Outbox;
use falcon_kernel::StepError;

/// The steps the book takes; any other message sends its batch step by step.
pub(super) fn handles(data: &EventData) -> bool {
    matches!(
        data,
        EventData::RiskApproved(_)
            | EventData::PaymentCaptured(_)
            | EventData::PaymentCaptureFailed(_)
    )
}

/// A row as read (`None`: not in the table) and as the batch leaves it.
struct Row<M> {
    read: Option<M>,
    now: M,
}

impl<M: Clone> Row<M> {
    fn known((id, m): (String, M)) -> (String, Row<M>) {
        (
            id,
            Row {
                read: Some(m.clone()),
                now: m,
            },
        )
    }
}

/// The wallets and holds a batch touches, kept in memory.
pub(super) struct Book {
    wallets: HashMap<String, Row<wallet::Model>>,
    holds: HashMap<String, Row<hold::Model>>,
    ledger: Vec<ledger_entry::ActiveModel>,
}

fn payment_of(data: &EventData) -> Option<&PaymentData> {
    match data {
        EventData::RiskApproved(d) => Some(&d.payment),
        EventData::PaymentCaptured(d) => Some(&d.payment),
        EventData::PaymentCaptureFailed(d) => Some(&d.payment),
        _ => None,
    }
}

impl Book {
    /// Reads the holds of the batch's payments and every wallet they or
    /// the events name.
    pub(super) async fn read(
        txn: &impl ConnectionTrait,
        events: &[EventData],
    ) -> Result<Book, StepError> {
        let payments: Vec<&PaymentData> = events.iter().filter_map(payment_of).collect();
        let holds = falcon_kernel::store::rows_by_key::<hold::Entity, _>(
            txn,
            hold::Column::PaymentId,
            payments.iter().map(|p| p.payment_id.as_str()),
            |h| h.payment_id.clone(),
        )
        .await?;
        let wallet_ids = payments
            .iter()
            .flat_map(|p| [p.from_wallet.as_str(), p.to_wallet.as_str()])
            .chain(
                holds
                    .values()
                    .flat_map(|h| [h.wallet_id.as_str(), h.to_wallet.as_str()]),
            );
        let wallets = falcon_kernel::store::rows_by_key::<wallet::Entity, _>(
            txn,
            wallet::Column::WalletId,
            wallet_ids,
            |w| w.wallet_id.clone(),
        )
        .await?;
        Ok(Book {
            wallets: wallets.into_iter().map(Row::known).collect(),
            holds: holds.into_iter().map(Row::known).collect(),
            ledger: Vec::new(),
        })
    }

    /// One step of the batch.
    pub(super) fn apply(&mut self, data: &EventData, out: &mut Outbox) -> Result<(), StepError> {
        match data {
            EventData::RiskApproved(d) => self.reserve(&d.payment, out),
            EventData::PaymentCaptured(d) => self.commit(&d.payment, out),
            EventData::PaymentCaptureFailed(d) => self.release(d, out),
            other => Err(StepError::Poison(format!(
                "the wallet's batch step does not take {}",
                other.event_type().type_str()
            ))),
        }
    }

    fn wallet(&mut self, id: &str) -> Option<&mut wallet::Model> {
        self.wallets.get_mut(id).map(|r| &mut r.now)
    }

    /// As `reserve` in the parent module.
    fn reserve(&mut self, p: &PaymentData, out: &mut Outbox) -> Result<(), StepError> {
        let amount = money(p)?;
        if self.holds.contains_key(&p.payment_id) {
            return Ok(());
        }
        let mut refuse = None;
        for wallet_id in [&p.from_wallet, &p.to_wallet] {
            match self.wallets.get(wallet_id) {
                None => {
                    refuse = Some((
                        Reason::WalletNotFound,
                        format!("wallet {wallet_id} does not exist"),
                    ));
                    break;
                }
                Some(w) if w.now.currency != amount.currency().code() => {
                    refuse = Some((
                        Reason::CurrencyMismatch,
                        format!(
                            "wallet {wallet_id} holds {}, payment is in {}",
                            w.now.currency,
                            amount.currency()
                        ),
                    ));
                    break;
                }
                Some(_) => {}
            }
        }
        if refuse.is_none() {
            let from = self
                .wallet(&p.from_wallet)
                .ok_or_else(|| StepError::Poison(format!("wallet {} vanished", p.from_wallet)))?;
            if from.balance_minor - from.held_minor >= amount.minor() {
                from.held_minor += amount.minor();
                from.updated_at = out.now;
            } else {
                refuse = Some((
                    Reason::InsufficientFunds,
                    format!("wallet {} has less than {amount} available", p.from_wallet),
                ));
            }
        }
        let state = if refuse.is_some() {
            hold_state::DECLINED
        } else {
            hold_state::RESERVED
        };
        let reason = refuse.as_ref().map(|(r, _)| *r);
        self.new_hold(p, amount, state, reason, out.now);
        out.push(match refuse {
            Some((reason, message)) => EventData::ReservationDeclined(FailureData {
                payment: p.clone(),
                reason,
                message,
            }),
            None => EventData::FundsReserved(p.clone()),
        });
        Ok(())
    }

    /// Claims a payment's hold in `state`: inserted when the batch writes.
    fn new_hold(
        &mut self,
        p: &PaymentData,
        amount: Money,
        state: &str,
        reason: Option<Reason>,
        now: DateTime<Utc>,
    ) {
        let hold = hold::Model {
            payment_id: p.payment_id.clone(),
            wallet_id: p.from_wallet.clone(),
            to_wallet: p.to_wallet.clone(),
            amount_minor: amount.minor(),
            currency: amount.currency().code().to_owned(),
            state: state.to_owned(),
            reason: reason.map(|r| r.as_str().to_owned()),
            created_at: now,
            updated_at: now,
        };
        self.holds.insert(
            p.payment_id.clone(),
            Row {
                read: None,
                now: hold,
            },
        );
    }

    /// Moves a hold to `to`; the hold as it was.
    fn move_hold(
        &mut self,
        payment_id: &str,
        to: &str,
        reason: Option<Reason>,
        now: DateTime<Utc>,
    ) -> Option<hold::Model> {
        let h = &mut self.holds.get_mut(payment_id)?.now;
        let was = h.clone();
        h.state = to.to_owned();
        h.reason = reason.map(|r| r.as_str().to_owned());
        h.updated_at = now;
        Some(was)
    }

    /// Takes `amount` off a wallet's held balance (and its balance, when
    /// `spend`): the hold was covered by it.
    fn unhold(
        &mut self,
        wallet_id: &str,
        amount: i64,
        spend: bool,
        now: DateTime<Utc>,
    ) -> Result<(), StepError> {
        let w = self
            .wallet(wallet_id)
            .filter(|w| w.held_minor >= amount)
            .ok_or_else(|| {
                StepError::Poison(format!(
                    "wallet {wallet_id} does not cover a hold of {amount} minor units"
                ))
            })?;
        w.held_minor -= amount;
        if spend {
            w.balance_minor -= amount;
        }
        w.updated_at = now;
        Ok(())
    }

    /// As `commit` in the parent module.
    fn commit(&mut self, p: &PaymentData, out: &mut Outbox) -> Result<(), StepError> {
        let state = self
            .holds
            .get(&p.payment_id)
            .map(|h| h.now.state.clone())
            .ok_or_else(|| StepError::Poison(format!("payment {} has no hold", p.payment_id)))?;
        match state.as_str() {
            hold_state::RESERVED => {}
            hold_state::COMMITTED => return Ok(()),
            other => {
                return Err(StepError::Poison(format!(
                    "payment {} captured but its hold is {other}",
                    p.payment_id
                )))
            }
        }
        let h = self
            .move_hold(&p.payment_id, hold_state::COMMITTED, None, out.now)
            .ok_or_else(|| StepError::Poison(format!("payment {} has no hold", p.payment_id)))?;
        self.unhold(&h.wallet_id, h.amount_minor, true, out.now)?;
        let to = self
            .wallet(&h.to_wallet)
            .ok_or_else(|| StepError::Poison(format!("wallet {} does not exist", h.to_wallet)))?;
        to.balance_minor += h.amount_minor;
        to.updated_at = out.now;
        self.ledger.extend(ledger_rows(
            &format!("transfer:{}", p.payment_id),
            &h.currency,
            &[
                (&h.wallet_id, -h.amount_minor),
                (&h.to_wallet, h.amount_minor),
            ],
            out.now,
        ));
        out.push(EventData::TransferCommitted(p.clone()));
        Ok(())
    }

    /// As `release` in the parent module.
    fn release(&mut self, f: &FailureData, out: &mut Outbox) -> Result<(), StepError> {
        let p = &f.payment;
        let amount = money(p)?;
        let released = |out: &mut Outbox| {
            out.push(EventData::FundsReleased(FailureData {
                payment: p.clone(),
                reason: f.reason,
                message: f.message.clone(),
            }))
        };
        let Some(state) = self.holds.get(&p.payment_id).map(|h| h.now.state.clone()) else {
            // No hold yet: a released tombstone, so a late reservation
            // reserves nothing.
            self.new_hold(p, amount, hold_state::RELEASED, Some(f.reason), out.now);
            released(out);
            return Ok(());
        };
        match state.as_str() {
            hold_state::RESERVED => {
                let h = self
                    .move_hold(&p.payment_id, hold_state::RELEASED, Some(f.reason), out.now)
                    .ok_or_else(|| {
                        StepError::Poison(format!("payment {} has no hold", p.payment_id))
                    })?;
                self.unhold(&h.wallet_id, h.amount_minor, false, out.now)?;
                released(out);
                Ok(())
            }
            hold_state::RELEASED => Ok(()),
            hold_state::DECLINED => {
                released(out);
                Ok(())
            }
            other => Err(StepError::Poison(format!(
                "payment {} to be released but its hold is {other}",
                p.payment_id
            ))),
        }
    }

    /// Writes what the batch did.
    pub(super) async fn write(self, txn: &impl ConnectionTrait) -> Result<(), StepError> {
        let mut new_holds = Vec::new();
        let mut moved_holds = Vec::new();
        for row in self.holds.values() {
            match &row.read {
                None => new_holds.push(row.now.clone().into_active_model()),
                Some(read) if *read != row.now => moved_holds.push((read, &row.now)),
                Some(_) => {}
            }
        }
        falcon_kernel::store::insert_all_new(txn, new_holds, hold::Column::PaymentId, "holds")
            .await?;
        falcon_kernel::store::update_guarded::<hold::Entity>(
            txn,
            hold::Column::PaymentId,
            &[
                hold::Column::State,
                hold::Column::Reason,
                hold::Column::UpdatedAt,
            ],
            &[hold::Column::State],
            &moved_holds,
            "holds",
        )
        .await?;
        let changed: Vec<(&wallet::Model, &wallet::Model)> = self
            .wallets
            .values()
            .filter_map(|row| Some((row.read.as_ref()?, &row.now)))
            .filter(|(read, now)| read != now)
            .collect();
        falcon_kernel::store::update_guarded::<wallet::Entity>(
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
        for chunk in falcon_kernel::store::insert_chunks(self.ledger) {
            ledger_entry::Entity::insert_many(chunk).exec(txn).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use falcon_schemas::event::{CapturedData, RiskData};
    use falcon_schemas::Currency;
    use rust_decimal::Decimal;
    use sea_orm::{
        ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder, Set,
        TransactionTrait,
    };

    async fn wallet_db() -> DatabaseConnection {
        let db = falcon_kernel::store::memory_db(wallet::Entity).await;
        let schema = sea_orm::Schema::new(db.get_database_backend());
        for table in [
            schema.create_table_from_entity(hold::Entity),
            schema.create_table_from_entity(ledger_entry::Entity),
        ] {
            db.execute(&table).await.expect("a table");
        }
        let now = Utc::now();
        for (id, currency, balance) in [
            ("a", "USD", 1000),
            ("b", "USD", 0),
            ("c", "USD", 50),
            ("e", "EUR", 500),
        ] {
            wallet::Entity::insert(wallet::ActiveModel {
                wallet_id: Set(id.into()),
                owner: Set("o".into()),
                currency: Set(currency.into()),
                balance_minor: Set(balance),
                held_minor: Set(0),
                created_at: Set(now),
                updated_at: Set(now),
            })
            .exec(&db)
            .await
            .expect("a wallet");
        }
        db
    }

    fn pay(id: &str, from: &str, to: &str, minor: i64) -> PaymentData {
        PaymentData {
            payment_id: id.into(),
            from_wallet: from.into(),
            to_wallet: to.into(),
            amount: Decimal::new(minor, 2),
            currency: Currency::from_code("USD").expect("USD"),
        }
    }

    fn approved(p: PaymentData) -> EventData {
        EventData::RiskApproved(RiskData {
            payment: p,
            score: 0,
            risk_reasons: vec![],
        })
    }

    fn captured(p: PaymentData) -> EventData {
        EventData::PaymentCaptured(CapturedData {
            payment: p,
            settlement_id: "s".into(),
        })
    }

    fn capture_failed(p: PaymentData) -> EventData {
        EventData::PaymentCaptureFailed(FailureData {
            payment: p,
            reason: Reason::CaptureDeclined,
            message: "declined".into(),
        })
    }

    /// What a database holds after the steps, without times and ids.
    async fn contents(db: &DatabaseConnection) -> (Vec<String>, Vec<String>, Vec<String>) {
        let wallets = wallet::Entity::find()
            .order_by_asc(wallet::Column::WalletId)
            .all(db)
            .await
            .expect("wallets");
        let holds = hold::Entity::find()
            .order_by_asc(hold::Column::PaymentId)
            .all(db)
            .await
            .expect("holds");
        let ledger = ledger_entry::Entity::find()
            .order_by_asc(ledger_entry::Column::Id)
            .all(db)
            .await
            .expect("ledger");
        (
            wallets
                .iter()
                .map(|w| format!("{} {} {}", w.wallet_id, w.balance_minor, w.held_minor))
                .collect(),
            holds
                .iter()
                .map(|h| {
                    format!(
                        "{} {}→{} {} {} {:?}",
                        h.payment_id, h.wallet_id, h.to_wallet, h.amount_minor, h.state, h.reason
                    )
                })
                .collect(),
            ledger
                .iter()
                .map(|l| format!("{} {} {}", l.movement_id, l.account, l.amount_minor))
                .collect(),
        )
    }

    /// Each batch through the parent module's one-message steps.
    async fn step_by_step(db: &DatabaseConnection, batches: &[Vec<EventData>]) -> Vec<EventData> {
        let mut events = Vec::new();
        for batch in batches {
            let txn = db.begin().await.expect("txn");
            for data in batch {
                let mut out = Outbox::standalone("falcon/wallet", "cause".into(), Utc::now());
                match data {
                    EventData::RiskApproved(d) => {
                        super::super::reserve(&txn, &d.payment, &mut out).await
                    }
                    EventData::PaymentCaptured(d) => {
                        super::super::commit(&txn, &d.payment, &mut out).await
                    }
                    EventData::PaymentCaptureFailed(d) => {
                        super::super::release(&txn, d, &mut out).await
                    }
                    _ => unreachable!("the test's events"),
                }
                .expect("a step");
                events.extend(out.events.into_iter().map(|e| e.data));
            }
            txn.commit().await.expect("commit");
        }
        events
    }

    /// Each batch through the book.
    async fn by_book(db: &DatabaseConnection, batches: &[Vec<EventData>]) -> Vec<EventData> {
        let mut events = Vec::new();
        for batch in batches {
            let txn = db.begin().await.expect("txn");
            let mut book = Book::read(&txn, batch).await.expect("read");
            for data in batch {
                let mut out = Outbox::standalone("falcon/wallet", "cause".into(), Utc::now());
                book.apply(data, &mut out).expect("a step");
                events.extend(out.events.into_iter().map(|e| e.data));
            }
            book.write(&txn).await.expect("write");
            txn.commit().await.expect("commit");
        }
        events
    }

    /// Reservations that pass and fail each check, commits, releases with
    /// and without a hold, and repeats, in two batches (so the second reads
    /// the first's holds): the book leaves the same rows and emits the
    /// same events as the steps one message at a time.
    #[tokio::test]
    async fn a_batch_moves_money_like_its_steps_one_by_one() {
        let batches = vec![
            vec![
                approved(pay("p1", "a", "b", 300)),
                approved(pay("p2", "c", "b", 100)), // too little in c
                approved(pay("p3", "a", "e", 10)),  // e holds EUR
                approved(pay("p4", "a", "zz", 10)), // no such wallet
                approved(pay("p5", "a", "b", 600)),
                approved(pay("p6", "a", "b", 200)), // 100 left in a
                capture_failed(pay("p7", "a", "b", 10)), // released before reserved
                approved(pay("p7", "a", "b", 10)),
                approved(pay("p1", "a", "b", 300)), // a repeat
            ],
            vec![
                captured(pay("p1", "a", "b", 300)),
                capture_failed(pay("p5", "a", "b", 600)),
                approved(pay("p8", "a", "b", 650)), // fits once p5 is released
                capture_failed(pay("p2", "c", "b", 100)), // declined: released at once
                captured(pay("p1", "a", "b", 300)), // a repeat
                capture_failed(pay("p5", "a", "b", 600)), // a repeat
            ],
        ];
        let one_by_one = wallet_db().await;
        let expected_events = step_by_step(&one_by_one, &batches).await;
        let booked = wallet_db().await;
        let events = by_book(&booked, &batches).await;
        assert_eq!(events, expected_events);
        let expected = contents(&one_by_one).await;
        assert_eq!(contents(&booked).await, expected);
        assert!(
            expected.0.contains(&"a 700 650".to_owned()),
            "{:?}",
            expected.0
        );
        assert!(
            expected.0.contains(&"b 300 0".to_owned()),
            "{:?}",
            expected.0
        );
    }

    /// A wallet another writer changed after the book read it is not
    /// overwritten: the write is a transient error (the batch reruns).
    #[tokio::test]
    async fn a_wallet_changed_meanwhile_is_a_transient_conflict() {
        let db = wallet_db().await;
        let batch = vec![approved(pay("p1", "a", "b", 300))];
        let txn = db.begin().await.expect("txn");
        let mut book = Book::read(&txn, &batch).await.expect("read");
        txn.commit().await.expect("commit");
        let mut out = Outbox::standalone("falcon/wallet", "cause".into(), Utc::now());
        book.apply(&batch[0], &mut out).expect("reserved in memory");
        wallet::Entity::update_many()
            .col_expr(
                wallet::Column::BalanceMinor,
                sea_orm::sea_query::Expr::value(10),
            )
            .filter(wallet::Column::WalletId.eq("a"))
            .exec(&db)
            .await
            .expect("changed meanwhile");
        let txn = db.begin().await.expect("txn");
        let err = book.write(&txn).await.expect_err("stale");
        assert!(matches!(err, StepError::Conflict(_)), "{err}");
    }
}
