//! One batch, one transaction: the group commit every actor shares.
//!
//! A batch of messages is handled in a single database transaction; each
//! message gets a savepoint, so one that fails (a poison message, an event
//! ahead of its predecessor) rolls back alone and does not fail its
//! batch-mates. Per message: claim its inbox row (a duplicate stops here and
//! is acked), apply the actor's step, write its events to the outbox. The
//! dispositions are applied by the caller only after the commit.

use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};
use falcon_nats::{ConsumerSpec, Delivery, Disposition};
use falcon_sagas::Actor;
use sea_orm::{DatabaseConnection, DatabaseTransaction, TransactionTrait};

use crate::error::StepError;
use crate::settings::{ConsumerSettings, Retry};
use crate::store::{begin_write, claim, Outbox};

/// An actor's behaviour, as the consumer loop sees it.
pub trait Handler: Send + Sync + 'static {
    /// Work done for a whole batch before its transaction opens (calls to
    /// slow external systems must not hold the database's write lock).
    type Prepared: Send + Sync;

    const ACTOR: Actor;
    /// The CloudEvents `source` of the events it publishes.
    const SOURCE: &'static str;

    /// The durable consumers it reads.
    fn consumers(settings: &ConsumerSettings) -> Vec<ConsumerSpec>;

    fn db(&self) -> &DatabaseConnection;

    fn prepare(&self, batch: &[Delivery]) -> impl Future<Output = Self::Prepared> + Send;

    /// One message's step, inside the batch transaction (a savepoint).
    fn apply(
        &self,
        txn: &DatabaseTransaction,
        delivery: &Delivery,
        prepared: &Self::Prepared,
        out: &mut Outbox,
    ) -> impl Future<Output = Result<(), StepError>> + Send;
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
    }
}

/// Handles a batch in one transaction; returns one disposition per message,
/// in order. When the transaction itself fails, every message is nak'd.
pub async fn run_batch<H: Handler>(
    handler: &H,
    batch: &[Delivery],
    retry: Retry,
) -> Vec<Disposition> {
    let prepared = handler.prepare(batch).await;
    let now = Utc::now();
    let all_nak = |why: &dyn std::fmt::Display| {
        tracing::warn!(actor = H::ACTOR.as_str(), error = %why, batch = batch.len(), "batch transaction failed; nak'ing");
        vec![
            Disposition::Nak {
                delay: retry.delay_min,
                error: format!("batch transaction: {why}"),
            };
            batch.len()
        ]
    };
    let txn = match begin_write(handler.db()).await {
        Ok(txn) => txn,
        Err(e) => return all_nak(&e),
    };
    let mut dispositions = Vec::with_capacity(batch.len());
    for delivery in batch {
        dispositions.push(
            step(
                handler,
                &txn,
                delivery,
                &prepared,
                now,
                retry.delay(delivery.delivered),
            )
            .await,
        );
    }
    match txn.commit().await {
        Ok(()) => dispositions,
        Err(e) => all_nak(&e),
    }
}

async fn step<H: Handler>(
    handler: &H,
    txn: &DatabaseTransaction,
    delivery: &Delivery,
    prepared: &H::Prepared,
    now: DateTime<Utc>,
    nak_delay: Duration,
) -> Disposition {
    let savepoint = match txn.begin().await {
        Ok(sp) => sp,
        Err(e) => return StepError::from(e).disposition(nak_delay),
    };
    let result = async {
        if !claim(&savepoint, delivery, now).await? {
            tracing::debug!(actor = H::ACTOR.as_str(), msg_id = %delivery.inbox_key(), "duplicate; already processed");
            return Ok(());
        }
        let mut out = Outbox::new(H::SOURCE, delivery, now);
        handler.apply(&savepoint, delivery, prepared, &mut out).await?;
        out.write(&savepoint).await?;
        Ok::<(), StepError>(())
    }
    .await;
    match result {
        Ok(()) => match savepoint.commit().await {
            Ok(()) => Disposition::Ack,
            Err(e) => StepError::from(e).disposition(nak_delay),
        },
        Err(e) => {
            if let Err(rb) = savepoint.rollback().await {
                tracing::warn!(actor = H::ACTOR.as_str(), error = %rb, "savepoint rollback failed");
            }
            match &e {
                StepError::Poison(_) => tracing::error!(
                    actor = H::ACTOR.as_str(), subject = %delivery.subject, stream_seq = delivery.stream_seq,
                    error = %e, "message can never succeed; dead-lettering"),
                StepError::Transient(_) => tracing::warn!(
                    actor = H::ACTOR.as_str(), subject = %delivery.subject, stream_seq = delivery.stream_seq,
                    delivery_attempt = delivery.delivered, error = %e, "step failed; will retry"),
            }
            e.disposition(nak_delay)
        }
    }
}

/// Decodes an event delivery; a body that is not a valid event is poison.
pub fn decode_event(delivery: &Delivery) -> Result<falcon_schemas::Event, StepError> {
    falcon_schemas::Event::decode(&delivery.payload)
        .map_err(|e| StepError::Poison(format!("undecodable event: {e}")))
}
