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
use crate::telemetry::SagaEnd;

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
                    .statement_cache_capacity(STATEMENT_CACHE)
            });
    } else {
        opts.max_connections(16)
            .min_connections(1)
            .map_sqlx_postgres_opts(|o| o.statement_cache_capacity(STATEMENT_CACHE));
    }
    Database::connect(opts).await
}

/// Prepared statements kept per connection. `IN` lists and guarded updates
/// come in ten padded sizes per shape (see [`padded_chunks`]), so they stay
/// cached; multi-row inserts of every batch size are distinct statements,
/// and a larger cache only keeps more of those (2,048 held 45 MB more at
/// the same throughput).
const STATEMENT_CACHE: usize = 256;

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

/// Begins a write transaction. On SQLite it is `BEGIN IMMEDIATE`, taken
/// only once this process's other writers of the same file are done (see
/// [`write_gate`]); writers in other processes queue on the busy timeout
/// instead of one failing at its first write.
pub async fn begin_write(db: &DatabaseConnection) -> Result<WriteTxn, DbErr> {
    let gate = write_gate(db).await;
    let options = TransactionOptions {
        sqlite_transaction_mode: (db.get_database_backend() == DbBackend::Sqlite)
            .then_some(sea_orm::SqliteTransactionMode::Immediate),
        ..Default::default()
    };
    Ok(WriteTxn {
        txn: db.begin_with_options(options).await?,
        _gate: gate,
    })
}

/// A write transaction holding its database's [`WriteGate`] until it ends.
pub struct WriteTxn {
    txn: DatabaseTransaction,
    _gate: WriteGate,
}

impl std::ops::Deref for WriteTxn {
    type Target = DatabaseTransaction;

    fn deref(&self) -> &DatabaseTransaction {
        &self.txn
    }
}

impl WriteTxn {
    pub async fn commit(self) -> Result<(), DbErr> {
        self.txn.commit().await
    }

    pub async fn rollback(self) -> Result<(), DbErr> {
        self.txn.rollback().await
    }
}

/// This process's turn to write one SQLite file. SQLite lets one writer in
/// at a time, and one that finds the file locked polls with sleeps of up to
/// 100 ms (the busy handler); the actor loops, relays and sweepers of one
/// process that share a file queue here instead, and each is woken the
/// moment the one before it is done. Nothing on PostgreSQL (row locks).
pub struct WriteGate {
    _held: Option<tokio::sync::OwnedMutexGuard<()>>,
}

/// Waits for this process's turn to write `db` (see [`WriteGate`]).
pub async fn write_gate(db: &DatabaseConnection) -> WriteGate {
    type Gates = std::sync::Mutex<
        std::collections::HashMap<std::path::PathBuf, std::sync::Arc<tokio::sync::Mutex<()>>>,
    >;
    static GATES: std::sync::OnceLock<Gates> = std::sync::OnceLock::new();
    if db.get_database_backend() != DbBackend::Sqlite {
        return WriteGate { _held: None };
    }
    let options = db.get_sqlite_connection_pool().connect_options();
    let file = options.get_filename();
    if file.as_os_str().is_empty() {
        return WriteGate { _held: None };
    }
    let gate = GATES
        .get_or_init(Gates::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .entry(file.to_path_buf())
        .or_default()
        .clone();
    WriteGate {
        _held: Some(gate.lock_owned().await),
    }
}

/// Records a message in the inbox; `false` when it was there already (a
/// duplicate: the caller skips its effect and acks).
pub async fn claim(
    txn: &impl ConnectionTrait,
    delivery: &Delivery,
    now: DateTime<Utc>,
) -> Result<bool, DbErr> {
    let row = sea_orm::IntoActiveModel::into_active_model(inbox_row(delivery, now));
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

/// Rows per multi-row INSERT: well under the bound on bind parameters.
const INSERT_CHUNK: usize = 200;
/// Values per `IN (…)` list (and rows per guarded multi-row update): well
/// under SQLite's and PostgreSQL's bound on bind parameters.
pub(crate) const IN_CHUNK: usize = 512;

/// `items` in chunks of at most [`IN_CHUNK`], each padded to a power of two
/// by repeating its last item, for statements where a repeat changes
/// nothing (`IN` lists, guarded updates). Each size is a distinct prepared
/// statement, which every connection keeps in its cache: ten sizes instead
/// of five hundred keep that cache small and always warm.
pub(crate) fn padded_chunks<T: Clone>(items: &[T]) -> impl Iterator<Item = Vec<T>> + '_ {
    items.chunks(IN_CHUNK).map(|chunk| {
        let mut padded = chunk.to_vec();
        if let Some(last) = chunk.last() {
            padded.resize(chunk.len().next_power_of_two(), last.clone());
        }
        padded
    })
}

/// Writes events to the outbox, many rows per statement.
pub async fn write_events(txn: &impl ConnectionTrait, events: Vec<Event>) -> Result<usize, DbErr> {
    let n = events.len();
    let rows = events.into_iter().map(|e| outbox::ActiveModel {
        event_id: Set(e.id.clone()),
        subject: Set(e.nats_subject()),
        payload: Set(String::from_utf8(e.encode()).expect("serde_json writes UTF-8")),
        traceparent: Set(e.traceparent.clone()),
        created_at: Set(e.time),
        published_at: Set(None),
        ..Default::default()
    });
    for chunk in insert_chunks(rows) {
        outbox::Entity::insert_many(chunk).exec(txn).await?;
    }
    Ok(n)
}

/// Inserts rows that must all be new (many per statement). A row whose
/// `key` exists already is left alone and makes the whole call a transient
/// error naming `what`: another writer got there first, and a retry of the
/// batch sees its row.
pub async fn insert_all_new<A>(
    txn: &impl ConnectionTrait,
    rows: Vec<A>,
    key: <A::Entity as EntityTrait>::Column,
    what: &str,
) -> Result<(), crate::error::StepError>
where
    A: sea_orm::ActiveModelTrait + Send,
{
    let expected = rows.len() as u64;
    let mut inserted = 0;
    for chunk in insert_chunks(rows) {
        inserted += match <A::Entity as EntityTrait>::insert_many(chunk)
            .on_conflict_do_nothing_on([key])
            .exec_without_returning(txn)
            .await?
        {
            TryInsertResult::Inserted(n) => n,
            TryInsertResult::Empty | TryInsertResult::Conflicted => 0,
        };
    }
    if inserted != expected {
        return Err(crate::error::StepError::Transient(format!(
            "{} of {expected} {what} written concurrently",
            expected - inserted
        )));
    }
    Ok(())
}

/// An SQL identifier, double-quoted (both SQLite and PostgreSQL).
fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Appends one `(…)` row of bind parameters to a `VALUES` list (after a
/// comma unless it is the first), in the backend's placeholder style.
fn push_tuple(
    sql: &mut String,
    values: &mut Vec<sea_orm::Value>,
    comma: bool,
    row: impl IntoIterator<Item = sea_orm::Value>,
    backend: DbBackend,
) {
    sql.push_str(if comma { ", (" } else { "(" });
    for (i, v) in row.into_iter().enumerate() {
        if i > 0 {
            sql.push_str(", ");
        }
        values.push(v);
        match backend {
            DbBackend::Postgres => sql.push_str(&format!("${}", values.len())),
            _ => sql.push('?'),
        }
    }
    sql.push(')');
}

/// Writes rows changed in memory back with one statement per chunk, each
/// row guarded by the values it was read with: `UPDATE t SET c = v.… FROM
/// (VALUES …) AS v WHERE t.key = v.… AND t.guard = v.…` (SQLite ≥ 3.33 and
/// PostgreSQL). `rows` are `(as read, as it is now)`; `set` are the columns
/// written from the second, `guard` the columns compared with the first
/// (never NULL ones: NULL equals nothing). A row another writer changed
/// since it was read is not written and makes the whole call a transient
/// error naming `what`, so the batch is retried and sees the change.
pub async fn update_guarded<E>(
    txn: &impl ConnectionTrait,
    key: E::Column,
    set: &[E::Column],
    guard: &[E::Column],
    rows: &[(&E::Model, &E::Model)],
    what: &str,
) -> Result<(), crate::error::StepError>
where
    E: EntityTrait,
    E::Model: sea_orm::ModelTrait<Entity = E>,
{
    use sea_orm::IdenStatic;
    use sea_orm::ModelTrait;
    if rows.is_empty() {
        return Ok(());
    }
    let backend = txn.get_database_backend();
    let table = E::default().table_name().to_owned();
    let width = 1 + set.len() + guard.len();
    let mut head = format!("UPDATE {} SET ", quote(&table));
    let assigns: Vec<String> = set
        .iter()
        .enumerate()
        .map(|(i, c)| format!("{} = v.column{}", quote(c.as_str()), i + 2))
        .collect();
    head.push_str(&assigns.join(", "));
    let mut tail = format!(
        ") AS v WHERE {}.{} = v.column1",
        quote(&table),
        quote(key.as_str())
    );
    for (i, c) in guard.iter().enumerate() {
        tail.push_str(&format!(
            " AND {}.{} = v.column{}",
            quote(&table),
            quote(c.as_str()),
            set.len() + i + 2
        ));
    }
    // A power of two, so that padding stays under the bound.
    let per_statement = 1 << (30_000 / width).clamp(1, IN_CHUNK).ilog2();
    let mut written = 0;
    // Padded with repeats of a chunk's last row: a target row that joins
    // several identical rows of `v` is updated (and counted) once.
    for chunk in rows.chunks(per_statement) {
        let chunk = padded_chunks(chunk).flatten().collect::<Vec<_>>();
        let mut sql = head.clone();
        sql.push_str(" FROM (VALUES ");
        let mut values = Vec::with_capacity(chunk.len() * width);
        for (r, (before, after)) in chunk.iter().enumerate() {
            let row = std::iter::once(after.get(key))
                .chain(set.iter().map(|c| after.get(*c)))
                .chain(guard.iter().map(|c| before.get(*c)));
            push_tuple(&mut sql, &mut values, r > 0, row, backend);
        }
        sql.push_str(&tail);
        let r = txn
            .execute_raw(sea_orm::Statement::from_sql_and_values(
                backend, sql, values,
            ))
            .await?;
        written += r.rows_affected();
    }
    let expected = rows.len() as u64;
    if written != expected {
        return Err(crate::error::StepError::Transient(format!(
            "{} of {expected} {what} changed concurrently",
            expected.saturating_sub(written)
        )));
    }
    Ok(())
}

/// An in-memory SQLite database (one connection) with `entity`'s table.
#[cfg(test)]
pub(crate) async fn memory_db<E: EntityTrait>(entity: E) -> DatabaseConnection {
    let mut options = ConnectOptions::new("sqlite::memory:");
    options.max_connections(1);
    let db = Database::connect(options).await.expect("in-memory SQLite");
    let schema = sea_orm::Schema::new(db.get_database_backend());
    db.execute(&schema.create_table_from_entity(entity))
        .await
        .expect("the table");
    db
}

/// Rows grouped for multi-row inserts of at most [`INSERT_CHUNK`] rows.
pub(crate) fn insert_chunks<T>(rows: impl IntoIterator<Item = T>) -> impl Iterator<Item = Vec<T>> {
    let mut rows = rows.into_iter();
    std::iter::from_fn(move || {
        let chunk: Vec<T> = rows.by_ref().take(INSERT_CHUNK).collect();
        (!chunk.is_empty()).then_some(chunk)
    })
}

/// The inbox row of a message processed now.
pub fn inbox_row(delivery: &Delivery, now: DateTime<Utc>) -> inbox::Model {
    inbox::Model {
        msg_id: delivery.inbox_key(),
        consumer: delivery.consumer.to_string(),
        stream: delivery.stream.clone(),
        stream_seq: i64::try_from(delivery.stream_seq).unwrap_or(i64::MAX),
        subject: delivery.subject.clone(),
        processed_at: now,
    }
}

/// The rows of `E` whose `column` holds one of `keys` (repeats allowed),
/// read with one query per [`IN_CHUNK`] keys, by that key (`key_of`).
pub async fn rows_by_key<'k, E, C>(
    txn: &impl ConnectionTrait,
    column: C,
    keys: impl Iterator<Item = &'k str>,
    key_of: impl Fn(&E::Model) -> String,
) -> Result<std::collections::HashMap<String, E::Model>, DbErr>
where
    E: EntityTrait,
    C: sea_orm::ColumnTrait,
{
    use sea_orm::QueryFilter;
    let mut keys: Vec<&str> = keys.collect();
    keys.sort_unstable();
    keys.dedup();
    let mut rows = std::collections::HashMap::with_capacity(keys.len());
    for chunk in padded_chunks(&keys) {
        let found = E::find().filter(column.is_in(chunk)).all(txn).await?;
        rows.extend(found.into_iter().map(|r| (key_of(&r), r)));
    }
    Ok(rows)
}

/// Records a batch's messages in the inbox with one statement per chunk
/// (`INSERT … ON CONFLICT DO NOTHING RETURNING`); returns the `(consumer,
/// key)` of those it recorded now. A message missing from the answer is a
/// duplicate: the inbox held it, or an earlier copy in the same batch.
pub async fn claim_new(
    txn: &impl ConnectionTrait,
    batch: &[Delivery],
    now: DateTime<Utc>,
) -> Result<std::collections::HashSet<(String, String)>, DbErr> {
    use sea_orm::{EntityName, IdenStatic, Iterable, ModelTrait};
    let backend = txn.get_database_backend();
    let columns: Vec<inbox::Column> = inbox::Column::iter().collect();
    let names: Vec<String> = columns.iter().map(|c| quote(c.as_str())).collect();
    let head = format!(
        "INSERT INTO {} ({}) VALUES ",
        quote(inbox::Entity.table_name()),
        names.join(", ")
    );
    let tail = format!(
        " ON CONFLICT DO NOTHING RETURNING {}, {}",
        quote(inbox::Column::Consumer.as_str()),
        quote(inbox::Column::MsgId.as_str())
    );
    let mut claimed = std::collections::HashSet::with_capacity(batch.len());
    let rows: Vec<inbox::Model> = batch.iter().map(|d| inbox_row(d, now)).collect();
    for chunk in padded_chunks(&rows) {
        let mut sql = head.clone();
        let mut values = Vec::with_capacity(chunk.len() * columns.len());
        for (r, row) in chunk.iter().enumerate() {
            let row = columns.iter().map(|c| row.get(*c));
            push_tuple(&mut sql, &mut values, r > 0, row, backend);
        }
        sql.push_str(&tail);
        let rows = txn
            .query_all_raw(sea_orm::Statement::from_sql_and_values(
                backend, sql, values,
            ))
            .await?;
        for row in rows {
            claimed.insert((row.try_get("", "consumer")?, row.try_get("", "msg_id")?));
        }
    }
    Ok(claimed)
}

/// Creates the inbox and outbox tables (used by every actor's migration).
pub async fn create_common_tables(
    manager: &sea_orm_migration::SchemaManager<'_>,
) -> Result<(), DbErr> {
    crate::migration::create_entity_table(manager, inbox::Entity).await?;
    crate::migration::create_entity_table(manager, outbox::Entity).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_padded_to_a_power_of_two_with_their_last_item() {
        let items: Vec<u32> = (0..1030).collect();
        let sizes: Vec<usize> = padded_chunks(&items).map(|c| c.len()).collect();
        assert_eq!(sizes, vec![512, 512, 8]);
        let last = padded_chunks(&items).last().expect("a chunk");
        assert_eq!(last, vec![1024, 1025, 1026, 1027, 1028, 1029, 1029, 1029]);
        assert_eq!(padded_chunks::<u32>(&[]).count(), 0);
    }

    /// Three rows go out as a padded chunk of four: each is written once
    /// and counted once; a row whose guard no longer holds is a conflict.
    #[tokio::test]
    async fn guarded_updates_write_each_row_once_and_catch_stale_ones() {
        let db = memory_db(inbox::Entity).await;
        let now = Utc::now();
        let row = |id: &str, seq: i64| inbox::Model {
            consumer: "c".into(),
            msg_id: id.into(),
            stream: "S".into(),
            stream_seq: seq,
            subject: "s".into(),
            processed_at: now,
        };
        let read: Vec<inbox::Model> = ["a", "b", "c"].iter().map(|id| row(id, 1)).collect();
        for r in &read {
            inbox::Entity::insert(sea_orm::IntoActiveModel::into_active_model(r.clone()))
                .exec(&db)
                .await
                .expect("a row");
        }
        let next: Vec<inbox::Model> = ["a", "b", "c"].iter().map(|id| row(id, 2)).collect();
        let pairs: Vec<_> = read.iter().zip(&next).collect();
        update_guarded::<inbox::Entity>(
            &db,
            inbox::Column::MsgId,
            &[inbox::Column::StreamSeq],
            &[inbox::Column::StreamSeq],
            &pairs,
            "rows",
        )
        .await
        .expect("written");
        let seqs: Vec<i64> = inbox::Entity::find()
            .all(&db)
            .await
            .expect("rows")
            .iter()
            .map(|r| r.stream_seq)
            .collect();
        assert_eq!(seqs, vec![2, 2, 2]);
        // Read before the write above: stale now.
        let again: Vec<inbox::Model> = ["a", "b", "c"].iter().map(|id| row(id, 3)).collect();
        let stale: Vec<_> = read.iter().zip(&again).collect();
        let err = update_guarded::<inbox::Entity>(
            &db,
            inbox::Column::MsgId,
            &[inbox::Column::StreamSeq],
            &[inbox::Column::StreamSeq],
            &stale,
            "rows",
        )
        .await
        .expect_err("stale");
        assert!(err.to_string().contains("3 of 3 rows"), "{err}");
    }

    fn delivery(consumer: &str, msg_id: &str, seq: u64) -> Delivery {
        Delivery::detached(
            &falcon_nats::dlq::Origin {
                subject: "falcon.evt.x".into(),
                stream: "FALCON_EVT".into(),
                stream_seq: seq,
                consumer: consumer.into(),
                delivered: 1,
                msg_id: Some(msg_id.into()),
                traceparent: None,
            },
            bytes::Bytes::new(),
        )
    }

    /// One insert claims a batch: a message the inbox holds, or a second
    /// copy in the batch, is not claimed; the same id for another consumer
    /// is.
    #[tokio::test]
    async fn a_batch_claims_only_its_new_messages() {
        let db = memory_db(inbox::Entity).await;
        let now = Utc::now();
        let first = claim_new(&db, &[delivery("c", "m1", 1)], now)
            .await
            .expect("claimed");
        assert_eq!(first.len(), 1);
        let batch = [
            delivery("c", "m1", 1),
            delivery("c", "m2", 2),
            delivery("c", "m2", 2),
            delivery("other", "m1", 1),
        ];
        let mut claimed: Vec<(String, String)> = claim_new(&db, &batch, now)
            .await
            .expect("claimed")
            .into_iter()
            .collect();
        claimed.sort();
        assert_eq!(
            claimed,
            vec![
                ("c".to_owned(), "m2".to_owned()),
                ("other".to_owned(), "m1".to_owned())
            ]
        );
        assert_eq!(inbox::Entity::find().all(&db).await.expect("rows").len(), 3);
    }

    /// Writers of one SQLite file in one process take turns at the gate:
    /// the second waits while the first holds it and goes on as soon as it
    /// is released; a writer of another file does not wait.
    #[tokio::test]
    async fn writers_of_one_file_take_turns() {
        use futures::FutureExt;
        let dir = tempfile::tempdir().expect("a temp dir");
        let url = |name: &str| format!("sqlite://{}/{name}.db?mode=rwc", dir.path().display());
        let settings = SqliteSettings::default();
        let db = connect(&url("one"), &settings).await.expect("one");
        let other = connect(&url("other"), &settings).await.expect("other");
        let first = write_gate(&db).await;
        let mut second = Box::pin(write_gate(&db));
        assert!(
            (&mut second).now_or_never().is_none(),
            "waits for the first"
        );
        assert!(write_gate(&other).now_or_never().is_some(), "another file");
        drop(first);
        let second = second.now_or_never().expect("its turn");
        drop(second);
        // A write transaction holds its file's gate until it ends.
        let txn = begin_write(&db).await.expect("a write transaction");
        assert!(
            write_gate(&db).now_or_never().is_none(),
            "held by the transaction"
        );
        txn.commit().await.expect("commit");
        assert!(
            write_gate(&db).now_or_never().is_some(),
            "released by the commit"
        );
    }
}
