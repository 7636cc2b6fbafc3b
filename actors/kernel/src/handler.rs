//! The handler trait: an actor's behaviour as the consumer loop sees it,
//! the fast path's items, and the consumer specs an actor's loops read.
//!
//! Which events a handler is given comes from the saga table
//! (`falcon_sagas::definition`), never from a list of its own: see
//! [`events_for`] and [`decode_event`].

use std::future::Future;
use std::time::Duration;

use falcon_nats::{ConsumerSpec, Delivery};
use falcon_sagas::Actor;
use falcon_schemas::event::{PaymentData, RefundData};
use falcon_schemas::{Event, EventType, Money};
use sea_orm::{DatabaseConnection, DatabaseTransaction, DbErr};
use tracing::Instrument;

use crate::error::StepError;
use crate::settings::ConsumerSettings;
use crate::store::Outbox;

/// An actor's behaviour, as the consumer loop sees it.
pub trait Handler: Send + Sync + 'static {
    /// Work done for a whole batch before its transaction opens (calls to
    /// slow external systems must not hold the database's write lock).
    type Prepared: Send + Sync;

    const ACTOR: Actor;
    /// The CloudEvents `source` of the events it publishes.
    const SOURCE: &'static str;
    /// Its loop's name in metrics, spans and readiness: the actor's name,
    /// or `<actor>-<what>` for a second loop (`payment-view`).
    const LABEL: &'static str;
    /// The read model it keeps, if it is one: it can be rebuilt from
    /// FALCON_EVT alone (`falcon replay --rebuild <name>`), and a replay to
    /// its actor leaves it out.
    const READ_MODEL: Option<&'static str> = None;

    /// The durable consumers it reads.
    fn consumers(settings: &ConsumerSettings) -> Vec<ConsumerSpec>;

    fn db(&self) -> &DatabaseConnection;

    /// A read model's rows are all deleted before a rebuild.
    fn reset(&self) -> impl Future<Output = Result<(), DbErr>> + Send {
        async { Ok(()) }
    }

    /// A read model's history kept by its actor beyond the stream's
    /// retention, folded back in after [`Handler::reset`] and before the
    /// stream is replayed; returns the events folded. By default none.
    fn restore(&self) -> impl Future<Output = Result<u64, DbErr>> + Send {
        async { Ok(0) }
    }

    /// How many rows a read model holds.
    fn rows(&self) -> impl Future<Output = Result<u64, DbErr>> + Send {
        async { Ok(0) }
    }

    fn prepare(&self, batch: &[Delivery]) -> impl Future<Output = Self::Prepared> + Send;

    /// One message's step, inside the batch transaction (a savepoint).
    fn apply(
        &self,
        txn: &DatabaseTransaction,
        delivery: &Delivery,
        prepared: &Self::Prepared,
        out: &mut Outbox,
    ) -> impl Future<Output = Result<(), StepError>> + Send;

    /// The careful path's first act, in its transaction before any message
    /// (its savepoints): lock, in one global order, the shared rows the
    /// batch's messages will write, so that two batches in flight at once
    /// (two partitions, two processes) wait for each other instead of
    /// deadlocking over rows they would otherwise lock message by message.
    /// By default nothing; an error only means the messages lock as they
    /// go (it is logged, not fatal).
    fn lock(
        &self,
        _txn: &DatabaseTransaction,
        _batch: &[Delivery],
    ) -> impl Future<Output = Result<(), StepError>> + Send {
        async { Ok(()) }
    }

    /// The fast path's step: every new message of a batch, in delivery
    /// order, in the batch transaction without savepoints. By default each
    /// runs [`Handler::apply`] inside its span; an actor whose step can be
    /// set-based over the batch overrides this. An error sends the batch to
    /// the careful path, where `apply` runs per message in a savepoint, so
    /// `apply` remains the reference for what a message does.
    fn apply_batch(
        &self,
        txn: &DatabaseTransaction,
        items: &mut [Item<'_>],
        prepared: &Self::Prepared,
    ) -> impl Future<Output = Result<(), StepError>> + Send {
        apply_each(self, txn, items, prepared)
    }
}

/// The default fast-path step: [`Handler::apply`] for each item in turn,
/// inside its span.
pub async fn apply_each<H: Handler + ?Sized>(
    handler: &H,
    txn: &DatabaseTransaction,
    items: &mut [Item<'_>],
    prepared: &H::Prepared,
) -> Result<(), StepError> {
    for item in items.iter_mut() {
        handler
            .apply(txn, item.delivery, prepared, &mut item.out)
            .instrument(item.span.clone())
            .await?;
    }
    Ok(())
}

/// A new message of a batch on the fast path, with the outbox its step
/// writes to.
pub struct Item<'a> {
    pub delivery: &'a Delivery,
    pub span: &'a tracing::Span,
    pub out: Outbox,
}

/// Builds a consumer spec from the shared consumer settings.
pub fn consumer_spec(
    name: &str,
    stream: &'static str,
    filters: Vec<String>,
    s: &ConsumerSettings,
) -> ConsumerSpec {
    ConsumerSpec {
        name: name.to_owned(),
        stream,
        filter_subjects: filters,
        ack_wait: Duration::from_millis(s.ack_wait_ms),
        max_deliver: s.max_deliver,
        max_ack_pending: s.max_ack_pending,
        partition: None,
        owner_timeout: Duration::from_millis(s.owner_timeout_ms),
    }
}

/// The events the saga table gives `actor`: the triggers of its steps, in
/// every saga, in the order of [`EventType::ALL`].
pub fn events_for(actor: Actor) -> Vec<EventType> {
    EventType::ALL
        .iter()
        .copied()
        .filter(|t| falcon_sagas::definition::actor_of_trigger(*t) == Some(actor))
        .collect()
}

/// Decodes an event delivered to `actor`'s step; a body that is not a
/// valid event, or an event the saga table does not give `actor`, is
/// poison. So no handler ever reacts to an event the table does not give it.
pub fn decode_event(actor: Actor, delivery: &Delivery) -> Result<Event, StepError> {
    let event = Event::decode(&delivery.payload)
        .map_err(|e| StepError::Poison(format!("undecodable event: {e}")))?;
    on_its_subject(&event, delivery)?;
    let ty = event.event_type();
    if falcon_sagas::definition::actor_of_trigger(ty) != Some(actor) {
        return Err(StepError::Poison(format!(
            "the saga table gives {} to no step of {actor}",
            ty.type_str()
        )));
    }
    Ok(event)
}

/// Decodes an event for a read model, which folds every saga event; a body
/// that is not a valid event is poison.
pub fn decode_any_event(delivery: &Delivery) -> Result<Event, StepError> {
    let event = Event::decode(&delivery.payload)
        .map_err(|e| StepError::Poison(format!("undecodable event: {e}")))?;
    on_its_subject(&event, delivery)?;
    Ok(event)
}

/// An event is on the subject its type and key give: the signature binds
/// the subject, and the subject names the emitter whose key checked it, so
/// a body of another type or key on it is refused.
fn on_its_subject(event: &Event, delivery: &Delivery) -> Result<(), StepError> {
    let expected = event.nats_subject();
    if delivery.subject != expected {
        return Err(StepError::Poison(format!(
            "unauthenticated_event: a {} event for {} was published on {}",
            event.ty,
            event.subject.escape_debug(),
            delivery.subject.escape_debug()
        )));
    }
    Ok(())
}

/// A saga event's amount, validated as a command's is: positive, and no
/// more fraction digits than its currency has. Anything else is an event
/// the saga cannot have produced: poison, before any step decides.
pub fn payment_amount(p: &PaymentData) -> Result<Money, StepError> {
    event_amount(
        "payment",
        &p.payment_id,
        Money::positive(p.amount, p.currency),
    )
}

/// A refund event's amount, validated as [`payment_amount`].
pub fn refund_amount(r: &RefundData) -> Result<Money, StepError> {
    event_amount(
        "refund",
        &r.refund_id,
        Money::positive(r.amount, r.currency),
    )
}

fn event_amount(
    what: &str,
    id: &str,
    amount: Result<Money, falcon_schemas::Invalid>,
) -> Result<Money, StepError> {
    amount.map_err(|e| {
        StepError::Poison(format!(
            "invalid amount in event: {what} {id}: {}",
            e.message
        ))
    })
}
