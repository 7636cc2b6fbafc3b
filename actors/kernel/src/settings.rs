//! The kernel's settings: how consumers read (batch size, ack wait,
//! redelivery backoff), how relays publish, how SQLite files are opened.
//! Each is a section of `falcon.toml`; every field has a default.

use std::time::Duration;

use serde::{Deserialize, Serialize};

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
    /// Partitions of the command and event streams: each actor reads each
    /// partition through its own durable consumers, in its own batch loop
    /// (docs/DESIGN.md, "Partitions"). Default 1, at most 64. Changing it is
    /// an operation: see docs/DESIGN.md.
    pub partitions: u32,
    /// Each consumer loop is run by one process at a time, its owner; when
    /// the owner stops pulling (it died, or lost the broker), another
    /// process takes the loop over after this, in ms (docs/DESIGN.md, "One
    /// owner per partition"). Default 5000, from 1000 to 60000.
    pub owner_timeout_ms: u64,
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
            partitions: falcon_nats::topology::DEFAULT_PARTITIONS,
            owner_timeout_ms: 5_000,
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

/// How long inbox and outbox rows are kept (docs/DESIGN.md, "Data that
/// lasts"): the `[retention]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionSettings {
    /// A processed message's inbox row is deleted this long after, in
    /// seconds; a copy of the message arriving later is caught by its
    /// business key instead. At least `streams.duplicate_window_s` and the
    /// redelivery span (`consumer.max_deliver` times the longer of
    /// `ack_wait_ms` and `nak_delay_ms_max`: 300 s by default); 0 keeps the
    /// rows for ever. Default 86400 (a day).
    pub inbox_keep_s: u64,
    /// A published outbox row is deleted this long after publication, in
    /// seconds (unpublished and set-aside rows are kept). 0 keeps them for
    /// ever. Default 3600.
    pub outbox_keep_s: u64,
    /// How often each database is pruned, in seconds. Default 60.
    pub interval_s: u64,
    /// Rows deleted per statement, at most. Default 5000.
    pub batch_max: u64,
}

impl Default for RetentionSettings {
    fn default() -> Self {
        RetentionSettings {
            inbox_keep_s: 86_400,
            outbox_keep_s: 3_600,
            interval_s: 60,
            batch_max: 5_000,
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

/// How PostgreSQL pools are sized (SQLite ignores this).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PostgresSettings {
    /// Most connections one process opens to one actor's database. 0 (the
    /// default): a connection per consumer loop of the actor, so that its
    /// partitions' transactions overlap, and four more (relay, sweeper,
    /// probe and gauges, migrations). Below that the loops queue for a
    /// connection. Every process of every actor counts against the
    /// server's `max_connections`; `falcon doctor` says how many processes
    /// fit. Otherwise 2..=1000.
    pub pool_max: u32,
}

/// The default SQLite URL of an actor's database: `./data/<actor>.db`.
pub fn sqlite_url(actor: &str) -> String {
    format!("sqlite://./data/{actor}.db?mode=rwc")
}

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
}
