//! The wallet actor's settings: section `wallet` of `falcon.toml`.

use falcon_kernel::settings::sqlite_url;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WalletSettings {
    /// Default `sqlite://./data/wallet.db?mode=rwc`.
    pub database_url: String,
}

impl Default for WalletSettings {
    fn default() -> Self {
        WalletSettings {
            database_url: sqlite_url("wallet"),
        }
    }
}
