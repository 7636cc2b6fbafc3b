//! Counters a test or an operator can watch: messages settled, consumer
//! loops bound, restarts.

use std::collections::HashSet;
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
    bound: Mutex<HashSet<String>>,
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

    /// Marks a consumer loop as bound to its JetStream consumers (or not).
    pub fn set_bound(&self, label: &str, bound: bool) {
        let mut set = self.bound.lock().unwrap_or_else(|p| p.into_inner());
        if bound {
            set.insert(label.to_owned());
        } else {
            set.remove(label);
        }
    }

    /// Whether the consumer loop `label` is bound now.
    pub fn is_bound(&self, label: &str) -> bool {
        self.bound
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(label)
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
