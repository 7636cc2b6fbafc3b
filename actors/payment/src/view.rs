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
    ColumnTrait, ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbErr, EntityTrait,
    PaginatorTrait, QueryFilter, QueryOrder, QuerySelect,
};
use serde::Serialize;

use falcon_kernel::handler::Item;
use falcon_kernel::handler::{consumer_spec, decode_any_event, Handler};
use falcon_kernel::settings::ConsumerSettings;
use falcon_kernel::store::Outbox;
use falcon_kernel::StepError;

/// The view's durable consumer (and its loop's label).
pub const CONSUMER: &str = "payment-view";

/// The read model's name, for `falcon replay --rebuild`.
pub const READ_MODEL: &str = "saga-view";

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
        /// The saga's event types seen so far, one bit each in
        /// [`super::CANONICAL`] order: the state is folded from this set, so
        /// it does not depend on the order the events were delivered in.
        pub events_seen: i64,
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

/// Every event type that belongs to a saga, as the saga table says
/// (wallet-only events do not).
pub fn saga_event_types() -> impl Iterator<Item = EventType> {
    EventType::ALL
        .iter()
        .copied()
        .filter(|t| falcon_sagas::definition::is_saga_event(*t))
}

impl Handler for SagaView {
    type Prepared = ();
    const ACTOR: Actor = Actor::Payment;
    const SOURCE: &'static str = "falcon/payment-view";
    const LABEL: &'static str = CONSUMER;
    const READ_MODEL: Option<&'static str> = Some(READ_MODEL);

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

    async fn reset(&self) -> Result<(), DbErr> {
        saga_view::Entity::delete_many().exec(&self.db).await?;
        Ok(())
    }

    async fn rows(&self) -> Result<u64, DbErr> {
        saga_view::Entity::find().count(&self.db).await
    }

    async fn prepare(&self, _batch: &[Delivery]) {}

    async fn apply(
        &self,
        txn: &DatabaseTransaction,
        delivery: &Delivery,
        _: &(),
        _out: &mut Outbox,
    ) -> Result<(), StepError> {
        let event = decode_any_event(delivery)?;
        project(txn, &[(event, delivery.stream_seq)]).await
    }

    /// The whole batch set-based: one read, one insert, an update per saga.
    async fn apply_batch(
        &self,
        txn: &DatabaseTransaction,
        items: &mut [Item<'_>],
        _: &(),
    ) -> Result<(), StepError> {
        let events = items
            .iter()
            .map(|item| Ok((decode_any_event(item.delivery)?, item.delivery.stream_seq)))
            .collect::<Result<Vec<_>, StepError>>()?;
        project(txn, &events).await
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

/// Every saga event type in the order a saga takes them. Folding the set of
/// a saga's event types in this order gives the same state as folding them
/// in the order they happened: each type happens at most once per saga, and
/// a rejection of a reused key comes last, where it changes nothing.
pub const CANONICAL: [EventType; 17] = [
    EventType::PaymentRequested,
    EventType::RiskApproved,
    EventType::RiskRejected,
    EventType::FundsReserved,
    EventType::ReservationDeclined,
    EventType::PaymentCaptured,
    EventType::PaymentCaptureFailed,
    EventType::FundsReleased,
    EventType::TransferCommitted,
    EventType::PaymentCompleted,
    EventType::PaymentFailed,
    EventType::RefundRequested,
    EventType::RefundCommitted,
    EventType::RefundDeclined,
    EventType::PaymentRefunded,
    EventType::RefundFailed,
    EventType::PaymentRejected,
];

fn bit(ty: EventType) -> Option<i64> {
    CANONICAL.iter().position(|t| *t == ty).map(|i| 1_i64 << i)
}

/// The state a set of event types folds to, and how many of them the state
/// machine refused.
pub fn fold_seen(seen: i64) -> (Option<State>, i32) {
    let mut state = None;
    let mut refused = 0;
    for (i, ty) in CANONICAL.iter().enumerate() {
        if seen & (1 << i) == 0 {
            continue;
        }
        match State::apply(state, *ty) {
            Transition::Moved(next) => state = Some(next),
            Transition::Invalid { .. } => refused += 1,
            Transition::Duplicate | Transition::Ignored => {}
        }
    }
    (state, refused)
}

/// States in which a saga's reason (why it failed) is worth showing.
fn failing(state: Option<State>) -> bool {
    matches!(
        state,
        Some(
            State::Failed
                | State::RiskRejected
                | State::ReservationDeclined
                | State::CaptureFailed
                | State::Released
                | State::Rejected
                | State::RefundDeclined
                | State::RefundFailed
        )
    )
}

/// The row a saga has after `e`, given the row it had (`None`: no row yet);
/// `None` when the event changes nothing (its type was seen already, or it
/// does not belong to a saga). Pure: the projection's whole rule.
fn next_row(row: Option<&saga_view::Model>, e: &Event, seq: i64) -> Option<saga_view::Model> {
    let bit = bit(e.event_type())?;
    let f = facts(e);
    let Some(row) = row else {
        let (state, refused) = fold_seen(bit);
        return Some(saga_view::Model {
            saga_id: e.sagaid.clone(),
            kind: f.kind.to_owned(),
            state: state.map_or("unknown", |s| s.as_str()).to_owned(),
            terminal: state.is_some_and(|s| s.is_terminal()),
            amount: f.amount,
            currency: f.currency,
            from_wallet: f.from_wallet,
            to_wallet: f.to_wallet,
            payment_id: f.payment_id,
            reason: if failing(state) { f.reason } else { None },
            started_at: e.time,
            updated_at: e.time,
            last_seq: seq,
            anomalies: refused,
            events_seen: bit,
        });
    };
    if row.events_seen & bit != 0 {
        return None;
    }
    let seen = row.events_seen | bit;
    let (state, refused) = fold_seen(seen);
    if refused > row.anomalies {
        tracing::warn!(saga_id = %e.sagaid, event = ?e.event_type(), "saga view: event the saga's path does not allow");
    }
    let authoritative = matches!(
        e.event_type(),
        EventType::PaymentFailed | EventType::RefundFailed
    ) || (e.event_type() == EventType::PaymentRejected
        && state == Some(State::Rejected));
    let reason = match (failing(state), authoritative) {
        (false, _) => None,
        (true, true) => f.reason.or(row.reason.clone()),
        (true, false) => row.reason.clone().or(f.reason),
    };
    let fill = |have: &str, new: String| {
        if have.is_empty() {
            new
        } else {
            have.to_owned()
        }
    };
    let kind = if row.amount.is_empty() && !f.amount.is_empty() {
        f.kind.to_owned()
    } else {
        row.kind.clone()
    };
    Some(saga_view::Model {
        saga_id: row.saga_id.clone(),
        kind,
        state: state.map_or("unknown", |s| s.as_str()).to_owned(),
        terminal: state.is_some_and(|s| s.is_terminal()),
        amount: fill(&row.amount, f.amount),
        currency: fill(&row.currency, f.currency),
        from_wallet: fill(&row.from_wallet, f.from_wallet),
        to_wallet: fill(&row.to_wallet, f.to_wallet),
        payment_id: row.payment_id.clone(),
        reason,
        started_at: row.started_at.min(e.time),
        updated_at: row.updated_at.max(e.time),
        last_seq: row.last_seq.max(seq),
        anomalies: refused,
        events_seen: seen,
    })
}

/// Applies events (with their FALCON_EVT sequences) to their sagas' rows,
/// set-based: one read of every row they touch, the fold in memory, one
/// multi-row insert for new sagas and one update per saga that changed.
/// Order-independent (the state is folded from the set of event types seen)
/// and safe under concurrency: a new row is inserted only if no other
/// writer created it meanwhile, and a row is updated only from the set of
/// event types it was read with; a lost race is a transient error (the
/// batch is retried).
pub async fn project(txn: &impl ConnectionTrait, events: &[(Event, u64)]) -> Result<(), StepError> {
    let ids = events
        .iter()
        .filter(|(e, _)| bit(e.event_type()).is_some())
        .map(|(e, _)| e.sagaid.as_str());
    let read = falcon_kernel::store::rows_by_key::<saga_view::Entity, _>(
        txn,
        saga_view::Column::SagaId,
        ids,
        |r| r.saga_id.clone(),
    )
    .await?;
    // Per saga: the row as read, and the row after this batch's events.
    let mut folded: std::collections::BTreeMap<&str, Option<saga_view::Model>> =
        std::collections::BTreeMap::new();
    for (e, seq) in events {
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
    falcon_kernel::store::insert_all_new(
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
    falcon_kernel::store::update_guarded::<saga_view::Entity>(
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
mod tests {
    use super::*;
    use EventType as E;

    fn payment_event(ty: EventType, saga: &str, seconds: i64) -> Event {
        use falcon_schemas::event::{CapturedData, PaymentData, RiskData};
        let payment = PaymentData {
            payment_id: saga.into(),
            from_wallet: "payer".into(),
            to_wallet: "payee".into(),
            amount: rust_decimal::Decimal::new(1250, 2),
            currency: falcon_schemas::Currency::from_code("USD").expect("USD"),
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

    async fn view_db() -> sea_orm::DatabaseConnection {
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
    /// transient error, not a lost event.
    #[tokio::test]
    async fn a_row_changed_meanwhile_is_a_transient_conflict() {
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

    /// A new saga row another writer created meanwhile is a transient
    /// conflict, not a silently skipped event.
    #[tokio::test]
    async fn a_row_created_meanwhile_is_a_transient_conflict() {
        let db = view_db().await;
        let first = payment_event(E::PaymentRequested, "s1", 0);
        project(&db, &[(first.clone(), 1)]).await.expect("projects");
        let row = next_row(None, &first, 1).expect("a row");
        let other = next_row(None, &payment_event(E::PaymentRequested, "s2", 0), 2).expect("a row");
        let err = falcon_kernel::store::insert_all_new(
            &db,
            vec![row.into(), saga_view::ActiveModel::from(other)],
            saga_view::Column::SagaId,
            "saga view rows",
        )
        .await
        .expect_err("s1 exists");
        assert!(matches!(err, StepError::Conflict(_)), "{err}");
    }

    /// Any order of a saga's events folds to the state of their true order.
    #[test]
    fn the_fold_does_not_depend_on_order() {
        let paths: [&[EventType]; 5] = [
            &[
                E::PaymentRequested,
                E::RiskApproved,
                E::FundsReserved,
                E::PaymentCaptured,
                E::TransferCommitted,
                E::PaymentCompleted,
            ],
            &[
                E::PaymentRequested,
                E::RiskApproved,
                E::FundsReserved,
                E::PaymentCaptureFailed,
                E::FundsReleased,
                E::PaymentFailed,
            ],
            &[E::PaymentRequested, E::RiskRejected, E::PaymentFailed],
            &[
                E::PaymentRequested,
                E::RiskApproved,
                E::PaymentCaptureFailed,
                E::FundsReleased,
                E::PaymentFailed,
            ],
            &[E::RefundRequested, E::RefundDeclined, E::RefundFailed],
        ];
        for path in paths {
            let (truth, _) = falcon_sagas::state::fold(path.iter().copied());
            let mut seen = 0;
            for ty in path.iter().rev() {
                seen |= bit(*ty).expect("saga event");
            }
            assert_eq!(fold_seen(seen).0, truth, "{path:?}");
            // A later rejection of a reused key changes nothing.
            assert_eq!(
                fold_seen(seen | bit(E::PaymentRejected).expect("saga event")).0,
                truth
            );
        }
        assert_eq!(
            fold_seen(bit(E::PaymentRejected).expect("saga event")).0,
            Some(State::Rejected)
        );
    }
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
