//! What the saga view answers: `falcon saga list`, `falcon saga stuck` and
//! the `falcon_sagas_stuck` gauge.

use chrono::{DateTime, Utc};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DbErr, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder,
    QuerySelect,
};
use serde::Serialize;

use super::saga_view;

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

/// How many sagas are not terminal with their last event older than
/// `before` (the `falcon_sagas_stuck` gauge).
pub async fn stuck_count(db: &impl ConnectionTrait, before: DateTime<Utc>) -> Result<u64, DbErr> {
    saga_view::Entity::find()
        .filter(saga_view::Column::Terminal.eq(false))
        .filter(saga_view::Column::UpdatedAt.lt(before))
        .count(db)
        .await
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::project;
    use crate::view::projection::tests::{payment_event, view_db};
    use falcon_sagas::State;
    use falcon_schemas::EventType as E;

    /// A saga left `requested` (s1) and one completed after it started
    /// (s2): listed newest first, by state and by start; only s1 is stuck.
    #[tokio::test]
    async fn the_view_lists_sagas_and_finds_the_stuck_ones() {
        let db = view_db().await;
        let mut events = vec![(payment_event(E::PaymentRequested, "s1", 0), 1)];
        for (i, ty) in [
            E::PaymentRequested,
            E::RiskApproved,
            E::FundsReserved,
            E::PaymentCaptured,
            E::TransferCommitted,
            E::PaymentCompleted,
        ]
        .into_iter()
        .enumerate()
        {
            let i = i as i64 + 1;
            events.push((payment_event(ty, "s2", i), i as u64 + 1));
        }
        project(&db, &events).await.expect("projects");
        let ids = |rows: Vec<SagaRow>| rows.into_iter().map(|r| r.saga_id).collect::<Vec<_>>();
        let all = list(&db, None, None, 100).await.expect("list");
        assert_eq!(ids(all.clone()), ["s2", "s1"]);
        assert_eq!(ids(list(&db, None, None, 1).await.expect("list")), ["s2"]);
        let completed = list(&db, Some(State::Completed.as_str()), None, 100).await;
        assert_eq!(ids(completed.expect("list")), ["s2"]);
        let since = list(&db, None, Some(all[0].created_at), 100).await;
        assert_eq!(ids(since.expect("list")), ["s2"]);
        let t0 = all[1].created_at;
        let later = t0 + chrono::Duration::seconds(60);
        assert_eq!(ids(stuck(&db, later).await.expect("stuck")), ["s1"]);
        assert_eq!(stuck_count(&db, later).await.expect("count"), 1);
        assert_eq!(stuck_count(&db, t0).await.expect("count"), 0);
    }
}
