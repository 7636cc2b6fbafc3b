//! The saga history: every saga event the view folds, kept in the payment
//! database in the same transaction (`saga_history`), so that a saga's
//! timeline outlives FALCON_EVT's retention. `falcon saga show` reads it
//! with the stream, and `falcon replay --rebuild saga-view` folds it
//! before the stream, so a rebuild keeps the sagas the stream has aged out.
//!
//! A row is the event as decoded and encoded again (the envelope and
//! `data`; the signature, checked when it was consumed, is not kept), with
//! its FALCON_EVT sequence. About 700 bytes an event, ten events a saga.
//! It is kept for ever: it is the record auditors ask for (see
//! docs/DESIGN.md, "Data that lasts").

use falcon_kernel::StepError;
use falcon_schemas::Event;
use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, Set,
};

/// Events of one saga read back, at most.
pub const SAGA_EVENTS_MAX: u64 = 10_000;
/// Rows per statement and per page.
const PAGE: u64 = 1_000;

pub mod saga_history {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "saga_history")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub saga_id: String,
        /// The event's FALCON_EVT sequence.
        #[sea_orm(primary_key, auto_increment = false, indexed)]
        pub seq: i64,
        pub event_id: String,
        /// `aggregate.event`, e.g. `payment.completed`.
        pub event_type: String,
        pub time: ChronoDateTimeUtc,
        /// The event, as JSON.
        pub body: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Keeps `events` (with their sequences); an event kept already is left.
pub async fn keep(txn: &impl ConnectionTrait, events: &[(Event, u64)]) -> Result<(), StepError> {
    let rows: Vec<saga_history::ActiveModel> = events
        .iter()
        .map(|(e, seq)| saga_history::ActiveModel {
            saga_id: Set(e.sagaid.clone()),
            seq: Set(i64::try_from(*seq).unwrap_or(i64::MAX)),
            event_id: Set(e.id.clone()),
            event_type: Set(e.event_type().short().to_owned()),
            time: Set(e.time),
            body: Set(String::from_utf8_lossy(&e.encode()).into_owned()),
        })
        .collect();
    for chunk in falcon_kernel::store::insert_chunks(rows) {
        saga_history::Entity::insert_many(chunk)
            .on_conflict(
                OnConflict::columns([saga_history::Column::SagaId, saga_history::Column::Seq])
                    .do_nothing()
                    .to_owned(),
            )
            .exec_without_returning(txn)
            .await?;
    }
    Ok(())
}

/// The kept events of saga `saga_id`, by sequence (at most
/// [`SAGA_EVENTS_MAX`]); a row that no longer decodes is skipped and named.
pub async fn of_saga(
    db: &DatabaseConnection,
    saga_id: &str,
) -> Result<(Vec<(u64, Event)>, Vec<String>), DbErr> {
    let rows = saga_history::Entity::find()
        .filter(saga_history::Column::SagaId.eq(saga_id))
        .order_by_asc(saga_history::Column::Seq)
        .limit(SAGA_EVENTS_MAX)
        .all(db)
        .await?;
    Ok(decode(rows))
}

fn decode(rows: Vec<saga_history::Model>) -> (Vec<(u64, Event)>, Vec<String>) {
    let mut events = Vec::with_capacity(rows.len());
    let mut bad = Vec::new();
    for r in rows {
        match Event::decode(r.body.as_bytes()) {
            Ok(e) => events.push((u64::try_from(r.seq).unwrap_or(0), e)),
            Err(e) => bad.push(format!("{} at seq {}: {e}", r.saga_id, r.seq)),
        }
    }
    (events, bad)
}

/// Folds the whole history into the saga view, a page at a time in
/// sequence order; returns the events folded.
pub async fn restore(db: &DatabaseConnection) -> Result<u64, DbErr> {
    let mut after = 0_i64;
    let mut folded = 0;
    loop {
        let rows = saga_history::Entity::find()
            .filter(saga_history::Column::Seq.gt(after))
            .order_by_asc(saga_history::Column::Seq)
            .order_by_asc(saga_history::Column::SagaId)
            .limit(PAGE)
            .all(db)
            .await?;
        let Some(last) = rows.last().map(|r| r.seq) else {
            return Ok(folded);
        };
        let n = rows.len() as u64;
        let (events, bad) = decode(rows);
        for b in bad {
            tracing::warn!(event = %b, "a kept saga event no longer decodes; left out of the rebuild");
        }
        let events: Vec<(Event, u64)> = events.into_iter().map(|(s, e)| (e, s)).collect();
        super::project(db, &events)
            .await
            .map_err(|e| DbErr::Custom(format!("folding the saga history: {e}")))?;
        folded += events.len() as u64;
        after = last;
        if n < PAGE {
            return Ok(folded);
        }
    }
}
