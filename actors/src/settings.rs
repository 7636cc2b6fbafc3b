//! Settings of a FalconPay runtime. Every field has a default; the binary
//! layers `falcon.toml` and `FALCON__…` environment variables over them.

use std::collections::BTreeMap;
use std::time::Duration;

use falcon_nats::StreamSettings;
use serde::{Deserialize, Serialize};

/// Everything `falcon run` needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// This process's node name: names its NATS connection and, later, its
    /// control subjects. Default `local`.
    pub node: String,
    pub nats: NatsSettings,
    pub streams: StreamsSettings,
    pub consumer: ConsumerSettings,
    pub relay: RelaySettings,
    pub payment: PaymentSettings,
    pub risk: RiskSettings,
    pub wallet: WalletSettings,
    pub provider: ProviderSettings,
    pub saga: SagaSettings,
    pub sqlite: SqliteSettings,
    pub http: HttpSettings,
    pub shutdown: ShutdownSettings,
    pub chaos: ChaosSettings,
}

/// The HTTP endpoint of `falcon run`: `/metrics`, `/health/live`,
/// `/health/ready`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSettings {
    /// Address to listen on; empty turns the endpoint off. Default
    /// `127.0.0.1:9464` (`0.0.0.0:9464` in a container).
    pub listen: String,
    /// How often the gauges that need a query (DLQ depth, consumer
    /// pending, outbox backlog, stuck sagas) are refreshed, in ms. Default 5000.
    pub sample_interval_ms: u64,
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            listen: "127.0.0.1:9464".into(),
            sample_interval_ms: 5000,
        }
    }
}

/// What `falcon run` does on SIGTERM or SIGINT.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownSettings {
    /// Time to stop pulling, finish and ack the batches in flight, publish
    /// the outbox and close connections, in ms; past it the process exits
    /// non-zero (what was not acked is redelivered). Default 10000.
    pub grace_ms: u64,
}

impl Default for ShutdownSettings {
    fn default() -> Self {
        ShutdownSettings { grace_ms: 10_000 }
    }
}

/// Fault injection for chaos testing.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChaosSettings {
    /// Listen on `falcon.ctl.<node>.kill.<actor>` and kill the named actor
    /// when asked (its supervisor restarts it). Never enable in production.
    /// Default false.
    pub enabled: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            node: "local".into(),
            nats: NatsSettings::default(),
            streams: StreamsSettings::default(),
            consumer: ConsumerSettings::default(),
            relay: RelaySettings::default(),
            payment: PaymentSettings::default(),
            risk: RiskSettings::default(),
            wallet: WalletSettings::default(),
            provider: ProviderSettings::default(),
            saga: SagaSettings::default(),
            sqlite: SqliteSettings::default(),
            http: HttpSettings::default(),
            shutdown: ShutdownSettings::default(),
            chaos: ChaosSettings::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NatsSettings {
    /// Server URL(s), comma-separated for a cluster. Default
    /// `nats://127.0.0.1:4222`.
    pub url: String,
    /// The server's HTTP monitoring URL (its `http_port`), which `falcon
    /// doctor` reads the JetStream sync setting from, e.g.
    /// `http://127.0.0.1:8222`. Default empty (not read).
    pub monitor_url: String,
}

impl Default for NatsSettings {
    fn default() -> Self {
        NatsSettings {
            url: "nats://127.0.0.1:4222".into(),
            monitor_url: String::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StreamsSettings {
    /// Retention of every stream, in seconds. Default 604800 (7 days).
    pub max_age_s: u64,
    /// JetStream de-duplication window on `Nats-Msg-Id`, in seconds.
    /// Default 120; the contract requires at least 120.
    pub duplicate_window_s: u64,
    /// Replicas per stream (3 on a cluster). Default 1.
    pub replicas: usize,
}

impl Default for StreamsSettings {
    fn default() -> Self {
        StreamsSettings {
            max_age_s: 7 * 24 * 3600,
            duplicate_window_s: 120,
            replicas: 1,
        }
    }
}

impl StreamsSettings {
    pub fn to_stream_settings(&self) -> StreamSettings {
        StreamSettings {
            max_age: Duration::from_secs(self.max_age_s),
            duplicate_window: Duration::from_secs(self.duplicate_window_s),
            replicas: self.replicas,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsumerSettings {
    /// Messages pulled and handled in one database transaction, at most.
    /// Default 256.
    pub batch_max: usize,
    /// JetStream redelivers a message not acked within this, in ms.
    /// Default 30000.
    pub ack_wait_ms: u64,
    /// Deliveries of one message, at most. Default 10.
    pub max_deliver: i64,
    /// Delivered-but-unacked messages per consumer, at most. Default 10000.
    pub max_ack_pending: i64,
    /// Delay before a message nak'd for a transient error comes back, in
    /// ms; it doubles with each further delivery. Default 500.
    pub nak_delay_ms: u64,
    /// The longest such delay, in ms. Default 30000.
    pub nak_delay_ms_max: u64,
}

impl ConsumerSettings {
    /// The redelivery backoff for transient failures.
    pub fn retry(&self) -> Retry {
        Retry {
            delay_min: Duration::from_millis(self.nak_delay_ms),
            delay_max: Duration::from_millis(self.nak_delay_ms_max.max(self.nak_delay_ms)),
        }
    }
}

/// Redelivery backoff: `delay_min` after the first delivery, doubling per
/// delivery up to `delay_max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    pub delay_min: Duration,
    pub delay_max: Duration,
}

impl Retry {
    /// The delay before delivery `delivered + 1`.
    pub fn delay(&self, delivered: i64) -> Duration {
        let doublings = u32::try_from(delivered.saturating_sub(1).clamp(0, 20)).unwrap_or(20);
        self.delay_min
            .saturating_mul(1 << doublings)
            .min(self.delay_max)
    }
}

impl Default for ConsumerSettings {
    fn default() -> Self {
        ConsumerSettings {
            batch_max: 256,
            ack_wait_ms: 30_000,
            max_deliver: 10,
            max_ack_pending: 10_000,
            nak_delay_ms: 500,
            nak_delay_ms_max: 30_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RelaySettings {
    /// Outbox rows published per round, at most. Default 512.
    pub batch_max: u64,
    /// The relay also sweeps the outbox this often, in ms, to publish what a
    /// crashed process left behind. Default 1000.
    pub interval_ms: u64,
}

impl Default for RelaySettings {
    fn default() -> Self {
        RelaySettings {
            batch_max: 512,
            interval_ms: 1000,
        }
    }
}

fn sqlite_url(actor: &str) -> String {
    format!("sqlite://./data/{actor}.db?mode=rwc")
}

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

/// The settlement provider simulator and the resilience around it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProviderSettings {
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
}

impl Default for SagaSettings {
    fn default() -> Self {
        SagaSettings {
            deadline_s: falcon_sagas::PAYMENT_SAGA.deadline_default.as_secs(),
            sweep_interval_ms: 1000,
            sweep_batch_max: 256,
            stuck_after_s: 120,
        }
    }
}

/// How SQLite databases are opened (PostgreSQL ignores this).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SqliteSettings {
    /// `full` (default: a committed transaction survives power loss) or
    /// `normal` (in WAL mode, may lose the last transactions on power loss,
    /// never corrupts).
    pub synchronous: String,
    /// How long a writer waits for another process's lock, in ms (writers
    /// in one process take turns at a gate first). Default 10000.
    pub busy_timeout_ms: u64,
    /// Pool size per database. Default 4.
    pub pool_max: u32,
}

impl Default for SqliteSettings {
    fn default() -> Self {
        SqliteSettings {
            synchronous: "full".into(),
            busy_timeout_ms: 10_000,
            pool_max: 4,
        }
    }
}

impl Settings {
    /// Checks values that types alone cannot; the error names the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.streams.duplicate_window_s < 120 {
            return Err(
                "streams.duplicate_window_s: must be at least 120 (the contract's dedup window)"
                    .into(),
            );
        }
        if self.consumer.batch_max == 0 {
            return Err("consumer.batch_max: must be at least 1".into());
        }
        if self.consumer.max_deliver < 1 {
            return Err("consumer.max_deliver: must be at least 1".into());
        }
        if self.provider.decline_bps > 10_000 || self.provider.transient_error_bps > 10_000 {
            return Err(
                "provider.decline_bps / transient_error_bps: basis points, 0 to 10000".into(),
            );
        }
        if !matches!(
            self.sqlite.synchronous.as_str(),
            "full" | "normal" | "extra"
        ) {
            return Err(format!(
                "sqlite.synchronous: {:?} is not full, normal or extra",
                self.sqlite.synchronous
            ));
        }
        if !self.http.listen.is_empty() && self.http.listen.parse::<std::net::SocketAddr>().is_err()
        {
            return Err(format!(
                "http.listen: {:?} is not an address like 0.0.0.0:9464 (empty turns it off)",
                self.http.listen
            ));
        }
        if self.http.sample_interval_ms == 0 {
            return Err("http.sample_interval_ms: must be at least 1".into());
        }
        if self.shutdown.grace_ms == 0 {
            return Err("shutdown.grace_ms: must be at least 1".into());
        }
        for (key, url) in [
            ("payment.database_url", &self.payment.database_url),
            ("wallet.database_url", &self.wallet.database_url),
            ("risk.database_url", &self.risk.database_url),
        ] {
            if !(url.starts_with("sqlite:")
                || url.starts_with("postgres://")
                || url.starts_with("postgresql://"))
            {
                return Err(format!(
                    "{key}: {:?} is neither sqlite:… nor postgres://…",
                    crate::settings::mask_url(url)
                ));
            }
        }
        crate::risk::Rules::from_settings(&self.risk).map(|_| ())
    }

    /// The settings with secrets masked: passwords in URLs.
    pub fn masked(&self) -> Settings {
        let mut s = self.clone();
        s.nats.url = mask_url(&s.nats.url);
        s.nats.monitor_url = mask_url(&s.nats.monitor_url);
        s.payment.database_url = mask_url(&s.payment.database_url);
        s.wallet.database_url = mask_url(&s.wallet.database_url);
        s.risk.database_url = mask_url(&s.risk.database_url);
        s
    }
}

pub use falcon_nats::mask_url;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redelivery_backoff_doubles_up_to_its_cap() {
        let r = ConsumerSettings {
            nak_delay_ms: 100,
            nak_delay_ms_max: 1_000,
            ..Default::default()
        }
        .retry();
        let ms: Vec<u128> = [1, 2, 3, 4, 5, 100, i64::MAX]
            .iter()
            .map(|d| r.delay(*d).as_millis())
            .collect();
        assert_eq!(ms, [100, 200, 400, 800, 1000, 1000, 1000]);
        assert_eq!(r.delay(0).as_millis(), 100);
    }

    #[test]
    fn secrets_are_masked() {
        assert_eq!(
            mask_url("postgres://falcon:s3cret@db:5432/payment"),
            "postgres://falcon:****@db:5432/payment"
        );
        assert_eq!(mask_url("nats://tok@n1:4222"), "nats://****@n1:4222");
        assert_eq!(
            mask_url("postgres://db/p?user=a&password=x&sslmode=require"),
            "postgres://db/p?user=a&password=****&sslmode=require"
        );
        assert_eq!(
            mask_url("sqlite://./data/payment.db?mode=rwc"),
            "sqlite://./data/payment.db?mode=rwc"
        );
        let mut s = Settings::default();
        s.nats.url = "nats://u:p@a:4222,nats://u:q@b:4222".into();
        s.wallet.database_url = "postgres://w:pw@db/wallet".into();
        let m = s.masked();
        assert_eq!(m.nats.url, "nats://u:****@a:4222,nats://u:****@b:4222");
        assert_eq!(m.wallet.database_url, "postgres://w:****@db/wallet");
        assert!(!format!("{m:?}").contains("pw@"));
    }

    #[test]
    fn bad_values_name_their_key() {
        let mut s = Settings::default();
        s.http.listen = "nine".into();
        assert!(matches!(s.validate(), Err(e) if e.starts_with("http.listen:")));
        let mut s = Settings::default();
        s.payment.database_url = "mysql://x".into();
        assert!(matches!(s.validate(), Err(e) if e.starts_with("payment.database_url:")));
        let mut s = Settings::default();
        s.shutdown.grace_ms = 0;
        assert!(matches!(s.validate(), Err(e) if e.starts_with("shutdown.grace_ms:")));
    }

    #[test]
    fn defaults_are_valid() {
        assert_eq!(Settings::default().validate(), Ok(()));
    }
}
