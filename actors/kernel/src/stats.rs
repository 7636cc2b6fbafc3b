//! Counters a test or an operator can watch: messages settled, consumer
//! loops bound, restarts.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use falcon_nats::Settled;
use tokio::sync::watch;

/// Counters a test or an operator can watch.
#[derive(Debug)]
pub struct Stats {
    restarts: watch::Sender<u64>,
    pub acked: AtomicU64,
    pub nakked: AtomicU64,
    pub dead_lettered: AtomicU64,
    /// Each bound loop, and whether this process owns it (or stands by).
    bound: Mutex<HashMap<String, bool>>,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            restarts: watch::Sender::new(0),
            acked: AtomicU64::new(0),
            nakked: AtomicU64::new(0),
            dead_lettered: AtomicU64::new(0),
            bound: Default::default(),
        }
    }
}

impl Stats {
    /// Counts one settled message.
    pub fn record(&self, settled: Settled) {
        let counter = match settled {
            Settled::Acked => &self.acked,
            Settled::Nakked => &self.nakked,
            Settled::DeadLettered => &self.dead_lettered,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Marks a consumer loop as bound (its JetStream consumers exist and it
    /// runs), and as pulling them as their owner or standing by; or as not
    /// bound.
    pub fn set_bound(&self, label: &str, bound: bool, owner: bool) {
        let mut map = self.bound.lock().unwrap_or_else(|p| p.into_inner());
        if bound {
            map.insert(label.to_owned(), owner);
        } else {
            map.remove(label);
        }
    }

    /// Whether the consumer loop `label` is bound now.
    pub fn is_bound(&self, label: &str) -> bool {
        self.bound
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(label)
    }

    /// Whether this process pulls the consumer loop `label` now, as its
    /// owner.
    pub fn is_owner(&self, label: &str) -> bool {
        self.bound
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(label)
            .copied()
            .unwrap_or(false)
    }

    /// Counts one restart of a child.
    pub(crate) fn count_restart(&self) {
        self.restarts.send_modify(|r| *r += 1);
    }

    /// Children restarted by the supervisor so far.
    pub fn restarts(&self) -> u64 {
        *self.restarts.borrow()
    }

    /// Resolves once at least `n` restarts happened.
    pub async fn wait_restarts(&self, n: u64) {
        let mut rx = self.restarts.subscribe();
        // The sender lives as long as `self`, so `wait_for` only ends when
        // the condition holds.
        let _ = rx.wait_for(|r| *r >= n).await;
    }
}
