//! The wallet actor: wallets, deposits, a double-entry ledger, and holds
//! (reserve → commit | release) for the payment saga, refunds for the
//! refund saga.
//!
//! Correctness comes from the database, not from there being one consumer:
//! every balance change is a guarded update whose affected-row count is
//! checked (`… WHERE available >= amount` one message at a time; in a batch
//! ([`book`]), `… WHERE balance and held are as read`), and every business
//! key (wallet id,
//! deposit reference, payment id, refund id) is a primary key claimed by
//! insert, so two processes sharing the consumers can neither overdraw a
//! wallet nor apply a step twice.
//!
//! Shutdown: the consumer loop stops between batches; an unacked batch is
//! redelivered and finds its inbox rows. On failure the supervisor restarts
//! the actor from the database.

mod book;
pub mod entity;
pub mod migration;
pub mod settings;
pub mod verify;

use chrono::{DateTime, Utc};
use falcon_nats::{ConsumerSpec, Delivery};
use falcon_sagas::Actor;
use falcon_schemas::command::{Deposit, OpenWallet};
use falcon_schemas::event::{
    DepositedData, FailureData, PaymentData, RefundData, RefundFailureData, WalletOpenedData,
};
use falcon_schemas::subject::{STREAM_CMD, STREAM_EVT};
use falcon_schemas::{Command, Currency, EventData, Money, ParseError, Reason};
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, DatabaseTransaction, EntityTrait,
    QueryFilter, Set, TryInsertResult,
};

use entity::{deposit, hold, ledger_entry, refund, wallet};
use falcon_kernel::handler::{apply_each, Item};
use falcon_kernel::handler::{consumer_spec, decode_event, events_for, Handler};
use falcon_kernel::settings::ConsumerSettings;
use falcon_kernel::store::Outbox;
use falcon_kernel::StepError;

/// The system account deposits are funded from; its balance is minus the
/// sum of all deposits.
pub const FUNDING_ACCOUNT: &str = "@funding";

/// Hold states.
pub mod hold_state {
    pub const RESERVED: &str = "reserved";
    pub const COMMITTED: &str = "committed";
    pub const RELEASED: &str = "released";
    pub const DECLINED: &str = "declined";
}

pub struct Wallet {
    db: DatabaseConnection,
}

/// The wallet actor as the runtime's registry lists it.
pub struct WalletActor;

impl falcon_kernel::ActorDef for WalletActor {
    type Settings = settings::WalletSettings;
    const ACTOR: Actor = Actor::Wallet;
    const DATABASE_KEY: &'static str = "wallet.database_url";

    fn database_url(settings: &settings::WalletSettings) -> &str {
        &settings.database_url
    }

    async fn migrate(db: &DatabaseConnection) -> Result<(), sea_orm::DbErr> {
        use sea_orm_migration::MigratorTrait;
        migration::Migrator::up(db, None).await
    }

    fn consumers(consumer: &ConsumerSettings) -> Vec<ConsumerSpec> {
        Wallet::consumers(consumer)
    }

    fn parts(
        _settings: &settings::WalletSettings,
        db: &DatabaseConnection,
        consumer: &ConsumerSettings,
    ) -> Result<falcon_kernel::actor::Parts, falcon_kernel::Error> {
        Ok(falcon_kernel::actor::Parts::loops(vec![
            falcon_kernel::actor::loop_of(Wallet::new(db.clone()), consumer),
        ]))
    }

    async fn verify(
        db: &DatabaseConnection,
        _settled: bool,
    ) -> Result<falcon_kernel::verify::Facts, sea_orm::DbErr> {
        verify::check(db).await
    }
}

impl Wallet {
    pub fn new(db: DatabaseConnection) -> Wallet {
        Wallet { db }
    }
}

/// A wallet's balances, for `falcon wallet balance`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Balance {
    pub wallet_id: String,
    pub owner: String,
    pub currency: String,
    pub balance: String,
    pub held: String,
    pub available: String,
    pub balance_minor: i64,
    pub held_minor: i64,
    pub available_minor: i64,
}

/// Reads a wallet's balances; `None` when it does not exist.
pub async fn balance(
    db: &impl ConnectionTrait,
    wallet_id: &str,
) -> Result<Option<Balance>, sea_orm::DbErr> {
    let Some(w) = wallet::Entity::find_by_id(wallet_id.to_owned())
        .one(db)
        .await?
    else {
        return Ok(None);
    };
    let currency = Currency::from_code(&w.currency).ok_or_else(|| {
        sea_orm::DbErr::Custom(format!(
            "wallet {} has unknown currency {}",
            w.wallet_id, w.currency
        ))
    })?;
    let fmt = |minor: i64| Money::from_minor(minor, currency).amount_string();
    let available_minor = w.balance_minor - w.held_minor;
    Ok(Some(Balance {
        balance: fmt(w.balance_minor),
        held: fmt(w.held_minor),
        available: fmt(available_minor),
        wallet_id: w.wallet_id,
        owner: w.owner,
        currency: w.currency,
        balance_minor: w.balance_minor,
        held_minor: w.held_minor,
        available_minor,
    }))
}

impl Handler for Wallet {
    type Prepared = ();
    const ACTOR: Actor = Actor::Wallet;
    const SOURCE: &'static str = "falcon/wallet";
    const LABEL: &'static str = "wallet";

    fn consumers(s: &ConsumerSettings) -> Vec<ConsumerSpec> {
        let events = events_for(Actor::Wallet);
        vec![
            consumer_spec(
                "wallet-cmd",
                STREAM_CMD,
                vec!["falcon.cmd.wallet.>".into()],
                s,
            ),
            consumer_spec(
                "wallet-evt",
                STREAM_EVT,
                events.iter().map(|e| e.filter()).collect(),
                s,
            ),
        ]
    }

    fn db(&self) -> &DatabaseConnection {
        &self.db
    }

    async fn prepare(&self, _batch: &[Delivery]) {}

    async fn apply(
        &self,
        txn: &DatabaseTransaction,
        delivery: &Delivery,
        _prepared: &(),
        out: &mut Outbox,
    ) -> Result<(), StepError> {
        if delivery.stream == STREAM_CMD {
            return match Command::parse(&delivery.subject, &delivery.payload) {
                Err(ParseError::Unparseable(e)) => Err(StepError::Poison(e)),
                Err(ParseError::Rejected(r)) => {
                    out.push(EventData::WalletRejected(falcon_kernel::rejection(
                        &r, delivery,
                    )));
                    Ok(())
                }
                Ok(Command::OpenWallet(c)) => open(txn, &c, out).await,
                Ok(Command::Deposit(c)) => deposit(txn, &c, out).await,
                Ok(other) => Err(StepError::Poison(format!(
                    "{} is not a wallet command",
                    other.kind().as_str()
                ))),
            };
        }
        let event = decode_event(Actor::Wallet, delivery)?;
        match &event.data {
            EventData::RiskApproved(d) => reserve(txn, &d.payment, out).await,
            EventData::PaymentCaptured(d) => commit(txn, &d.payment, out).await,
            EventData::PaymentCaptureFailed(d) => release(txn, d, out).await,
            EventData::RefundRequested(d) => refund_payment(txn, d, out).await,
            other => Err(StepError::Poison(format!(
                "wallet does not handle {}",
                other.event_type().type_str()
            ))),
        }
    }

    /// A batch of the payment saga's steps runs set-based over the wallets
    /// and holds it touches ([`book`]); a batch with anything else (a
    /// command, a refund) runs step by step.
    async fn apply_batch(
        &self,
        txn: &DatabaseTransaction,
        items: &mut [Item<'_>],
        prepared: &(),
    ) -> Result<(), StepError> {
        let mut events = Vec::with_capacity(items.len());
        for item in items.iter() {
            if item.delivery.stream == STREAM_CMD {
                return apply_each(self, txn, items, prepared).await;
            }
            let data = decode_event(Actor::Wallet, item.delivery)?.data;
            if !book::handles(&data) {
                return apply_each(self, txn, items, prepared).await;
            }
            events.push(data);
        }
        let mut book = book::Book::read(txn, &events).await?;
        for (item, data) in items.iter_mut().zip(&events) {
            let span = item.span.clone();
            span.in_scope(|| book.apply(data, &mut item.out))?;
        }
        book.write(txn).await
    }
}

fn rejected(out: &mut Outbox, command: &str, key: &str, reason: Reason, message: String) {
    out.push(EventData::WalletRejected(
        falcon_schemas::event::RejectedData {
            command: command.to_owned(),
            key: key.to_owned(),
            reason,
            message,
            field: None,
        },
    ));
}

async fn open(
    txn: &DatabaseTransaction,
    c: &OpenWallet,
    out: &mut Outbox,
) -> Result<(), StepError> {
    let row = wallet::ActiveModel {
        wallet_id: Set(c.wallet_id.clone()),
        owner: Set(c.owner.clone()),
        currency: Set(c.currency.code().to_owned()),
        balance_minor: Set(0),
        held_minor: Set(0),
        created_at: Set(out.now),
        updated_at: Set(out.now),
    };
    let inserted = wallet::Entity::insert(row)
        .on_conflict_do_nothing_on([wallet::Column::WalletId])
        .exec(txn)
        .await?;
    if matches!(inserted, TryInsertResult::Inserted(_)) {
        out.push(EventData::WalletOpened(WalletOpenedData {
            wallet_id: c.wallet_id.clone(),
            owner: c.owner.clone(),
            currency: c.currency,
        }));
        return Ok(());
    }
    let existing = find_wallet(txn, &c.wallet_id).await?;
    if let Some(w) = existing.filter(|w| w.owner != c.owner || w.currency != c.currency.code()) {
        rejected(
            out,
            "wallet.open",
            &c.wallet_id,
            Reason::IdempotencyKeyReused,
            format!(
                "wallet {} exists with owner {:?} in {}",
                w.wallet_id, w.owner, w.currency
            ),
        );
    }
    Ok(())
}

async fn find_wallet(
    txn: &impl ConnectionTrait,
    wallet_id: &str,
) -> Result<Option<wallet::Model>, StepError> {
    Ok(wallet::Entity::find_by_id(wallet_id.to_owned())
        .one(txn)
        .await?)
}

async fn deposit(
    txn: &DatabaseTransaction,
    c: &Deposit,
    out: &mut Outbox,
) -> Result<(), StepError> {
    let Some(w) = find_wallet(txn, &c.wallet_id).await? else {
        rejected(
            out,
            "wallet.deposit",
            &c.wallet_id,
            Reason::WalletNotFound,
            format!("wallet {} does not exist", c.wallet_id),
        );
        return Ok(());
    };
    if w.currency != c.amount.currency().code() {
        rejected(
            out,
            "wallet.deposit",
            &c.wallet_id,
            Reason::CurrencyMismatch,
            format!(
                "wallet {} holds {}, deposit is in {}",
                w.wallet_id,
                w.currency,
                c.amount.currency()
            ),
        );
        return Ok(());
    }
    let amount_minor = c.amount.minor();
    let row = deposit::ActiveModel {
        reference: Set(c.reference.clone()),
        wallet_id: Set(c.wallet_id.clone()),
        amount_minor: Set(amount_minor),
        currency: Set(w.currency.clone()),
        created_at: Set(out.now),
    };
    let inserted = deposit::Entity::insert(row)
        .on_conflict_do_nothing_on([deposit::Column::Reference])
        .exec(txn)
        .await?;
    if !matches!(inserted, TryInsertResult::Inserted(_)) {
        let prior = deposit::Entity::find_by_id(c.reference.clone())
            .one(txn)
            .await?;
        if let Some(p) = prior.filter(|p| {
            p.wallet_id != c.wallet_id || p.amount_minor != amount_minor || p.currency != w.currency
        }) {
            rejected(
                out,
                "wallet.deposit",
                &c.wallet_id,
                Reason::IdempotencyKeyReused,
                format!(
                    "reference {} was used for {} minor units into {}",
                    p.reference, p.amount_minor, p.wallet_id
                ),
            );
        }
        return Ok(());
    }
    let movement = format!("deposit:{}", c.reference);
    post(
        txn,
        &movement,
        &w.currency,
        &[
            (FUNDING_ACCOUNT, -amount_minor),
            (&c.wallet_id, amount_minor),
        ],
        out.now,
    )
    .await?;
    let updated = wallet::Entity::update_many()
        .col_expr(
            wallet::Column::BalanceMinor,
            Expr::col(wallet::Column::BalanceMinor).add(amount_minor),
        )
        .col_expr(wallet::Column::UpdatedAt, Expr::value(out.now))
        .filter(wallet::Column::WalletId.eq(&c.wallet_id))
        .exec(txn)
        .await?;
    assert_eq!(
        updated.rows_affected, 1,
        "the wallet was read in this transaction"
    );
    out.push(EventData::WalletDeposited(DepositedData {
        wallet_id: c.wallet_id.clone(),
        reference: c.reference.clone(),
        amount: c.amount.wire_amount(),
        currency: c.amount.currency(),
    }));
    Ok(())
}

/// Writes one ledger movement.
async fn post(
    txn: &impl ConnectionTrait,
    movement_id: &str,
    currency: &str,
    entries: &[(&str, i64)],
    now: DateTime<Utc>,
) -> Result<(), StepError> {
    ledger_entry::Entity::insert_many(ledger_rows(movement_id, currency, entries, now))
        .exec(txn)
        .await?;
    Ok(())
}

/// The rows of one ledger movement. The entries must sum to zero: a
/// movement that does not is a bug, so it panics and the supervisor
/// restarts.
fn ledger_rows(
    movement_id: &str,
    currency: &str,
    entries: &[(&str, i64)],
    now: DateTime<Utc>,
) -> Vec<ledger_entry::ActiveModel> {
    let sum = entries
        .iter()
        .try_fold(0_i64, |acc, (_, a)| acc.checked_add(*a));
    assert_eq!(
        sum,
        Some(0),
        "ledger movement {movement_id} must sum to zero"
    );
    entries
        .iter()
        .map(|(account, amount_minor)| ledger_entry::ActiveModel {
            movement_id: Set(movement_id.to_owned()),
            account: Set((*account).to_owned()),
            amount_minor: Set(*amount_minor),
            currency: Set(currency.to_owned()),
            created_at: Set(now),
            ..Default::default()
        })
        .collect()
}

fn money(p: &PaymentData) -> Result<Money, StepError> {
    p.money().map_err(|e| {
        StepError::Poison(format!(
            "payment {} has a malformed amount: {e}",
            p.payment_id
        ))
    })
}

async fn reserve(
    txn: &DatabaseTransaction,
    p: &PaymentData,
    out: &mut Outbox,
) -> Result<(), StepError> {
    let amount = money(p)?;
    let decline = |out: &mut Outbox, reason: Reason, message: String| {
        out.push(EventData::ReservationDeclined(FailureData {
            payment: p.clone(),
            reason,
            message,
        }));
    };
    // Both wallets with one read: a missing one or a foreign currency
    // declines without touching any balance.
    let wallets = falcon_kernel::store::rows_by_key::<wallet::Entity, _>(
        txn,
        wallet::Column::WalletId,
        [p.from_wallet.as_str(), p.to_wallet.as_str()].into_iter(),
        |w| w.wallet_id.clone(),
    )
    .await?;
    let mut refuse = None;
    for wallet_id in [&p.from_wallet, &p.to_wallet] {
        match wallets.get(wallet_id) {
            None => {
                refuse = Some((
                    Reason::WalletNotFound,
                    format!("wallet {wallet_id} does not exist"),
                ));
                break;
            }
            Some(w) if w.currency != amount.currency().code() => {
                refuse = Some((
                    Reason::CurrencyMismatch,
                    format!(
                        "wallet {wallet_id} holds {}, payment is in {}",
                        w.currency,
                        amount.currency()
                    ),
                ));
                break;
            }
            Some(_) => {}
        }
    }
    // Claim the payment's hold before any balance moves, in the state the
    // checks so far give: a second reserve for the same payment finds it
    // and does nothing.
    let claimed = hold::Entity::insert(hold::ActiveModel {
        payment_id: Set(p.payment_id.clone()),
        wallet_id: Set(p.from_wallet.clone()),
        to_wallet: Set(p.to_wallet.clone()),
        amount_minor: Set(amount.minor()),
        currency: Set(amount.currency().code().to_owned()),
        state: Set(if refuse.is_some() {
            hold_state::DECLINED
        } else {
            hold_state::RESERVED
        }
        .to_owned()),
        reason: Set(refuse.as_ref().map(|(r, _)| r.as_str().to_owned())),
        created_at: Set(out.now),
        updated_at: Set(out.now),
    })
    .on_conflict_do_nothing_on([hold::Column::PaymentId])
    .exec(txn)
    .await?;
    if !matches!(claimed, TryInsertResult::Inserted(_)) {
        return Ok(());
    }
    if refuse.is_none() {
        let reserved = wallet::Entity::update_many()
            .col_expr(
                wallet::Column::HeldMinor,
                Expr::col(wallet::Column::HeldMinor).add(amount.minor()),
            )
            .col_expr(wallet::Column::UpdatedAt, Expr::value(out.now))
            .filter(wallet::Column::WalletId.eq(&p.from_wallet))
            .filter(
                Expr::col(wallet::Column::BalanceMinor)
                    .sub(Expr::col(wallet::Column::HeldMinor))
                    .gte(amount.minor()),
            )
            .exec(txn)
            .await?;
        if reserved.rows_affected == 0 {
            let reason = Reason::InsufficientFunds;
            let declined = set_hold_state(
                txn,
                &p.payment_id,
                hold_state::RESERVED,
                hold_state::DECLINED,
                Some(reason),
                out.now,
            )
            .await?;
            assert!(declined, "the hold was claimed in this transaction");
            refuse = Some((
                reason,
                format!("wallet {} has less than {amount} available", p.from_wallet),
            ));
        }
    }
    match refuse {
        Some((reason, message)) => decline(out, reason, message),
        None => out.push(EventData::FundsReserved(p.clone())),
    }
    Ok(())
}

/// Moves a hold from `from` to `to`; false when it was not in `from`.
async fn set_hold_state(
    txn: &impl ConnectionTrait,
    payment_id: &str,
    from: &str,
    to: &str,
    reason: Option<Reason>,
    now: DateTime<Utc>,
) -> Result<bool, StepError> {
    let r = hold::Entity::update_many()
        .col_expr(hold::Column::State, Expr::value(to))
        .col_expr(
            hold::Column::Reason,
            Expr::value(reason.map(|r| r.as_str().to_owned())),
        )
        .col_expr(hold::Column::UpdatedAt, Expr::value(now))
        .filter(hold::Column::PaymentId.eq(payment_id))
        .filter(hold::Column::State.eq(from))
        .exec(txn)
        .await?;
    Ok(r.rows_affected == 1)
}

async fn find_hold(txn: &impl ConnectionTrait, payment_id: &str) -> Result<hold::Model, StepError> {
    hold::Entity::find_by_id(payment_id.to_owned())
        .one(txn)
        .await?
        .ok_or_else(|| StepError::Poison(format!("payment {payment_id} has no hold")))
}

async fn commit(
    txn: &DatabaseTransaction,
    p: &PaymentData,
    out: &mut Outbox,
) -> Result<(), StepError> {
    let h = find_hold(txn, &p.payment_id).await?;
    if !set_hold_state(
        txn,
        &p.payment_id,
        hold_state::RESERVED,
        hold_state::COMMITTED,
        None,
        out.now,
    )
    .await?
    {
        return match h.state.as_str() {
            hold_state::COMMITTED => Ok(()),
            other => Err(StepError::Poison(format!(
                "payment {} captured but its hold is {other}",
                p.payment_id
            ))),
        };
    }
    let debited = wallet::Entity::update_many()
        .col_expr(
            wallet::Column::BalanceMinor,
            Expr::col(wallet::Column::BalanceMinor).sub(h.amount_minor),
        )
        .col_expr(
            wallet::Column::HeldMinor,
            Expr::col(wallet::Column::HeldMinor).sub(h.amount_minor),
        )
        .col_expr(wallet::Column::UpdatedAt, Expr::value(out.now))
        .filter(wallet::Column::WalletId.eq(&h.wallet_id))
        .filter(wallet::Column::HeldMinor.gte(h.amount_minor))
        .exec(txn)
        .await?;
    assert_eq!(
        debited.rows_affected, 1,
        "a reserved hold is covered by the wallet's held balance"
    );
    let credited = wallet::Entity::update_many()
        .col_expr(
            wallet::Column::BalanceMinor,
            Expr::col(wallet::Column::BalanceMinor).add(h.amount_minor),
        )
        .col_expr(wallet::Column::UpdatedAt, Expr::value(out.now))
        .filter(wallet::Column::WalletId.eq(&h.to_wallet))
        .exec(txn)
        .await?;
    assert_eq!(
        credited.rows_affected, 1,
        "the destination was checked when the hold was reserved"
    );
    let movement = format!("transfer:{}", p.payment_id);
    post(
        txn,
        &movement,
        &h.currency,
        &[
            (&h.wallet_id, -h.amount_minor),
            (&h.to_wallet, h.amount_minor),
        ],
        out.now,
    )
    .await?;
    out.push(EventData::TransferCommitted(p.clone()));
    Ok(())
}

async fn release(
    txn: &DatabaseTransaction,
    f: &FailureData,
    out: &mut Outbox,
) -> Result<(), StepError> {
    let p = &f.payment;
    let released_event = |out: &mut Outbox| {
        out.push(EventData::FundsReleased(FailureData {
            payment: p.clone(),
            reason: f.reason,
            message: f.message.clone(),
        }))
    };
    // No hold yet (a deadline passed before the reservation): leave a
    // released tombstone, so a reservation still on its way finds the
    // payment's hold claimed and reserves nothing.
    let amount = money(p)?;
    let tombstone = hold::Entity::insert(hold::ActiveModel {
        payment_id: Set(p.payment_id.clone()),
        wallet_id: Set(p.from_wallet.clone()),
        to_wallet: Set(p.to_wallet.clone()),
        amount_minor: Set(amount.minor()),
        currency: Set(amount.currency().code().to_owned()),
        state: Set(hold_state::RELEASED.to_owned()),
        reason: Set(Some(f.reason.as_str().to_owned())),
        created_at: Set(out.now),
        updated_at: Set(out.now),
    })
    .on_conflict_do_nothing_on([hold::Column::PaymentId])
    .exec(txn)
    .await?;
    if matches!(tombstone, TryInsertResult::Inserted(_)) {
        released_event(out);
        return Ok(());
    }
    let h = find_hold(txn, &p.payment_id).await?;
    if !set_hold_state(
        txn,
        &p.payment_id,
        hold_state::RESERVED,
        hold_state::RELEASED,
        Some(f.reason),
        out.now,
    )
    .await?
    {
        return match h.state.as_str() {
            hold_state::RELEASED => Ok(()),
            // Declined: nothing is held, and the saga may end.
            hold_state::DECLINED => {
                released_event(out);
                Ok(())
            }
            other => Err(StepError::Poison(format!(
                "payment {} to be released but its hold is {other}",
                p.payment_id
            ))),
        };
    }
    let released = wallet::Entity::update_many()
        .col_expr(
            wallet::Column::HeldMinor,
            Expr::col(wallet::Column::HeldMinor).sub(h.amount_minor),
        )
        .col_expr(wallet::Column::UpdatedAt, Expr::value(out.now))
        .filter(wallet::Column::WalletId.eq(&h.wallet_id))
        .filter(wallet::Column::HeldMinor.gte(h.amount_minor))
        .exec(txn)
        .await?;
    assert_eq!(
        released.rows_affected, 1,
        "a reserved hold is covered by the wallet's held balance"
    );
    released_event(out);
    Ok(())
}

async fn refund_payment(
    txn: &DatabaseTransaction,
    r: &RefundData,
    out: &mut Outbox,
) -> Result<(), StepError> {
    let amount = r.money().map_err(|e| {
        StepError::Poison(format!(
            "refund {} has a malformed amount: {e}",
            r.refund_id
        ))
    })?;
    let claimed = refund::Entity::insert(refund::ActiveModel {
        refund_id: Set(r.refund_id.clone()),
        payment_id: Set(r.payment_id.clone()),
        amount_minor: Set(amount.minor()),
        currency: Set(amount.currency().code().to_owned()),
        state: Set("declined".to_owned()),
        created_at: Set(out.now),
    })
    .on_conflict_do_nothing_on([refund::Column::RefundId])
    .exec(txn)
    .await?;
    if !matches!(claimed, TryInsertResult::Inserted(_)) {
        return Ok(());
    }
    // The payee gives the money back, if it still has it available.
    let debited = wallet::Entity::update_many()
        .col_expr(
            wallet::Column::BalanceMinor,
            Expr::col(wallet::Column::BalanceMinor).sub(amount.minor()),
        )
        .col_expr(wallet::Column::UpdatedAt, Expr::value(out.now))
        .filter(wallet::Column::WalletId.eq(&r.to_wallet))
        .filter(wallet::Column::Currency.eq(amount.currency().code()))
        .filter(
            Expr::col(wallet::Column::BalanceMinor)
                .sub(Expr::col(wallet::Column::HeldMinor))
                .gte(amount.minor()),
        )
        .exec(txn)
        .await?;
    if debited.rows_affected == 0 {
        out.push(EventData::RefundDeclined(RefundFailureData {
            refund: r.clone(),
            reason: Reason::InsufficientFunds,
            message: format!("wallet {} has less than {amount} available", r.to_wallet),
        }));
        return Ok(());
    }
    let credited = wallet::Entity::update_many()
        .col_expr(
            wallet::Column::BalanceMinor,
            Expr::col(wallet::Column::BalanceMinor).add(amount.minor()),
        )
        .col_expr(wallet::Column::UpdatedAt, Expr::value(out.now))
        .filter(wallet::Column::WalletId.eq(&r.from_wallet))
        .exec(txn)
        .await?;
    if credited.rows_affected != 1 {
        return Err(StepError::Poison(format!(
            "refund {}: wallet {} does not exist",
            r.refund_id, r.from_wallet
        )));
    }
    refund::Entity::update_many()
        .col_expr(refund::Column::State, Expr::value("committed"))
        .filter(refund::Column::RefundId.eq(&r.refund_id))
        .exec(txn)
        .await?;
    let movement = format!("refund:{}", r.refund_id);
    post(
        txn,
        &movement,
        amount.currency().code(),
        &[
            (&r.to_wallet, -amount.minor()),
            (&r.from_wallet, amount.minor()),
        ],
        out.now,
    )
    .await?;
    out.push(EventData::RefundCommitted(r.clone()));
    Ok(())
}
