//! The wallet's tests of both paths, on in-memory SQLite databases built by
//! the migrations: helpers here (messages, running them through each path,
//! what a database holds); [`paths`] for batches against their steps one by
//! one, [`agree`] for the property test of the same, [`bound`] for the
//! circulation bound (the overflow it prevents, on both paths and through
//! the handler), [`schema`] for the states' storage and the migration's
//! back-fill; on real databases ([`backend`]: a SQLite file, and
//! PostgreSQL when `FALCON_TEST_DATABASE_URL` is set), [`attacks`] for who
//! may move money and events that disagree with the records, [`checks`]
//! for what the database itself refuses and the later migrations'
//! back-fills.

mod agree;
mod attacks;
mod backend;
mod bound;
mod checks;
mod paths;
mod schema;

use chrono::{DateTime, TimeZone, Utc};
use falcon_schemas::command::{Deposit, OpenWallet};
use falcon_schemas::event::{FailureData, PaymentData, RefundData};
use falcon_schemas::{Currency, EventData, Money, Reason};
use rust_decimal::Decimal;
use sea_orm::{DatabaseConnection, EntityTrait, QueryOrder, TransactionTrait};
use sea_orm_migration::MigratorTrait;

use crate::book::Book;
use crate::decide::Policy;
use crate::entity::{circulation, deposit, hold, ledger_entry, refund, wallet};
use crate::message::Message;
use crate::migration::Migrator;
use falcon_kernel::store::Outbox;

/// A fresh in-memory database with the wallet's migrations applied.
pub(crate) async fn db() -> DatabaseConnection {
    let db = falcon_kernel::store::memory_db(wallet::Entity).await;
    Migrator::up(&db, None).await.expect("the migrations");
    db
}

pub(crate) fn usd() -> Currency {
    Currency::from_code("USD").expect("USD")
}

pub(crate) fn eur() -> Currency {
    Currency::from_code("EUR").expect("EUR")
}

/// The principal the helpers open wallets, pay and refund as (each wallet
/// opened with `open` is its own `owner`'s: tests open them as `"o"`).
pub(crate) const OWNER: &str = "o";

/// The principal deposits come from, by default.
pub(crate) const TREASURY: &str = crate::settings::TREASURY_PRINCIPAL;

/// `wallet.open` sent by the principal named like its `owner`.
pub(crate) fn open(wallet_id: &str, owner: &str, currency: Currency) -> Message {
    open_by(wallet_id, owner, currency, owner)
}

pub(crate) fn open_by(
    wallet_id: &str,
    owner: &str,
    currency: Currency,
    principal: &str,
) -> Message {
    Message::Open(OpenWallet {
        wallet_id: wallet_id.into(),
        owner: owner.into(),
        currency,
        principal: principal.into(),
    })
}

/// `wallet.deposit` sent by the treasury.
pub(crate) fn deposit(wallet_id: &str, minor: i64, currency: Currency, reference: &str) -> Message {
    deposit_by(wallet_id, minor, currency, reference, TREASURY)
}

pub(crate) fn deposit_by(
    wallet_id: &str,
    minor: i64,
    currency: Currency,
    reference: &str,
    principal: &str,
) -> Message {
    Message::Deposit(Deposit {
        wallet_id: wallet_id.into(),
        amount: Money::from_minor(minor, currency),
        reference: reference.into(),
        principal: principal.into(),
    })
}

/// A payment created by [`OWNER`].
pub(crate) fn pay(id: &str, from: &str, to: &str, minor: i64, currency: Currency) -> PaymentData {
    PaymentData {
        payment_id: id.into(),
        from_wallet: from.into(),
        to_wallet: to.into(),
        amount: Decimal::new(minor, currency.minor_units()),
        currency,
        principal: Some(OWNER.into()),
    }
}

pub(crate) fn capture_failed(p: PaymentData) -> Message {
    Message::Release(FailureData {
        payment: p,
        reason: Reason::CaptureDeclined,
        message: "declined".into(),
    })
}

/// A refund of `p`'s payment, asked by [`OWNER`]: from its payee back to
/// its payer.
pub(crate) fn refund_of(refund_id: &str, p: &PaymentData, minor: i64) -> Message {
    Message::Refund(refund_data(refund_id, p, minor))
}

pub(crate) fn refund_data(refund_id: &str, p: &PaymentData, minor: i64) -> RefundData {
    RefundData {
        refund_id: refund_id.into(),
        payment_id: p.payment_id.clone(),
        from_wallet: p.from_wallet.clone(),
        to_wallet: p.to_wallet.clone(),
        amount: Decimal::new(minor, p.currency.minor_units()),
        currency: p.currency,
        principal: Some(OWNER.into()),
    }
}

/// What one message did: its events, or its error (as text).
pub(crate) type Outcome = Result<Vec<EventData>, String>;

fn outbox() -> Outbox {
    Outbox::standalone("falcon/wallet", "cause".into(), Utc::now())
}

/// Each message through the one-message path, in a transaction of its own
/// (a failed one rolled back), as the careful path runs it in a savepoint.
pub(crate) async fn one_by_one(db: &DatabaseConnection, messages: &[Message]) -> Vec<Outcome> {
    let mut outcomes = Vec::with_capacity(messages.len());
    for message in messages {
        let txn = db.begin().await.expect("a transaction");
        let mut out = outbox();
        match crate::steps::apply(&txn, message, &Policy::default(), &mut out).await {
            Ok(()) => {
                txn.commit().await.expect("commit");
                outcomes.push(Ok(out.events.into_iter().map(|e| e.data).collect()));
            }
            Err(e) => {
                txn.rollback().await.expect("rollback");
                outcomes.push(Err(e.to_string()));
            }
        }
    }
    outcomes
}

/// Each batch through the book, in a transaction of its own. A message
/// whose step fails is recorded and the batch goes on without it: a failed
/// step leaves the book as it was, so this is the batch the careful path
/// would run, minus the failing message, and it lets every batch test the
/// book (the kernel would rerun it step by step instead).
pub(crate) async fn by_book(db: &DatabaseConnection, batches: &[&[Message]]) -> Vec<Outcome> {
    let mut outcomes = Vec::new();
    for batch in batches {
        let txn = db.begin().await.expect("a transaction");
        let mut book = Book::read(&txn, batch).await.expect("the batch's rows");
        for message in batch.iter() {
            let mut out = outbox();
            outcomes.push(match book.apply(message, &Policy::default(), &mut out) {
                Ok(()) => Ok(out.events.into_iter().map(|e| e.data).collect()),
                Err(e) => Err(e.to_string()),
            });
        }
        book.write(&txn).await.expect("the batch's writes");
        txn.commit().await.expect("commit");
    }
    outcomes
}

/// Every row of the wallet's tables, in key order, with times set to one
/// instant (each path stamps its own).
#[derive(Debug, PartialEq)]
pub(crate) struct Contents {
    pub wallets: Vec<wallet::Model>,
    pub holds: Vec<hold::Model>,
    pub ledger: Vec<ledger_entry::Model>,
    pub refunds: Vec<refund::Model>,
    pub deposits: Vec<deposit::Model>,
    pub circulation: Vec<circulation::Model>,
}

fn epoch() -> DateTime<Utc> {
    Utc.timestamp_opt(0, 0).single().expect("the epoch")
}

pub(crate) async fn contents(db: &DatabaseConnection) -> Contents {
    let t = epoch();
    Contents {
        wallets: wallet::Entity::find()
            .order_by_asc(wallet::Column::WalletId)
            .all(db)
            .await
            .expect("wallets")
            .into_iter()
            .map(|w| wallet::Model {
                created_at: t,
                updated_at: t,
                ..w
            })
            .collect(),
        holds: hold::Entity::find()
            .order_by_asc(hold::Column::PaymentId)
            .all(db)
            .await
            .expect("holds")
            .into_iter()
            .map(|h| hold::Model {
                created_at: t,
                updated_at: t,
                ..h
            })
            .collect(),
        ledger: ledger_entry::Entity::find()
            .order_by_asc(ledger_entry::Column::Id)
            .all(db)
            .await
            .expect("ledger")
            .into_iter()
            .map(|l| ledger_entry::Model { created_at: t, ..l })
            .collect(),
        refunds: refund::Entity::find()
            .order_by_asc(refund::Column::RefundId)
            .all(db)
            .await
            .expect("refunds")
            .into_iter()
            .map(|r| refund::Model { created_at: t, ..r })
            .collect(),
        deposits: deposit::Entity::find()
            .order_by_asc(deposit::Column::Reference)
            .all(db)
            .await
            .expect("deposits")
            .into_iter()
            .map(|d| deposit::Model { created_at: t, ..d })
            .collect(),
        circulation: circulation::Entity::find()
            .order_by_asc(circulation::Column::Currency)
            .all(db)
            .await
            .expect("circulation")
            .into_iter()
            .map(|c| circulation::Model { updated_at: t, ..c })
            .collect(),
    }
}

/// `falcon verify`'s wallet violations, as text.
pub(crate) async fn violations(db: &DatabaseConnection) -> Vec<String> {
    crate::verify::check(db)
        .await
        .expect("verify reads the tables")
        .violations
        .iter()
        .map(|v| format!("{v:?}"))
        .collect()
}
