//! The reconciliation actor's event loop: folds what the payment and
//! wallet actors publish into one row of facts per payment, and marks the
//! row for the next comparison. It publishes nothing; the reconciler
//! ([`crate::run`]) does.
//!
//! A batch is one multi-row upsert that sets only the columns its events
//! state (an increment for refunds), so the reconciler writing the
//! provider's columns of the same rows at the same time loses nothing. The
//! inbox makes a redelivered event count once.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use falcon_kernel::handler::{
    consumer_spec, decode_any_event, payment_amount, refund_amount, Handler, Item,
};
use falcon_kernel::settings::ConsumerSettings;
use falcon_kernel::store::Outbox;
use falcon_kernel::StepError;
use falcon_nats::{ConsumerSpec, Delivery};
use falcon_sagas::Actor;
use falcon_schemas::subject::STREAM_EVT;
use falcon_schemas::{EventData, EventType, Money};
use sea_orm::sea_query::{Alias, Expr, ExprTrait, Func, OnConflict};
use sea_orm::{ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbErr, EntityTrait, Set};

use crate::entity::fact;
use crate::rules::{COMPLETED, FAILED};

/// The events the facts are folded from.
pub const EVENTS: [EventType; 5] = [
    EventType::PaymentCompleted,
    EventType::PaymentFailed,
    EventType::PaymentRefunded,
    EventType::TransferCommitted,
    EventType::RefundCommitted,
];

pub struct Recon {
    db: DatabaseConnection,
}

impl Recon {
    pub fn new(db: DatabaseConnection) -> Recon {
        Recon { db }
    }
}

impl Handler for Recon {
    type Prepared = ();
    const ACTOR: Actor = Actor::Recon;
    const SOURCE: &'static str = crate::SOURCE;
    const LABEL: &'static str = "recon";

    fn consumers(s: &ConsumerSettings) -> Vec<ConsumerSpec> {
        vec![consumer_spec(
            "recon-evt",
            STREAM_EVT,
            EVENTS.iter().map(EventType::filter).collect(),
            s,
        )]
    }

    fn db(&self) -> &DatabaseConnection {
        &self.db
    }

    async fn prepare(&self, _batch: &[Delivery]) {}

    async fn apply(
        &self,
        txn: &DatabaseTransaction,
        delivery: &Delivery,
        _: &(),
        out: &mut Outbox,
    ) -> Result<(), StepError> {
        let event = decode_any_event(delivery)?;
        fold(txn, &[&event.data], out.now).await
    }

    /// The whole batch in one upsert.
    async fn apply_batch(
        &self,
        txn: &DatabaseTransaction,
        items: &mut [Item<'_>],
        _: &(),
    ) -> Result<(), StepError> {
        let Some(now) = items.first().map(|i| i.out.now) else {
            return Ok(());
        };
        let events = items
            .iter()
            .map(|i| decode_any_event(i.delivery))
            .collect::<Result<Vec<_>, StepError>>()?;
        let data: Vec<&EventData> = events.iter().map(|e| &e.data).collect();
        fold(txn, &data, now).await
    }
}

/// What one event states of its payment.
enum Fact {
    Outcome(&'static str, Money),
    Transferred(Money),
    PaymentRefunded(Money),
    WalletRefunded(Money),
}

/// The payment an event is about, and what it states.
fn fact_of(data: &EventData) -> Result<(&str, Fact), StepError> {
    let (key, fact) = match data {
        EventData::PaymentCompleted(p) => {
            (&p.payment_id, Fact::Outcome(COMPLETED, payment_amount(p)?))
        }
        EventData::PaymentFailed(f) => (
            &f.payment.payment_id,
            Fact::Outcome(FAILED, payment_amount(&f.payment)?),
        ),
        EventData::TransferCommitted(p) => (&p.payment_id, Fact::Transferred(payment_amount(p)?)),
        EventData::PaymentRefunded(r) => (&r.payment_id, Fact::PaymentRefunded(refund_amount(r)?)),
        EventData::RefundCommitted(r) => (&r.payment_id, Fact::WalletRefunded(refund_amount(r)?)),
        other => {
            return Err(StepError::Poison(format!(
                "the reconciliation actor folds no {}",
                other.event_type().type_str()
            )))
        }
    };
    if !falcon_schemas::ids::is_valid_id(key) {
        return Err(StepError::Poison(format!("{key:?} is no payment id")));
    }
    Ok((key.as_str(), fact))
}

/// One payment's facts from a batch: what its events set, and the refunds
/// they add.
#[derive(Default)]
struct Folded {
    currency: Option<&'static str>,
    outcome: Option<(&'static str, i64)>,
    transferred: Option<i64>,
    payment_refunded: i64,
    wallet_refunded: i64,
}

/// Folds events into their payments' facts at `now`, set-based: one
/// multi-row upsert per chunk of payments (13 values a row, in the
/// statement sizes of [`falcon_kernel::store::insert_chunks`]). A fact an event sets replaces
/// the row's (a later event wins); refunds add up; a column no event of
/// the batch states keeps its value. Every row touched is marked.
pub async fn fold(
    db: &impl ConnectionTrait,
    events: &[&EventData],
    now: DateTime<Utc>,
) -> Result<(), StepError> {
    let mut by_key: BTreeMap<&str, Folded> = BTreeMap::new();
    for data in events {
        let (key, fact) = fact_of(data)?;
        let f = by_key.entry(key).or_default();
        let add = |sum: i64, m: Money| {
            sum.checked_add(m.minor())
                .ok_or_else(|| StepError::Poison(format!("refunds of {key} overflow")))
        };
        match fact {
            Fact::Outcome(state, m) => {
                f.currency = Some(m.currency().code());
                f.outcome = Some((state, m.minor()));
            }
            Fact::Transferred(m) => {
                f.currency = Some(m.currency().code());
                f.transferred = Some(m.minor());
            }
            Fact::PaymentRefunded(m) => {
                f.currency = Some(m.currency().code());
                f.payment_refunded = add(f.payment_refunded, m)?;
            }
            Fact::WalletRefunded(m) => {
                f.currency = Some(m.currency().code());
                f.wallet_refunded = add(f.wallet_refunded, m)?;
            }
        }
    }
    let rows: Vec<fact::ActiveModel> = by_key
        .into_iter()
        .map(|(key, f)| fact::ActiveModel {
            key: Set(key.to_owned()),
            currency: Set(f.currency.map(str::to_owned)),
            payment_state: Set(f.outcome.map(|(s, _)| s.to_owned())),
            payment_minor: Set(f.outcome.map(|(_, m)| m)),
            wallet_minor: Set(f.transferred),
            payment_refunded_minor: Set(f.payment_refunded),
            wallet_refunded_minor: Set(f.wallet_refunded),
            provider_seq: Set(None),
            provider_status: Set(None),
            provider_minor: Set(None),
            provider_currency: Set(None),
            changed_at: Set(now),
            dirty: Set(true),
        })
        .collect();
    let excluded = |c: fact::Column| Expr::col((Alias::new("excluded"), c));
    let kept = |c: fact::Column| Expr::col((fact::Entity, c));
    let set_or_keep = |c: fact::Column| -> Expr { Func::coalesce([excluded(c), kept(c)]).into() };
    for chunk in falcon_kernel::store::insert_chunks(rows) {
        let mut on_conflict = OnConflict::column(fact::Column::Key);
        for c in [
            fact::Column::Currency,
            fact::Column::PaymentState,
            fact::Column::PaymentMinor,
            fact::Column::WalletMinor,
        ] {
            on_conflict.value(c, set_or_keep(c));
        }
        for c in [
            fact::Column::PaymentRefundedMinor,
            fact::Column::WalletRefundedMinor,
        ] {
            on_conflict.value(c, kept(c).add(excluded(c)));
        }
        on_conflict
            .value(fact::Column::ChangedAt, excluded(fact::Column::ChangedAt))
            .value(fact::Column::Dirty, Expr::value(true));
        fact::Entity::insert_many(chunk)
            .on_conflict(on_conflict.to_owned())
            .exec_without_returning(db)
            .await?;
    }
    Ok(())
}

/// Inserts an empty row of facts for `key` unless it has one.
pub async fn ensure_row(
    db: &impl ConnectionTrait,
    key: &str,
    now: DateTime<Utc>,
) -> Result<(), DbErr> {
    let row = fact::ActiveModel {
        key: Set(key.to_owned()),
        currency: Set(None),
        payment_state: Set(None),
        payment_minor: Set(None),
        wallet_minor: Set(None),
        payment_refunded_minor: Set(0),
        wallet_refunded_minor: Set(0),
        provider_seq: Set(None),
        provider_status: Set(None),
        provider_minor: Set(None),
        provider_currency: Set(None),
        changed_at: Set(now),
        dirty: Set(true),
    };
    fact::Entity::insert(row)
        .on_conflict_do_nothing_on([fact::Column::Key])
        .exec(db)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use falcon_schemas::event::{PaymentData, RefundData};
    use falcon_schemas::Currency;

    fn payment(id: &str, cents: i64) -> PaymentData {
        PaymentData {
            payment_id: id.into(),
            from_wallet: "a".into(),
            to_wallet: "b".into(),
            amount: rust_decimal::Decimal::new(cents, 2),
            currency: Currency::from_code("USD").expect("USD"),
            principal: None,
        }
    }

    fn refund(id: &str, payment_id: &str, cents: i64) -> RefundData {
        RefundData {
            refund_id: id.into(),
            payment_id: payment_id.into(),
            from_wallet: "a".into(),
            to_wallet: "b".into(),
            amount: rust_decimal::Decimal::new(cents, 2),
            currency: Currency::from_code("USD").expect("USD"),
            principal: None,
        }
    }

    /// A batch folds as its events one by one would: several events of one
    /// payment in one statement, refunds added, a later fact winning, and
    /// the provider's columns (the reconciler's) and any column no event
    /// states left as they were.
    #[tokio::test]
    async fn a_batch_folds_like_its_events_one_by_one() {
        let batched = falcon_kernel::store::memory_db(fact::Entity).await;
        let single = falcon_kernel::store::memory_db(fact::Entity).await;
        let t0 = Utc::now();
        for db in [&batched, &single] {
            ensure_row(db, "p1", t0).await.expect("a row");
            fact::Entity::update_many()
                .col_expr(fact::Column::ProviderStatus, Expr::value("charged"))
                .col_expr(fact::Column::ProviderMinor, Expr::value(1250))
                .col_expr(fact::Column::WalletMinor, Expr::value(1))
                .exec(db)
                .await
                .expect("provider facts");
        }
        let events = [
            EventData::TransferCommitted(payment("p1", 1250)),
            EventData::PaymentCompleted(payment("p1", 1250)),
            EventData::RefundCommitted(refund("r1", "p1", 200)),
            EventData::PaymentRefunded(refund("r1", "p1", 200)),
            EventData::RefundCommitted(refund("r2", "p1", 300)),
            EventData::TransferCommitted(payment("p2", 700)),
        ];
        let now = t0 + chrono::Duration::seconds(1);
        let all: Vec<&EventData> = events.iter().collect();
        fold(&batched, &all, now).await.expect("a batch");
        for e in &events {
            fold(&single, &[e], now).await.expect("one event");
        }
        let rows = |db: sea_orm::DatabaseConnection| async move {
            use sea_orm::QueryOrder;
            fact::Entity::find()
                .order_by_asc(fact::Column::Key)
                .all(&db)
                .await
                .expect("rows")
        };
        let got = rows(batched).await;
        assert_eq!(got, rows(single).await);
        let p1 = &got[0];
        assert_eq!(p1.payment_state.as_deref(), Some(COMPLETED));
        assert_eq!(
            (p1.payment_minor, p1.wallet_minor),
            (Some(1250), Some(1250))
        );
        assert_eq!(
            (p1.payment_refunded_minor, p1.wallet_refunded_minor),
            (200, 500)
        );
        assert_eq!(
            (p1.provider_status.as_deref(), p1.provider_minor),
            (Some("charged"), Some(1250)),
            "the provider's columns are the reconciler's"
        );
        assert!(p1.dirty);
        assert_eq!(p1.changed_at, now);
        let p2 = &got[1];
        assert_eq!(
            (p2.payment_state.as_deref(), p2.wallet_minor),
            (None, Some(700))
        );
    }

    /// An event the actor folds nothing from is refused, never guessed.
    #[tokio::test]
    async fn other_events_are_poison() {
        let db = falcon_kernel::store::memory_db(fact::Entity).await;
        let e = EventData::PaymentRequested(payment("p1", 100));
        assert!(matches!(
            fold(&db, &[&e], Utc::now()).await,
            Err(StepError::Poison(_))
        ));
        let bad = EventData::TransferCommitted(payment("p.1", 100));
        assert!(matches!(
            fold(&db, &[&bad], Utc::now()).await,
            Err(StepError::Poison(_))
        ));
    }
}
