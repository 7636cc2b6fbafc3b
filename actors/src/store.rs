//! Databases: connecting (SQLite or PostgreSQL by URL), the inbox and outbox
//! tables every actor has, and the write transaction.

use std::time::Duration;

use chrono::{DateTime, Utc};
use falcon_nats::Delivery;
use falcon_schemas::{Event, EventData};
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DatabaseTransaction, DbBackend,
    DbErr, EntityTrait, Set, TransactionOptions, TransactionTrait, TryInsertResult,
};

use crate::settings::SqliteSettings;

/// The inbox: one row per message an actor has processed. A redelivered or
/// duplicated message finds its row and has no second effect.
pub mod inbox {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "inbox")]
    pub struct Model {
        /// The durable consumer that processed it: two consumers of one
        /// database (the payment saga and its saga view) each process the
        /// same event once.
        #[sea_orm(primary_key, auto_increment = false)]
        pub consumer: String,
        /// `Nats-Msg-Id` (the event id for events), else `STREAM:seq`.
        #[sea_orm(primary_key, auto_increment = false)]
        pub msg_id: String,
        pub stream: String,
        pub stream_seq: i64,
        pub subject: String,
        pub processed_at: ChronoDateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// The outbox: events written in the same transaction as the state change
/// that caused them, published by the relay, then marked published.
pub mod outbox {
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
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Opens a database by URL (`sqlite://…` or `postgres://…`).
pub async fn connect(url: &str, sqlite: &SqliteSettings) -> Result<DatabaseConnection, DbErr> {
    let mut opts = ConnectOptions::new(url.to_owned());
    opts.sqlx_logging(false)
        .acquire_timeout(Duration::from_secs(30));
    if url.starts_with("sqlite:") {
        if let Some(dir) = sqlite_dir(url) {
            std::fs::create_dir_all(&dir)
                .map_err(|e| DbErr::Custom(format!("creating {dir}: {e}")))?;
        }
        let synchronous = match sqlite.synchronous.as_str() {
            "normal" => sea_orm::sqlx::sqlite::SqliteSynchronous::Normal,
            "extra" => sea_orm::sqlx::sqlite::SqliteSynchronous::Extra,
            _ => sea_orm::sqlx::sqlite::SqliteSynchronous::Full,
        };
        let busy = Duration::from_millis(sqlite.busy_timeout_ms);
        opts.max_connections(sqlite.pool_max.max(1))
            .map_sqlx_sqlite_opts(move |o| {
                o.journal_mode(sea_orm::sqlx::sqlite::SqliteJournalMode::Wal)
                    .synchronous(synchronous)
                    .busy_timeout(busy)
            });
    } else {
        opts.max_connections(16).min_connections(1);
    }
    Database::connect(opts).await
}

/// The directory of a relative or absolute SQLite file URL, to create it.
fn sqlite_dir(url: &str) -> Option<String> {
    let path = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = path.split('?').next()?;
    if path.is_empty() || path == ":memory:" {
        return None;
    }
    let dir = std::path::Path::new(path).parent()?;
    let dir = dir.to_str()?;
    (!dir.is_empty()).then(|| dir.to_owned())
}

/// Begins a write transaction. On SQLite it is `BEGIN IMMEDIATE`, so two
/// writers queue on the busy timeout instead of one failing at its first
/// write.
pub async fn begin_write(db: &DatabaseConnection) -> Result<DatabaseTransaction, DbErr> {
    let options = TransactionOptions {
        sqlite_transaction_mode: (db.get_database_backend() == DbBackend::Sqlite)
            .then_some(sea_orm::SqliteTransactionMode::Immediate),
        ..Default::default()
    };
    db.begin_with_options(options).await
}

/// Records a message in the inbox; `false` when it was there already (a
/// duplicate: the caller skips its effect and acks).
pub async fn claim(
    txn: &impl ConnectionTrait,
    delivery: &Delivery,
    now: DateTime<Utc>,
) -> Result<bool, DbErr> {
    let row = inbox::ActiveModel {
        msg_id: Set(delivery.inbox_key()),
        consumer: Set(delivery.consumer.to_string()),
        stream: Set(delivery.stream.clone()),
        stream_seq: Set(i64::try_from(delivery.stream_seq).unwrap_or(i64::MAX)),
        subject: Set(delivery.subject.clone()),
        processed_at: Set(now),
    };
    let result = inbox::Entity::insert(row)
        .on_conflict_do_nothing_on([inbox::Column::Consumer, inbox::Column::MsgId])
        .exec(txn)
        .await?;
    Ok(matches!(result, TryInsertResult::Inserted(_)))
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
}

impl Outbox {
    pub fn new(source: &'static str, delivery: &Delivery, now: DateTime<Utc>) -> Outbox {
        let parent = delivery
            .traceparent()
            .and_then(falcon_nats::trace::TraceParent::parse)
            .map(|p| p.child())
            .unwrap_or_else(falcon_nats::trace::TraceParent::new_root);
        Outbox {
            source,
            causation_id: delivery.inbox_key(),
            traceparent: parent,
            now,
            events: Vec::new(),
        }
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
        self.events.push(event);
    }

    /// Writes the queued events in the caller's transaction.
    pub async fn write(self, txn: &impl ConnectionTrait) -> Result<usize, DbErr> {
        let n = self.events.len();
        if n == 0 {
            return Ok(0);
        }
        let rows = self.events.into_iter().map(|e| outbox::ActiveModel {
            event_id: Set(e.id.clone()),
            subject: Set(e.nats_subject()),
            payload: Set(String::from_utf8(e.encode()).expect("serde_json writes UTF-8")),
            traceparent: Set(e.traceparent.clone()),
            created_at: Set(e.time),
            published_at: Set(None),
            ..Default::default()
        });
        outbox::Entity::insert_many(rows).exec(txn).await?;
        Ok(n)
    }
}

/// Creates the inbox and outbox tables (used by every actor's migration).
pub async fn create_common_tables(
    manager: &sea_orm_migration::SchemaManager<'_>,
) -> Result<(), DbErr> {
    crate::migration::create_entity_table(manager, inbox::Entity).await?;
    crate::migration::create_entity_table(manager, outbox::Entity).await
}
