//! The money invariants of DESIGN.md, checked across the actors' databases.
//!
//! 1. the ledger is double-entry: every movement sums to zero per currency,
//!    so does the whole ledger, and each wallet's balance is the sum of its
//!    entries;
//! 2. no wallet's available balance (balance − held) is below zero, and its
//!    held amount is the sum of its reserved holds;
//! 3. every payment reaches one terminal state, and money moves at most once
//!    per payment and once per refund;
//! 4. a hold is committed or released (or was declined), never both, never
//!    neither once its saga is terminal, and it agrees with the outcome;
//! 5. every event in an outbox is published.
//!
//! With `settled = false` (a system under load), sagas in flight and an
//! outbox backlog are counted, not reported as violations.

use std::collections::{BTreeMap, HashMap};

use falcon_sagas::State;
use sea_orm::{ColumnTrait, DatabaseConnection, DbErr, EntityTrait, PaginatorTrait, QueryFilter};
use serde::Serialize;

use crate::payment::entity::{payment, refund as payment_refund};
use crate::payment::refund_state;
use crate::runtime::Stores;
use crate::store::{inbox, outbox};
use crate::wallet::entity::{hold, ledger_entry, refund as wallet_refund, wallet};
use crate::wallet::hold_state;

/// One broken invariant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// The invariant's number in DESIGN.md.
    pub invariant: u8,
    /// A stable machine name, e.g. `movement_unbalanced`.
    pub code: &'static str,
    pub detail: String,
}

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

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    pub violations: Vec<Violation>,
    pub counts: Counts,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.violations.is_empty()
    }

    fn violate(&mut self, invariant: u8, code: &'static str, detail: String) {
        self.violations.push(Violation {
            invariant,
            code,
            detail,
        });
    }
}

/// Checks every invariant the given stores allow (cross-actor checks need
/// both the payment and the wallet database).
pub async fn check(stores: &Stores, settled: bool) -> Result<Report, DbErr> {
    let mut report = Report::default();
    for (name, db) in [
        ("payment", &stores.payment),
        ("risk", &stores.risk),
        ("wallet", &stores.wallet),
    ] {
        if let Some(db) = db {
            let backlog = outbox::Entity::find()
                .filter(outbox::Column::PublishedAt.is_null())
                .count(db)
                .await?;
            report
                .counts
                .outbox_backlog
                .insert(name.to_owned(), backlog);
            if settled && backlog > 0 {
                report.violate(
                    5,
                    "outbox_unpublished",
                    format!("{name}: {backlog} events not published"),
                );
            }
        }
    }
    let wallet_view = match &stores.wallet {
        Some(db) => Some(check_wallet(db, &mut report).await?),
        None => None,
    };
    if let Some(db) = &stores.payment {
        check_payments(db, wallet_view.as_ref(), settled, &mut report).await?;
    }
    Ok(report)
}

/// What the payment checks need from the wallet database.
struct WalletView {
    holds: HashMap<String, hold::Model>,
    /// Entries per movement id.
    movements: HashMap<String, usize>,
    refunds: HashMap<String, wallet_refund::Model>,
}

async fn check_wallet(db: &DatabaseConnection, report: &mut Report) -> Result<WalletView, DbErr> {
    let wallets = wallet::Entity::find().all(db).await?;
    let entries = ledger_entry::Entity::find().all(db).await?;
    let holds = hold::Entity::find().all(db).await?;
    let refunds = wallet_refund::Entity::find().all(db).await?;
    report.counts.wallets = wallets.len() as u64;
    report.counts.ledger_entries = entries.len() as u64;

    let mut per_currency: BTreeMap<&str, i128> = BTreeMap::new();
    let mut per_movement: HashMap<(&str, &str), i128> = HashMap::new();
    let mut per_account: HashMap<&str, i128> = HashMap::new();
    let mut movements: HashMap<String, usize> = HashMap::new();
    for e in &entries {
        *per_currency.entry(&e.currency).or_default() += i128::from(e.amount_minor);
        *per_movement
            .entry((&e.movement_id, &e.currency))
            .or_default() += i128::from(e.amount_minor);
        *per_account.entry(&e.account).or_default() += i128::from(e.amount_minor);
        *movements.entry(e.movement_id.clone()).or_default() += 1;
    }
    for (currency, sum) in per_currency {
        if sum != 0 {
            report.violate(
                1,
                "ledger_unbalanced",
                format!("{currency} entries sum to {sum}, not 0"),
            );
        }
    }
    let mut unbalanced: Vec<_> = per_movement.into_iter().filter(|(_, s)| *s != 0).collect();
    unbalanced.sort();
    for ((movement, currency), sum) in unbalanced {
        report.violate(
            1,
            "movement_unbalanced",
            format!("movement {movement} sums to {sum} {currency}"),
        );
    }
    let mut reserved_per_wallet: HashMap<&str, i128> = HashMap::new();
    for h in holds.iter().filter(|h| h.state == hold_state::RESERVED) {
        *reserved_per_wallet.entry(&h.wallet_id).or_default() += i128::from(h.amount_minor);
    }
    for w in &wallets {
        let ledger = per_account.get(w.wallet_id.as_str()).copied().unwrap_or(0);
        if i128::from(w.balance_minor) != ledger {
            report.violate(
                1,
                "balance_mismatch",
                format!(
                    "wallet {} balance {} but its entries sum to {ledger}",
                    w.wallet_id, w.balance_minor
                ),
            );
        }
        if w.balance_minor - w.held_minor < 0 || w.held_minor < 0 {
            report.violate(
                2,
                "available_negative",
                format!(
                    "wallet {} balance {} held {}",
                    w.wallet_id, w.balance_minor, w.held_minor
                ),
            );
        }
        let reserved = reserved_per_wallet
            .get(w.wallet_id.as_str())
            .copied()
            .unwrap_or(0);
        if i128::from(w.held_minor) != reserved {
            report.violate(
                2,
                "held_mismatch",
                format!(
                    "wallet {} holds {} but its reserved holds sum to {reserved}",
                    w.wallet_id, w.held_minor
                ),
            );
        }
    }
    for (movement, n) in &movements {
        if *n != 2 && !movement.starts_with("deposit:") {
            report.violate(
                3,
                "movement_repeated",
                format!("movement {movement} has {n} entries, not 2"),
            );
        }
    }
    report.counts.holds_open = holds
        .iter()
        .filter(|h| h.state == hold_state::RESERVED)
        .count() as u64;
    Ok(WalletView {
        holds: holds
            .into_iter()
            .map(|h| (h.payment_id.clone(), h))
            .collect(),
        movements,
        refunds: refunds
            .into_iter()
            .map(|r| (r.refund_id.clone(), r))
            .collect(),
    })
}

async fn check_payments(
    db: &DatabaseConnection,
    w: Option<&WalletView>,
    settled: bool,
    report: &mut Report,
) -> Result<(), DbErr> {
    let payments = payment::Entity::find().all(db).await?;
    let refunds = payment_refund::Entity::find().all(db).await?;
    for p in &payments {
        *report
            .counts
            .payments_by_state
            .entry(p.state.clone())
            .or_default() += 1;
        let state = State::parse(&p.state);
        let terminal = state.is_some_and(|s| s.is_terminal());
        if state.is_none() {
            report.violate(
                3,
                "payment_state_unknown",
                format!("payment {} is in unknown state {}", p.payment_id, p.state),
            );
        }
        if settled && !terminal {
            report.violate(
                3,
                "payment_not_terminal",
                format!("payment {} is still {}", p.payment_id, p.state),
            );
        }
        if p.refunded_minor < 0 || p.refunded_minor > p.amount_minor {
            report.violate(
                3,
                "refund_exceeds_payment",
                format!(
                    "payment {} of {} has {} refunded",
                    p.payment_id, p.amount_minor, p.refunded_minor
                ),
            );
        }
        let Some(w) = w else { continue };
        let hold = w.holds.get(&p.payment_id).map(|h| h.state.as_str());
        let moved = w
            .movements
            .get(&format!("transfer:{}", p.payment_id))
            .copied()
            .unwrap_or(0)
            > 0;
        match state {
            Some(State::Completed) if hold != Some(hold_state::COMMITTED) || !moved => {
                report.violate(
                    4,
                    "completed_without_transfer",
                    format!(
                        "payment {} completed but hold is {hold:?}, transfer posted: {moved}",
                        p.payment_id
                    ),
                );
            }
            Some(State::Failed | State::Rejected) => {
                if hold == Some(hold_state::RESERVED) {
                    report.violate(
                        4,
                        "hold_left_open",
                        format!(
                            "payment {} is {} but its hold is still reserved",
                            p.payment_id, p.state
                        ),
                    );
                }
                if hold == Some(hold_state::COMMITTED) || moved {
                    report.violate(
                        4,
                        "failed_but_moved",
                        format!(
                            "payment {} is {} but money moved (hold {hold:?})",
                            p.payment_id, p.state
                        ),
                    );
                }
            }
            _ => {}
        }
    }
    let known: std::collections::HashSet<&str> =
        payments.iter().map(|p| p.payment_id.as_str()).collect();
    if let Some(w) = w {
        let mut orphans: Vec<_> = w
            .holds
            .keys()
            .filter(|id| !known.contains(id.as_str()))
            .collect();
        orphans.sort();
        for id in orphans {
            report.violate(
                3,
                "hold_without_payment",
                format!("hold for unknown payment {id}"),
            );
        }
    }
    for r in &refunds {
        *report
            .counts
            .refunds_by_state
            .entry(r.state.clone())
            .or_default() += 1;
        if settled && r.state == refund_state::REQUESTED {
            report.violate(
                3,
                "refund_not_terminal",
                format!("refund {} is still requested", r.refund_id),
            );
        }
        let Some(w) = w else { continue };
        let moved = w
            .movements
            .get(&format!("refund:{}", r.refund_id))
            .copied()
            .unwrap_or(0)
            > 0;
        let wallet_state = w.refunds.get(&r.refund_id).map(|x| x.state.as_str());
        match r.state.as_str() {
            refund_state::REFUNDED if !moved || wallet_state != Some("committed") => {
                report.violate(
                    3,
                    "refunded_without_movement",
                    format!(
                        "refund {} refunded but wallet shows {wallet_state:?}",
                        r.refund_id
                    ),
                );
            }
            refund_state::FAILED if moved => {
                report.violate(
                    3,
                    "failed_refund_moved",
                    format!("refund {} failed but money moved", r.refund_id),
                );
            }
            _ => {}
        }
    }
    Ok(())
}

/// Invariant 5, second half, against the streams: every message a durable
/// consumer has acked (at or below its ack floor) had its effect committed
/// — its inbox row exists — or is a dead letter. Reads each consumer's
/// range, so it costs a pass over the streams: an audit, not a hot path.
pub async fn check_streams(
    stores: &Stores,
    settings: &crate::Settings,
    js: &async_nats::jetstream::Context,
    report: &mut Report,
) -> Result<(), crate::Error> {
    use std::collections::HashSet;

    use falcon_nats::read::{RangeReader, Start};
    use falcon_schemas::subject::HEADER_MSG_ID;

    let db_err = |e: DbErr| crate::Error::Database {
        actor: "verify",
        detail: e.to_string(),
    };
    let dead: HashSet<(String, u64)> = falcon_nats::dlq::list(js, None)
        .await?
        .into_iter()
        .map(|l| (l.origin.consumer, l.origin.stream_seq))
        .collect();
    report.counts.dlq_depth = Some(dead.len() as u64);
    for (actor, db) in [
        (falcon_sagas::Actor::Payment, &stores.payment),
        (falcon_sagas::Actor::Risk, &stores.risk),
        (falcon_sagas::Actor::Wallet, &stores.wallet),
    ] {
        let Some(db) = db else { continue };
        for spec in crate::runtime::consumer_specs(settings, &[actor]) {
            let Ok(stream) = js.get_stream(spec.stream).await else {
                continue;
            };
            let Ok(info) = stream.consumer_info(&spec.name).await else {
                continue;
            };
            let floor = info.ack_floor.stream_sequence;
            if floor == 0 {
                continue;
            }
            let seen: HashSet<String> = inbox::Entity::find()
                .filter(inbox::Column::Consumer.eq(spec.name.as_str()))
                .all(db)
                .await
                .map_err(db_err)?
                .into_iter()
                .map(|r| r.msg_id)
                .collect();
            let mut reader = RangeReader::open(
                js,
                spec.stream,
                spec.filter_subjects.clone(),
                Start::All,
                Some(floor),
            )
            .await?;
            loop {
                let page = reader.next_page(1024).await?;
                if page.is_empty() {
                    break;
                }
                for m in page {
                    let msg_id = m
                        .headers
                        .as_ref()
                        .and_then(|h| h.get(HEADER_MSG_ID))
                        .map(|v| v.as_str());
                    let key = falcon_nats::consumer::inbox_key(msg_id, spec.stream, m.stream_seq);
                    if !seen.contains(&key) && !dead.contains(&(spec.name.clone(), m.stream_seq)) {
                        report.violate(
                            5,
                            "acked_without_effect",
                            format!(
                                "{} acked {} #{} ({key}) but has no record of processing it",
                                spec.name, m.subject, m.stream_seq
                            ),
                        );
                    }
                }
            }
            reader.close().await;
        }
    }
    Ok(())
}
