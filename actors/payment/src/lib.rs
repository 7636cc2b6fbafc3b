//! The payment actor: accepts `payment.create` and `payment.refund`, runs
//! its steps of the payment saga (capture with the settlement provider,
//! completion, failure) and of the refund saga, and keeps each saga's state.
//!
//! Every transition goes through `falcon_sagas::State::apply`: a duplicate
//! event is a no-op, an event ahead of its predecessor is nak'd until the
//! predecessor has been handled, and the row is updated only from the state
//! it was read in, so two processes cannot both take a step.
//!
//! Provider calls happen before the batch transaction opens (they are slow
//! and idempotent by payment id); their results are applied inside it.
//!
//! Shutdown and failure: as every actor, it stops between batches and is
//! restarted by its supervisor from the database.

pub mod actor;
pub mod deadline;
pub mod entity;
pub mod migration;
pub mod provider;
pub mod settings;
pub mod verify;
pub mod view;

pub use actor::PaymentActor;

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use falcon_nats::{ConsumerSpec, Delivery};
use falcon_sagas::{Actor, State, Transition};
use falcon_schemas::command::{CreatePayment, RefundPayment};
use falcon_schemas::event::{
    CapturedData, FailureData, PaymentData, PaymentFailedData, RefundData, RefundFailureData,
    RejectedData,
};
use falcon_schemas::subject::{STREAM_CMD, STREAM_EVT};
use falcon_schemas::{Command, Currency, EventData, EventType, Money, ParseError, Reason};
use futures::future::join_all;
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    ColumnTrait, DatabaseConnection, DatabaseTransaction, EntityTrait, QueryFilter, Set,
    TryInsertResult,
};
use tracing::Instrument;

use entity::{payment, refund};
use falcon_kernel::handler::Item;
use falcon_kernel::handler::{consumer_spec, decode_event, events_for, Handler};
use falcon_kernel::settings::ConsumerSettings;
use falcon_kernel::store::Outbox;
use falcon_kernel::telemetry::SagaEnd;
use falcon_kernel::StepError;
use provider::{CaptureRequest, ProviderError, Resilient, Settlement};

/// The CloudEvents `source` of the payment actor's events.
pub const SOURCE: &str = "falcon/payment";

/// Refund row states.
pub mod refund_state {
    pub const REQUESTED: &str = "refund_requested";
    pub const REFUNDED: &str = "refunded";
    pub const FAILED: &str = "refund_failed";
}

pub struct Payment {
    db: DatabaseConnection,
    provider: Arc<Resilient>,
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
            deadline: chrono::Duration::from_std(deadline).unwrap_or(chrono::Duration::MAX),
        }
    }

    /// The settlement provider with its retry and circuit breaker.
    pub fn provider(&self) -> &Arc<Resilient> {
        &self.provider
    }
}

/// Provider results for the batch's `funds_reserved` events, by payment id.
pub type Captures = HashMap<String, Result<Settlement, ProviderError>>;

const FUNDS_RESERVED_PREFIX: &str = "falcon.evt.wallet.funds_reserved.";

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

    async fn prepare(&self, batch: &[Delivery]) -> Captures {
        let requests: Vec<CaptureRequest> = batch
            .iter()
            .filter(|d| d.subject.starts_with(FUNDS_RESERVED_PREFIX))
            .filter_map(
                |d| match falcon_schemas::Event::decode(&d.payload).ok()?.data {
                    EventData::FundsReserved(p) => Some(CaptureRequest {
                        amount: p.money().ok()?,
                        payment_id: p.payment_id,
                    }),
                    _ => None,
                },
            )
            .collect();
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
                Message::Create(c) => span.in_scope(|| self.stage(&mut rows, &c, &mut item.out)),
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
            Ok(Command::CreatePayment(c)) => self.create(txn, &c, out).await,
            Ok(Command::RefundPayment(c)) => request_refund(txn, &c, out).await,
            Ok(other) => Err(StepError::Poison(format!(
                "{} is not a payment command",
                other.kind().as_str()
            ))),
        }
    }
}

/// One event's step.
async fn on_event(
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
            fail(
                txn,
                rows,
                &d.payment,
                Failing {
                    cause: EventType::RiskRejected,
                    reason: Reason::RiskRejected,
                    message,
                    compensated: false,
                },
                out,
            )
            .await
        }
        EventData::ReservationDeclined(d) => {
            fail(
                txn,
                rows,
                &d.payment,
                Failing {
                    cause: EventType::ReservationDeclined,
                    reason: d.reason,
                    message: d.message,
                    compensated: false,
                },
                out,
            )
            .await
        }
        EventData::FundsReleased(d) => {
            fail(
                txn,
                rows,
                &d.payment,
                Failing {
                    cause: EventType::FundsReleased,
                    reason: d.reason,
                    message: d.message,
                    compensated: true,
                },
                out,
            )
            .await
        }
        EventData::FundsReserved(p) => capture(txn, rows, &p, captures, out).await,
        EventData::TransferCommitted(p) => {
            if let Some(started_at) = advance(
                txn,
                rows,
                &p.payment_id,
                &[EventType::TransferCommitted, EventType::PaymentCompleted],
                None,
                out.now,
            )
            .await?
            {
                out.ended = Some(SagaEnd {
                    started_at,
                    ended_at: out.now,
                    failure: None,
                    compensated: false,
                });
                out.push(EventData::PaymentCompleted(p));
            }
            Ok(())
        }
        EventData::RefundCommitted(r) => {
            rows.forget(txn, &r.payment_id).await?;
            finish_refund(txn, r, None, out).await
        }
        EventData::RefundDeclined(d) => {
            rows.forget(txn, &d.refund.payment_id).await?;
            finish_refund(txn, d.refund, Some((d.reason, d.message)), out).await
        }
        other => Err(StepError::Poison(format!(
            "payment does not handle {}",
            other.event_type().type_str()
        ))),
    }
}

/// Payment rows read in this transaction, by id. The fast path reads a
/// batch's rows with one query, keeps them current as its steps move them,
/// and writes the moved ones back with one guarded statement at the end of
/// the batch ([`Rows::flush`]); the careful path starts each message with
/// none, so every step reads its own row and writes it at once. A row
/// another process changed meanwhile fails the guard (state as read), which
/// is a transient error.
#[derive(Default)]
struct Rows {
    current: HashMap<String, payment::Model>,
    /// Fast path only: the rows its steps moved, as read from the database.
    moved: Option<HashMap<String, payment::Model>>,
    /// Fast path only: new payments, inserted by `flush`.
    created: Vec<payment::Model>,
}

impl Rows {
    async fn read(
        txn: &DatabaseTransaction,
        ids: impl Iterator<Item = &str>,
    ) -> Result<Rows, StepError> {
        let rows = falcon_kernel::store::rows_by_key::<payment::Entity, _>(
            txn,
            payment::Column::PaymentId,
            ids,
            |r| r.payment_id.clone(),
        )
        .await?;
        Ok(Rows {
            current: rows,
            moved: Some(HashMap::new()),
            created: Vec::new(),
        })
    }

    /// Writes the payments the batch created (all new, or the batch is
    /// retried) and the rows its steps moved (fast path), each guarded by
    /// its state as read.
    async fn flush(&mut self, txn: &DatabaseTransaction) -> Result<(), StepError> {
        let Some(moved) = self.moved.as_mut() else {
            return Ok(());
        };
        let created: Vec<payment::ActiveModel> = self
            .created
            .drain(..)
            .map(sea_orm::IntoActiveModel::into_active_model)
            .collect();
        falcon_kernel::store::insert_all_new(txn, created, payment::Column::PaymentId, "payments")
            .await?;
        let pairs: Vec<(&payment::Model, &payment::Model)> = moved
            .iter()
            .filter_map(|(id, before)| Some((before, self.current.get(id)?)))
            .collect();
        falcon_kernel::store::update_guarded::<payment::Entity>(
            txn,
            payment::Column::PaymentId,
            &[
                payment::Column::State,
                payment::Column::Reason,
                payment::Column::SettlementId,
                payment::Column::UpdatedAt,
            ],
            &[payment::Column::State],
            &pairs,
            "payments",
        )
        .await?;
        moved.clear();
        Ok(())
    }

    async fn get(
        &mut self,
        txn: &DatabaseTransaction,
        payment_id: &str,
    ) -> Result<Option<payment::Model>, StepError> {
        if let Some(row) = self.current.get(payment_id) {
            return Ok(Some(row.clone()));
        }
        let row = payment::Entity::find_by_id(payment_id.to_owned())
            .one(txn)
            .await?;
        if let Some(r) = &row {
            self.current.insert(payment_id.to_owned(), r.clone());
        }
        Ok(row)
    }

    /// A step is about to change the row in a way this cache does not
    /// follow: the moves so far are written first.
    async fn forget(
        &mut self,
        txn: &DatabaseTransaction,
        payment_id: &str,
    ) -> Result<(), StepError> {
        self.flush(txn).await?;
        self.current.remove(payment_id);
        Ok(())
    }
}

fn reject(out: &mut Outbox, command: &str, key: &str, reason: Reason, message: String) {
    out.push(EventData::PaymentRejected(RejectedData {
        command: command.to_owned(),
        key: key.to_owned(),
        reason,
        message,
        field: None,
    }));
}

fn payment_data(p: &payment::Model) -> Result<PaymentData, StepError> {
    let currency = Currency::from_code(&p.currency).ok_or_else(|| {
        StepError::Poison(format!(
            "payment {} has unknown currency {}",
            p.payment_id, p.currency
        ))
    })?;
    Ok(PaymentData {
        payment_id: p.payment_id.clone(),
        from_wallet: p.from_wallet.clone(),
        to_wallet: p.to_wallet.clone(),
        amount: Money::from_minor(p.amount_minor, currency).wire_amount(),
        currency,
    })
}

impl Payment {
    /// The row of a new payment.
    fn new_row(&self, c: &CreatePayment, now: DateTime<Utc>) -> payment::Model {
        payment::Model {
            payment_id: c.payment_id.clone(),
            from_wallet: c.from_wallet.clone(),
            to_wallet: c.to_wallet.clone(),
            amount_minor: c.amount.minor(),
            currency: c.amount.currency().code().to_owned(),
            state: State::Requested.as_str().to_owned(),
            reason: None,
            settlement_id: None,
            refunded_minor: 0,
            created_at: now,
            updated_at: now,
            deadline_at: now + self.deadline,
        }
    }

    /// `create` on the fast path: the batch read the payment's row (if
    /// any) already, and a new one is inserted by [`Rows::flush`].
    fn stage(&self, rows: &mut Rows, c: &CreatePayment, out: &mut Outbox) {
        if let Some(p) = rows.current.get(&c.payment_id) {
            check_same(out, p, c);
            return;
        }
        let row = self.new_row(c, out.now);
        rows.current.insert(c.payment_id.clone(), row.clone());
        rows.created.push(row);
        out.push(requested(c));
    }

    async fn create(
        &self,
        txn: &DatabaseTransaction,
        c: &CreatePayment,
        out: &mut Outbox,
    ) -> Result<(), StepError> {
        let row = sea_orm::IntoActiveModel::into_active_model(self.new_row(c, out.now));
        let inserted = payment::Entity::insert(row)
            .on_conflict_do_nothing_on([payment::Column::PaymentId])
            .exec(txn)
            .await?;
        if matches!(inserted, TryInsertResult::Inserted(_)) {
            out.push(requested(c));
            return Ok(());
        }
        let existing = payment::Entity::find_by_id(c.payment_id.clone())
            .one(txn)
            .await?;
        if let Some(p) = existing {
            check_same(out, &p, c);
        }
        Ok(())
    }
}

/// The event of a payment just created.
fn requested(c: &CreatePayment) -> EventData {
    EventData::PaymentRequested(PaymentData {
        payment_id: c.payment_id.clone(),
        from_wallet: c.from_wallet.clone(),
        to_wallet: c.to_wallet.clone(),
        amount: c.amount.wire_amount(),
        currency: c.amount.currency(),
    })
}

/// A create for a payment that exists: the same payment again is a
/// duplicate (nothing to do), a different one reuses its key.
fn check_same(out: &mut Outbox, p: &payment::Model, c: &CreatePayment) {
    let same = p.from_wallet == c.from_wallet
        && p.to_wallet == c.to_wallet
        && p.amount_minor == c.amount.minor()
        && p.currency == c.amount.currency().code();
    if !same {
        reject(
            out,
            "payment.create",
            &c.payment_id,
            Reason::IdempotencyKeyReused,
            format!(
                "payment {} exists: {} {} from {} to {}",
                p.payment_id, p.amount_minor, p.currency, p.from_wallet, p.to_wallet
            ),
        );
    }
}

/// Applies `events` in order to the payment's saga state and stores the
/// result. `Ok(false)`: already applied (duplicate), nothing to do.
/// An event the state does not allow yet is transient (its predecessor is
/// still on the way); one that can never apply is poison.
async fn advance(
    txn: &DatabaseTransaction,
    rows: &mut Rows,
    payment_id: &str,
    events: &[EventType],
    update: Option<(Option<Reason>, Option<String>)>,
    now: DateTime<Utc>,
) -> Result<Option<DateTime<Utc>>, StepError> {
    let Some(mut p) = rows.get(txn, payment_id).await? else {
        return Err(StepError::Transient(format!(
            "payment {payment_id} is not known (yet)"
        )));
    };
    let from = State::parse(&p.state).ok_or_else(|| {
        StepError::Poison(format!(
            "payment {payment_id} has unknown state {}",
            p.state
        ))
    })?;
    let mut state = from;
    for (i, ev) in events.iter().enumerate() {
        let transition = match State::apply(Some(state), *ev) {
            Transition::Invalid { .. } if i == 0 => implied_first(state, *ev),
            t => t,
        };
        match transition {
            Transition::Moved(next) => state = next,
            Transition::Duplicate | Transition::Ignored if i == 0 => return Ok(None),
            Transition::Invalid { .. } if !from.is_terminal() && i == 0 => {
                return Err(StepError::Transient(format!(
                    "payment {payment_id} is {from}; {ev:?} must wait"
                )));
            }
            other => {
                return Err(StepError::Poison(format!(
                    "payment {payment_id} in {from} cannot take {ev:?}: {other:?}"
                )));
            }
        }
    }
    let before = p.clone();
    let mut q = payment::Entity::update_many()
        .col_expr(payment::Column::State, Expr::value(state.as_str()))
        .col_expr(payment::Column::UpdatedAt, Expr::value(now));
    p.state = state.as_str().to_owned();
    p.updated_at = now;
    if let Some((reason, settlement)) = update {
        if let Some(r) = reason {
            q = q.col_expr(payment::Column::Reason, Expr::value(r.as_str()));
            p.reason = Some(r.as_str().to_owned());
        }
        if let Some(s) = settlement {
            q = q.col_expr(payment::Column::SettlementId, Expr::value(s.clone()));
            p.settlement_id = Some(s);
        }
    }
    let created_at = p.created_at;
    if let Some(moved) = rows.moved.as_mut() {
        // Fast path: written by `flush`, guarded by the state first read.
        moved.entry(payment_id.to_owned()).or_insert(before);
        rows.current.insert(payment_id.to_owned(), p);
        return Ok(Some(created_at));
    }
    let r = q
        .filter(payment::Column::PaymentId.eq(payment_id))
        .filter(payment::Column::State.eq(from.as_str()))
        .exec(txn)
        .await?;
    if r.rows_affected != 1 {
        rows.current.remove(payment_id);
        return Err(StepError::Conflict(format!(
            "payment {payment_id} changed concurrently"
        )));
    }
    rows.current.insert(payment_id.to_owned(), p);
    Ok(Some(created_at))
}

/// `ev` applied to `state` after the event it answers, when the saga
/// table gives that event to another actor only: `funds_reserved` answers
/// `risk.approved`, which the wallet consumes and the payment actor never
/// sees, so a payment still `requested` takes both.
fn implied_first(state: State, ev: EventType) -> Transition {
    let answered = falcon_sagas::SAGAS
        .iter()
        .find_map(|saga| saga.step_publishing(ev))
        .into_iter()
        .flat_map(|step| step.triggers.iter().copied())
        .find(|t| falcon_sagas::definition::actor_of_trigger(*t) != Some(Actor::Payment));
    let Some(answered) = answered else {
        return State::apply(Some(state), ev);
    };
    match State::apply(Some(state), answered) {
        Transition::Moved(between) => match State::apply(Some(between), ev) {
            moved @ Transition::Moved(_) => moved,
            _ => State::apply(Some(state), ev),
        },
        _ => State::apply(Some(state), ev),
    }
}

/// Why a payment fails: the event that failed it and what the failure says.
struct Failing {
    cause: EventType,
    reason: Reason,
    message: String,
    /// The funds were reserved and have been released.
    compensated: bool,
}

async fn fail(
    txn: &DatabaseTransaction,
    rows: &mut Rows,
    p: &PaymentData,
    why: Failing,
    out: &mut Outbox,
) -> Result<(), StepError> {
    let Failing {
        cause,
        reason,
        message,
        compensated,
    } = why;
    if let Some(started_at) = advance(
        txn,
        rows,
        &p.payment_id,
        &[cause, EventType::PaymentFailed],
        Some((Some(reason), None)),
        out.now,
    )
    .await?
    {
        out.ended = Some(SagaEnd {
            started_at,
            ended_at: out.now,
            failure: Some(reason),
            compensated,
        });
        out.push(EventData::PaymentFailed(PaymentFailedData {
            payment: p.clone(),
            reason,
            message,
            compensated,
        }));
    }
    Ok(())
}

async fn capture(
    txn: &DatabaseTransaction,
    rows: &mut Rows,
    p: &PaymentData,
    captures: &Captures,
    out: &mut Outbox,
) -> Result<(), StepError> {
    // Past capture already (a redelivery, or a deadline compensated the
    // saga meanwhile): nothing to do, whatever the provider said.
    let state = rows
        .get(txn, &p.payment_id)
        .await?
        .and_then(|row| State::parse(&row.state));
    if let Some(s) = state {
        if !matches!(
            State::apply(Some(s), EventType::FundsReserved),
            Transition::Moved(_) | Transition::Invalid { .. }
        ) {
            return Ok(());
        }
    }
    let result = captures.get(&p.payment_id);
    let (next, update) = match result {
        None => {
            return Err(StepError::Transient(format!(
                "no capture result for {}",
                p.payment_id
            )))
        }
        Some(Err(ProviderError::Unavailable(e))) => {
            return Err(StepError::Transient(format!(
                "provider unavailable for {}: {e}",
                p.payment_id
            )))
        }
        Some(Ok(s)) => (
            EventType::PaymentCaptured,
            (None, Some(s.settlement_id.clone())),
        ),
        Some(Err(ProviderError::Declined(_))) => (
            EventType::PaymentCaptureFailed,
            (Some(Reason::CaptureDeclined), None),
        ),
    };
    if advance(
        txn,
        rows,
        &p.payment_id,
        &[EventType::FundsReserved, next],
        Some(update),
        out.now,
    )
    .await?
    .is_none()
    {
        return Ok(());
    }
    match result {
        Some(Ok(s)) => out.push(EventData::PaymentCaptured(CapturedData {
            payment: p.clone(),
            settlement_id: s.settlement_id.clone(),
        })),
        Some(Err(e)) => out.push(EventData::PaymentCaptureFailed(FailureData {
            payment: p.clone(),
            reason: Reason::CaptureDeclined,
            message: e.to_string(),
        })),
        None => unreachable!("returned above"),
    }
    Ok(())
}

async fn request_refund(
    txn: &DatabaseTransaction,
    c: &RefundPayment,
    out: &mut Outbox,
) -> Result<(), StepError> {
    const CMD: &str = "payment.refund";
    let key = &c.refund_id;
    let existing = refund::Entity::find_by_id(c.refund_id.clone())
        .one(txn)
        .await?;
    let payment = payment::Entity::find_by_id(c.payment_id.clone())
        .one(txn)
        .await?;
    if let Some(r) = existing {
        let same_amount = match (c.amount, Currency::from_code(&r.currency)) {
            (None, _) => true,
            (Some(a), Some(cur)) => Money::new(a, cur).is_ok_and(|m| m.minor() == r.amount_minor),
            (Some(_), None) => false,
        };
        if r.payment_id != c.payment_id || !same_amount {
            reject(
                out,
                CMD,
                key,
                Reason::IdempotencyKeyReused,
                format!(
                    "refund {} exists for payment {} ({} minor units)",
                    r.refund_id, r.payment_id, r.amount_minor
                ),
            );
        }
        return Ok(());
    }
    let Some(p) = payment else {
        reject(
            out,
            CMD,
            key,
            Reason::PaymentNotFound,
            format!("payment {} does not exist", c.payment_id),
        );
        return Ok(());
    };
    if p.state != State::Completed.as_str() {
        reject(
            out,
            CMD,
            key,
            Reason::PaymentNotRefundable,
            format!("payment {} is {}, not completed", p.payment_id, p.state),
        );
        return Ok(());
    }
    let pd = payment_data(&p)?;
    let remaining = p.amount_minor - p.refunded_minor;
    let amount = match c.amount {
        Some(a) => match Money::positive(a, pd.currency) {
            Ok(m) => m,
            Err(e) => {
                reject(out, CMD, key, e.reason, e.message);
                return Ok(());
            }
        },
        None => Money::from_minor(remaining, pd.currency),
    };
    if amount.minor() > remaining || remaining == 0 {
        let left = Money::from_minor(remaining, pd.currency);
        reject(
            out,
            CMD,
            key,
            Reason::RefundExceedsPayment,
            format!(
                "refund of {amount} exceeds the {left} left to refund of payment {}",
                p.payment_id
            ),
        );
        return Ok(());
    }
    // Guarded: two refunds racing for the same payment cannot both pass.
    let reserved = payment::Entity::update_many()
        .col_expr(
            payment::Column::RefundedMinor,
            Expr::col(payment::Column::RefundedMinor).add(amount.minor()),
        )
        .col_expr(payment::Column::UpdatedAt, Expr::value(out.now))
        .filter(payment::Column::PaymentId.eq(&p.payment_id))
        .filter(payment::Column::RefundedMinor.eq(p.refunded_minor))
        .exec(txn)
        .await?;
    if reserved.rows_affected != 1 {
        return Err(StepError::Conflict(format!(
            "payment {} refunded concurrently",
            p.payment_id
        )));
    }
    refund::Entity::insert(refund::ActiveModel {
        refund_id: Set(c.refund_id.clone()),
        payment_id: Set(p.payment_id.clone()),
        amount_minor: Set(amount.minor()),
        currency: Set(p.currency.clone()),
        state: Set(refund_state::REQUESTED.to_owned()),
        reason: Set(None),
        created_at: Set(out.now),
        updated_at: Set(out.now),
    })
    .exec(txn)
    .await?;
    out.push(EventData::RefundRequested(RefundData {
        refund_id: c.refund_id.clone(),
        payment_id: p.payment_id.clone(),
        from_wallet: p.from_wallet.clone(),
        to_wallet: p.to_wallet.clone(),
        amount: amount.wire_amount(),
        currency: amount.currency(),
    }));
    Ok(())
}

async fn finish_refund(
    txn: &DatabaseTransaction,
    r: RefundData,
    failure: Option<(Reason, String)>,
    out: &mut Outbox,
) -> Result<(), StepError> {
    let to = if failure.is_some() {
        refund_state::FAILED
    } else {
        refund_state::REFUNDED
    };
    let moved = refund::Entity::update_many()
        .col_expr(refund::Column::State, Expr::value(to))
        .col_expr(
            refund::Column::Reason,
            Expr::value(failure.as_ref().map(|(r, _)| r.as_str())),
        )
        .col_expr(refund::Column::UpdatedAt, Expr::value(out.now))
        .filter(refund::Column::RefundId.eq(&r.refund_id))
        .filter(refund::Column::State.eq(refund_state::REQUESTED))
        .exec(txn)
        .await?;
    if moved.rows_affected == 0 {
        let existing = refund::Entity::find_by_id(r.refund_id.clone())
            .one(txn)
            .await?;
        return match existing {
            Some(e) if e.state == to => Ok(()),
            Some(e) => Err(StepError::Poison(format!(
                "refund {} is {}, cannot become {to}",
                e.refund_id, e.state
            ))),
            None => Err(StepError::Transient(format!(
                "refund {} is not known (yet)",
                r.refund_id
            ))),
        };
    }
    match failure {
        None => out.push(EventData::PaymentRefunded(r)),
        Some((reason, message)) => {
            let amount = r.money().map_err(|e| StepError::Poison(e.to_string()))?;
            // The refund did not happen: its amount is refundable again.
            payment::Entity::update_many()
                .col_expr(
                    payment::Column::RefundedMinor,
                    Expr::col(payment::Column::RefundedMinor).sub(amount.minor()),
                )
                .filter(payment::Column::PaymentId.eq(&r.payment_id))
                .exec(txn)
                .await?;
            out.push(EventData::RefundFailed(RefundFailureData {
                refund: r,
                reason,
                message,
            }));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sea_orm::{ConnectionTrait, TransactionTrait};

    async fn db_with(state: State) -> DatabaseConnection {
        let db = falcon_kernel::store::memory_db(payment::Entity).await;
        let now = Utc::now();
        payment::Entity::insert(payment::ActiveModel {
            payment_id: Set("p1".into()),
            from_wallet: Set("a".into()),
            to_wallet: Set("b".into()),
            amount_minor: Set(1250),
            currency: Set("USD".into()),
            state: Set(state.as_str().into()),
            reason: Set(None),
            settlement_id: Set(None),
            refunded_minor: Set(0),
            created_at: Set(now),
            updated_at: Set(now),
            deadline_at: Set(now),
        })
        .exec(&db)
        .await
        .expect("a payment");
        db
    }

    async fn state_of(db: &impl ConnectionTrait) -> String {
        payment::Entity::find_by_id("p1".to_owned())
            .one(db)
            .await
            .expect("read")
            .expect("the payment")
            .state
    }

    /// The batch's rows are read once and kept current: steps of one
    /// payment in one batch see each other's moves, and the row is written
    /// once, at the flush, guarded by the state first read.
    #[tokio::test]
    async fn rows_read_for_a_batch_follow_its_steps() {
        let db = db_with(State::Requested).await;
        let txn = db.begin().await.expect("txn");
        let mut rows = Rows::read(&txn, ["p1", "p1", "unknown"].into_iter())
            .await
            .expect("read");
        assert_eq!(rows.current.len(), 1);
        let now = Utc::now();
        advance(&txn, &mut rows, "p1", &[EventType::RiskApproved], None, now)
            .await
            .expect("approved");
        assert_eq!(rows.current["p1"].state, State::Approved.as_str());
        // Already applied: a duplicate, judged from the kept row.
        let again = advance(&txn, &mut rows, "p1", &[EventType::RiskApproved], None, now)
            .await
            .expect("duplicate");
        assert_eq!(again, None);
        let settled = Some((None, Some("s-1".to_owned())));
        advance(
            &txn,
            &mut rows,
            "p1",
            &[EventType::FundsReserved, EventType::PaymentCaptured],
            settled,
            now,
        )
        .await
        .expect("captured");
        assert_eq!(
            state_of(&txn).await,
            State::Requested.as_str(),
            "not yet written"
        );
        rows.flush(&txn).await.expect("flush");
        txn.commit().await.expect("commit");
        let row = payment::Entity::find_by_id("p1".to_owned())
            .one(&db)
            .await
            .expect("read")
            .expect("the payment");
        assert_eq!(row.state, State::Captured.as_str());
        assert_eq!(row.settlement_id.as_deref(), Some("s-1"));
    }

    /// A row changed after the batch read it (another process) fails the
    /// guarded write as a transient error; the retry, step by step, reads
    /// it afresh.
    #[tokio::test]
    async fn a_row_changed_after_the_read_is_a_transient_error() {
        let db = db_with(State::Requested).await;
        let mut rows = Rows::read(&db.begin().await.expect("txn"), ["p1"].into_iter())
            .await
            .expect("read");
        payment::Entity::update_many()
            .col_expr(
                payment::Column::State,
                Expr::value(State::Approved.as_str()),
            )
            .filter(payment::Column::PaymentId.eq("p1"))
            .exec(&db)
            .await
            .expect("changed meanwhile");
        let txn = db.begin().await.expect("txn");
        advance(
            &txn,
            &mut rows,
            "p1",
            &[EventType::RiskApproved],
            None,
            Utc::now(),
        )
        .await
        .expect("moved in memory");
        let err = rows.flush(&txn).await.expect_err("stale");
        assert!(matches!(err, StepError::Conflict(_)), "{err}");
        let again = advance(
            &txn,
            &mut Rows::default(),
            "p1",
            &[EventType::RiskApproved],
            None,
            Utc::now(),
        )
        .await
        .expect("read afresh: a duplicate");
        assert_eq!(again, None);
    }

    fn handler(db: DatabaseConnection) -> Payment {
        let settings = settings::ProviderSettings::default();
        let simulator = Arc::new(provider::Simulator::new(&settings));
        Payment::new(
            db,
            Arc::new(Resilient::new(simulator, &settings)),
            std::time::Duration::from_secs(60),
        )
    }

    fn create(id: &str, minor: i64) -> CreatePayment {
        CreatePayment {
            payment_id: id.into(),
            from_wallet: "a".into(),
            to_wallet: "b".into(),
            amount: Money::from_minor(minor, Currency::from_code("USD").expect("USD")),
        }
    }

    fn kinds(out: &Outbox) -> Vec<EventType> {
        out.events.iter().map(|e| e.data.event_type()).collect()
    }

    /// Creates on the fast path: a new payment is requested once however
    /// often the batch repeats it, the existing one (p1) is a duplicate,
    /// and a different payment under a used key is rejected; one insert
    /// writes the new rows at the flush.
    #[tokio::test]
    async fn a_batch_creates_payments_like_its_commands_one_by_one() {
        let db = db_with(State::Requested).await;
        let payment = handler(db.clone());
        let txn = db.begin().await.expect("txn");
        let mut rows = Rows::read(&txn, ["p1", "p2"].into_iter())
            .await
            .expect("read");
        let mut out = Outbox::standalone("falcon/payment", "cause".into(), Utc::now());
        payment.stage(&mut rows, &create("p2", 500), &mut out);
        payment.stage(&mut rows, &create("p2", 500), &mut out);
        payment.stage(&mut rows, &create("p1", 1250), &mut out);
        payment.stage(&mut rows, &create("p2", 999), &mut out);
        assert_eq!(
            kinds(&out),
            vec![EventType::PaymentRequested, EventType::PaymentRejected]
        );
        rows.flush(&txn).await.expect("flush");
        txn.commit().await.expect("commit");
        let p2 = payment::Entity::find_by_id("p2".to_owned())
            .one(&db)
            .await
            .expect("read")
            .expect("created");
        assert_eq!((p2.amount_minor, p2.state.as_str()), (500, "requested"));
    }
}
