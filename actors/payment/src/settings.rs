//! The payment actor's settings: its database, the settlement provider
//! and the saga's deadline. Sections `payment`, `provider` and `saga` of
//! `falcon.toml`.

use falcon_kernel::settings::sqlite_url;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PaymentSettings {
    /// Default `sqlite://./data/payment.db?mode=rwc`; PostgreSQL in production.
    pub database_url: String,
}

impl Default for PaymentSettings {
    fn default() -> Self {
        PaymentSettings {
            database_url: sqlite_url("payment"),
        }
    }
}

/// The settlement provider (a provider of its own over HTTP, or the
/// built-in simulator) and the resilience around it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProviderSettings {
    /// The provider's base URL (`http://host:port`), spoken to over its
    /// HTTP contract (`falcon-provider` is one). Plain HTTP: TLS to a
    /// provider outside the cluster is the egress proxy's (docs/DESIGN.md,
    /// "The provider port"). Empty: the built-in simulator, in the process,
    /// configured by the keys below. Default empty.
    pub url: String,
    /// A file holding the API key sent as `Authorization: Bearer` to the
    /// provider at `url`. Empty: none. Default empty.
    pub api_key_file: String,
    /// How long one call to the provider at `url` may take, in ms; past it
    /// the outcome is unknown and the provider is asked by key. Default 2000.
    pub timeout_ms: u64,
    /// Simulated latency of one capture, in ms. Default 0.
    pub latency_ms: u64,
    /// Captures declined, in basis points (10000 = all). The decision is a
    /// hash of the payment id, so a retried capture gets the same answer.
    /// Default 0.
    pub decline_bps: u32,
    /// Capture attempts that fail transiently, in basis points. Default 0.
    pub transient_error_bps: u32,
    /// Attempts per capture before the message is nak'd. Default 3.
    pub retry_attempts_max: usize,
    /// First retry delay, in ms; doubles up to `retry_delay_ms_max`. Default 20.
    pub retry_delay_ms_min: u64,
    /// Default 500.
    pub retry_delay_ms_max: u64,
    /// Consecutive failures that open the circuit breaker. Default 5.
    pub breaker_failures_max: u32,
    /// How long the open breaker refuses calls, in ms. Default 5000.
    pub breaker_open_ms: u64,
}

impl Default for ProviderSettings {
    fn default() -> Self {
        ProviderSettings {
            url: String::new(),
            api_key_file: String::new(),
            timeout_ms: 2000,
            latency_ms: 0,
            decline_bps: 0,
            transient_error_bps: 0,
            retry_attempts_max: 3,
            retry_delay_ms_min: 20,
            retry_delay_ms_max: 500,
            breaker_failures_max: 5,
            breaker_open_ms: 5000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SagaSettings {
    /// How long a payment saga may take before capture, in seconds: past
    /// it, the payment actor fails the capture (`deadline_exceeded`) and the
    /// wallet releases the funds. Default 60.
    pub deadline_s: u64,
    /// How often the payment actor looks for sagas past their deadline, in
    /// ms. Deadlines are stored with each payment, so any process finds
    /// them, also after the one that started the saga died. Default 1000.
    pub sweep_interval_ms: u64,
    /// Sagas compensated per sweep, at most. Default 256.
    pub sweep_batch_max: u64,
    /// A saga not terminal and unchanged for this long, in seconds, counts
    /// as stuck (`falcon_sagas_stuck`). Default 120.
    pub stuck_after_s: u64,
    /// A capture started this long ago, in seconds, and not settled by
    /// the saga's deadline is in doubt: the payment actor asks the provider
    /// for its key, completes it when charged, and otherwise voids the key
    /// and compensates. Longer than one capture's calls and retries.
    /// Default 30.
    pub capture_doubt_s: u64,
}

impl Default for SagaSettings {
    fn default() -> Self {
        SagaSettings {
            deadline_s: falcon_sagas::PAYMENT_SAGA.deadline_default.as_secs(),
            sweep_interval_ms: 1000,
            sweep_batch_max: 256,
            stuck_after_s: 120,
            capture_doubt_s: 30,
        }
    }
}

impl ProviderSettings {
    /// The API key in `api_key_file`, trimmed: `None` when no file is set.
    pub fn api_key(&self) -> Result<Option<String>, String> {
        falcon_kernel::endpoint::api_key_file("provider.api_key_file", &self.api_key_file)
    }
}

/// Everything the payment actor is built from: three sections of
/// `falcon.toml`.
#[derive(Debug, Clone, PartialEq)]
pub struct PaymentConfig {
    pub payment: PaymentSettings,
    pub provider: ProviderSettings,
    pub saga: SagaSettings,
}

impl PaymentConfig {
    /// Checks what types alone cannot; the error names the key.
    pub fn validate(&self) -> Result<(), String> {
        let p = &self.provider;
        if p.decline_bps > 10_000 || p.transient_error_bps > 10_000 {
            return Err(
                "provider.decline_bps / transient_error_bps: basis points, 0 to 10000".into(),
            );
        }
        if !p.url.is_empty() && !p.url.starts_with("http://") {
            return Err(format!(
                "provider.url {:?}: an http:// URL (TLS is the egress proxy's), or empty for the built-in simulator",
                p.url
            ));
        }
        if !(1..=600_000).contains(&p.timeout_ms) {
            return Err("provider.timeout_ms: 1 to 600000".into());
        }
        Ok(())
    }
}
