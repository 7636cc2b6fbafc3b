//! The saga state machine: `(state, event) → transition`, pure.
//!
//! The payment actor uses it to refuse steps out of order; the inspector
//! folds a saga's events through it to show where the saga is and what it
//! waits on.

use std::fmt;

use falcon_schemas::EventType;

use crate::definition::Actor;

/// Which saga a state belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SagaKind {
    Payment,
    Refund,
}

impl SagaKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            SagaKind::Payment => "payment",
            SagaKind::Refund => "refund",
        }
    }
}

/// Where a saga is. Each non-terminal state waits on exactly one actor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    // payment saga
    Requested,
    Approved,
    RiskRejected,
    Reserved,
    ReservationDeclined,
    Captured,
    CaptureFailed,
    Released,
    Committed,
    Completed,
    Failed,
    /// The command was refused before a saga began.
    Rejected,
    // refund saga
    RefundRequested,
    RefundCommitted,
    RefundDeclined,
    Refunded,
    RefundFailed,
}

/// What a non-terminal saga waits on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wait {
    pub actor: Actor,
    /// The events that would move it on.
    pub events: &'static [EventType],
    /// True while undoing earlier steps.
    pub compensating: bool,
}

/// The result of applying an event to a state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// The saga moved to a new state.
    Moved(State),
    /// The event was applied before (a redelivery or duplicate): no change.
    Duplicate,
    /// The event does not change this saga (a rejection of a later command
    /// that reused the key): no change.
    Ignored,
    /// The event is not allowed here: out of order or from another saga.
    Invalid {
        from: Option<State>,
        event: EventType,
    },
}

impl State {
    pub const ALL: [State; 17] = [
        State::Requested,
        State::Approved,
        State::RiskRejected,
        State::Reserved,
        State::ReservationDeclined,
        State::Captured,
        State::CaptureFailed,
        State::Released,
        State::Committed,
        State::Completed,
        State::Failed,
        State::Rejected,
        State::RefundRequested,
        State::RefundCommitted,
        State::RefundDeclined,
        State::Refunded,
        State::RefundFailed,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            State::Requested => "requested",
            State::Approved => "approved",
            State::RiskRejected => "risk_rejected",
            State::Reserved => "reserved",
            State::ReservationDeclined => "reservation_declined",
            State::Captured => "captured",
            State::CaptureFailed => "capture_failed",
            State::Released => "released",
            State::Committed => "committed",
            State::Completed => "completed",
            State::Failed => "failed",
            State::Rejected => "rejected",
            State::RefundRequested => "refund_requested",
            State::RefundCommitted => "refund_committed",
            State::RefundDeclined => "refund_declined",
            State::Refunded => "refunded",
            State::RefundFailed => "refund_failed",
        }
    }

    pub fn parse(s: &str) -> Option<State> {
        State::ALL.into_iter().find(|st| st.as_str() == s)
    }

    pub fn kind(&self) -> SagaKind {
        match self {
            State::RefundRequested
            | State::RefundCommitted
            | State::RefundDeclined
            | State::Refunded
            | State::RefundFailed => SagaKind::Refund,
            _ => SagaKind::Payment,
        }
    }

    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            State::Completed
                | State::Failed
                | State::Rejected
                | State::Refunded
                | State::RefundFailed
        )
    }

    /// The event that leads into this state.
    pub fn entered_by(&self) -> EventType {
        use EventType as E;
        match self {
            State::Requested => E::PaymentRequested,
            State::Approved => E::RiskApproved,
            State::RiskRejected => E::RiskRejected,
            State::Reserved => E::FundsReserved,
            State::ReservationDeclined => E::ReservationDeclined,
            State::Captured => E::PaymentCaptured,
            State::CaptureFailed => E::PaymentCaptureFailed,
            State::Released => E::FundsReleased,
            State::Committed => E::TransferCommitted,
            State::Completed => E::PaymentCompleted,
            State::Failed => E::PaymentFailed,
            State::Rejected => E::PaymentRejected,
            State::RefundRequested => E::RefundRequested,
            State::RefundCommitted => E::RefundCommitted,
            State::RefundDeclined => E::RefundDeclined,
            State::Refunded => E::PaymentRefunded,
            State::RefundFailed => E::RefundFailed,
        }
    }

    /// What the saga waits on, or `None` when terminal.
    pub fn waits_on(&self) -> Option<Wait> {
        use EventType as E;
        let wait = |actor, events, compensating| {
            Some(Wait {
                actor,
                events,
                compensating,
            })
        };
        match self {
            State::Requested => wait(Actor::Risk, &[E::RiskApproved, E::RiskRejected][..], false),
            State::Approved => wait(
                Actor::Wallet,
                &[E::FundsReserved, E::ReservationDeclined][..],
                false,
            ),
            State::Reserved => wait(
                Actor::Payment,
                &[E::PaymentCaptured, E::PaymentCaptureFailed][..],
                false,
            ),
            State::Captured => wait(Actor::Wallet, &[E::TransferCommitted][..], false),
            State::Committed => wait(Actor::Payment, &[E::PaymentCompleted][..], false),
            State::RiskRejected | State::ReservationDeclined => {
                wait(Actor::Payment, &[E::PaymentFailed][..], false)
            }
            State::CaptureFailed => wait(Actor::Wallet, &[E::FundsReleased][..], true),
            State::Released => wait(Actor::Payment, &[E::PaymentFailed][..], true),
            State::RefundRequested => wait(
                Actor::Wallet,
                &[E::RefundCommitted, E::RefundDeclined][..],
                false,
            ),
            State::RefundCommitted => wait(Actor::Payment, &[E::PaymentRefunded][..], false),
            State::RefundDeclined => wait(Actor::Payment, &[E::RefundFailed][..], false),
            State::Completed
            | State::Failed
            | State::Rejected
            | State::Refunded
            | State::RefundFailed => None,
        }
    }

    /// True when the state, or the step that led to it, undoes earlier steps.
    pub fn is_compensating(&self) -> bool {
        matches!(self, State::CaptureFailed | State::Released)
    }

    /// Applies `event` to a saga in `state` (`None`: no event yet).
    pub fn apply(state: Option<State>, event: EventType) -> Transition {
        use EventType as E;
        use State as S;
        let to = match (state, event) {
            (None, E::PaymentRequested) => S::Requested,
            (None, E::PaymentRejected) => S::Rejected,
            (None, E::RefundRequested) => S::RefundRequested,
            (Some(S::Requested), E::RiskApproved) => S::Approved,
            (Some(S::Requested), E::RiskRejected) => S::RiskRejected,
            (Some(S::Approved), E::FundsReserved) => S::Reserved,
            (Some(S::Approved), E::ReservationDeclined) => S::ReservationDeclined,
            (Some(S::Reserved), E::PaymentCaptured) => S::Captured,
            (Some(S::Reserved), E::PaymentCaptureFailed) => S::CaptureFailed,
            // The deadline passed before capture: the payment actor fails the
            // capture itself, and the wallet releases whatever it holds (or
            // blocks a reservation still on its way).
            (Some(S::Requested | S::Approved), E::PaymentCaptureFailed) => S::CaptureFailed,
            // A deadline may release a hold before capture.
            (Some(S::Reserved), E::FundsReleased) => S::Released,
            (Some(S::CaptureFailed), E::FundsReleased) => S::Released,
            (Some(S::Captured), E::TransferCommitted) => S::Committed,
            (Some(S::Committed), E::PaymentCompleted) => S::Completed,
            (Some(S::RiskRejected | S::ReservationDeclined | S::Released), E::PaymentFailed) => {
                S::Failed
            }
            (Some(S::RefundRequested), E::RefundCommitted) => S::RefundCommitted,
            (Some(S::RefundRequested), E::RefundDeclined) => S::RefundDeclined,
            (Some(S::RefundCommitted), E::PaymentRefunded) => S::Refunded,
            (Some(S::RefundDeclined), E::RefundFailed) => S::RefundFailed,
            // A later command that reused this saga's key was rejected; the
            // saga itself is unchanged.
            (Some(_), E::PaymentRejected) => return Transition::Ignored,
            // Forward steps that arrive after the saga turned to compensation
            // (a deadline passed) change nothing: the wallet's release covers
            // any hold they made.
            (
                Some(S::CaptureFailed | S::Released | S::Failed),
                E::PaymentRequested
                | E::RiskApproved
                | E::RiskRejected
                | E::FundsReserved
                | E::ReservationDeclined,
            ) if !matches!(state, Some(s) if s.has_seen(event)) => return Transition::Ignored,
            (Some(s), e) if s.has_seen(e) => return Transition::Duplicate,
            (from, event) => return Transition::Invalid { from, event },
        };
        Transition::Moved(to)
    }

    /// True when `event` was already applied on the way to this state.
    fn has_seen(&self, event: EventType) -> bool {
        self.path().contains(&event)
    }

    /// The events that led to this state, in order (on its only path, or the
    /// path through the most likely branch for `Released`).
    pub fn path(&self) -> Vec<EventType> {
        let mut path = vec![self.entered_by()];
        let mut at = *self;
        while let Some(prev) = at.previous() {
            path.push(prev.entered_by());
            at = prev;
        }
        path.reverse();
        path
    }

    /// The state before this one, when it is unique. For `Released` and
    /// `Failed` it is not unique; the conservative answer (the one that
    /// recognises the fewest events as seen) is given.
    fn previous(&self) -> Option<State> {
        use State as S;
        match self {
            S::Requested | S::Rejected | S::RefundRequested => None,
            S::Approved | S::RiskRejected => Some(S::Requested),
            S::Reserved | S::ReservationDeclined => Some(S::Approved),
            S::Captured | S::CaptureFailed => Some(S::Reserved),
            S::Released => Some(S::Reserved),
            S::Committed => Some(S::Captured),
            S::Completed => Some(S::Committed),
            S::Failed => None,
            S::RefundCommitted | S::RefundDeclined => Some(S::RefundRequested),
            S::Refunded => Some(S::RefundCommitted),
            S::RefundFailed => Some(S::RefundDeclined),
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Folds a saga's events, in order, into its state; unknown or invalid
/// events are reported with their index and skipped.
pub fn fold(
    events: impl IntoIterator<Item = EventType>,
) -> (Option<State>, Vec<(usize, Transition)>) {
    let mut state = None;
    let mut anomalies = Vec::new();
    for (i, ev) in events.into_iter().enumerate() {
        match State::apply(state, ev) {
            Transition::Moved(s) => state = Some(s),
            t @ (Transition::Duplicate | Transition::Ignored) => anomalies.push((i, t)),
            t @ Transition::Invalid { .. } => anomalies.push((i, t)),
        }
    }
    (state, anomalies)
}

#[cfg(test)]
mod tests {
    use super::*;
    use EventType as E;

    fn run(events: &[EventType]) -> Option<State> {
        let (state, anomalies) = fold(events.iter().copied());
        assert!(anomalies.is_empty(), "{anomalies:?}");
        state
    }

    #[test]
    fn happy_path_completes() {
        let s = run(&[
            E::PaymentRequested,
            E::RiskApproved,
            E::FundsReserved,
            E::PaymentCaptured,
            E::TransferCommitted,
            E::PaymentCompleted,
        ]);
        assert_eq!(s, Some(State::Completed));
        assert!(State::Completed.is_terminal());
        assert_eq!(State::Completed.waits_on(), None);
    }

    #[test]
    fn capture_failure_compensates() {
        let s = run(&[
            E::PaymentRequested,
            E::RiskApproved,
            E::FundsReserved,
            E::PaymentCaptureFailed,
        ]);
        assert_eq!(s, Some(State::CaptureFailed));
        let w = State::CaptureFailed.waits_on().expect("not terminal");
        assert_eq!((w.actor, w.compensating), (Actor::Wallet, true));
        assert_eq!(
            State::apply(s, E::FundsReleased),
            Transition::Moved(State::Released)
        );
        assert_eq!(
            State::apply(Some(State::Released), E::PaymentFailed),
            Transition::Moved(State::Failed)
        );
    }

    #[test]
    fn rejections_and_declines_fail() {
        assert_eq!(
            run(&[E::PaymentRequested, E::RiskRejected, E::PaymentFailed]),
            Some(State::Failed)
        );
        assert_eq!(
            run(&[
                E::PaymentRequested,
                E::RiskApproved,
                E::ReservationDeclined,
                E::PaymentFailed
            ]),
            Some(State::Failed)
        );
        assert_eq!(run(&[E::PaymentRejected]), Some(State::Rejected));
    }

    #[test]
    fn redelivered_events_are_duplicates() {
        let s = Some(State::Captured);
        assert_eq!(State::apply(s, E::FundsReserved), Transition::Duplicate);
        assert_eq!(State::apply(s, E::PaymentRequested), Transition::Duplicate);
        assert_eq!(
            State::apply(Some(State::Completed), E::TransferCommitted),
            Transition::Duplicate
        );
    }

    #[test]
    fn out_of_order_and_foreign_events_are_invalid() {
        assert!(matches!(
            State::apply(None, E::FundsReserved),
            Transition::Invalid { .. }
        ));
        assert!(matches!(
            State::apply(Some(State::Requested), E::TransferCommitted),
            Transition::Invalid { .. }
        ));
        assert!(matches!(
            State::apply(Some(State::Completed), E::FundsReleased),
            Transition::Invalid { .. }
        ));
        assert!(matches!(
            State::apply(Some(State::Failed), E::PaymentCaptured),
            Transition::Invalid { .. }
        ));
        assert!(matches!(
            State::apply(Some(State::Requested), E::RefundCommitted),
            Transition::Invalid { .. }
        ));
    }

    #[test]
    fn deadline_compensates_before_capture_and_late_steps_are_ignored() {
        for from in [State::Requested, State::Approved, State::Reserved] {
            assert_eq!(
                State::apply(Some(from), E::PaymentCaptureFailed),
                Transition::Moved(State::CaptureFailed)
            );
        }
        let no_change = |t: Transition| matches!(t, Transition::Ignored | Transition::Duplicate);
        for late in [E::RiskApproved, E::FundsReserved, E::ReservationDeclined] {
            assert!(
                no_change(State::apply(Some(State::CaptureFailed), late)),
                "{late:?}"
            );
            assert!(
                no_change(State::apply(Some(State::Failed), late)),
                "{late:?}"
            );
        }
        assert!(matches!(
            State::apply(Some(State::Failed), E::TransferCommitted),
            Transition::Invalid { .. }
        ));
        assert!(matches!(
            State::apply(Some(State::Captured), E::PaymentCaptureFailed),
            Transition::Invalid { .. }
        ));
    }

    #[test]
    fn key_reuse_rejection_leaves_saga_alone() {
        assert_eq!(
            State::apply(Some(State::Reserved), E::PaymentRejected),
            Transition::Ignored
        );
    }

    #[test]
    fn refund_saga() {
        assert_eq!(
            run(&[E::RefundRequested, E::RefundCommitted, E::PaymentRefunded]),
            Some(State::Refunded)
        );
        assert_eq!(
            run(&[E::RefundRequested, E::RefundDeclined, E::RefundFailed]),
            Some(State::RefundFailed)
        );
        assert_eq!(State::Refunded.kind(), SagaKind::Refund);
    }

    #[test]
    fn every_non_terminal_state_waits_on_events_that_move_it() {
        for s in State::ALL {
            match s.waits_on() {
                None => assert!(s.is_terminal(), "{s} waits on nothing but is not terminal"),
                Some(w) => {
                    for ev in w.events {
                        assert!(
                            matches!(State::apply(Some(s), *ev), Transition::Moved(_)),
                            "{s} + {ev:?}"
                        );
                    }
                }
            }
            assert_eq!(State::parse(s.as_str()), Some(s));
        }
    }
}
