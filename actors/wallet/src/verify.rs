//! What `falcon verify` checks of the wallet: the ledger is double-entry
//! and every wallet's balance is the sum of its entries (invariant 1), no
//! available balance is negative and every held amount is the sum of its
//! reserved holds (2), a movement is never repeated (3); and the money
//! effect of each payment and refund, for the cross-check against the
//! payment actor's records.

use std::collections::{BTreeMap, HashMap};

use falcon_kernel::verify::{Effect, Facts};
use sea_orm::{DatabaseConnection, DbErr, EntityTrait};

use crate::entity::{hold, ledger_entry, refund, wallet, HoldState, RefundState};

/// Checks the wallet's database.
pub async fn check(db: &DatabaseConnection) -> Result<Facts, DbErr> {
    let wallets = wallet::Entity::find().all(db).await?;
    let entries = ledger_entry::Entity::find().all(db).await?;
    let holds = hold::Entity::find().all(db).await?;
    let refunds = refund::Entity::find().all(db).await?;
    let mut facts = Facts::default();
    facts.counts.wallets = wallets.len() as u64;
    facts.counts.ledger_entries = entries.len() as u64;

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
            facts.violate(
                1,
                "ledger_unbalanced",
                format!("{currency} entries sum to {sum}, not 0"),
            );
        }
    }
    let mut unbalanced: Vec<_> = per_movement.into_iter().filter(|(_, s)| *s != 0).collect();
    unbalanced.sort();
    for ((movement, currency), sum) in unbalanced {
        facts.violate(
            1,
            "movement_unbalanced",
            format!("movement {movement} sums to {sum} {currency}"),
        );
    }
    let mut reserved_per_wallet: HashMap<&str, i128> = HashMap::new();
    for h in holds.iter().filter(|h| h.state == HoldState::Reserved) {
        *reserved_per_wallet.entry(&h.wallet_id).or_default() += i128::from(h.amount_minor);
    }
    for w in &wallets {
        let ledger = per_account.get(w.wallet_id.as_str()).copied().unwrap_or(0);
        if i128::from(w.balance_minor) != ledger {
            facts.violate(
                1,
                "balance_mismatch",
                format!(
                    "wallet {} balance {} but its entries sum to {ledger}",
                    w.wallet_id, w.balance_minor
                ),
            );
        }
        if i128::from(w.balance_minor) - i128::from(w.held_minor) < 0 || w.held_minor < 0 {
            facts.violate(
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
            facts.violate(
                2,
                "held_mismatch",
                format!(
                    "wallet {} holds {} but its reserved holds sum to {reserved}",
                    w.wallet_id, w.held_minor
                ),
            );
        }
    }
    let mut repeated: Vec<_> = movements
        .iter()
        .filter(|(m, n)| **n != 2 && !m.starts_with("deposit:"))
        .collect();
    repeated.sort();
    for (movement, n) in repeated {
        facts.violate(
            3,
            "movement_repeated",
            format!("movement {movement} has {n} entries, not 2"),
        );
    }
    facts.counts.holds_open = holds
        .iter()
        .filter(|h| h.state == HoldState::Reserved)
        .count() as u64;
    let moved = |movement: String| movements.get(&movement).copied().unwrap_or(0) > 0;
    facts.payment_effects = holds
        .into_iter()
        .map(|h| {
            let effect = Effect {
                held: h.state == HoldState::Reserved,
                committed: h.state == HoldState::Committed,
                moved: moved(format!("transfer:{}", h.payment_id)),
                state: Some(h.state.as_str().to_owned()),
            };
            (h.payment_id, effect)
        })
        .collect();
    facts.refund_effects = refunds
        .into_iter()
        .map(|r| {
            let effect = Effect {
                held: false,
                committed: r.state == RefundState::Committed,
                moved: moved(format!("refund:{}", r.refund_id)),
                state: Some(r.state.as_str().to_owned()),
            };
            (r.refund_id, effect)
        })
        .collect();
    Ok(facts)
}
