//! The outbox: events written in the same transaction as the state change
//! that caused them, published by the relay, then marked published; and
//! [`Outbox`], where a step puts its events.

use chrono::{DateTime, Utc};
use falcon_nats::Delivery;
use falcon_schemas::{Event, EventData};
use sea_orm::{ConnectionTrait, DbErr, EntityTrait, Set};

use super::bulk::insert_chunks;
use crate::telemetry::SagaEnd;

pub use entity::{ActiveModel, Column, Entity, Model};

/// The outbox table.
pub mod entity {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "outbox")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        /// The CloudEvents id, also the `Nats-Msg-Id`.
        #[sea_orm(unique)]
        pub event_id: String,
        pub subject: String,
        /// The encoded envelope.
        #[sea_orm(column_type = "Text")]
        pub payload: String,
        pub traceparent: Option<String>,
        pub created_at: ChronoDateTimeUtc,
        #[sea_orm(indexed)]
        pub published_at: Option<ChronoDateTimeUtc>,
        /// Why it can never be published (too large, refused by the
        /// server, unsignable): set aside so the rest flows, counted in
        /// `falcon_outbox_set_aside_total` and reported by `falcon verify`.
        #[sea_orm(column_type = "Text", nullable)]
        pub set_aside: Option<String>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Where a step puts its events: written to the outbox with the step's
/// state change. Carries the causing message's id and trace.
#[derive(Debug)]
pub struct Outbox {
    pub source: &'static str,
    pub causation_id: String,
    pub traceparent: falcon_nats::trace::TraceParent,
    pub now: DateTime<Utc>,
    pub events: Vec<Event>,
    /// Set by the step that ends a payment saga, for the metrics.
    pub ended: Option<SagaEnd>,
    saga_id: Option<String>,
    payment_id: Option<String>,
}

impl Outbox {
    /// The outbox of the step handling `delivery`; its events carry
    /// `traceparent` (the handling span's context).
    pub fn new(
        source: &'static str,
        delivery: &Delivery,
        now: DateTime<Utc>,
        traceparent: falcon_nats::trace::TraceParent,
    ) -> Outbox {
        Outbox {
            source,
            causation_id: delivery.inbox_key(),
            traceparent,
            now,
            events: Vec::new(),
            ended: None,
            saga_id: None,
            payment_id: None,
        }
    }

    /// The saga the step's events belong to (known once it pushed one).
    pub fn saga_id(&self) -> Option<&str> {
        self.saga_id.as_deref()
    }

    /// The payment the step's events are about, when they name one.
    pub fn payment_id(&self) -> Option<&str> {
        self.payment_id.as_deref()
    }

    /// An outbox for a step no message caused (a deadline): a new trace,
    /// and `causation_id` naming the cause.
    pub fn standalone(source: &'static str, causation_id: String, now: DateTime<Utc>) -> Outbox {
        Outbox {
            source,
            causation_id,
            traceparent: falcon_nats::trace::TraceParent::new_root(),
            now,
            events: Vec::new(),
            ended: None,
            saga_id: None,
            payment_id: None,
        }
    }

    /// Queues an event with a fresh id (UUIDv7: unique, time-ordered).
    pub fn push(&mut self, data: EventData) {
        let event = Event::new(
            data,
            uuid::Uuid::now_v7().to_string(),
            self.now,
            self.source,
            &self.causation_id,
            Some(self.traceparent.to_string()),
        );
        if self.saga_id.is_none() {
            self.saga_id = Some(event.sagaid.clone());
            self.payment_id = event
                .data
                .payment()
                .map(|p| p.payment_id.clone())
                .or_else(|| event.data.refund().map(|r| r.payment_id.clone()));
        }
        self.events.push(event);
    }

    /// Writes the queued events in the caller's transaction.
    pub async fn write(&mut self, txn: &impl ConnectionTrait) -> Result<usize, DbErr> {
        write_events(txn, std::mem::take(&mut self.events)).await
    }
}

/// Writes events to the outbox, many rows per statement.
pub async fn write_events(txn: &impl ConnectionTrait, events: Vec<Event>) -> Result<usize, DbErr> {
    let n = events.len();
    let rows = events.into_iter().map(|e| ActiveModel {
        event_id: Set(e.id.clone()),
        subject: Set(e.nats_subject()),
        payload: Set(String::from_utf8(e.encode()).expect("serde_json writes UTF-8")),
        traceparent: Set(e.traceparent.clone()),
        created_at: Set(e.time),
        published_at: Set(None),
        ..Default::default()
    });
    for chunk in insert_chunks(rows) {
        Entity::insert_many(chunk).exec(txn).await?;
    }
    Ok(n)
}
