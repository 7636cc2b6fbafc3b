//! [`Runtime`]: what `falcon run` starts. It connects to NATS, provisions
//! the streams and every registered actor's consumers, opens and migrates
//! the databases of the actors it runs, and spawns the root supervisor
//! with, per actor, its consumer loops, its outbox relay and its timers.
//! Stopping it stops the children between batches, publishes what the
//! outboxes still hold and flushes the connection.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use falcon_kernel::actor::{Gauges, Wiring};
use falcon_kernel::faults::Faults;
use falcon_kernel::relay::{drain, Poke, RelayArgs};
use falcon_kernel::stats::Stats;
use falcon_kernel::supervisor::{Supervisor, SupervisorArgs, SupervisorMsg};
use falcon_kernel::Error;
use falcon_nats::ConsumerSpec;
use falcon_sagas::Actor;
use ractor::{Actor as _, ActorRef};

pub use crate::chaos::kill_subject;
use crate::probe::Probe;
use crate::registry::{self, REGISTRY};
use crate::settings::Settings;
pub use crate::stores::{open_store, Stores};

pub use falcon_kernel::faults::FaultPoint;

/// Every consumer of the given actors.
pub fn consumer_specs(settings: &Settings, actors: &[Actor]) -> Vec<ConsumerSpec> {
    REGISTRY
        .iter()
        .filter(|r| actors.contains(&r.actor()))
        .flat_map(|r| r.consumers(&settings.consumer))
        .collect()
}

/// Provisions the streams and the consumers of every registered actor.
pub async fn apply_topology(
    js: &jetstream::Context,
    settings: &Settings,
) -> Result<Vec<falcon_nats::topology::Change>, Error> {
    let specs = consumer_specs(settings, &Actor::ALL);
    Ok(falcon_nats::topology::apply(js, &settings.streams.to_stream_settings(), &specs).await?)
}

/// Longest wait for NATS to take the last acks at shutdown.
const SHUTDOWN_FLUSH_MAX: Duration = Duration::from_secs(5);

/// A running set of actors under one root supervisor.
pub struct Runtime {
    supervisor: ActorRef<SupervisorMsg>,
    join: tokio::task::JoinHandle<()>,
    dlq_watcher: tokio::task::JoinHandle<()>,
    sampler: tokio::task::JoinHandle<()>,
    probe: Probe,
    js: jetstream::Context,
    relay_batch_max: u64,
    chaos: Option<tokio::task::JoinHandle<()>>,
    stats: Arc<Stats>,
    faults: Arc<Faults>,
    stores: Stores,
    client: async_nats::Client,
    instance: String,
}

impl Runtime {
    /// Starts the given actors (all of the registry for `falcon run`).
    pub async fn start(settings: &Settings, actors: &[Actor]) -> Result<Runtime, Error> {
        registry::validate(settings).map_err(Error::Config)?;
        for actor in actors {
            registry::find(*actor)
                .ok_or_else(|| Error::Config(format!("{actor} is not a registered actor")))?;
        }
        let instance = format!(
            "{}-{}",
            settings.node,
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let client =
            falcon_nats::connect(&settings.nats.url, &format!("falcon-{instance}")).await?;
        let js = jetstream::new(client.clone());
        apply_topology(&js, settings).await?;
        let stores = Stores::open(settings, actors).await?;
        let stats = Arc::new(Stats::default());
        let faults = Arc::new(Faults::default());
        let wiring = Wiring {
            js: js.clone(),
            instance: instance.clone(),
            consumer: settings.consumer.clone(),
            relay: settings.relay.clone(),
            stats: stats.clone(),
            faults: faults.clone(),
        };
        let mut children = Vec::new();
        let mut loops = Vec::new();
        let mut gauges: Vec<Arc<dyn Gauges>> = Vec::new();
        for entry in REGISTRY {
            let Some(db) = stores.get(entry.actor()) else {
                continue;
            };
            let parts = entry.parts(settings, db)?;
            let (relay, poke) = wiring.relay(entry.actor(), db);
            children.push(relay);
            for l in &parts.loops {
                // A read model publishes nothing: its loop wakes no relay.
                let poke = match l.read_model() {
                    Some(_) => Poke::new(String::new()),
                    None => poke.clone(),
                };
                children.push(l.child(&wiring, poke));
                loops.push(l.label().to_owned());
            }
            for timer in &parts.timers {
                children.push(timer(&instance, poke.clone()));
            }
            gauges.extend(parts.gauges);
        }
        let args = SupervisorArgs {
            children,
            stats: stats.clone(),
        };
        let name = format!("{instance}/supervisor");
        let (supervisor, join) = Supervisor::spawn(Some(name.clone()), Supervisor, args)
            .await
            .map_err(|source| Error::Spawn { name, source })?;
        let specs = consumer_specs(settings, actors);
        let consumers: Vec<String> = specs.iter().map(|c| c.name.clone()).collect();
        let probe = Probe {
            client: client.clone(),
            js: js.clone(),
            stores: stores.clone(),
            stats: stats.clone(),
            loops,
            consumers: specs,
            gauges,
        };
        let sampler = tokio::spawn(
            probe
                .clone()
                .run_sampler(Duration::from_millis(settings.http.sample_interval_ms)),
        );
        let (watch_client, watch_js) = (client.clone(), js.clone());
        let dlq_watcher = tokio::spawn(async move {
            loop {
                let watched = falcon_nats::dlq::watch_max_deliveries(
                    watch_client.clone(),
                    watch_js.clone(),
                    consumers.clone(),
                );
                if let Err(e) = watched.await {
                    tracing::warn!(error = %e, "max-deliveries watcher stopped; re-subscribing");
                }
                tokio::time::sleep(falcon_nats::dlq::WATCH_RETRY).await;
            }
        });
        let chaos = settings.chaos.enabled.then(|| {
            tokio::spawn(crate::chaos::serve(
                client.clone(),
                settings.node.clone(),
                instance.clone(),
            ))
        });
        tracing::info!(instance = %instance, actors = ?actors, "runtime started");
        Ok(Runtime {
            supervisor,
            join,
            dlq_watcher,
            sampler,
            probe,
            js: js.clone(),
            relay_batch_max: settings.relay.batch_max,
            chaos,
            stats,
            faults,
            stores,
            client,
            instance,
        })
    }

    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    pub fn faults(&self) -> &Arc<Faults> {
        &self.faults
    }

    /// What the health endpoints and the metrics sampler read.
    pub fn probe(&self) -> &Probe {
        &self.probe
    }

    pub fn stores(&self) -> &Stores {
        &self.stores
    }

    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Stops pulling, lets every consumer finish and settle the batch it is
    /// in, publishes what the outboxes still hold, and flushes the
    /// connection. Returns how many events the last outbox sweep published.
    pub async fn shutdown(self) -> usize {
        self.dlq_watcher.abort();
        self.sampler.abort();
        if let Some(chaos) = &self.chaos {
            chaos.abort();
        }
        self.supervisor.stop(Some("shutdown".into()));
        if let Err(e) = self.join.await {
            tracing::warn!(error = %e, "supervisor task ended abnormally");
        }
        // The consumers are stopped: what their last batches wrote to the
        // outboxes is published now rather than by the next process.
        let mut flushed = 0;
        for (actor, db) in self.stores.each() {
            let args = RelayArgs {
                actor: actor.as_str(),
                db: db.clone(),
                js: self.js.clone(),
                batch_max: self.relay_batch_max,
                interval: Duration::ZERO,
                poke: Poke::new(String::new()),
            };
            match drain(&args).await {
                Ok(n) => flushed += n,
                Err(e) => {
                    tracing::warn!(actor = actor.as_str(), error = %e, "publishing the outbox at shutdown; the next start publishes it")
                }
            }
        }
        // Bounded: with the server unreachable a flush would wait for a
        // connection that may never come, and shutdown must finish.
        match tokio::time::timeout(SHUTDOWN_FLUSH_MAX, self.client.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "flushing NATS at shutdown"),
            Err(_) => tracing::warn!(
                "NATS unreachable at shutdown; not flushed (unacked messages are redelivered)"
            ),
        }
        flushed
    }
}
