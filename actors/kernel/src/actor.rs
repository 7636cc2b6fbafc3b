//! What an actor declares about itself, once ([`ActorDef`]), and its
//! consumer loops as the runtime sees them ([`Loop`]).
//!
//! An actor crate implements [`ActorDef`] for one type; the runtime's
//! registry lists those types, and every verb that must know the actors
//! (`falcon run`, `streams apply`, `dlq replay`, `replay`, `verify`,
//! `doctor`, the metrics) iterates the registry instead of naming them.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use falcon_nats::{ConsumerSpec, Delivery, Disposition};
use falcon_sagas::Actor;
use sea_orm::{DatabaseConnection, DbErr};

use crate::batch::run_batch;
use crate::consumer::{Consumer, ConsumerArgs};
use crate::error::Error;
use crate::faults::Faults;
use crate::handler::Handler;
use crate::relay::{Poke, Relay, RelayArgs};
use crate::settings::{ConsumerSettings, RelaySettings, RetentionSettings, Retry};
use crate::signing::KeyRing;
use crate::stats::Stats;
use crate::supervisor::ChildSpec;
use crate::verify::Facts;

/// A boxed future, for the object-safe traits here.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// An actor, as its crate declares it.
pub trait ActorDef: 'static {
    /// What its handlers are built from: its sections of `falcon.toml`.
    type Settings: Send + Sync + 'static;

    /// Its name in the saga table.
    const ACTOR: Actor;
    /// The configuration key of its database URL (for messages), e.g.
    /// `wallet.database_url`.
    const DATABASE_KEY: &'static str;

    fn database_url(settings: &Self::Settings) -> &str;

    /// Checks what types alone cannot; the error names the key.
    fn validate(_settings: &Self::Settings) -> Result<(), String> {
        Ok(())
    }

    /// Applies its migrations (idempotent).
    fn migrate(db: &DatabaseConnection) -> impl Future<Output = Result<(), DbErr>> + Send;

    /// The durable consumers its loops read: what `streams apply`
    /// provisions and `doctor` checks, without opening a database.
    fn consumers(consumer: &ConsumerSettings) -> Vec<ConsumerSpec>;

    /// Its running parts on its database: the consumer loops (whose
    /// consumers are [`ActorDef::consumers`]), timers, extra gauges.
    fn parts(
        settings: &Self::Settings,
        db: &DatabaseConnection,
        consumer: &ConsumerSettings,
    ) -> Result<Parts, Error>;

    /// The read models its loops keep (each rebuildable from FALCON_EVT).
    const READ_MODELS: &'static [&'static str] = &[];

    /// True for the actor that keeps the sagas' states (the one
    /// [`ActorDef::saga_state`] answers for).
    const KEEPS_SAGAS: bool = false;

    /// The state of saga `saga_id` as this actor records it, when it keeps
    /// sagas and knows this one.
    fn saga_state(
        _db: &DatabaseConnection,
        _saga_id: &str,
    ) -> impl Future<Output = Result<Option<falcon_sagas::State>, DbErr>> + Send {
        async { Ok(None) }
    }

    /// What `falcon verify` checks of it: its own invariants, its counts,
    /// and the facts other actors' records are checked against.
    fn verify(
        db: &DatabaseConnection,
        settled: bool,
    ) -> impl Future<Output = Result<Facts, DbErr>> + Send;
}

/// A child that runs beside an actor's loops (a deadline sweeper), built
/// for a runtime instance with the poke of the actor's relay.
pub type Timer = Box<dyn Fn(&str, Poke) -> ChildSpec + Send + Sync>;

/// Gauges an actor samples itself (breaker state, stuck sagas).
pub trait Gauges: Send + Sync {
    fn sample(&self) -> BoxFuture<'_, ()>;
}

/// What an actor runs.
pub struct Parts {
    pub loops: Vec<Arc<dyn Loop>>,
    pub timers: Vec<Timer>,
    pub gauges: Option<Arc<dyn Gauges>>,
}

impl Parts {
    /// Loops only.
    pub fn loops(loops: Vec<Arc<dyn Loop>>) -> Parts {
        Parts {
            loops,
            timers: Vec::new(),
            gauges: None,
        }
    }
}

/// One consumer loop: a handler with the durable consumers it reads.
pub trait Loop: Send + Sync {
    /// What its metrics, spans and readiness call it: `payment`,
    /// `payment-view`, …
    fn label(&self) -> &'static str;
    fn actor(&self) -> Actor;
    /// The CloudEvents `source` of its events.
    fn source(&self) -> &'static str;
    fn consumers(&self) -> &[ConsumerSpec];
    /// The read model it keeps (`saga-view`), if it is one.
    fn read_model(&self) -> Option<&'static str>;
    fn db(&self) -> &DatabaseConnection;
    /// One batch in one transaction: a disposition per message, in order.
    fn run_batch<'a>(
        &'a self,
        batch: &'a [Delivery],
        retry: Retry,
        ring: &'a KeyRing,
    ) -> BoxFuture<'a, Vec<Disposition>>;
    /// Empties its read model before a rebuild.
    fn reset(&self) -> BoxFuture<'_, Result<(), DbErr>>;
    /// Folds what its actor kept of the stream back into its read model,
    /// after the reset and before the stream is replayed; the events
    /// folded.
    fn restore(&self) -> BoxFuture<'_, Result<u64, DbErr>>;
    /// Rows its read model holds.
    fn rows(&self) -> BoxFuture<'_, Result<u64, DbErr>>;
    /// Its consumer loops as supervised children, one per partition: named
    /// `<label>-<partition>`, each reading that partition's consumers.
    fn children(&self, wiring: &Wiring, poke: Poke) -> Vec<(String, ChildSpec)>;
}

/// A handler as a [`Loop`].
pub fn loop_of<H: Handler>(handler: H, consumer: &ConsumerSettings) -> Arc<dyn Loop> {
    Arc::new(LoopOf {
        specs: falcon_nats::topology::partitioned(&H::consumers(consumer), consumer.partitions),
        handler: Arc::new(handler),
    })
}

struct LoopOf<H> {
    handler: Arc<H>,
    specs: Vec<ConsumerSpec>,
}

impl<H: Handler> Loop for LoopOf<H> {
    fn label(&self) -> &'static str {
        H::LABEL
    }

    fn actor(&self) -> Actor {
        H::ACTOR
    }

    fn source(&self) -> &'static str {
        H::SOURCE
    }

    fn consumers(&self) -> &[ConsumerSpec] {
        &self.specs
    }

    fn read_model(&self) -> Option<&'static str> {
        H::READ_MODEL
    }

    fn db(&self) -> &DatabaseConnection {
        self.handler.db()
    }

    fn run_batch<'a>(
        &'a self,
        batch: &'a [Delivery],
        retry: Retry,
        ring: &'a KeyRing,
    ) -> BoxFuture<'a, Vec<Disposition>> {
        Box::pin(run_batch(&*self.handler, H::LABEL, batch, retry, ring))
    }

    fn reset(&self) -> BoxFuture<'_, Result<(), DbErr>> {
        Box::pin(self.handler.reset())
    }

    fn restore(&self) -> BoxFuture<'_, Result<u64, DbErr>> {
        Box::pin(self.handler.restore())
    }

    fn rows(&self) -> BoxFuture<'_, Result<u64, DbErr>> {
        Box::pin(self.handler.rows())
    }

    fn children(&self, wiring: &Wiring, poke: Poke) -> Vec<(String, ChildSpec)> {
        let mut partitions: Vec<Option<u32>> = self.specs.iter().map(|s| s.partition).collect();
        partitions.dedup();
        partitions
            .into_iter()
            .map(|partition| {
                let name = match partition {
                    Some(p) => format!("{}-{p}", H::LABEL),
                    None => H::LABEL.to_owned(),
                };
                let args = ConsumerArgs {
                    label: H::LABEL.to_owned(),
                    loop_name: name.clone(),
                    handler: self.handler.clone(),
                    js: wiring.js.clone(),
                    specs: self
                        .specs
                        .iter()
                        .filter(|s| s.partition == partition)
                        .cloned()
                        .collect(),
                    batch_max: wiring.consumer.batch_max,
                    retry: wiring.consumer.retry(),
                    poke: poke.clone(),
                    faults: wiring.faults.clone(),
                    stats: wiring.stats.clone(),
                    ring: wiring.ring.clone(),
                    owners: wiring.owners.clone(),
                };
                let spec = ChildSpec::new(
                    wiring.child_name(&name),
                    Consumer::<H>::default,
                    move || args.clone(),
                );
                (name, spec)
            })
            .collect()
    }
}

/// What a runtime instance gives the children it builds.
#[derive(Clone)]
pub struct Wiring {
    pub js: jetstream::Context,
    /// `<node>-<random>`: the prefix of every child's registered name.
    pub instance: String,
    pub consumer: ConsumerSettings,
    pub relay: RelaySettings,
    pub retention: RetentionSettings,
    pub stats: Arc<Stats>,
    pub faults: Arc<Faults>,
    /// The keys events are signed and checked with.
    pub ring: Arc<KeyRing>,
    /// Which of the actor's loops this process owns.
    pub owners: Arc<crate::owner::Owners>,
}

impl Wiring {
    /// A child's registered name: `<instance>/<name>`.
    pub fn child_name(&self, name: &str) -> String {
        format!("{}/{name}", self.instance)
    }

    /// The outbox relay of `actor`'s database, and the poke that wakes it.
    pub fn relay(&self, actor: Actor, db: &DatabaseConnection) -> (ChildSpec, Poke) {
        let name = self.child_name(&format!("{}-relay", actor.as_str()));
        let poke = Poke::new(name.clone());
        let (db, js, relay, relay_poke, ring) = (
            db.clone(),
            self.js.clone(),
            self.relay.clone(),
            poke.clone(),
            self.ring.clone(),
        );
        let spec = ChildSpec::new(
            name,
            || Relay,
            move || RelayArgs {
                actor,
                ring: ring.clone(),
                db: db.clone(),
                js: js.clone(),
                batch_max: relay.batch_max,
                interval: Duration::from_millis(relay.interval_ms),
                poke: relay_poke.clone(),
            },
        );
        (spec, poke)
    }

    /// The pruner of `actor`'s database (its inbox and outbox rows past
    /// their retention).
    pub fn pruner(&self, actor: Actor, db: &DatabaseConnection) -> ChildSpec {
        let (db, retention) = (db.clone(), self.retention.clone());
        ChildSpec::new(
            self.child_name(&format!("{}-pruner", actor.as_str())),
            || crate::prune::Pruner,
            move || crate::prune::PrunerArgs {
                actor,
                db: db.clone(),
                retention: retention.clone(),
            },
        )
    }
}
