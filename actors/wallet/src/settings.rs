//! The wallet actor's settings: section `wallet` of `falcon.toml`.

use falcon_kernel::settings::sqlite_url;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WalletSettings {
    /// Default `sqlite://./data/wallet.db?mode=rwc`.
    pub database_url: String,
    /// The principal whose deposits the wallet accepts (the last token of
    /// a `falcon.cmd.wallet.deposit.<principal>` subject): money enters
    /// wallets only from it, and a deposit from any other principal is
    /// refused (`not_treasury`). An id: 1–64 characters of
    /// `[A-Za-z0-9_-]`. Default `treasury`.
    pub treasury_principal: String,
}

/// The default treasury principal.
pub const TREASURY_PRINCIPAL: &str = "treasury";

impl Default for WalletSettings {
    fn default() -> Self {
        WalletSettings {
            database_url: sqlite_url("wallet"),
            treasury_principal: TREASURY_PRINCIPAL.to_owned(),
        }
    }
}

impl WalletSettings {
    /// Checks what types alone cannot; the error names the key.
    pub fn validate(&self) -> Result<(), String> {
        if !falcon_schemas::ids::is_valid_id(&self.treasury_principal) {
            return Err(format!(
                "wallet.treasury_principal: {:?} is not a principal id \
                 (1-64 characters of [A-Za-z0-9_-])",
                self.treasury_principal
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_treasury_principal_must_be_an_id() {
        assert_eq!(WalletSettings::default().validate(), Ok(()));
        for bad in ["", "a.b", "treasury*", "two words", &"x".repeat(65)] {
            let settings = WalletSettings {
                treasury_principal: bad.to_owned(),
                ..WalletSettings::default()
            };
            let err = settings.validate().expect_err(bad);
            assert!(err.starts_with("wallet.treasury_principal"), "{err}");
        }
    }
}
