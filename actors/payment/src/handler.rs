//! [`Payment`], the payment actor's [`Handler`]: the consumers it reads,
//! the provider calls made before a batch's transaction opens
//! ([`Handler::prepare`]), and the routing of each message to its step,
//! one message at a time ([`Handler::apply`], the reference) or a batch at
//! once over a row cache ([`Handler::apply_batch`], the fast path). The
//! steps themselves live in [`crate::create`], [`crate::steps`] and
//! [`crate::refund`].

use std::sync::Arc;

use falcon_kernel::handler::{consumer_spec, decode_event, events_for, Handler, Item};
use falcon_kernel::settings::ConsumerSettings;
use falcon_kernel::store::Outbox;
use falcon_kernel::store::{begin_write, padded_chunks};
use falcon_kernel::StepError;
use falcon_nats::{ConsumerSpec, Delivery};
use falcon_sagas::Actor;
use falcon_schemas::command::CreatePayment;
use falcon_schemas::event::PaymentData;
use falcon_schemas::subject::{EVT_PREFIX, STREAM_CMD, STREAM_EVT};
use falcon_schemas::{Command, EventData, EventType, ParseError, Reason};
use futures::future::join_all;
use sea_orm::sea_query::{Expr, Func};
use sea_orm::{ColumnTrait, DatabaseConnection, DatabaseTransaction, EntityTrait, QueryFilter};
use tracing::Instrument;

use crate::entity::payment;
use crate::provider::Captures;
use crate::provider::{CaptureRequest, Resilient};
use crate::records::same_payment;
use crate::rows::Rows;
use crate::steps::Failing;
use crate::{create, refund, steps, SOURCE};

/// The payment actor's steps, as the consumer loop runs them.
pub struct Payment {
    db: DatabaseConnection,
    provider: Arc<Resilient>,
    /// How long a saga may take before capture (`saga.deadline_s`).
    deadline: chrono::Duration,
}

impl Payment {
    pub fn new(
        db: DatabaseConnection,
        provider: Arc<Resilient>,
        deadline: std::time::Duration,
    ) -> Payment {
        Payment {
            db,
            provider,
            // Past chrono's range a deadline never comes.
            deadline: chrono::Duration::from_std(deadline).unwrap_or(chrono::Duration::MAX),
        }
    }

    /// The settlement provider with its retry and circuit breaker.
    pub fn provider(&self) -> &Arc<Resilient> {
        &self.provider
    }
}

impl Handler for Payment {
    type Prepared = Captures;
    const ACTOR: Actor = Actor::Payment;
    const SOURCE: &'static str = SOURCE;
    const LABEL: &'static str = "payment";

    fn consumers(s: &ConsumerSettings) -> Vec<ConsumerSpec> {
        let events = events_for(Actor::Payment);
        vec![
            consumer_spec(
                "payment-cmd",
                STREAM_CMD,
                vec!["falcon.cmd.payment.>".into()],
                s,
            ),
            consumer_spec(
                "payment-evt",
                STREAM_EVT,
                events.iter().map(|e| e.filter()).collect(),
                s,
            ),
        ]
    }

    fn db(&self) -> &DatabaseConnection {
        &self.db
    }

    /// Captures with the provider, concurrently, for the batch's
    /// `funds_reserved` events (picked by subject, so the rest of the batch
    /// is not decoded twice) that agree with their payment's row: the
    /// provider is asked for the amount on record, and never for an event
    /// that disagrees with it (which its step then finds poison).
    async fn prepare(&self, batch: &[Delivery]) -> Captures {
        let prefix = format!("{EVT_PREFIX}{}.", EventType::FundsReserved.short());
        let reserved: Vec<PaymentData> = batch
            .iter()
            .filter(|d| d.subject.starts_with(&prefix))
            .filter_map(
                |d| match falcon_schemas::Event::decode(&d.payload).ok()?.data {
                    EventData::FundsReserved(p) => Some(p),
                    _ => None,
                },
            )
            .collect();
        if reserved.is_empty() {
            return Captures::new();
        }
        let requests = self.capture_requests(reserved).await;
        let requests = self.mark_capturing(requests).await;
        let results = join_all(requests.iter().map(|r| self.provider.capture(r))).await;
        requests
            .into_iter()
            .map(|r| r.payment_id)
            .zip(results)
            .collect()
    }

    async fn apply(
        &self,
        txn: &DatabaseTransaction,
        delivery: &Delivery,
        captures: &Captures,
        out: &mut Outbox,
    ) -> Result<(), StepError> {
        if delivery.stream == STREAM_CMD {
            return self.on_command(txn, delivery, out).await;
        }
        let event = decode_event(Actor::Payment, delivery)?;
        on_event(txn, event.data, captures, &mut Rows::default(), out).await
    }

    /// The batch with its messages decoded once, the payment rows they
    /// name read with one query, new payments inserted with one multi-row
    /// insert and the moved ones written with one guarded update.
    async fn apply_batch(
        &self,
        txn: &DatabaseTransaction,
        items: &mut [Item<'_>],
        captures: &Captures,
    ) -> Result<(), StepError> {
        let mut messages = Vec::with_capacity(items.len());
        for item in items.iter() {
            messages.push(if item.delivery.stream == STREAM_CMD {
                match Command::parse(&item.delivery.subject, &item.delivery.payload) {
                    Ok(Command::CreatePayment(c)) => Message::Create(c),
                    _ => Message::OtherCommand,
                }
            } else {
                Message::Event(decode_event(Actor::Payment, item.delivery)?.data)
            });
        }
        let ids = messages.iter().filter_map(|m| match m {
            Message::Create(c) => Some(c.payment_id.as_str()),
            Message::Event(e) => e.payment().map(|p| p.payment_id.as_str()),
            Message::OtherCommand => None,
        });
        let mut rows = Rows::read(txn, ids).await?;
        for (item, message) in items.iter_mut().zip(messages) {
            let span = item.span.clone();
            match message {
                Message::Create(c) => span.in_scope(|| {
                    create::stage(&mut rows, &c, self.deadline, &mut item.out);
                }),
                Message::OtherCommand => {
                    // A refund (or a rejection) reads and writes payments
                    // directly.
                    rows.flush(txn).await?;
                    self.on_command(txn, item.delivery, &mut item.out)
                        .instrument(span)
                        .await?
                }
                Message::Event(e) => {
                    on_event(txn, e, captures, &mut rows, &mut item.out)
                        .instrument(span)
                        .await?
                }
            }
        }
        rows.flush(txn).await
    }
}

/// A message of a batch, decoded once.
enum Message {
    Create(CreatePayment),
    OtherCommand,
    Event(EventData),
}

impl Payment {
    /// The captures to ask for: each reserved payment that agrees with
    /// its row, for the row's amount ([`Payment::mark_capturing`] then
    /// keeps only those whose saga still awaits capture). Rows are read
    /// outside the batch's transaction (their amount and wallets never
    /// change once written); when they cannot be read, nothing is
    /// captured, and the steps wait.
    async fn capture_requests(&self, reserved: Vec<PaymentData>) -> Vec<CaptureRequest> {
        let rows = match falcon_kernel::store::rows_by_key::<payment::Entity, _>(
            &self.db,
            payment::Column::PaymentId,
            reserved.iter().map(|p| p.payment_id.as_str()),
            |r| r.payment_id.clone(),
        )
        .await
        {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(error = %e, "reading payments to capture; the batch waits");
                return Vec::new();
            }
        };
        reserved
            .into_iter()
            .filter_map(|p| {
                let row = rows.get(&p.payment_id)?;
                let amount = same_payment(row, &p).ok()?;
                Some(CaptureRequest {
                    payment_id: p.payment_id,
                    amount,
                })
            })
            .collect()
    }

    /// Marks the payments about to be captured, in a transaction of its
    /// own committed before the provider is asked (`capture_started_at`,
    /// kept from the first attempt), and returns the requests of those it
    /// marked: a payment whose saga is past capture (a duplicate, a replay,
    /// a redriven dead letter, a saga the deadline compensated) is not
    /// marked and not captured. From the mark on, the deadline
    /// leaves the saga alone: the provider may have charged, and only its
    /// answer, asked again by the payment id after a crash or an outage,
    /// moves the saga. When the mark cannot be written nothing is captured,
    /// and the steps wait.
    async fn mark_capturing(&self, requests: Vec<CaptureRequest>) -> Vec<CaptureRequest> {
        if requests.is_empty() {
            return requests;
        }
        let now = chrono::Utc::now();
        let mut ids: Vec<&str> = requests.iter().map(|r| r.payment_id.as_str()).collect();
        ids.sort_unstable();
        let marked = async {
            let txn = begin_write(&self.db).await?;
            let mut marked = std::collections::HashSet::new();
            // Padded `IN` lists: a few statement shapes, always cached.
            for chunk in padded_chunks(&ids) {
                let rows = payment::Entity::update_many()
                    .col_expr(
                        payment::Column::CaptureStartedAt,
                        Func::coalesce([
                            Expr::col(payment::Column::CaptureStartedAt),
                            Expr::value(now),
                        ])
                        .into(),
                    )
                    .filter(payment::Column::PaymentId.is_in(chunk))
                    .filter(payment::Column::State.is_in(steps::capture_awaiting_states()))
                    .exec_with_returning(&*txn)
                    .await?;
                marked.extend(rows.into_iter().map(|r| r.payment_id));
            }
            txn.commit().await?;
            Ok::<_, sea_orm::DbErr>(marked)
        }
        .await;
        match marked {
            Ok(marked) => requests
                .into_iter()
                .filter(|r| marked.contains(&r.payment_id))
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, "marking payments capturing; the batch waits");
                Vec::new()
            }
        }
    }

    async fn on_command(
        &self,
        txn: &DatabaseTransaction,
        delivery: &Delivery,
        out: &mut Outbox,
    ) -> Result<(), StepError> {
        match Command::parse(&delivery.subject, &delivery.payload) {
            Err(ParseError::Unparseable(e)) => Err(StepError::Poison(e)),
            Err(ParseError::Rejected(r)) => {
                out.push(EventData::PaymentRejected(falcon_kernel::rejection(
                    &r, delivery,
                )));
                Ok(())
            }
            Ok(Command::CreatePayment(c)) => create::create(txn, &c, self.deadline, out).await,
            Ok(Command::RefundPayment(c)) => refund::request(txn, &c, out).await,
            Ok(other) => Err(StepError::Poison(format!(
                "{} is not a payment command",
                other.kind().as_str()
            ))),
        }
    }
}

/// One event's step: the saga table gives the payment actor these events
/// only (`decode_event` refused any other).
pub(crate) async fn on_event(
    txn: &DatabaseTransaction,
    event: EventData,
    captures: &Captures,
    rows: &mut Rows,
    out: &mut Outbox,
) -> Result<(), StepError> {
    match event {
        EventData::RiskRejected(d) => {
            let reasons: Vec<&str> = d.risk_reasons.iter().map(Reason::as_str).collect();
            let message = format!(
                "risk rejected the payment (score {}): {}",
                d.score,
                reasons.join(", ")
            );
            let why = Failing {
                cause: EventType::RiskRejected,
                reason: Reason::RiskRejected,
                message,
                compensated: false,
            };
            steps::fail(txn, rows, &d.payment, why, out).await
        }
        EventData::ReservationDeclined(d) => {
            let why = Failing {
                cause: EventType::ReservationDeclined,
                reason: d.reason,
                message: d.message,
                compensated: false,
            };
            steps::fail(txn, rows, &d.payment, why, out).await
        }
        EventData::FundsReleased(d) => {
            let why = Failing {
                cause: EventType::FundsReleased,
                reason: d.reason,
                message: d.message,
                compensated: true,
            };
            steps::fail(txn, rows, &d.payment, why, out).await
        }
        EventData::FundsReserved(p) => steps::capture(txn, rows, &p, captures, out).await,
        EventData::TransferCommitted(p) => steps::complete(txn, rows, &p, out).await,
        EventData::RefundCommitted(r) => {
            rows.forget(txn, &r.payment_id).await?;
            refund::finish(txn, r, None, out).await
        }
        EventData::RefundDeclined(d) => {
            rows.forget(txn, &d.refund.payment_id).await?;
            refund::finish(txn, d.refund, Some((d.reason, d.message)), out).await
        }
        other => Err(StepError::Poison(format!(
            "payment does not handle {}",
            other.event_type().type_str()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The filters stay those the actor had: its commands, and the events
    /// the saga table gives it (no `risk.approved`).
    #[test]
    fn consumers_read_payment_commands_and_the_events_the_table_gives() {
        let specs = Payment::consumers(&ConsumerSettings::default());
        assert_eq!(specs[0].filter_subjects, vec!["falcon.cmd.payment.>"]);
        let events = &specs[1].filter_subjects;
        assert!(events.contains(&EventType::FundsReserved.filter()));
        assert!(!events.contains(&EventType::RiskApproved.filter()));
    }
}
