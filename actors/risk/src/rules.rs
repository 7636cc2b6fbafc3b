//! The rules, from config: the largest single payment per currency,
//! velocity per source wallet over a sliding window, blocked wallets; and
//! the score of the rules that fired.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use falcon_schemas::{Currency, Money, Reason};

use crate::settings::RiskSettings;

/// The rules, parsed and checked once at start.
#[derive(Debug, Clone)]
pub struct Rules {
    pub(crate) max_amount: BTreeMap<Currency, Money>,
    pub(crate) velocity_window: Duration,
    pub(crate) velocity_count_max: u64,
    pub(crate) velocity_sum_max: BTreeMap<Currency, Money>,
    pub(crate) blocked: HashSet<String>,
}

fn money_table(
    key: &str,
    table: &BTreeMap<String, String>,
) -> Result<BTreeMap<Currency, Money>, String> {
    table
        .iter()
        .map(|(code, amount)| {
            // Environment variables arrive lower-cased: codes are matched upper-case.
            let currency = Currency::from_code(&code.to_ascii_uppercase())
                .ok_or_else(|| format!("risk.{key}.{code}: unknown currency"))?;
            let money =
                Money::parse(amount, currency).map_err(|e| format!("risk.{key}.{code}: {e}"))?;
            Ok((currency, money))
        })
        .collect()
}

impl Rules {
    pub fn from_settings(s: &RiskSettings) -> Result<Rules, String> {
        Ok(Rules {
            max_amount: money_table("max_amount", &s.max_amount)?,
            velocity_window: Duration::from_secs(s.velocity_window_s),
            velocity_count_max: s.velocity_count_max,
            velocity_sum_max: money_table("velocity_sum_max", &s.velocity_sum_max)?,
            blocked: s.blocked_wallets.iter().cloned().collect(),
        })
    }
}

/// 0 when no rule fired; each rule adds its weight, capped at 100.
pub(crate) fn score(reasons: &[Reason]) -> u32 {
    reasons
        .iter()
        .map(|r| match r {
            Reason::WalletBlocked => 100,
            Reason::AmountLimitExceeded => 60,
            Reason::VelocityExceeded => 50,
            _ => 20,
        })
        .sum::<u32>()
        .min(100)
}
