//! A wallet's balances as `falcon wallet balance` shows them.

use falcon_schemas::{Currency, Money};
use sea_orm::{ConnectionTrait, EntityTrait};

use crate::entity::wallet;

/// A wallet's balances, for `falcon wallet balance`: decimal strings in the
/// wallet's currency, and the same in minor units.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Balance {
    pub wallet_id: String,
    pub owner: String,
    pub currency: String,
    pub balance: String,
    pub held: String,
    pub available: String,
    pub balance_minor: i64,
    pub held_minor: i64,
    pub available_minor: i64,
}

/// Reads a wallet's balances; `None` when it does not exist.
pub async fn balance(
    db: &impl ConnectionTrait,
    wallet_id: &str,
) -> Result<Option<Balance>, sea_orm::DbErr> {
    let Some(w) = wallet::Entity::find_by_id(wallet_id.to_owned())
        .one(db)
        .await?
    else {
        return Ok(None);
    };
    let currency = Currency::from_code(&w.currency).ok_or_else(|| {
        sea_orm::DbErr::Custom(format!(
            "wallet {} has unknown currency {}",
            w.wallet_id, w.currency
        ))
    })?;
    let fmt = |minor: i64| Money::from_minor(minor, currency).amount_string();
    // Both are non-negative, so the difference fits; a database that breaks
    // that is reported, not wrapped.
    let available_minor = w.balance_minor.checked_sub(w.held_minor).ok_or_else(|| {
        sea_orm::DbErr::Custom(format!(
            "wallet {} has balance {} and held {}: available overflows",
            w.wallet_id, w.balance_minor, w.held_minor
        ))
    })?;
    Ok(Some(Balance {
        balance: fmt(w.balance_minor),
        held: fmt(w.held_minor),
        available: fmt(available_minor),
        wallet_id: w.wallet_id,
        owner: w.owner,
        currency: w.currency,
        balance_minor: w.balance_minor,
        held_minor: w.held_minor,
        available_minor,
    }))
}
