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
use falcon_kernel::owner::Owners;
use falcon_kernel::relay::{drain, Poke, RelayArgs};
use falcon_kernel::signing::KeyRing;
use falcon_kernel::stats::Stats;
use falcon_kernel::supervisor::{Supervisor, SupervisorArgs, SupervisorMsg};
use falcon_kernel::Error;
use falcon_nats::ConsumerSpec;
use falcon_sagas::Actor;
use ractor::{Actor as _, ActorRef};

pub use crate::chaos::kill_subject;
use crate::probe::Probe;
use crate::registry::{self, REGISTRY};
use crate::settings::{Mode, Settings};
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
    Ok(falcon_nats::topology::apply(
        js,
        &settings
            .streams
            .to_stream_settings(settings.consumer.partitions),
        &specs,
    )
    .await?)
}

/// Provisions the topology at start as the provisioning identity, when this
/// process has its credentials (a local set-up); otherwise (a production
/// install, where only the provisioning job has them) `falcon streams
/// apply` must have run, and the consumer loops fail to bind until it has.
pub async fn provision(settings: &Settings, instance: &str) -> Result<(), Error> {
    let name = &settings.security.provisioning;
    if settings.security.mode == Mode::Secure && settings.identity(name).is_err() {
        tracing::info!(identity = %name, "no provisioning credentials here: streams and consumers are left to `falcon streams apply`");
        return Ok(());
    }
    let client = settings
        .connect_as(name, &format!("falcon-{instance}-provisioning"))
        .await?;
    require_server_version(&client)?;
    let js = jetstream::new(client.clone());
    apply_topology(&js, settings).await?;
    if let Err(e) = client.drain().await {
        tracing::debug!(error = %e, "closing the provisioning connection");
    }
    Ok(())
}

/// Refuses a server older than FalconPay needs, saying why
/// ([`falcon_nats::doctor::require_version`]).
pub fn require_server_version(client: &async_nats::Client) -> Result<(), Error> {
    falcon_nats::doctor::require_version(&client.server_info().version).map_err(Error::Config)
}

/// Dead-letters what JetStream gives up on for one actor's consumers, on
/// that actor's connection; re-subscribes when the watch stops.
async fn watch_dead_letters(
    client: async_nats::Client,
    js: jetstream::Context,
    consumers: Vec<(String, String)>,
) {
    loop {
        let watched =
            falcon_nats::dlq::watch_max_deliveries(client.clone(), js.clone(), consumers.clone());
        if let Err(e) = watched.await {
            tracing::warn!(error = %e, "max-deliveries watcher stopped; re-subscribing");
        }
        tokio::time::sleep(falcon_nats::dlq::WATCH_RETRY).await;
    }
}

/// Longest wait for NATS to take the last acks at shutdown.
const SHUTDOWN_FLUSH_MAX: Duration = Duration::from_secs(5);

/// A running set of actors under one root supervisor.
pub struct Runtime {
    supervisor: ActorRef<SupervisorMsg>,
    join: tokio::task::JoinHandle<()>,
    watchers: Vec<tokio::task::JoinHandle<()>>,
    sampler: tokio::task::JoinHandle<()>,
    probe: Probe,
    /// Each actor's own connection.
    connections: Vec<(Actor, async_nats::Client)>,
    ring: Arc<KeyRing>,
    relay_batch_max: u64,
    chaos: Option<tokio::task::JoinHandle<()>>,
    stats: Arc<Stats>,
    faults: Arc<Faults>,
    stores: Stores,
    instance: String,
    /// Each actor's view of its members, with the connection it beats on.
    members: Vec<(Arc<Owners>, async_nats::Client)>,
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
        let ring = Arc::new(settings.key_ring().map_err(Error::Config)?);
        if settings.security.mode == Mode::Open {
            tracing::warn!("security.mode is open: no identities, no signatures; any client may move money. Never run it so outside a throw-away local server.");
        }
        provision(settings, &instance).await?;
        // One connection per actor, as its own identity: the broker lets it
        // publish only its own events and use only its own consumers.
        let mut connections = Vec::new();
        for actor in actors {
            let client = settings
                .connect_as(actor.as_str(), &format!("falcon-{instance}-{actor}"))
                .await?;
            require_server_version(&client)?;
            connections.push((*actor, client));
        }
        let Some((_, client)) = connections.first().cloned() else {
            return Err(Error::Config("no actor to run".into()));
        };
        let js = jetstream::new(client.clone());
        let stores = Stores::open(settings, actors).await?;
        let stats = Arc::new(Stats::default());
        let faults = Arc::new(Faults::default());
        let mut children = Vec::new();
        let mut loops = Vec::new();
        let mut gauges: Vec<Arc<dyn Gauges>> = Vec::new();
        let mut watchers = Vec::new();
        let mut members = Vec::new();
        for entry in REGISTRY {
            let Some(db) = stores.get(entry.actor()) else {
                continue;
            };
            let Some((_, actor_client)) = connections.iter().find(|(a, _)| *a == entry.actor())
            else {
                continue;
            };
            let owners = Owners::new(entry.actor(), &instance);
            let wiring = Wiring {
                js: jetstream::new(actor_client.clone()),
                instance: instance.clone(),
                consumer: settings.consumer.clone(),
                relay: settings.relay.clone(),
                retention: settings.retention.clone(),
                stats: stats.clone(),
                faults: faults.clone(),
                ring: ring.clone(),
                owners: owners.clone(),
            };
            let own: Vec<(String, String)> = entry
                .consumers(&settings.consumer)
                .into_iter()
                .map(|c| (c.stream.to_owned(), c.name))
                .collect();
            watchers.push(tokio::spawn(watch_dead_letters(
                actor_client.clone(),
                wiring.js.clone(),
                own,
            )));
            let parts = entry.parts(settings, db)?;
            let (relay, poke) = wiring.relay(entry.actor(), db);
            children.push(relay);
            children.push(wiring.pruner(entry.actor(), db));
            let mut units = Vec::new();
            for l in &parts.loops {
                // A read model publishes nothing: its loop wakes no relay.
                let poke = match l.read_model() {
                    Some(_) => Poke::new(String::new()),
                    None => poke.clone(),
                };
                for (name, child) in l.children(&wiring, poke) {
                    children.push(child);
                    units.push(name);
                }
            }
            owners.set_units(units.clone());
            loops.extend(units);
            watchers.push(tokio::spawn(owners.clone().run(actor_client.clone())));
            members.push((owners, actor_client.clone()));
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
            watchers,
            sampler,
            probe,
            connections,
            ring,
            relay_batch_max: settings.relay.batch_max,
            chaos,
            stats,
            faults,
            stores,
            instance,
            members,
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
        for w in &self.watchers {
            w.abort();
        }
        // The other processes take this one's loops now; its pins are
        // released as each loop stops.
        for (owners, client) in &self.members {
            owners.leave(client).await;
        }
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
            let Some((_, client)) = self.connections.iter().find(|(a, _)| *a == actor) else {
                continue;
            };
            let args = RelayArgs {
                actor,
                ring: self.ring.clone(),
                db: db.clone(),
                js: jetstream::new(client.clone()),
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
        let flushes = self
            .connections
            .iter()
            .map(|(_, client)| tokio::time::timeout(SHUTDOWN_FLUSH_MAX, client.flush()));
        for result in futures::future::join_all(flushes).await {
            match result {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "flushing NATS at shutdown"),
                Err(_) => tracing::warn!(
                    "NATS unreachable at shutdown; not flushed (unacked messages are redelivered)"
                ),
            }
        }
        flushed
    }
}
