//! The saga view: a projection of FALCON_EVT into one row per saga (payment
//! and refund sagas, and commands rejected before a saga began), kept by
//! its own durable consumer (`payment-view`) in the payment database. It is
//! what `falcon saga list` and `falcon saga stuck` read, and it is derived
//! state: `falcon replay --rebuild saga-view` deletes it and folds the
//! stream again into the same answer.

use chrono::{DateTime, Utc};
use falcon_nats::{ConsumerSpec, Delivery};
use falcon_sagas::{Actor, State, Transition};
use falcon_schemas::subject::STREAM_EVT;
use falcon_schemas::{Event, EventData, EventType};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbErr,
    EntityTrait, QueryFilter, QueryOrder, QuerySelect, Set,
};
use serde::Serialize;

use crate::batch::{consumer_spec, decode_event, Handler};
use crate::error::StepError;
use crate::settings::ConsumerSettings;
use crate::store::Outbox;

/// The view's durable consumer.
pub const CONSUMER: &str = "payment-view";

pub mod saga_view {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "saga_view")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub saga_id: String,
        /// `payment` or `refund`.
        pub kind: String,
        #[sea_orm(indexed)]
        pub state: String,
        pub terminal: bool,
        /// Decimal string with the currency's minor units; empty for a
        /// rejected command.
        pub amount: String,
        pub currency: String,
        pub from_wallet: String,
        pub to_wallet: String,
        /// The payment a refund belongs to (the saga itself for payments).
        pub payment_id: String,
        pub reason: Option<String>,
        #[sea_orm(indexed)]
        pub started_at: ChronoDateTimeUtc,
        #[sea_orm(indexed)]
        pub updated_at: ChronoDateTimeUtc,
        /// FALCON_EVT sequence of the last event applied.
        pub last_seq: i64,
        /// Events the state machine refused (out of order or foreign).
        pub anomalies: i32,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// The projector.
pub struct SagaView {
    db: DatabaseConnection,
}

impl SagaView {
    pub fn new(db: DatabaseConnection) -> SagaView {
        SagaView { db }
    }
}

/// Every event type that belongs to a saga (wallet-only events do not).
pub fn saga_event_types() -> impl Iterator<Item = EventType> {
    EventType::ALL.iter().copied().filter(|t| {
        !matches!(
            t,
            EventType::WalletOpened | EventType::WalletDeposited | EventType::WalletRejected
        )
    })
}

impl Handler for SagaView {
    type Prepared = ();
    const ACTOR: Actor = Actor::Payment;
    const SOURCE: &'static str = "falcon/payment-view";

    fn consumers(s: &ConsumerSettings) -> Vec<ConsumerSpec> {
        vec![consumer_spec(
            CONSUMER,
            STREAM_EVT,
            saga_event_types().map(|t| t.filter()).collect(),
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
        _out: &mut Outbox,
    ) -> Result<(), StepError> {
        let event = decode_event(delivery)?;
        project(txn, &event, delivery.stream_seq).await?;
        Ok(())
    }
}

/// What an event says about its saga's row.
struct Facts {
    kind: &'static str,
    amount: String,
    currency: String,
    from_wallet: String,
    to_wallet: String,
    payment_id: String,
    reason: Option<String>,
}

fn facts(e: &Event) -> Facts {
    let reason = match &e.data {
        EventData::PaymentRejected(r) => Some(r.reason),
        EventData::PaymentFailed(f) => Some(f.reason),
        EventData::PaymentCaptureFailed(f)
        | EventData::ReservationDeclined(f)
        | EventData::FundsReleased(f) => Some(f.reason),
        EventData::RefundFailed(f) | EventData::RefundDeclined(f) => Some(f.reason),
        EventData::RiskRejected(_) => Some(falcon_schemas::Reason::RiskRejected),
        _ => None,
    }
    .map(|r| r.as_str().to_owned());
    if let Some(p) = e.data.payment() {
        return Facts {
            kind: "payment",
            amount: p.amount.to_string(),
            currency: p.currency.code().to_owned(),
            from_wallet: p.from_wallet.clone(),
            to_wallet: p.to_wallet.clone(),
            payment_id: p.payment_id.clone(),
            reason,
        };
    }
    if let Some(r) = e.data.refund() {
        // A refund moves money from the payee back to the payer.
        return Facts {
            kind: "refund",
            amount: r.amount.to_string(),
            currency: r.currency.code().to_owned(),
            from_wallet: r.to_wallet.clone(),
            to_wallet: r.from_wallet.clone(),
            payment_id: r.payment_id.clone(),
            reason,
        };
    }
    let kind = match &e.data {
        EventData::PaymentRejected(r) if r.command == "payment.refund" => "refund",
        _ => "payment",
    };
    Facts {
        kind,
        amount: String::new(),
        currency: String::new(),
        from_wallet: String::new(),
        to_wallet: String::new(),
        payment_id: e.sagaid.clone(),
        reason,
    }
}

/// Applies one event to its saga's row through the saga state machine.
pub async fn project(txn: &impl ConnectionTrait, e: &Event, seq: u64) -> Result<(), DbErr> {
    let row = saga_view::Entity::find_by_id(e.sagaid.clone())
        .one(txn)
        .await?;
    let current = row.as_ref().and_then(|r| State::parse(&r.state));
    let seq = i64::try_from(seq).unwrap_or(i64::MAX);
    match (State::apply(current, e.event_type()), row) {
        (Transition::Moved(next), None) => {
            let f = facts(e);
            saga_view::ActiveModel {
                saga_id: Set(e.sagaid.clone()),
                kind: Set(f.kind.to_owned()),
                state: Set(next.as_str().to_owned()),
                terminal: Set(next.is_terminal()),
                amount: Set(f.amount),
                currency: Set(f.currency),
                from_wallet: Set(f.from_wallet),
                to_wallet: Set(f.to_wallet),
                payment_id: Set(f.payment_id),
                reason: Set(f.reason),
                started_at: Set(e.time),
                updated_at: Set(e.time),
                last_seq: Set(seq),
                anomalies: Set(0),
            }
            .insert(txn)
            .await?;
        }
        (Transition::Moved(next), Some(row)) => {
            let reason = facts(e).reason.or_else(|| row.reason.clone());
            let mut am: saga_view::ActiveModel = row.into();
            am.state = Set(next.as_str().to_owned());
            am.terminal = Set(next.is_terminal());
            am.reason = Set(reason);
            am.updated_at = Set(e.time);
            am.last_seq = Set(seq);
            am.update(txn).await?;
        }
        (Transition::Invalid { from, event }, Some(row)) => {
            tracing::warn!(saga_id = %e.sagaid, ?from, ?event, "saga view: event out of order");
            let anomalies = row.anomalies.saturating_add(1);
            let mut am: saga_view::ActiveModel = row.into();
            am.anomalies = Set(anomalies);
            am.update(txn).await?;
        }
        (Transition::Invalid { from, event }, None) => {
            tracing::warn!(saga_id = %e.sagaid, ?from, ?event, "saga view: event for a saga it never saw start");
        }
        (Transition::Duplicate | Transition::Ignored, _) => {}
    }
    Ok(())
}

/// A saga as the view shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SagaRow {
    pub saga_id: String,
    pub kind: String,
    pub state: String,
    pub terminal: bool,
    pub amount: String,
    pub currency: String,
    pub from_wallet: String,
    pub to_wallet: String,
    pub reason: Option<String>,
    pub payment_id: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub anomalies: i32,
}

impl From<saga_view::Model> for SagaRow {
    fn from(m: saga_view::Model) -> SagaRow {
        SagaRow {
            saga_id: m.saga_id,
            kind: m.kind,
            state: m.state,
            terminal: m.terminal,
            amount: m.amount,
            currency: m.currency,
            from_wallet: m.from_wallet,
            to_wallet: m.to_wallet,
            reason: m.reason,
            payment_id: m.payment_id,
            created_at: m.started_at,
            updated_at: m.updated_at,
            anomalies: m.anomalies,
        }
    }
}

/// Sagas, newest first.
pub async fn list(
    db: &impl ConnectionTrait,
    state: Option<&str>,
    since: Option<DateTime<Utc>>,
    limit: u64,
) -> Result<Vec<SagaRow>, DbErr> {
    // SQL limits are signed 64-bit.
    let mut q = saga_view::Entity::find()
        .order_by_desc(saga_view::Column::StartedAt)
        .order_by_asc(saga_view::Column::SagaId)
        .limit(std::cmp::min(limit, i64::MAX as u64));
    if let Some(s) = state {
        q = q.filter(saga_view::Column::State.eq(s));
    }
    if let Some(t) = since {
        q = q.filter(saga_view::Column::StartedAt.gte(t));
    }
    Ok(q.all(db).await?.into_iter().map(SagaRow::from).collect())
}

/// Sagas not terminal whose last event is older than `before`, oldest first.
pub async fn stuck(
    db: &impl ConnectionTrait,
    before: DateTime<Utc>,
) -> Result<Vec<SagaRow>, DbErr> {
    let rows = saga_view::Entity::find()
        .filter(saga_view::Column::Terminal.eq(false))
        .filter(saga_view::Column::UpdatedAt.lt(before))
        .order_by_asc(saga_view::Column::UpdatedAt)
        .all(db)
        .await?;
    Ok(rows.into_iter().map(SagaRow::from).collect())
}
