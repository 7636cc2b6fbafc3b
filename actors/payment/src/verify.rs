//! What `falcon verify` checks of the payment actor: every payment and
//! refund is in a known state and, once the system is settled, terminal;
//! no payment is refunded beyond its amount (invariant 3); and each saga's
//! outcome, for the cross-check against the wallet's records.

use falcon_kernel::verify::{Facts, Outcome};
use falcon_sagas::State;
use sea_orm::{DatabaseConnection, DbErr, EntityTrait};

use crate::entity::{payment, refund};
use crate::refund_state;

/// Checks the payment database; with `settled`, sagas still in flight are
/// violations.
pub async fn check(db: &DatabaseConnection, settled: bool) -> Result<Facts, DbErr> {
    let payments = payment::Entity::find().all(db).await?;
    let refunds = refund::Entity::find().all(db).await?;
    let mut facts = Facts::default();
    for p in payments {
        *facts
            .counts
            .payments_by_state
            .entry(p.state.clone())
            .or_default() += 1;
        let state = State::parse(&p.state);
        let terminal = state.is_some_and(|s| s.is_terminal());
        if state.is_none() {
            facts.violate(
                3,
                "payment_state_unknown",
                format!("payment {} is in unknown state {}", p.payment_id, p.state),
            );
        }
        if settled && !terminal {
            facts.violate(
                3,
                "payment_not_terminal",
                format!("payment {} is still {}", p.payment_id, p.state),
            );
        }
        if p.refunded_minor < 0 || p.refunded_minor > p.amount_minor {
            facts.violate(
                3,
                "refund_exceeds_payment",
                format!(
                    "payment {} of {} has {} refunded",
                    p.payment_id, p.amount_minor, p.refunded_minor
                ),
            );
        }
        let outcome = match state {
            Some(State::Completed) => Outcome::Succeeded,
            Some(State::Failed | State::Rejected) => Outcome::Failed,
            _ => Outcome::InFlight,
        };
        facts.payments.insert(p.payment_id, (outcome, p.state));
    }
    for r in refunds {
        *facts
            .counts
            .refunds_by_state
            .entry(r.state.clone())
            .or_default() += 1;
        if settled && r.state == refund_state::REQUESTED {
            facts.violate(
                3,
                "refund_not_terminal",
                format!("refund {} is still requested", r.refund_id),
            );
        }
        let outcome = match r.state.as_str() {
            refund_state::REFUNDED => Outcome::Succeeded,
            refund_state::FAILED => Outcome::Failed,
            _ => Outcome::InFlight,
        };
        facts.refunds.insert(r.refund_id, (outcome, r.state));
    }
    Ok(facts)
}
