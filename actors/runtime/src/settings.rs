//! Settings of a FalconPay runtime. Every field has a default; the binary
//! layers `falcon.toml` and `FALCON__…` environment variables over them.

use std::collections::BTreeMap;
use std::time::Duration;

pub use falcon_kernel::settings::{
    ConsumerSettings, PostgresSettings, RelaySettings, RetentionSettings, Retry, SqliteSettings,
};
use falcon_nats::StreamSettings;
pub use falcon_payment::settings::{PaymentSettings, ProviderSettings, SagaSettings};
pub use falcon_recon::settings::ReconSettings;
pub use falcon_risk::settings::RiskSettings;
pub use falcon_wallet::settings::WalletSettings;
use serde::{Deserialize, Serialize};

pub use crate::security::{IdentitySettings, Mode, SecuritySettings, TlsSettings};

/// Everything `falcon run` needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// This process's node name: names its NATS connection and, later, its
    /// control subjects. Default `local`.
    pub node: String,
    pub security: SecuritySettings,
    pub nats: NatsSettings,
    pub streams: StreamsSettings,
    pub consumer: ConsumerSettings,
    pub relay: RelaySettings,
    pub retention: RetentionSettings,
    pub payment: PaymentSettings,
    pub risk: RiskSettings,
    pub wallet: WalletSettings,
    pub recon: ReconSettings,
    pub provider: ProviderSettings,
    pub saga: SagaSettings,
    pub sqlite: SqliteSettings,
    pub postgres: PostgresSettings,
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
            security: SecuritySettings::default(),
            nats: NatsSettings::default(),
            streams: StreamsSettings::default(),
            consumer: ConsumerSettings::default(),
            relay: RelaySettings::default(),
            retention: RetentionSettings::default(),
            payment: PaymentSettings::default(),
            risk: RiskSettings::default(),
            wallet: WalletSettings::default(),
            recon: ReconSettings::default(),
            provider: ProviderSettings::default(),
            saga: SagaSettings::default(),
            sqlite: SqliteSettings::default(),
            postgres: PostgresSettings::default(),
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
    /// The identity the client verbs (`wallet open`, `pay`, `refund`)
    /// connect as: the principal their commands name. Default `client`.
    pub identity: String,
    /// Credentials per identity, for those that are not an nkey seed in
    /// `security.keys_dir` (`[nats.identities.<name>]`). Default none.
    pub identities: BTreeMap<String, IdentitySettings>,
    pub tls: TlsSettings,
}

impl Default for NatsSettings {
    fn default() -> Self {
        NatsSettings {
            url: "nats://127.0.0.1:4222".into(),
            monitor_url: String::new(),
            identity: "client".into(),
            identities: BTreeMap::new(),
            tls: TlsSettings::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StreamsSettings {
    /// Retention of every stream, in seconds, unless the stream's own key
    /// below says otherwise. Default 86400 (a day: what the default
    /// `*_max_bytes` hold at a sustained few sagas a second; a terminal
    /// saga's history outlives it in the payment database's archive).
    pub max_age_s: u64,
    /// Retention of FALCON_CMD (commands), in seconds; 0: `max_age_s`.
    pub cmd_max_age_s: u64,
    /// Retention of FALCON_EVT (the sagas' events: what `saga show`,
    /// `replay` and `replay --rebuild` read), in seconds; 0: `max_age_s`.
    pub evt_max_age_s: u64,
    /// Retention of FALCON_DLQ (dead letters), in seconds; 0: `max_age_s`.
    /// Default 604800 (7 days: a dead letter waits for a person).
    pub dlq_max_age_s: u64,
    /// JetStream de-duplication window on `Nats-Msg-Id`, in seconds.
    /// Default 120; the contract requires at least 120.
    pub duplicate_window_s: u64,
    /// Replicas per stream (3 on a cluster). Default 1.
    pub replicas: usize,
    /// Most bytes FALCON_CMD keeps; a full stream refuses new messages.
    /// Default 1073741824 (1 GiB).
    pub cmd_max_bytes: i64,
    /// Most bytes FALCON_EVT keeps. Default 4294967296 (4 GiB).
    pub evt_max_bytes: i64,
    /// Most bytes FALCON_DLQ keeps. Default 268435456 (256 MiB).
    pub dlq_max_bytes: i64,
}

impl Default for StreamsSettings {
    fn default() -> Self {
        StreamsSettings {
            max_age_s: 24 * 3600,
            cmd_max_age_s: 0,
            evt_max_age_s: 0,
            dlq_max_age_s: 7 * 24 * 3600,
            duplicate_window_s: 120,
            replicas: 1,
            cmd_max_bytes: 1 << 30,
            evt_max_bytes: 4 << 30,
            dlq_max_bytes: 256 << 20,
        }
    }
}

impl StreamsSettings {
    /// The streams as provisioned, with `partitions` (`consumer.partitions`:
    /// the consumers and the streams' transforms must agree).
    pub fn to_stream_settings(&self, partitions: u32) -> StreamSettings {
        StreamSettings {
            max_age: self
                .stream_max_ages_s()
                .map(|(_, s)| Duration::from_secs(s)),
            duplicate_window: Duration::from_secs(self.duplicate_window_s),
            replicas: self.replicas,
            max_bytes: [self.cmd_max_bytes, self.evt_max_bytes, self.dlq_max_bytes],
            partitions,
        }
    }
}

impl StreamsSettings {
    /// Each stream's retention key and its value in seconds (`max_age_s`
    /// where the stream's own key is 0): FALCON_CMD, FALCON_EVT, FALCON_DLQ.
    pub fn stream_max_ages_s(&self) -> [(&'static str, u64); 3] {
        let or_default = |s: u64| if s == 0 { self.max_age_s } else { s };
        [
            ("streams.cmd_max_age_s", or_default(self.cmd_max_age_s)),
            ("streams.evt_max_age_s", or_default(self.evt_max_age_s)),
            ("streams.dlq_max_age_s", or_default(self.dlq_max_age_s)),
        ]
    }
}

impl Settings {
    /// Checks the values of the runtime's own sections that types alone
    /// cannot; the error names the key. The actors' sections are checked by
    /// [`crate::registry::validate`], which calls this first.
    pub fn validate(&self) -> Result<(), String> {
        self.validate_security()?;
        if self.streams.duplicate_window_s < 120 {
            return Err(
                "streams.duplicate_window_s: must be at least 120 (the contract's dedup window)"
                    .into(),
            );
        }
        self.validate_bounds()?;
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
        Ok(())
    }

    /// Every number within what makes sense: no zero interval, no
    /// duration that would overflow or outlive the system.
    fn validate_bounds(&self) -> Result<(), String> {
        const DAY_S: u64 = 86_400;
        const DAY_MS: u64 = DAY_S * 1000;
        let (s, c, r) = (&self.streams, &self.consumer, &self.relay);
        // Retention: never inside the duplicate window or below an hour,
        // never past ten years.
        let (age_min, age_max) = (s.duplicate_window_s.max(3600), 3650 * DAY_S);
        let checks: [(&str, u64, u64, u64); 19] = [
            ("streams.max_age_s", s.max_age_s, age_min, age_max),
            (
                "streams.duplicate_window_s",
                s.duplicate_window_s,
                120,
                DAY_S,
            ),
            ("streams.replicas", s.replicas as u64, 1, 5),
            (
                "streams.cmd_max_bytes",
                s.cmd_max_bytes.max(0) as u64,
                1 << 20,
                1 << 50,
            ),
            (
                "streams.evt_max_bytes",
                s.evt_max_bytes.max(0) as u64,
                1 << 20,
                1 << 50,
            ),
            (
                "streams.dlq_max_bytes",
                s.dlq_max_bytes.max(0) as u64,
                1 << 20,
                1 << 50,
            ),
            ("consumer.batch_max", c.batch_max as u64, 1, 10_000),
            (
                "consumer.partitions",
                u64::from(c.partitions),
                1,
                u64::from(falcon_nats::topology::MAX_PARTITIONS),
            ),
            ("consumer.ack_wait_ms", c.ack_wait_ms, 100, DAY_MS),
            (
                "consumer.owner_timeout_ms",
                c.owner_timeout_ms,
                1_000,
                60_000,
            ),
            (
                "consumer.max_deliver",
                c.max_deliver.max(0) as u64,
                1,
                10_000,
            ),
            (
                "consumer.max_ack_pending",
                c.max_ack_pending.max(0) as u64,
                1,
                1_000_000,
            ),
            ("consumer.nak_delay_ms", c.nak_delay_ms, 1, DAY_MS),
            (
                "consumer.nak_delay_ms_max",
                c.nak_delay_ms_max,
                c.nak_delay_ms.max(1),
                DAY_MS,
            ),
            ("relay.batch_max", r.batch_max, 1, 100_000),
            ("relay.interval_ms", r.interval_ms, 1, DAY_MS),
            ("retention.interval_s", self.retention.interval_s, 1, DAY_S),
            ("retention.batch_max", self.retention.batch_max, 1, 100_000),
            ("shutdown.grace_ms", self.shutdown.grace_ms, 1, DAY_MS),
        ];
        for (key, value, min, max) in checks {
            if !(min..=max).contains(&value) {
                return Err(format!("{key}: {value} is outside {min}..={max}"));
            }
        }
        let pool = self.postgres.pool_max;
        if pool != 0 && !(2..=1_000).contains(&pool) {
            return Err(format!(
                "postgres.pool_max: {pool} is outside 2..=1000 (0 sizes each pool by its consumer loops)"
            ));
        }
        // Inbox rows outlive the broker's duplicate window and every
        // redelivery of their message (max_deliver deliveries, each at most
        // the longer of ack_wait and the longest nak delay apart), so that
        // the cheap check catches what it can; past that the business keys
        // guarantee one effect (0: kept for ever). Outbox rows need no
        // floor (published means the broker holds the event).
        let redelivery_s = (c.max_deliver.max(0) as u64)
            .saturating_mul(c.ack_wait_ms.max(c.nak_delay_ms_max))
            .div_ceil(1000);
        let inbox_min = s.duplicate_window_s.max(redelivery_s);
        let keep = self.retention.inbox_keep_s;
        if keep != 0 && !(inbox_min..=age_max).contains(&keep) {
            return Err(format!(
                "retention.inbox_keep_s: {keep} is outside {inbox_min}..={age_max} (at least the duplicate window and the redelivery span, consumer.max_deliver x the longer of consumer.ack_wait_ms and consumer.nak_delay_ms_max; 0 keeps the rows for ever)"
            ));
        }
        if self.retention.outbox_keep_s > age_max {
            return Err(format!(
                "retention.outbox_keep_s: {} is over {age_max}",
                self.retention.outbox_keep_s
            ));
        }
        // Each stream's own retention, as it resolves (0 takes max_age_s,
        // checked above), within the same bounds.
        for (key, value) in s.stream_max_ages_s() {
            if !(age_min..=age_max).contains(&value) {
                return Err(format!(
                    "{key}: {value} is outside {age_min}..={age_max} (0 takes streams.max_age_s)"
                ));
            }
        }
        if self.http.sample_interval_ms == 0 || self.http.sample_interval_ms > DAY_MS {
            return Err(format!(
                "http.sample_interval_ms: {} is outside 1..={DAY_MS}",
                self.http.sample_interval_ms
            ));
        }
        Ok(())
    }

    /// The settings with secrets masked: the password of every URL (every
    /// key ending in `url`, the actors' databases included) and every
    /// identity's `password`. Seeds and keys live in files, never here.
    pub fn masked(&self) -> Settings {
        let Ok(mut v) = serde_json::to_value(self) else {
            return self.clone();
        };
        crate::security::mask_secrets(&mut v);
        serde_json::from_value(v).unwrap_or_else(|_| self.clone())
    }
}

pub use falcon_nats::mask_url;

#[cfg(test)]
mod tests {
    use super::*;

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

    /// Each stream keeps its messages for its own retention; a stream
    /// without one keeps them for `max_age_s`.
    #[test]
    fn each_stream_has_its_retention() {
        let mut s = StreamsSettings {
            max_age_s: 86_400,
            evt_max_age_s: 3650 * 86_400,
            dlq_max_age_s: 90 * 86_400,
            ..Default::default()
        };
        let ages: Vec<(String, Duration)> =
            falcon_nats::topology::stream_configs(&s.to_stream_settings(1))
                .into_iter()
                .map(|c| (c.name, c.max_age))
                .collect();
        let day = Duration::from_secs(86_400);
        assert_eq!(
            ages,
            vec![
                ("FALCON_CMD".to_owned(), day),
                ("FALCON_EVT".to_owned(), day * 3650),
                ("FALCON_DLQ".to_owned(), day * 90),
            ]
        );
        s.evt_max_age_s = 0;
        assert_eq!(s.stream_max_ages_s()[1], ("streams.evt_max_age_s", 86_400));
    }

    #[test]
    fn bad_values_name_their_key() {
        let mut s = Settings::default();
        s.http.listen = "nine".into();
        assert!(matches!(s.validate(), Err(e) if e.starts_with("http.listen:")));
        let mut s = Settings::default();
        s.payment.database_url = "mysql://x".into();
        assert!(
            matches!(crate::registry::validate(&s), Err(e) if e.starts_with("payment.database_url:"))
        );
        let mut s = Settings::default();
        s.provider.decline_bps = 10_001;
        assert!(
            matches!(crate::registry::validate(&s), Err(e) if e.starts_with("provider.decline_bps"))
        );
        let mut s = Settings::default();
        s.risk.max_amount.insert("XXX".into(), "1".into());
        assert!(
            matches!(crate::registry::validate(&s), Err(e) if e.starts_with("risk.max_amount.XXX"))
        );
        let mut s = Settings::default();
        s.shutdown.grace_ms = 0;
        assert!(matches!(s.validate(), Err(e) if e.starts_with("shutdown.grace_ms:")));
        let mut s = Settings::default();
        s.relay.interval_ms = 0;
        assert!(matches!(s.validate(), Err(e) if e.starts_with("relay.interval_ms:")));
        let mut s = Settings::default();
        s.streams.max_age_s = u64::MAX;
        assert!(matches!(s.validate(), Err(e) if e.starts_with("streams.max_age_s:")));
        s.streams.max_age_s = 7 * 86_400;
        s.streams.dlq_max_age_s = 60;
        assert!(matches!(s.validate(), Err(e) if e.starts_with("streams.dlq_max_age_s:")));
        s.streams.dlq_max_age_s = 3651 * 86_400;
        assert!(matches!(s.validate(), Err(e) if e.starts_with("streams.dlq_max_age_s:")));
        s.streams.dlq_max_age_s = 0;
        let mut s = Settings::default();
        s.streams.max_age_s = 1;
        assert!(matches!(s.validate(), Err(e) if e.starts_with("streams.max_age_s:")));
        let mut s = Settings::default();
        s.consumer.ack_wait_ms = 0;
        assert!(matches!(s.validate(), Err(e) if e.starts_with("consumer.ack_wait_ms:")));
    }

    #[test]
    fn inbox_rows_outlive_every_redelivery() {
        let mut s = Settings::default();
        // Defaults: 10 deliveries, 30 s apart at most: 300 s.
        s.retention.inbox_keep_s = 299;
        assert!(
            matches!(s.validate(), Err(e) if e.starts_with("retention.inbox_keep_s: 299 is outside 300.."))
        );
        s.retention.inbox_keep_s = 300;
        assert_eq!(s.validate(), Ok(()));
        s.retention.inbox_keep_s = 0;
        assert_eq!(s.validate(), Ok(()));
        // A longer redelivery span raises the floor; so does the window.
        s.retention.inbox_keep_s = 600;
        s.consumer.ack_wait_ms = 120_000;
        assert!(
            matches!(s.validate(), Err(e) if e.starts_with("retention.inbox_keep_s: 600 is outside 1200.."))
        );
        s.consumer.ack_wait_ms = 30_000;
        s.streams.duplicate_window_s = 900;
        assert!(
            matches!(s.validate(), Err(e) if e.starts_with("retention.inbox_keep_s: 600 is outside 900.."))
        );
    }

    #[test]
    fn defaults_are_valid() {
        assert_eq!(crate::registry::validate(&Settings::default()), Ok(()));
    }
}
