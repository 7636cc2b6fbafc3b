//! Health and the gauges that need a query: what `/health/ready` and the
//! periodic sampler behind `/metrics` read.
//!
//! Ready means this process can do its work now: NATS connected, every
//! database it owns answers, and every consumer loop it runs is bound to its
//! JetStream consumers. The sampler refreshes the DLQ depth, each
//! consumer's pending and ack-pending counts, each actor's outbox backlog,
//! the stuck sagas and the breaker state.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use falcon_kernel::actor::Gauges;
use falcon_kernel::stats::Stats;
use falcon_kernel::store::outbox;
use falcon_kernel::telemetry::names;
use falcon_nats::ConsumerSpec;
use falcon_schemas::subject::{STREAM_CMD, STREAM_DLQ, STREAM_EVT};
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, PaginatorTrait, QueryFilter};
use serde::Serialize;

use crate::stores::Stores;

/// Longest wait for one readiness check.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// One readiness check.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

/// The answer of `/health/ready`.
#[derive(Debug, Clone, Serialize)]
pub struct Readiness {
    pub ready: bool,
    pub checks: Vec<Check>,
}

/// What a running runtime exposes to its health checks and sampler.
#[derive(Clone)]
pub struct Probe {
    pub(crate) client: async_nats::Client,
    pub(crate) js: jetstream::Context,
    pub(crate) stores: Stores,
    pub(crate) stats: Arc<Stats>,
    /// The consumer loops this runtime runs (`payment`, `payment-view`, …).
    pub(crate) loops: Vec<String>,
    /// The durable consumers they read.
    pub(crate) consumers: Vec<ConsumerSpec>,
    /// The gauges the actors sample themselves (breaker, stuck sagas).
    pub(crate) gauges: Vec<Arc<dyn Gauges>>,
}

impl Probe {
    /// Every check, each bounded by [`CHECK_TIMEOUT`].
    pub async fn readiness(&self) -> Readiness {
        let mut checks = Vec::new();
        let state = self.client.connection_state();
        checks.push(Check {
            name: "nats".into(),
            ok: state == async_nats::connection::State::Connected,
            detail: state.to_string(),
        });
        for (actor, db) in self.stores.each() {
            let (ok, detail) = match tokio::time::timeout(CHECK_TIMEOUT, db.ping()).await {
                Ok(Ok(())) => (true, "reachable".to_owned()),
                Ok(Err(e)) => (false, e.to_string()),
                Err(_) => (false, format!("no answer within {CHECK_TIMEOUT:?}")),
            };
            checks.push(Check {
                name: format!("database:{}", actor.as_str()),
                ok,
                detail,
            });
        }
        for label in &self.loops {
            let ok = self.stats.is_bound(label);
            let detail = match (ok, self.stats.is_owner(label)) {
                (false, _) => "not bound",
                (true, true) => "bound, owner",
                (true, false) => "bound, standby (another process owns it)",
            };
            checks.push(Check {
                name: format!("consumer:{label}"),
                ok,
                detail: detail.into(),
            });
        }
        Readiness {
            ready: checks.iter().all(|c| c.ok),
            checks,
        }
    }

    /// Refreshes the sampled gauges; a failing query leaves its gauge as it
    /// was and is logged at debug (readiness reports the outage).
    pub async fn sample(&self) {
        for gauges in &self.gauges {
            gauges.sample().await;
        }
        for name in [STREAM_CMD, STREAM_EVT, STREAM_DLQ] {
            let info = async {
                let mut stream = self.js.get_stream(name).await.map_err(|e| e.to_string())?;
                stream.info().await.cloned().map_err(|e| e.to_string())
            }
            .await;
            match info {
                Ok(info) => {
                    if name == STREAM_DLQ {
                        metrics::gauge!(names::DLQ_DEPTH).set(info.state.messages as f64);
                    }
                    metrics::gauge!(names::STREAM_BYTES, "stream" => name)
                        .set(info.state.bytes as f64);
                    metrics::gauge!(names::STREAM_MAX_BYTES, "stream" => name)
                        .set(info.config.max_bytes as f64);
                }
                Err(e) => tracing::debug!(stream = name, error = %e, "sampling a stream"),
            }
        }
        for spec in &self.consumers {
            let info = async {
                let stream = self
                    .js
                    .get_stream(spec.stream)
                    .await
                    .map_err(|e| e.to_string())?;
                let mut consumer: jetstream::consumer::PullConsumer = stream
                    .get_consumer(&spec.name)
                    .await
                    .map_err(|e| e.to_string())?;
                consumer
                    .info()
                    .await
                    .map(|i| (i.num_pending, i.num_ack_pending))
                    .map_err(|e| e.to_string())
            }
            .await;
            match info {
                Ok((pending, ack_pending)) => {
                    let consumer = ("consumer", spec.name.clone());
                    metrics::gauge!(names::CONSUMER_PENDING, std::slice::from_ref(&consumer))
                        .set(pending as f64);
                    metrics::gauge!(names::CONSUMER_ACK_PENDING, &[consumer])
                        .set(ack_pending as f64);
                }
                Err(e) => tracing::debug!(consumer = %spec.name, error = %e, "sampling a consumer"),
            }
        }
        for (actor, db) in self.stores.each() {
            match outbox_backlog(db).await {
                Ok(n) => {
                    metrics::gauge!(names::OUTBOX_BACKLOG, "actor" => actor.as_str()).set(n as f64)
                }
                Err(e) => {
                    tracing::debug!(actor = actor.as_str(), error = %e, "sampling the outbox backlog")
                }
            }
        }
    }

    /// Samples every `interval` until the task is dropped.
    pub async fn run_sampler(self, interval: Duration) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.sample().await;
        }
    }
}

/// Outbox rows not yet published.
pub async fn outbox_backlog(db: &DatabaseConnection) -> Result<u64, sea_orm::DbErr> {
    outbox::Entity::find()
        .filter(outbox::Column::PublishedAt.is_null())
        .filter(outbox::Column::SetAside.is_null())
        .count(db)
        .await
}
