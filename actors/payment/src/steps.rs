//! The payment saga's steps of the payment actor: [`capture`] (settle with
//! the provider on `funds_reserved`), [`complete`] (on
//! `transfer_committed`) and [`fail`] (on `risk.rejected`,
//! `reservation_declined` or `funds_released`), all through [`advance`].
//!
//! Every transition goes through `falcon_sagas::State::apply` ([`decide`]):
//! a duplicate event is a no-op, an event ahead of its predecessor is nak'd
//! until the predecessor has been handled, and the row is written only from
//! the state it was read in ([`Rows::put`]), so two processes cannot both
//! take a step. [`implied_first`] covers the one gap the saga table leaves:
//! `risk.approved` goes to the wallet only, so the payment actor takes it as
//! read when the wallet's answer to it arrives.
//!
//! Every step first checks the event against the payment's row
//! ([`recorded`]): an event whose amount, currency or wallets are not the
//! row's is poison and moves nothing (and, on `funds_reserved`, no
//! provider is called: `prepare` makes the same check). The events a step
//! publishes carry the row's payment, the principal that created it
//! included.

use chrono::{DateTime, Utc};
use falcon_kernel::store::Outbox;
use falcon_kernel::telemetry::SagaEnd;
use falcon_kernel::StepError;
use falcon_sagas::definition::{actor_of_trigger, SAGAS};
use falcon_sagas::{Actor, State, Transition};
use falcon_schemas::event::{CapturedData, FailureData, PaymentData, PaymentFailedData};
use falcon_schemas::{EventData, EventType, Reason};
use sea_orm::DatabaseTransaction;

use crate::entity::payment;
use crate::provider::Captures;
use crate::provider::ProviderError;
use crate::records::same_payment;
use crate::rows::Rows;

/// What a step writes beside the state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Change {
    /// Why the payment failed (`None`: left as it is).
    pub reason: Option<Reason>,
    /// The provider's settlement (`None`: left as it is).
    pub settlement_id: Option<String>,
}

/// Applies `events` in order to the payment's saga state and stores the
/// result with `change`. `Ok(Some(created_at))`: moved (the saga's start,
/// for its duration); `Ok(None)`: already applied, or changing nothing
/// (see [`decide`]).
pub(crate) async fn advance(
    txn: &DatabaseTransaction,
    rows: &mut Rows,
    payment_id: &str,
    events: &[EventType],
    change: Change,
    now: DateTime<Utc>,
) -> Result<Option<DateTime<Utc>>, StepError> {
    let Some(before) = rows.get(txn, payment_id).await? else {
        return Err(StepError::Transient(format!(
            "payment {payment_id} is not known (yet)"
        )));
    };
    let from = before.saga_state().ok_or_else(|| {
        StepError::Poison(format!(
            "payment {payment_id} has unknown state {}",
            before.state
        ))
    })?;
    let Some(to) = decide(payment_id, from, events)? else {
        return Ok(None);
    };
    let mut after = before.clone();
    after.state = to.as_str().to_owned();
    after.updated_at = now;
    if let Some(r) = change.reason {
        after.reason = Some(r.as_str().to_owned());
    }
    if let Some(s) = change.settlement_id {
        after.settlement_id = Some(s);
    }
    let created_at = before.created_at;
    rows.put(txn, before, after).await?;
    Ok(Some(created_at))
}

/// The state `events`, applied in order, move a payment in `from` to; the
/// whole rule of [`advance`], pure. `Ok(None)` when the first event was
/// applied already (a duplicate) or changes nothing (a forward step that
/// arrives after a deadline compensated the saga). A first event the state
/// does not allow yet is transient (its predecessor is still on its way);
/// one that can never apply is poison.
pub(crate) fn decide(
    payment_id: &str,
    from: State,
    events: &[EventType],
) -> Result<Option<State>, StepError> {
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
    Ok(Some(state))
}

/// `ev` applied to `state` after the event it answers, when the payment
/// actor never sees that event: the saga table gives it to another actor
/// and no payment step publishes it. `funds_reserved` and
/// `reservation_declined` answer `risk.approved`, which only the wallet
/// consumes, so a payment still `requested` takes both. An event answering
/// one the payment actor publishes itself (`funds_released` answers
/// `capture_failed`) implies nothing: the row would show that event, so
/// the state it gives is the state to judge by.
pub(crate) fn implied_first(state: State, ev: EventType) -> Transition {
    let unseen = |t: EventType| actor_of_trigger(t) != Some(Actor::Payment) && !published(t);
    let answered = SAGAS
        .iter()
        .find_map(|saga| saga.step_publishing(ev))
        .into_iter()
        .flat_map(|step| step.triggers.iter().copied())
        .find(|t| unseen(*t));
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

/// True when a step of the payment actor publishes `ty`.
fn published(ty: EventType) -> bool {
    SAGAS.iter().any(|saga| {
        saga.steps
            .iter()
            .any(|s| s.actor == Actor::Payment && s.outcomes.contains(&ty))
    })
}

/// The row of the payment `p` is about, when `p` agrees with it; a
/// payment not recorded (yet) is transient, one that disagrees is poison.
pub(crate) async fn recorded(
    txn: &DatabaseTransaction,
    rows: &mut Rows,
    p: &PaymentData,
) -> Result<payment::Model, StepError> {
    let Some(row) = rows.get(txn, &p.payment_id).await? else {
        return Err(StepError::Transient(format!(
            "payment {} is not known (yet)",
            p.payment_id
        )));
    };
    same_payment(&row, p)?;
    Ok(row)
}

/// Why a payment fails: the event that failed it and what the failure says.
pub(crate) struct Failing {
    pub cause: EventType,
    pub reason: Reason,
    pub message: String,
    /// The funds were reserved and have been released.
    pub compensated: bool,
}

/// The `fail` step: the payment fails (`payment.failed`), terminal.
pub(crate) async fn fail(
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
    let row = recorded(txn, rows, p).await?;
    let change = Change {
        reason: Some(reason),
        settlement_id: None,
    };
    let events = [cause, EventType::PaymentFailed];
    let Some(started_at) = advance(txn, rows, &p.payment_id, &events, change, out.now).await?
    else {
        return Ok(());
    };
    out.ended = Some(SagaEnd {
        started_at,
        ended_at: out.now,
        failure: Some(reason),
        compensated,
    });
    out.push(EventData::PaymentFailed(PaymentFailedData {
        payment: row.data()?,
        reason,
        message,
        compensated,
    }));
    Ok(())
}

/// The `complete` step: the transfer is committed, the payment completes
/// (`payment.completed`), terminal.
pub(crate) async fn complete(
    txn: &DatabaseTransaction,
    rows: &mut Rows,
    p: &PaymentData,
    out: &mut Outbox,
) -> Result<(), StepError> {
    let row = recorded(txn, rows, p).await?;
    let events = [EventType::TransferCommitted, EventType::PaymentCompleted];
    let moved = advance(
        txn,
        rows,
        &p.payment_id,
        &events,
        Change::default(),
        out.now,
    )
    .await?;
    if let Some(started_at) = moved {
        out.ended = Some(SagaEnd {
            started_at,
            ended_at: out.now,
            failure: None,
            compensated: false,
        });
        out.push(EventData::PaymentCompleted(row.data()?));
    }
    Ok(())
}

/// Whether a `funds_reserved` would still capture a payment in `state`:
/// false once its saga is past capture (a duplicate, a replay, a dead
/// letter redriven, or a deadline that compensated the saga meanwhile).
fn awaits_capture_in(state: State) -> bool {
    matches!(
        State::apply(Some(state), EventType::FundsReserved),
        Transition::Moved(_) | Transition::Invalid { .. }
    )
}

/// [`awaits_capture_in`] of the row's state; the capture step checks it
/// inside its transaction.
pub(crate) fn awaits_capture(row: &payment::Model) -> bool {
    row.saga_state().is_none_or(awaits_capture_in)
}

/// The states, as stored, in which a payment awaits capture: the guard of
/// the capture mark, so that `prepare` asks the provider only for those.
pub(crate) fn capture_awaiting_states() -> Vec<&'static str> {
    State::ALL
        .into_iter()
        .filter(|s| awaits_capture_in(*s))
        .map(|s| s.as_str())
        .collect()
}

/// The `capture` step: the funds are reserved; the provider's answer
/// (asked before the transaction, in `prepare`) captures the payment
/// (`payment.captured`) or fails the capture (`payment.capture_failed`,
/// which the wallet compensates).
pub(crate) async fn capture(
    txn: &DatabaseTransaction,
    rows: &mut Rows,
    p: &PaymentData,
    captures: &Captures,
    out: &mut Outbox,
) -> Result<(), StepError> {
    let row = recorded(txn, rows, p).await?;
    // Past capture already (a redelivery, or a deadline compensated the
    // saga meanwhile): nothing to do, and `prepare` asked no provider.
    if !awaits_capture(&row) {
        return Ok(());
    }
    let payment = row.data()?;
    let (next, change, event) = match captures.get(&p.payment_id) {
        None => {
            // `prepare` asks the provider for every funds_reserved that
            // agreed with its row then; this one it could not read.
            return Err(StepError::Transient(format!(
                "no capture result for {}",
                p.payment_id
            )));
        }
        Some(Err(e @ ProviderError::Unavailable { .. })) => {
            return Err(StepError::Transient(format!(
                "provider unavailable for {}: {}",
                p.payment_id,
                e.report()
            )));
        }
        Some(Ok(s)) => (
            EventType::PaymentCaptured,
            Change {
                reason: None,
                settlement_id: Some(s.settlement_id.clone()),
            },
            EventData::PaymentCaptured(CapturedData {
                payment,
                settlement_id: s.settlement_id.clone(),
            }),
        ),
        Some(Err(e @ ProviderError::Declined(_))) => (
            EventType::PaymentCaptureFailed,
            Change {
                reason: Some(Reason::CaptureDeclined),
                settlement_id: None,
            },
            EventData::PaymentCaptureFailed(FailureData {
                payment,
                reason: Reason::CaptureDeclined,
                message: e.to_string(),
            }),
        ),
    };
    let events = [EventType::FundsReserved, next];
    if advance(txn, rows, &p.payment_id, &events, change, out.now)
        .await?
        .is_some()
    {
        out.push(event);
    }
    Ok(())
}

#[cfg(test)]
mod tests;
