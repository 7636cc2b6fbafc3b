//! The saga view's rule, pure: what an event says about its saga
//! ([`facts`]), the state a set of a saga's event types folds to
//! ([`fold_seen`]), and the row a saga has after an event ([`next_row`]).
//! The projection only reads and writes the rows this rule gives.

use falcon_sagas::{SagaKind, State, Transition};
use falcon_schemas::{CommandKind, Event, EventData, EventType};

use super::saga_view;

/// The state column of a saga whose events fold to no state yet (only
/// events the state machine refused).
pub const UNKNOWN: &str = "unknown";

/// What an event says about its saga's row.
struct Facts {
    kind: SagaKind,
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
            kind: SagaKind::Payment,
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
            kind: SagaKind::Refund,
            amount: r.amount.to_string(),
            currency: r.currency.code().to_owned(),
            from_wallet: r.to_wallet.clone(),
            to_wallet: r.from_wallet.clone(),
            payment_id: r.payment_id.clone(),
            reason,
        };
    }
    let kind = match &e.data {
        EventData::PaymentRejected(r) if r.command == CommandKind::PaymentRefund.as_str() => {
            SagaKind::Refund
        }
        _ => SagaKind::Payment,
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

/// The event type's bit in `events_seen`; `None` for an event that belongs
/// to no saga.
pub(super) fn bit(ty: EventType) -> Option<i64> {
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

/// The state column for a folded state.
fn state_column(state: Option<State>) -> String {
    state.map_or(UNKNOWN, |s| s.as_str()).to_owned()
}

/// The row a saga has after `e`, given the row it had (`None`: no row yet);
/// `None` when the event changes nothing (its type was seen already, or it
/// does not belong to a saga). Pure: the projection's whole rule.
pub(super) fn next_row(
    row: Option<&saga_view::Model>,
    e: &Event,
    seq: i64,
) -> Option<saga_view::Model> {
    let bit = bit(e.event_type())?;
    let f = facts(e);
    let Some(row) = row else {
        let (state, refused) = fold_seen(bit);
        return Some(saga_view::Model {
            saga_id: e.sagaid.clone(),
            kind: f.kind.as_str().to_owned(),
            state: state_column(state),
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
        f.kind.as_str().to_owned()
    } else {
        row.kind.clone()
    };
    Some(saga_view::Model {
        saga_id: row.saga_id.clone(),
        kind,
        state: state_column(state),
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

#[cfg(test)]
mod tests {
    use super::*;
    use EventType as E;

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
