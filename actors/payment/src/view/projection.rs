//! The saga view's writes, set-based: a batch's events applied to their
//! sagas' rows with one read, the rule ([`super::fold`]) in memory, one
//! multi-row insert and one guarded update.

use std::collections::BTreeMap;

use falcon_kernel::store::{insert_all_new, rows_by_key, update_guarded};
use falcon_kernel::StepError;
use falcon_schemas::Event;
use sea_orm::ConnectionTrait;

use super::fold::{bit, next_row};
use super::saga_view;

/// Applies events (with their FALCON_EVT sequences) to their sagas' rows,
/// set-based: one read of every row they touch, the fold in memory, one
/// multi-row insert for new sagas and one update per saga that changed.
/// Order-independent (the state is folded from the set of event types seen)
/// and safe under concurrency: a new row is inserted only if no other
/// writer created it meanwhile, and a row is updated only from the set of
/// event types it was read with; a lost race is a conflict (the batch is
/// retried and reads the rows afresh).
pub async fn project(txn: &impl ConnectionTrait, events: &[(Event, u64)]) -> Result<(), StepError> {
    let ids = events
        .iter()
        .filter(|(e, _)| bit(e.event_type()).is_some())
        .map(|(e, _)| e.sagaid.as_str());
    let read = rows_by_key::<saga_view::Entity, _>(txn, saga_view::Column::SagaId, ids, |r| {
        r.saga_id.clone()
    })
    .await?;
    // Per saga: the row after this batch's events (`None`: none yet).
    let mut folded: BTreeMap<&str, Option<saga_view::Model>> = BTreeMap::new();
    for (e, seq) in events {
        // Past i64 (never, in practice) the sequence saturates.
        let seq = i64::try_from(*seq).unwrap_or(i64::MAX);
        let now = folded
            .entry(e.sagaid.as_str())
            .or_insert_with(|| read.get(&e.sagaid).cloned());
        if let Some(next) = next_row(now.as_ref(), e, seq) {
            *now = Some(next);
        }
    }
    let mut created = Vec::new();
    let mut changed = Vec::new();
    for (id, row) in &folded {
        let Some(row) = row else { continue };
        match read.get(*id) {
            None => created.push(row.clone()),
            Some(before) if before.events_seen != row.events_seen => changed.push((before, row)),
            Some(_) => {}
        }
    }
    update(txn, &changed).await?;
    insert_all_new(
        txn,
        created
            .into_iter()
            .map(saga_view::ActiveModel::from)
            .collect(),
        saga_view::Column::SagaId,
        "saga view rows",
    )
    .await
}

/// Writes each row `(as read, as folded)` over its read self, if the row
/// still has the event types it was read with.
async fn update(
    txn: &impl ConnectionTrait,
    changed: &[(&saga_view::Model, &saga_view::Model)],
) -> Result<(), StepError> {
    use saga_view::Column as C;
    update_guarded::<saga_view::Entity>(
        txn,
        C::SagaId,
        &[
            C::Kind,
            C::State,
            C::Terminal,
            C::Amount,
            C::Currency,
            C::FromWallet,
            C::ToWallet,
            C::Reason,
            C::StartedAt,
            C::UpdatedAt,
            C::LastSeq,
            C::Anomalies,
            C::EventsSeen,
        ],
        &[C::EventsSeen],
        changed,
        "saga view rows",
    )
    .await
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use chrono::DateTime;
    use falcon_sagas::State;
    use falcon_schemas::{EventData, EventType};
    use sea_orm::{EntityTrait, QueryOrder};
    use EventType as E;

    /// An event of saga `saga` (12.50 USD from payer to payee), `seconds`
    /// after a fixed time.
    pub(in crate::view) fn payment_event(ty: EventType, saga: &str, seconds: i64) -> Event {
        use falcon_schemas::event::{CapturedData, PaymentData, RiskData};
        let payment = PaymentData {
            payment_id: saga.into(),
            from_wallet: "payer".into(),
            to_wallet: "payee".into(),
            amount: rust_decimal::Decimal::new(1250, 2),
            currency: falcon_schemas::Currency::from_code("USD").expect("USD"),
            principal: None,
        };
        let data = match ty {
            E::PaymentRequested => EventData::PaymentRequested(payment),
            E::RiskApproved => EventData::RiskApproved(RiskData {
                payment,
                score: 1,
                risk_reasons: Vec::new(),
            }),
            E::FundsReserved => EventData::FundsReserved(payment),
            E::PaymentCaptured => EventData::PaymentCaptured(CapturedData {
                payment,
                settlement_id: "settled".into(),
            }),
            E::TransferCommitted => EventData::TransferCommitted(payment),
            E::PaymentCompleted => EventData::PaymentCompleted(payment),
            other => panic!("no sample for {other:?}"),
        };
        let time = DateTime::from_timestamp(1_800_000_000 + seconds, 0).expect("a time");
        Event::new(data, format!("{saga}-{seconds}"), time, "test", "c", None)
    }

    pub(in crate::view) async fn view_db() -> sea_orm::DatabaseConnection {
        falcon_kernel::store::memory_db(saga_view::Entity).await
    }

    async fn rows(db: &sea_orm::DatabaseConnection) -> Vec<saga_view::Model> {
        saga_view::Entity::find()
            .order_by_asc(saga_view::Column::SagaId)
            .all(db)
            .await
            .expect("rows")
    }

    /// A batch projected at once leaves the rows that projecting its events
    /// one at a time leaves: new and existing sagas, several events of one
    /// saga in one batch, out of order, and a duplicate.
    #[tokio::test]
    async fn a_batch_projects_like_its_events_one_by_one() {
        let first = vec![
            (payment_event(E::PaymentRequested, "s1", 0), 1),
            (payment_event(E::PaymentRequested, "s2", 1), 2),
        ];
        let second = vec![
            (payment_event(E::FundsReserved, "s1", 3), 4),
            (payment_event(E::PaymentCompleted, "s1", 5), 6),
            (payment_event(E::RiskApproved, "s1", 2), 8),
            (payment_event(E::TransferCommitted, "s1", 4), 5),
            (payment_event(E::PaymentCaptured, "s1", 3), 9),
            (payment_event(E::FundsReserved, "s3", 2), 3),
            (payment_event(E::PaymentRequested, "s3", 1), 7),
            (payment_event(E::PaymentRequested, "s2", 1), 2),
        ];
        let (batched, single) = (view_db().await, view_db().await);
        for batch in [&first, &second] {
            project(&batched, batch).await.expect("batch projects");
            for event in batch.iter() {
                project(&single, std::slice::from_ref(event))
                    .await
                    .expect("event projects");
            }
        }
        let rows = rows(&batched).await;
        assert_eq!(rows, self::rows(&single).await);
        assert_eq!(rows.len(), 3);
        let states: Vec<(&str, bool)> = rows
            .iter()
            .map(|r| (r.state.as_str(), r.terminal))
            .collect();
        assert_eq!(states[0], (State::Completed.as_str(), true), "{rows:?}");
        assert_eq!((rows[0].last_seq, rows[0].anomalies), (9, 0));
        assert_eq!(
            rows[2].started_at,
            payment_event(E::PaymentRequested, "s3", 1).time
        );
        assert_eq!(rows[2].last_seq, 7);
    }

    /// A row another writer changed between the read and the write is a
    /// conflict, not a lost event.
    #[tokio::test]
    async fn a_row_changed_meanwhile_is_a_conflict() {
        let db = view_db().await;
        let requested = payment_event(E::PaymentRequested, "s1", 0);
        project(&db, &[(requested, 1)]).await.expect("projects");
        let before = rows(&db).await.remove(0);
        let reserved = payment_event(E::FundsReserved, "s1", 1);
        let next = next_row(Some(&before), &reserved, 2).expect("a change");
        let mut stale = before.clone();
        stale.events_seen = 0;
        let err = update(&db, &[(&stale, &next)]).await.expect_err("guarded");
        assert!(matches!(err, StepError::Conflict(_)), "{err}");
        update(&db, &[(&before, &next)])
            .await
            .expect("from the row as read");
        assert_eq!(rows(&db).await, vec![next]);
    }

    /// A new saga row another writer created meanwhile is a conflict, not
    /// a silently skipped event.
    #[tokio::test]
    async fn a_row_created_meanwhile_is_a_conflict() {
        let db = view_db().await;
        let first = payment_event(E::PaymentRequested, "s1", 0);
        project(&db, &[(first.clone(), 1)]).await.expect("projects");
        let row = next_row(None, &first, 1).expect("a row");
        let other = next_row(None, &payment_event(E::PaymentRequested, "s2", 0), 2).expect("a row");
        let err = insert_all_new(
            &db,
            vec![row.into(), saga_view::ActiveModel::from(other)],
            saga_view::Column::SagaId,
            "saga view rows",
        )
        .await
        .expect_err("s1 exists");
        assert!(matches!(err, StepError::Conflict(_)), "{err}");
    }
}
