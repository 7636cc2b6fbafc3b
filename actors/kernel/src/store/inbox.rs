//! The inbox: one row per message an actor has processed. A redelivered or
//! duplicated message finds its row and has no second effect.

use chrono::{DateTime, Utc};
use falcon_nats::Delivery;
use sea_orm::{ConnectionTrait, DbErr, EntityTrait, TryInsertResult};

use super::bulk::{padded_chunks, push_tuple, quote};

pub use entity::{ActiveModel, Column, Entity, Model};

/// The inbox table.
pub mod entity {
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

/// Records a message in the inbox; `false` when it was there already (a
/// duplicate: the caller skips its effect and acks).
pub async fn claim(
    txn: &impl ConnectionTrait,
    delivery: &Delivery,
    now: DateTime<Utc>,
) -> Result<bool, DbErr> {
    let row = sea_orm::IntoActiveModel::into_active_model(inbox_row(delivery, now));
    let result = Entity::insert(row)
        .on_conflict_do_nothing_on([Column::Consumer, Column::MsgId])
        .exec(txn)
        .await?;
    Ok(matches!(result, TryInsertResult::Inserted(_)))
}

/// The inbox row of a message processed now.
pub fn inbox_row(delivery: &Delivery, now: DateTime<Utc>) -> Model {
    Model {
        msg_id: delivery.inbox_key(),
        consumer: delivery.reader().to_owned(),
        stream: delivery.stream.clone(),
        stream_seq: i64::try_from(delivery.stream_seq).unwrap_or(i64::MAX),
        subject: delivery.subject.clone(),
        processed_at: now,
    }
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
    let columns: Vec<Column> = Column::iter().collect();
    let names: Vec<String> = columns.iter().map(|c| quote(c.as_str())).collect();
    let head = format!(
        "INSERT INTO {} ({}) VALUES ",
        quote(Entity.table_name()),
        names.join(", ")
    );
    let tail = format!(
        " ON CONFLICT DO NOTHING RETURNING {}, {}",
        quote(Column::Consumer.as_str()),
        quote(Column::MsgId.as_str())
    );
    let mut claimed = std::collections::HashSet::with_capacity(batch.len());
    let mut rows: Vec<Model> = batch.iter().map(|d| inbox_row(d, now)).collect();
    // In lock order, as every writer (a redelivery may be claimed by two
    // processes at once).
    rows.sort_by(|a, b| (&a.consumer, &a.msg_id).cmp(&(&b.consumer, &b.msg_id)));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory_db;

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
        let db = memory_db(Entity).await;
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
        assert_eq!(Entity::find().all(&db).await.expect("rows").len(), 3);
    }
}
