//! [`SagaView`], the `payment-view` loop's handler: every saga event,
//! projected a batch at a time.

use falcon_kernel::handler::{consumer_spec, decode_any_event, Handler, Item};
use falcon_kernel::settings::ConsumerSettings;
use falcon_kernel::store::Outbox;
use falcon_kernel::StepError;
use falcon_nats::{ConsumerSpec, Delivery};
use falcon_sagas::Actor;
use falcon_schemas::subject::STREAM_EVT;
use falcon_schemas::EventType;
use sea_orm::{DatabaseConnection, DatabaseTransaction, DbErr, EntityTrait, PaginatorTrait};

use super::{project, saga_view, CONSUMER, READ_MODEL};

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

    /// The saga history, kept beyond the stream's retention.
    async fn restore(&self) -> Result<u64, DbErr> {
        super::history::restore(&self.db).await
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
        let events = [(decode_any_event(delivery)?, delivery.stream_seq)];
        super::history::keep(txn, &events).await?;
        project(txn, &events).await
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
        super::history::keep(txn, &events).await?;
        project(txn, &events).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::CANONICAL;
    use EventType as E;

    /// The filter derived from the saga table is the one written by hand
    /// before it: every event type but the three that belong to a wallet
    /// alone and the reconciliation actor's mismatches. And every saga event has its bit in the fold.
    #[test]
    fn the_view_reads_every_event_but_the_wallet_only_ones() {
        let derived: Vec<EventType> = saga_event_types().collect();
        let by_hand: Vec<EventType> = EventType::ALL
            .iter()
            .copied()
            .filter(|t| {
                !matches!(
                    t,
                    E::WalletOpened | E::WalletDeposited | E::WalletRejected | E::ReconMismatch
                )
            })
            .collect();
        assert_eq!(derived, by_hand);
        let mut canonical = CANONICAL.to_vec();
        let mut sorted = derived.clone();
        canonical.sort_by_key(|t| t.type_str());
        sorted.sort_by_key(|t| t.type_str());
        assert_eq!(canonical, sorted);
        let filters = &SagaView::consumers(&ConsumerSettings::default())[0].filter_subjects;
        assert_eq!(
            filters,
            &by_hand.iter().map(|t| t.filter()).collect::<Vec<_>>()
        );
    }
}
