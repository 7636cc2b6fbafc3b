//! The risk actor's settings: section `risk` of `falcon.toml`.

use std::collections::BTreeMap;

use falcon_kernel::settings::sqlite_url;
use serde::{Deserialize, Serialize};

/// Risk rules. Amounts are decimal strings per ISO 4217 currency code.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RiskSettings {
    /// Default `sqlite://./data/risk.db?mode=rwc`.
    pub database_url: String,
    /// Largest single payment per currency; a currency not listed has no
    /// limit. Default USD/EUR/GBP 10000.00, JPY 1500000.
    pub max_amount: BTreeMap<String, String>,
    /// The sliding window for velocity, in seconds. Default 60.
    pub velocity_window_s: u64,
    /// Approved payments from one wallet within the window, at most.
    /// Default 1000.
    pub velocity_count_max: u64,
    /// Approved money from one wallet within the window, per currency; a
    /// currency not listed has no limit. Default none.
    pub velocity_sum_max: BTreeMap<String, String>,
    /// Wallets that may neither pay nor be paid. Default none.
    pub blocked_wallets: Vec<String>,
}

impl Default for RiskSettings {
    fn default() -> Self {
        let max_amount = [
            ("USD", "10000.00"),
            ("EUR", "10000.00"),
            ("GBP", "10000.00"),
            ("JPY", "1500000"),
        ]
        .into_iter()
        .map(|(c, a)| (c.to_owned(), a.to_owned()))
        .collect();
        RiskSettings {
            database_url: sqlite_url("risk"),
            max_amount,
            velocity_window_s: 60,
            velocity_count_max: 1000,
            velocity_sum_max: BTreeMap::new(),
            blocked_wallets: Vec::new(),
        }
    }
}
