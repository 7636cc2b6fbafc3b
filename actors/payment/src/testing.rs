//! Helpers for the crate's unit tests: a fresh in-memory database with one
//! payment (`p1`, 12.50 USD from `a` to `b`, created by [`PRINCIPAL`]) in
//! a given state.

use chrono::Utc;
use falcon_kernel::store::Outbox;
use falcon_sagas::State;
use falcon_schemas::event::PaymentData;
use falcon_schemas::{Currency, EventType, Money};
use sea_orm::{ConnectionTrait, DatabaseConnection, EntityTrait, Set};

use crate::entity::payment;

/// The principal that created `p1`.
pub(crate) const PRINCIPAL: &str = "alice";

/// A fresh in-memory database (one connection) migrated as the actor's is,
/// with `p1` in `state`, its deadline now.
pub(crate) async fn db_with(state: State) -> DatabaseConnection {
    use sea_orm_migration::MigratorTrait;
    let mut options = sea_orm::ConnectOptions::new("sqlite::memory:");
    options.max_connections(1);
    let db = sea_orm::Database::connect(options)
        .await
        .expect("in-memory SQLite");
    crate::migration::Migrator::up(&db, None)
        .await
        .expect("the payment tables");
    insert_p1(&db, state).await;
    db
}

/// Inserts `p1` in `state`, its deadline now.
pub(crate) async fn insert_p1(db: &impl ConnectionTrait, state: State) {
    let now = Utc::now();
    payment::Entity::insert(payment::ActiveModel {
        payment_id: Set("p1".into()),
        from_wallet: Set("a".into()),
        to_wallet: Set("b".into()),
        amount_minor: Set(1250),
        currency: Set("USD".into()),
        state: Set(state.as_str().into()),
        reason: Set(None),
        settlement_id: Set(None),
        refunded_minor: Set(0),
        created_at: Set(now),
        updated_at: Set(now),
        deadline_at: Set(now),
        principal: Set(Some(PRINCIPAL.into())),
        capture_started_at: Set(None),
    })
    .exec(db)
    .await
    .expect("a payment");
}

/// `p1` as the database has it.
pub(crate) async fn row_of(db: &impl ConnectionTrait) -> payment::Model {
    payment::Entity::find_by_id("p1".to_owned())
        .one(db)
        .await
        .expect("read")
        .expect("the payment")
}

/// `p1` as its events carry it.
pub(crate) fn p1() -> PaymentData {
    PaymentData {
        payment_id: "p1".into(),
        from_wallet: "a".into(),
        to_wallet: "b".into(),
        amount: Money::from_minor(1250, usd()).wire_amount(),
        currency: usd(),
        principal: Some(PRINCIPAL.into()),
    }
}

pub(crate) fn usd() -> Currency {
    Currency::from_code("USD").expect("USD is a currency")
}

/// An outbox for one step, as the consumer loop gives it.
pub(crate) fn outbox() -> Outbox {
    Outbox::standalone(crate::SOURCE, "cause".into(), Utc::now())
}

/// The types of the events a step published.
pub(crate) fn kinds(out: &Outbox) -> Vec<EventType> {
    out.events.iter().map(|e| e.data.event_type()).collect()
}
