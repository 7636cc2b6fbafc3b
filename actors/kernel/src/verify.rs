//! The vocabulary of `falcon verify`: a [`Violation`] of a money invariant
//! of DESIGN.md, the [`Counts`] a report shows, and the [`Facts`] each
//! actor's check returns. Each actor checks its own records; what one
//! actor's records must agree with in another's (a completed payment has
//! its transfer, a failed one left no hold) is checked by [`cross_check`]
//! over the facts both returned.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

/// One broken invariant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// The invariant's number in DESIGN.md.
    pub invariant: u8,
    /// A stable machine name, e.g. `movement_unbalanced`.
    pub code: &'static str,
    pub detail: String,
}

/// What a report counts (the shape of `falcon verify --json`'s `counts`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub wallets: u64,
    pub ledger_entries: u64,
    pub payments_by_state: BTreeMap<String, u64>,
    pub refunds_by_state: BTreeMap<String, u64>,
    pub holds_open: u64,
    pub outbox_backlog: BTreeMap<String, u64>,
    /// Messages in FALCON_DLQ, when the caller read the stream.
    pub dlq_depth: Option<u64>,
}

/// How a saga ended, as the actor that runs it records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Not terminal yet.
    InFlight,
    /// Completed (a payment) or refunded (a refund).
    Succeeded,
    /// Failed or rejected.
    Failed,
}

/// What a saga did to money, as the actor that holds the money records it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Effect {
    /// Funds are still held for it.
    pub held: bool,
    /// Its hold (or refund) was committed.
    pub committed: bool,
    /// A ledger movement exists for it.
    pub moved: bool,
    /// The state the money's owner records, for messages.
    pub state: Option<String>,
}

/// What one actor's check found and records.
#[derive(Debug, Default)]
pub struct Facts {
    pub violations: Vec<Violation>,
    pub counts: Counts,
    /// Payment sagas by payment id, with their state as recorded.
    pub payments: HashMap<String, (Outcome, String)>,
    /// Refund sagas by refund id.
    pub refunds: HashMap<String, (Outcome, String)>,
    /// Money effects of payments, by payment id.
    pub payment_effects: HashMap<String, Effect>,
    /// Money effects of refunds, by refund id.
    pub refund_effects: HashMap<String, Effect>,
}

impl Facts {
    pub fn violate(&mut self, invariant: u8, code: &'static str, detail: String) {
        self.violations.push(Violation {
            invariant,
            code,
            detail,
        });
    }

    /// Adds another actor's facts to these.
    pub fn merge(&mut self, other: Facts) {
        self.violations.extend(other.violations);
        let (c, o) = (&mut self.counts, other.counts);
        c.wallets += o.wallets;
        c.ledger_entries += o.ledger_entries;
        c.holds_open += o.holds_open;
        for (k, v) in o.payments_by_state {
            *c.payments_by_state.entry(k).or_default() += v;
        }
        for (k, v) in o.refunds_by_state {
            *c.refunds_by_state.entry(k).or_default() += v;
        }
        c.outbox_backlog.extend(o.outbox_backlog);
        c.dlq_depth = c.dlq_depth.or(o.dlq_depth);
        self.payments.extend(other.payments);
        self.refunds.extend(other.refunds);
        self.payment_effects.extend(other.payment_effects);
        self.refund_effects.extend(other.refund_effects);
    }
}

/// Invariants 3 and 4 across actors: each saga's outcome agrees with what
/// happened to its money. Runs only when both sides were checked (the
/// sagas' owner and the money's owner).
pub fn cross_check(facts: &mut Facts) {
    let mut found = Vec::new();
    let none = Effect::default();
    let mut payments: Vec<_> = facts.payments.iter().collect();
    payments.sort_by(|a, b| a.0.cmp(b.0));
    for (id, (outcome, state)) in payments {
        let e = facts.payment_effects.get(id).unwrap_or(&none);
        let hold = e.state.as_deref();
        match outcome {
            Outcome::Succeeded if !e.committed || !e.moved => found.push((
                4,
                "completed_without_transfer",
                format!(
                    "payment {id} completed but hold is {hold:?}, transfer posted: {}",
                    e.moved
                ),
            )),
            Outcome::Failed => {
                if e.held {
                    found.push((
                        4,
                        "hold_left_open",
                        format!("payment {id} is {state} but its hold is still reserved"),
                    ));
                }
                if e.committed || e.moved {
                    found.push((
                        4,
                        "failed_but_moved",
                        format!("payment {id} is {state} but money moved (hold {hold:?})"),
                    ));
                }
            }
            _ => {}
        }
    }
    let mut orphans: Vec<_> = facts
        .payment_effects
        .keys()
        .filter(|id| !facts.payments.contains_key(*id))
        .collect();
    orphans.sort();
    for id in orphans {
        found.push((
            3,
            "hold_without_payment",
            format!("hold for unknown payment {id}"),
        ));
    }
    let mut refunds: Vec<_> = facts.refunds.iter().collect();
    refunds.sort_by(|a, b| a.0.cmp(b.0));
    for (id, (outcome, _)) in refunds {
        let e = facts.refund_effects.get(id).unwrap_or(&none);
        match outcome {
            Outcome::Succeeded if !e.moved || !e.committed => found.push((
                3,
                "refunded_without_movement",
                format!("refund {id} refunded but wallet shows {:?}", e.state),
            )),
            Outcome::Failed if e.moved => found.push((
                3,
                "failed_refund_moved",
                format!("refund {id} failed but money moved"),
            )),
            _ => {}
        }
    }
    for (invariant, code, detail) in found {
        facts.violate(invariant, code, detail);
    }
}
