//! The payment and refund sagas as tables of steps.

use std::fmt;
use std::time::Duration;

use falcon_schemas::EventType;

/// FalconPay's actors: the three that take saga steps, and the
/// reconciliation actor, which takes none (it reads what they publish and
/// the provider's settlements, and publishes the mismatches it finds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Actor {
    Payment,
    Risk,
    Wallet,
    Recon,
}

impl Actor {
    pub const ALL: [Actor; 4] = [Actor::Payment, Actor::Risk, Actor::Wallet, Actor::Recon];

    pub fn as_str(&self) -> &'static str {
        match self {
            Actor::Payment => "payment",
            Actor::Risk => "risk",
            Actor::Wallet => "wallet",
            Actor::Recon => "recon",
        }
    }

    pub fn parse(s: &str) -> Option<Actor> {
        Actor::ALL.into_iter().find(|a| a.as_str() == s)
    }

    /// The actor that publishes events of an aggregate.
    pub fn of_aggregate(aggregate: &str) -> Option<Actor> {
        Actor::parse(aggregate)
    }
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a step's effect is undone when a later step fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compensation {
    /// Undone by the named compensation step of the same saga.
    By(&'static str),
    /// Nothing to undo, and why.
    NotNeeded(&'static str),
}

/// One step: which actor takes it, on which event, and what it may publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    pub name: &'static str,
    pub actor: Actor,
    /// Events that trigger the step; empty for the step a command starts.
    pub triggers: &'static [EventType],
    /// Events the step may publish.
    pub outcomes: &'static [EventType],
    /// `None` for compensation steps themselves.
    pub compensation: Option<Compensation>,
}

impl Step {
    pub fn is_compensation(&self) -> bool {
        self.compensation.is_none()
    }
}

/// A saga: its steps in order, then its compensation steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SagaDef {
    pub name: &'static str,
    /// The command that starts it, e.g. `payment.create`.
    pub started_by: &'static str,
    pub steps: &'static [Step],
    /// Used when config sets none: how long a saga may take before it is
    /// compensated.
    pub deadline_default: Duration,
}

impl SagaDef {
    pub fn step(&self, name: &str) -> Option<&'static Step> {
        self.steps.iter().find(|s| s.name == name)
    }

    /// The step (forward or compensation) an event triggers.
    pub fn step_triggered_by(&self, ty: EventType) -> Option<&'static Step> {
        self.steps.iter().find(|s| s.triggers.contains(&ty))
    }

    /// The step that publishes an event.
    pub fn step_publishing(&self, ty: EventType) -> Option<&'static Step> {
        self.steps.iter().find(|s| s.outcomes.contains(&ty))
    }
}

use EventType as E;

/// The payment saga of DESIGN.md.
pub const PAYMENT_SAGA: SagaDef = SagaDef {
    name: "payment",
    started_by: "payment.create",
    deadline_default: Duration::from_secs(60),
    steps: &[
        Step {
            name: "request",
            actor: Actor::Payment,
            triggers: &[],
            outcomes: &[E::PaymentRequested, E::PaymentRejected],
            compensation: Some(Compensation::NotNeeded(
                "records the payment only; a failed saga ends it with payment.failed",
            )),
        },
        Step {
            name: "assess_risk",
            actor: Actor::Risk,
            triggers: &[E::PaymentRequested],
            outcomes: &[E::RiskApproved, E::RiskRejected],
            compensation: Some(Compensation::NotNeeded(
                "a decision moves no money; it is kept for velocity and audit",
            )),
        },
        Step {
            name: "reserve_funds",
            actor: Actor::Wallet,
            triggers: &[E::RiskApproved],
            outcomes: &[E::FundsReserved, E::ReservationDeclined],
            compensation: Some(Compensation::By("release_funds")),
        },
        Step {
            name: "capture",
            actor: Actor::Payment,
            triggers: &[E::FundsReserved],
            outcomes: &[E::PaymentCaptured, E::PaymentCaptureFailed],
            compensation: Some(Compensation::By("release_funds")),
        },
        Step {
            name: "commit_transfer",
            actor: Actor::Wallet,
            triggers: &[E::PaymentCaptured],
            outcomes: &[E::TransferCommitted],
            compensation: Some(Compensation::NotNeeded(
                "the pivot: the held funds guarantee it succeeds; afterwards only a refund saga gives money back",
            )),
        },
        Step {
            name: "complete",
            actor: Actor::Payment,
            triggers: &[E::TransferCommitted],
            outcomes: &[E::PaymentCompleted],
            compensation: Some(Compensation::NotNeeded("terminal; records the outcome")),
        },
        Step {
            name: "release_funds",
            actor: Actor::Wallet,
            triggers: &[E::PaymentCaptureFailed],
            outcomes: &[E::FundsReleased],
            compensation: None,
        },
        Step {
            name: "fail",
            actor: Actor::Payment,
            triggers: &[E::RiskRejected, E::ReservationDeclined, E::FundsReleased],
            outcomes: &[E::PaymentFailed],
            compensation: None,
        },
    ],
};

/// The refund saga: gives back all or part of a completed payment.
pub const REFUND_SAGA: SagaDef = SagaDef {
    name: "refund",
    started_by: "payment.refund",
    deadline_default: Duration::from_secs(60),
    steps: &[
        Step {
            name: "request_refund",
            actor: Actor::Payment,
            triggers: &[],
            outcomes: &[E::RefundRequested, E::PaymentRejected],
            compensation: Some(Compensation::NotNeeded(
                "records the refund only; a failed refund ends with payment.refund_failed",
            )),
        },
        Step {
            name: "commit_refund",
            actor: Actor::Wallet,
            triggers: &[E::RefundRequested],
            outcomes: &[E::RefundCommitted, E::RefundDeclined],
            compensation: Some(Compensation::NotNeeded(
                "the pivot: one ledger movement, all or nothing in one transaction",
            )),
        },
        Step {
            name: "complete_refund",
            actor: Actor::Payment,
            triggers: &[E::RefundCommitted],
            outcomes: &[E::PaymentRefunded],
            compensation: Some(Compensation::NotNeeded("terminal; records the outcome")),
        },
        Step {
            name: "fail_refund",
            actor: Actor::Payment,
            triggers: &[E::RefundDeclined],
            outcomes: &[E::RefundFailed],
            compensation: None,
        },
    ],
};

/// Every saga FalconPay runs.
pub const SAGAS: [SagaDef; 2] = [PAYMENT_SAGA, REFUND_SAGA];

/// The actor whose step an event triggers, in any saga: the one source of
/// which events each actor consumes (its consumer filters are derived from
/// it, and its steps refuse any other event).
pub fn actor_of_trigger(ty: EventType) -> Option<Actor> {
    SAGAS
        .iter()
        .find_map(|saga| saga.step_triggered_by(ty))
        .map(|step| step.actor)
}

/// True when `ty` belongs to a saga: some step of some saga publishes it or
/// is triggered by it (the events a read model of sagas folds).
pub fn is_saga_event(ty: EventType) -> bool {
    SAGAS
        .iter()
        .any(|saga| saga.step_publishing(ty).is_some() || saga.step_triggered_by(ty).is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_forward_step_names_its_compensation() {
        for saga in [PAYMENT_SAGA, REFUND_SAGA] {
            for step in saga.steps.iter().filter(|s| !s.is_compensation()) {
                match step.compensation {
                    Some(Compensation::By(name)) => {
                        let comp = saga.step(name).unwrap_or_else(|| {
                            panic!("{}: {} names missing {name}", saga.name, step.name)
                        });
                        assert!(comp.is_compensation(), "{name} must be a compensation step");
                        // The compensation must be reachable from a failure of this step or a later one.
                        assert!(!comp.triggers.is_empty());
                    }
                    Some(Compensation::NotNeeded(why)) => assert!(!why.is_empty()),
                    None => unreachable!("filtered to forward steps"),
                }
            }
        }
    }

    #[test]
    fn every_compensation_leads_to_a_terminal_failure() {
        let release = PAYMENT_SAGA.step("release_funds").expect("defined");
        for out in release.outcomes {
            let next = PAYMENT_SAGA
                .step_triggered_by(*out)
                .expect("funds_released is handled");
            assert_eq!(next.name, "fail");
        }
    }

    #[test]
    fn each_event_triggers_at_most_one_step_and_is_published_by_one() {
        for saga in [PAYMENT_SAGA, REFUND_SAGA] {
            for ty in EventType::ALL {
                let triggered = saga
                    .steps
                    .iter()
                    .filter(|s| s.triggers.contains(ty))
                    .count();
                assert!(
                    triggered <= 1,
                    "{ty:?} triggers {triggered} steps of {}",
                    saga.name
                );
                let published: Vec<_> = saga
                    .steps
                    .iter()
                    .filter(|s| s.outcomes.contains(ty))
                    .collect();
                assert!(published.len() <= 1 || *ty == EventType::PaymentRejected);
                for s in published {
                    assert_eq!(
                        Some(s.actor),
                        Actor::of_aggregate(ty.aggregate()),
                        "{ty:?} published by its own aggregate"
                    );
                }
            }
        }
    }

    #[test]
    fn each_actor_is_given_the_triggers_of_its_own_steps() {
        use EventType as E;
        assert_eq!(actor_of_trigger(E::RiskApproved), Some(Actor::Wallet));
        assert_eq!(actor_of_trigger(E::FundsReserved), Some(Actor::Payment));
        assert_eq!(actor_of_trigger(E::PaymentRequested), Some(Actor::Risk));
        assert_eq!(actor_of_trigger(E::RefundRequested), Some(Actor::Wallet));
        // Terminal events and wallet-only events trigger nothing.
        for ty in [
            E::PaymentCompleted,
            E::PaymentFailed,
            E::WalletOpened,
            E::WalletDeposited,
        ] {
            assert_eq!(actor_of_trigger(ty), None, "{ty:?}");
        }
        assert!(is_saga_event(E::PaymentCompleted) && is_saga_event(E::PaymentRejected));
        assert!(!is_saga_event(E::WalletOpened) && !is_saga_event(E::WalletRejected));
    }
}
