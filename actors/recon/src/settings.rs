//! The reconciliation actor's settings: section `recon` of `falcon.toml`,
//! and the provider it reads (section `provider`, shared with the payment
//! actor).

use falcon_kernel::settings::sqlite_url;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReconSettings {
    /// Default `sqlite://./data/recon.db?mode=rwc`.
    pub database_url: String,
    /// Seconds between two reconciliation runs. Default 60.
    pub interval_s: u64,
    /// Seconds a payment's facts must be quiet before they are compared:
    /// longer than a saga stays in flight (its deadline, plus the doubt of
    /// a capture). Default 300.
    pub settle_s: u64,
    /// The provider's records asked for per page (1..=1000). Default 1000.
    pub page_max: u32,
    /// Pages of the provider's list read per run, at most. Default 100.
    pub pages_per_run_max: u32,
    /// Payments compared per transaction; a run compares one such chunk
    /// after another until none is left or it has run for `interval_s`
    /// (the rest wait for the next run). Default 10000.
    pub check_max: u64,
    /// Whether a standing charge for a payment that failed is voided at
    /// the provider (and reported `action: voided`), or only reported.
    /// Default true.
    pub void_unexpected: bool,
}

impl Default for ReconSettings {
    fn default() -> Self {
        ReconSettings {
            database_url: sqlite_url("recon"),
            interval_s: 60,
            settle_s: 300,
            page_max: 1000,
            pages_per_run_max: 100,
            check_max: 10_000,
            void_unexpected: true,
        }
    }
}

/// What the reconciliation actor is built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReconConfig {
    pub recon: ReconSettings,
    /// The provider's base URL (`provider.url`); empty for the built-in
    /// simulator, whose settlements live in the payment actor's memory and
    /// are not reconciled.
    pub provider_url: String,
    /// The file holding the provider's API key (`provider.api_key_file`).
    pub provider_api_key_file: String,
    /// One call's timeout (`provider.timeout_ms`).
    pub provider_timeout_ms: u64,
}

impl ReconConfig {
    pub fn validate(&self) -> Result<(), String> {
        let r = &self.recon;
        if !(1..=86_400).contains(&r.interval_s) {
            return Err(format!(
                "recon.interval_s: {} is not 1..=86400",
                r.interval_s
            ));
        }
        if r.settle_s > 30 * 86_400 {
            return Err(format!(
                "recon.settle_s: {} is more than 30 days",
                r.settle_s
            ));
        }
        if !(1..=1000).contains(&r.page_max) {
            return Err(format!("recon.page_max: {} is not 1..=1000", r.page_max));
        }
        if !(1..=10_000).contains(&r.pages_per_run_max) {
            return Err(format!(
                "recon.pages_per_run_max: {} is not 1..=10000",
                r.pages_per_run_max
            ));
        }
        if !(1..=1_000_000).contains(&r.check_max) {
            return Err(format!(
                "recon.check_max: {} is not 1..=1000000",
                r.check_max
            ));
        }
        Ok(())
    }
}
