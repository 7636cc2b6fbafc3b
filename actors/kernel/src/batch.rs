//! One batch, one transaction: the group commit every actor shares.
//!
//! A batch of messages is handled in a single database transaction; each
//! message gets a savepoint, so one that fails (a poison message, an event
//! ahead of its predecessor) rolls back alone and does not fail its
//! batch-mates. Per message: claim its inbox row (a duplicate stops here and
//! is acked), apply the actor's step, write its events to the outbox. The
//! dispositions are applied by the caller only after the commit.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use falcon_nats::trace::TraceParent;
use falcon_nats::{Delivery, Disposition};
use falcon_schemas::subject::STREAM_EVT;
use metrics::Histogram;
use sea_orm::{DatabaseTransaction, TransactionTrait};
use tracing::Instrument;

use crate::error::StepError;
use crate::handler::{Handler, Item};
use crate::settings::Retry;
use crate::signing::KeyRing;
use crate::store::{begin_write, claim, claim_new, write_events, Outbox, WriteTxn};
use crate::telemetry::{self, names, Handling, SagaEnd};

/// Handles a batch in one transaction; returns one disposition per message,
/// in order. When the transaction itself fails, every message is nak'd.
/// Saga ends are recorded in the metrics only once the batch has committed.
///
/// The fast path claims the whole batch's inbox rows with one insert (a
/// message it could not claim is a duplicate), runs every new message's
/// step straight in the transaction, and writes the outbox rows with a few
/// multi-row inserts. If any step fails, that
/// transaction is rolled back and the batch runs again on the careful path:
/// a savepoint per message, so the failing message fails alone.
///
/// Before any of that, every message is admitted ([`admit`]): one whose
/// headers could not be parsed is dead-lettered with reason
/// `malformed_headers`, an event whose signature does not check
/// ([`KeyRing::check`]) with reason `unauthenticated_event`; neither
/// reaches `prepare` or a step.
pub async fn run_batch<H: Handler>(
    handler: &H,
    label: &str,
    batch: &[Delivery],
    retry: Retry,
    ring: &KeyRing,
) -> Vec<Disposition> {
    let refused: Vec<Option<Disposition>> =
        batch.iter().map(|d| admit(ring, label, d).err()).collect();
    if refused.iter().all(Option::is_none) {
        return handle(handler, label, batch, retry).await;
    }
    let accepted: Vec<Delivery> = batch
        .iter()
        .zip(&refused)
        .filter(|(_, r)| r.is_none())
        .map(|(d, _)| d.clone())
        .collect();
    let mut handled = if accepted.is_empty() {
        Vec::new()
    } else {
        handle(handler, label, &accepted, retry).await
    }
    .into_iter();
    refused
        .into_iter()
        .map(|r| {
            r.or_else(|| handled.next()).unwrap_or(Disposition::Nak {
                delay: retry.delay_min,
                error: "no disposition".into(),
            })
        })
        .collect()
}

/// A message must have headers the client could parse (else its message
/// id, its trace, even its subject may not be what was sent). An event must
/// carry its emitter's signature; a command comes from a client and is
/// checked by its step (its principal, its fields).
fn admit(ring: &KeyRing, label: &str, d: &Delivery) -> Result<(), Disposition> {
    if let Some(why) = d.malformed() {
        metrics::counter!(names::MALFORMED, "actor" => label.to_owned()).increment(1);
        tracing::error!(actor = label, subject = %d.subject.escape_debug(), stream = %d.stream, stream_seq = d.stream_seq, error = %why, "message with malformed headers; dead-lettering");
        return Err(Disposition::Term(format!(
            "malformed_headers: {}",
            falcon_schemas::shown(why)
        )));
    }
    if d.stream != STREAM_EVT {
        return Ok(());
    }
    ring.check(&d.subject, &d.payload).map_err(|e| {
        metrics::counter!(names::UNAUTHENTICATED, "actor" => label.to_owned()).increment(1);
        tracing::error!(actor = label, subject = %d.subject.escape_debug(), stream_seq = d.stream_seq, error = %e, "event refused; dead-lettering");
        Disposition::Term(e.to_string())
    })
}

async fn handle<H: Handler>(
    handler: &H,
    label: &str,
    batch: &[Delivery],
    retry: Retry,
) -> Vec<Disposition> {
    let prepared = handler.prepare(batch).await;
    let now = Utc::now();
    let all_nak = |why: &dyn std::fmt::Display| {
        tracing::warn!(actor = label, error = %why, batch = batch.len(), "batch transaction failed; nak'ing");
        vec![
            Disposition::Nak {
                delay: retry.delay_min,
                error: format!("batch transaction: {why}"),
            };
            batch.len()
        ]
    };
    let handlings: Vec<Handling> = batch
        .iter()
        .map(|d| telemetry::handling(label, d))
        .collect();
    let duration = metrics::histogram!(names::HANDLER_DURATION, "actor" => label.to_owned());
    match fast_path(handler, label, batch, &handlings, &prepared, now, &duration).await {
        Fast::Done(ended) => {
            for end in &ended {
                end.record();
            }
            return vec![Disposition::Ack; batch.len()];
        }
        Fast::Failed(why) => return all_nak(&why),
        Fast::Careful => {}
    }
    let txn = match begin_write(handler.db()).await {
        Ok(txn) => txn,
        Err(e) => return all_nak(&e),
    };
    if let Err(e) = handler.lock(&txn, batch).await {
        tracing::debug!(actor = label, error = %e, "careful path: rows not locked up front");
    }
    let mut dispositions = Vec::with_capacity(batch.len());
    let mut ended = Vec::new();
    for (delivery, handling) in batch.iter().zip(&handlings) {
        let (disposition, end) = step(
            handler,
            &duration,
            &txn,
            delivery,
            handling,
            &prepared,
            now,
            retry.delay(delivery.delivered),
        )
        .await;
        dispositions.push(disposition);
        ended.extend(end);
    }
    match txn.commit().await {
        Ok(()) => {
            for end in &ended {
                end.record();
            }
            dispositions
        }
        Err(e) => all_nak(&e),
    }
}

enum Fast {
    /// Committed: every message is done.
    Done(Vec<SagaEnd>),
    /// A step failed (or a bulk write did): run the batch carefully.
    Careful,
    /// The transaction could not be opened or committed.
    Failed(String),
}

async fn fast_path<H: Handler>(
    handler: &H,
    label: &str,
    batch: &[Delivery],
    handlings: &[Handling],
    prepared: &H::Prepared,
    now: DateTime<Utc>,
    duration: &Histogram,
) -> Fast {
    let txn = match begin_write(handler.db()).await {
        Ok(txn) => txn,
        Err(e) => return Fast::Failed(e.to_string()),
    };
    let careful = |txn: WriteTxn, why: String| async move {
        tracing::debug!(actor = label, reason = %why, "batch falls back to a savepoint per message");
        if let Err(e) = txn.rollback().await {
            tracing::warn!(actor = label, error = %e, "rollback failed");
        }
        Fast::Careful
    };
    let mut claimed = match claim_new(&*txn, batch, now).await {
        Ok(claimed) => claimed,
        Err(e) => return careful(txn, e.to_string()).await,
    };
    let mut items = Vec::with_capacity(batch.len());
    let mut outcomes = Vec::with_capacity(batch.len());
    for (delivery, h) in batch.iter().zip(handlings) {
        // Not claimed now: the inbox holds it, or a copy earlier in this
        // batch claimed it.
        if !claimed.remove(&(delivery.reader().to_owned(), delivery.inbox_key())) {
            outcomes.push("duplicate");
            continue;
        }
        outcomes.push("ack");
        items.push(Item {
            delivery,
            span: &h.span,
            out: Outbox::new(H::SOURCE, delivery, now, h.traceparent),
        });
    }
    let started = Instant::now();
    if let Err(e) = handler.apply_batch(&txn, &mut items, prepared).await {
        return careful(txn, e.to_string()).await;
    }
    // Each message's share of the batch's step.
    if let Ok(n @ 1..) = u32::try_from(items.len()) {
        let share = (started.elapsed() / n).as_secs_f64();
        for _ in &items {
            duration.record(share);
        }
    }
    let mut events = Vec::new();
    let mut ended = Vec::new();
    for mut item in items {
        record_ids(item.span, &item.out);
        events.append(&mut item.out.events);
        ended.extend(item.out.ended);
    }
    if let Err(e) = write_events(&*txn, events).await {
        return careful(txn, e.to_string()).await;
    }
    if let Err(e) = txn.commit().await {
        return Fast::Failed(e.to_string());
    }
    for (h, outcome) in handlings.iter().zip(outcomes) {
        handled(&h.span, outcome);
    }
    Fast::Done(ended)
}

/// Records a message's outcome on its span, and logs it (at debug).
fn handled(span: &tracing::Span, outcome: &'static str) {
    span.record("outcome", outcome);
    span.in_scope(|| tracing::debug!(outcome, "handled"));
}

/// Names the saga and payment on the span, once the step has said them.
fn record_ids(span: &tracing::Span, out: &Outbox) {
    if let Some(saga) = out.saga_id() {
        span.record("saga_id", saga);
    }
    if let Some(payment) = out.payment_id() {
        span.record("payment_id", payment);
    }
}

/// One message in its savepoint, inside its `handle` span.
#[allow(clippy::too_many_arguments)]
async fn step<H: Handler>(
    handler: &H,
    duration: &Histogram,
    txn: &DatabaseTransaction,
    delivery: &Delivery,
    handling: &Handling,
    prepared: &H::Prepared,
    now: DateTime<Utc>,
    nak_delay: Duration,
) -> (Disposition, Option<SagaEnd>) {
    let span = &handling.span;
    let started = Instant::now();
    let (disposition, outcome, end) = attempt(
        handler,
        txn,
        delivery,
        prepared,
        now,
        handling.traceparent,
        nak_delay,
    )
    .instrument(span.clone())
    .await;
    duration.record(started.elapsed().as_secs_f64());
    handled(span, outcome);
    (disposition, end)
}

async fn attempt<H: Handler>(
    handler: &H,
    txn: &DatabaseTransaction,
    delivery: &Delivery,
    prepared: &H::Prepared,
    now: DateTime<Utc>,
    traceparent: TraceParent,
    nak_delay: Duration,
) -> (Disposition, &'static str, Option<SagaEnd>) {
    let savepoint = match txn.begin().await {
        Ok(sp) => sp,
        Err(e) => return (StepError::from(e).disposition(nak_delay), "retry", None),
    };
    let mut duplicate = false;
    let mut out = Outbox::new(H::SOURCE, delivery, now, traceparent);
    let result = async {
        if !claim(&savepoint, delivery, now).await? {
            duplicate = true;
            return Ok(());
        }
        handler
            .apply(&savepoint, delivery, prepared, &mut out)
            .await?;
        out.write(&savepoint).await?;
        Ok::<(), StepError>(())
    }
    .await;
    record_ids(&tracing::Span::current(), &out);
    match result {
        Ok(()) => match savepoint.commit().await {
            Ok(()) if duplicate => (Disposition::Ack, "duplicate", None),
            Ok(()) => (Disposition::Ack, "ack", out.ended),
            Err(e) => (StepError::from(e).disposition(nak_delay), "retry", None),
        },
        Err(e) => {
            if let Err(rb) = savepoint.rollback().await {
                tracing::warn!(error = %rb, "savepoint rollback failed");
            }
            let outcome = match &e {
                StepError::Poison(_) => {
                    tracing::error!(subject = %delivery.subject, error = %e, "message can never succeed; dead-lettering");
                    "dead_letter"
                }
                StepError::Database(_) | StepError::Conflict(_) | StepError::Transient(_) => {
                    tracing::warn!(subject = %delivery.subject, error = %e, "step failed; will retry");
                    "retry"
                }
            };
            (e.disposition(nak_delay), outcome, None)
        }
    }
}
