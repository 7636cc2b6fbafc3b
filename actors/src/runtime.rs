//! The root supervisor and [`Runtime`]: what `falcon run` starts.
//!
//! `Runtime::start` connects to NATS, provisions the streams and consumers,
//! opens and migrates each actor's database, and spawns the root
//! supervisor, which spawns per actor a consumer loop and an outbox relay.
//! When a child fails (a panic, an error, a kill) the supervisor starts it
//! again with backoff; its unacked messages are redelivered and its inbox
//! makes them harmless. Stopping the runtime stops the children between
//! batches.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use falcon_nats::Settled;
use falcon_sagas::Actor as ActorName;
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, SupervisionEvent};
use sea_orm::DatabaseConnection;
use sea_orm_migration::MigratorTrait;
use tokio::sync::watch;

use crate::batch::Handler;
use crate::consumer::{Consumer, ConsumerArgs};
use crate::observe::Probe;
use crate::payment::provider::{Resilient, Simulator};
use crate::relay::{Poke, Relay, RelayArgs};
use crate::settings::Settings;
use crate::{payment, risk, store, wallet, Error};

/// Where an injected fault fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FaultPoint {
    /// After a batch's transaction committed, before its messages are acked:
    /// the worst moment to die.
    AfterCommit,
}

/// How many more times a fault fires, and for which message only (if set).
type Armed = (u32, Option<String>);

/// Faults armed by tests and chaos tooling: a batch of the actor panics at
/// the point, `times` times, optionally only a batch holding a message whose
/// subject contains a given text.
#[derive(Debug, Default)]
pub struct Faults {
    armed: Mutex<HashMap<(ActorName, FaultPoint), Armed>>,
}

impl Faults {
    /// The actor's next `times` batches panic at `point`.
    pub fn arm(&self, actor: ActorName, point: FaultPoint, times: u32) {
        self.armed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((actor, point), (times, None));
    }

    /// The actor's next `times` batches holding a message whose subject
    /// contains `subject` panic at `point`.
    pub fn arm_for(&self, actor: ActorName, point: FaultPoint, subject: &str, times: u32) {
        self.armed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((actor, point), (times, Some(subject.to_owned())));
    }

    /// Panics if a fault is armed here for this batch (that is the point).
    pub fn trip(&self, actor: ActorName, point: FaultPoint, batch: &[falcon_nats::Delivery]) {
        let fire = {
            let mut armed = self.armed.lock().unwrap_or_else(|p| p.into_inner());
            match armed.get_mut(&(actor, point)) {
                Some((n, filter)) if *n > 0 => {
                    let hit = filter
                        .as_deref()
                        .is_none_or(|f| batch.iter().any(|d| d.subject.contains(f)));
                    if hit {
                        *n -= 1;
                    }
                    hit
                }
                _ => false,
            }
        };
        if fire {
            panic!("injected fault: {actor} at {point:?}");
        }
    }
}

/// Counters a test or an operator can watch.
#[derive(Debug)]
pub struct Stats {
    restarts: watch::Sender<u64>,
    pub acked: AtomicU64,
    pub nakked: AtomicU64,
    pub dead_lettered: AtomicU64,
    bound: Mutex<std::collections::HashSet<String>>,
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

type SpawnFuture = Pin<Box<dyn Future<Output = Result<ActorCell, ActorProcessingErr>> + Send>>;

/// How to (re)start one child.
#[derive(Clone)]
pub struct ChildSpec {
    pub name: String,
    spawn: Arc<dyn Fn(ActorCell) -> SpawnFuture + Send + Sync>,
}

impl ChildSpec {
    fn new<A: Actor>(
        name: String,
        actor: impl Fn() -> A + Send + Sync + 'static,
        args: impl Fn() -> A::Arguments + Send + Sync + 'static,
    ) -> ChildSpec
    where
        A::Arguments: Send,
    {
        let spawn_name = name.clone();
        let actor = Arc::new(actor);
        let args = Arc::new(args);
        ChildSpec {
            name,
            spawn: Arc::new(move |supervisor| {
                let (name, actor, args) = (spawn_name.clone(), actor.clone(), args.clone());
                Box::pin(async move {
                    let (r, _) =
                        Actor::spawn_linked(Some(name), actor(), args(), supervisor).await?;
                    Ok(r.get_cell())
                })
            }),
        }
    }
}

/// Restart delay: doubles per quick failure, from 50 ms up to 5 s.
const RESTART_DELAY_MIN: Duration = Duration::from_millis(50);
const RESTART_DELAY_MAX: Duration = Duration::from_secs(5);
/// A child that ran at least this long before failing restarts at once.
const HEALTHY_AFTER: Duration = Duration::from_secs(10);

pub struct Supervisor;

pub struct SupervisorArgs {
    pub children: Vec<ChildSpec>,
    pub stats: Arc<Stats>,
}

pub struct SupervisorState {
    children: HashMap<String, ChildSpec>,
    started_at: HashMap<String, Instant>,
    quick_failures: HashMap<String, u32>,
    stats: Arc<Stats>,
}

pub enum SupervisorMsg {
    Start(String),
}

impl SupervisorState {
    fn schedule_restart(&mut self, myself: &ActorRef<SupervisorMsg>, name: String) {
        let quick = self
            .started_at
            .get(&name)
            .is_some_and(|t| t.elapsed() < HEALTHY_AFTER);
        let n = self.quick_failures.entry(name.clone()).or_insert(0);
        *n = if quick { n.saturating_add(1) } else { 0 };
        let delay = RESTART_DELAY_MIN
            .saturating_mul(1 << (*n).min(7))
            .min(RESTART_DELAY_MAX);
        self.stats.restarts.send_modify(|r| *r += 1);
        metrics::counter!(crate::telemetry::names::ACTOR_RESTARTS).increment(1);
        myself.send_after(delay, move || SupervisorMsg::Start(name));
    }
}

impl Actor for Supervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<SupervisorMsg>,
        args: SupervisorArgs,
    ) -> Result<SupervisorState, ActorProcessingErr> {
        let mut state = SupervisorState {
            children: HashMap::new(),
            started_at: HashMap::new(),
            quick_failures: HashMap::new(),
            stats: args.stats,
        };
        for child in args.children {
            (child.spawn)(myself.get_cell()).await?;
            state.started_at.insert(child.name.clone(), Instant::now());
            state.children.insert(child.name.clone(), child);
        }
        Ok(state)
    }

    async fn post_stop(
        &self,
        myself: ActorRef<SupervisorMsg>,
        _state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        myself
            .get_cell()
            .stop_children_and_wait(
                Some("runtime stopping".into()),
                Some(Duration::from_secs(30)),
            )
            .await;
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<SupervisorMsg>,
        msg: SupervisorMsg,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        let SupervisorMsg::Start(name) = msg;
        let Some(child) = state.children.get(&name).cloned() else {
            return Ok(());
        };
        match (child.spawn)(myself.get_cell()).await {
            Ok(_) => {
                tracing::info!(child = %name, "restarted");
                state.started_at.insert(name, Instant::now());
            }
            Err(e) => {
                tracing::error!(child = %name, error = %e, "restart failed; will try again");
                state.schedule_restart(&myself, name);
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<SupervisorMsg>,
        event: SupervisionEvent,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, why) = match event {
            SupervisionEvent::ActorFailed(cell, e) => (cell, e.to_string()),
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                (cell, reason.unwrap_or_else(|| "stopped".into()))
            }
            _ => return Ok(()),
        };
        let Some(name) = cell.get_name() else {
            return Ok(());
        };
        if state.children.contains_key(&name) {
            // A consumer loop that panicked never ran its `post_stop`: it is
            // not bound until its restart binds again (readiness says so).
            if let Some((_, label)) = name.rsplit_once('/') {
                state.stats.set_bound(label, false);
            }
            tracing::error!(child = %name, reason = %why, "child ended; restarting");
            state.schedule_restart(&myself, name);
        }
        Ok(())
    }
}

/// A database per actor, opened and migrated.
#[derive(Clone)]
pub struct Stores {
    pub payment: Option<DatabaseConnection>,
    pub risk: Option<DatabaseConnection>,
    pub wallet: Option<DatabaseConnection>,
}

fn db_err(actor: &'static str) -> impl Fn(sea_orm::DbErr) -> Error {
    move |e| Error::Database {
        actor,
        detail: e.to_string(),
    }
}

/// Opens an actor's database and applies its migrations.
pub async fn open_store(
    actor: ActorName,
    settings: &Settings,
) -> Result<DatabaseConnection, Error> {
    let name = actor.as_str();
    let url = match actor {
        ActorName::Payment => &settings.payment.database_url,
        ActorName::Risk => &settings.risk.database_url,
        ActorName::Wallet => &settings.wallet.database_url,
    };
    let db = store::connect(url, &settings.sqlite)
        .await
        .map_err(db_err(name))?;
    match actor {
        ActorName::Payment => payment::migration::Migrator::up(&db, None).await,
        ActorName::Risk => risk::migration::Migrator::up(&db, None).await,
        ActorName::Wallet => wallet::migration::Migrator::up(&db, None).await,
    }
    .map_err(db_err(name))?;
    Ok(db)
}

impl Stores {
    /// Opens (and migrates) the databases of the given actors.
    pub async fn open(settings: &Settings, actors: &[ActorName]) -> Result<Stores, Error> {
        let mut stores = Stores {
            payment: None,
            risk: None,
            wallet: None,
        };
        for actor in actors {
            let db = Some(open_store(*actor, settings).await?);
            match actor {
                ActorName::Payment => stores.payment = db,
                ActorName::Risk => stores.risk = db,
                ActorName::Wallet => stores.wallet = db,
            }
        }
        Ok(stores)
    }

    /// The open databases, with their actor's name.
    pub fn each(&self) -> impl Iterator<Item = (&'static str, &DatabaseConnection)> {
        [
            ("payment", &self.payment),
            ("risk", &self.risk),
            ("wallet", &self.wallet),
        ]
        .into_iter()
        .filter_map(|(actor, db)| db.as_ref().map(|db| (actor, db)))
    }
}

/// Every consumer of the given actors.
pub fn consumer_specs(settings: &Settings, actors: &[ActorName]) -> Vec<falcon_nats::ConsumerSpec> {
    actors
        .iter()
        .flat_map(|a| match a {
            ActorName::Payment => {
                let mut specs = payment::Payment::consumers(&settings.consumer);
                specs.extend(payment::view::SagaView::consumers(&settings.consumer));
                specs
            }
            ActorName::Risk => risk::Risk::consumers(&settings.consumer),
            ActorName::Wallet => wallet::Wallet::consumers(&settings.consumer),
        })
        .collect()
}

/// Provisions the streams and the consumers of every actor.
pub async fn apply_topology(
    js: &jetstream::Context,
    settings: &Settings,
) -> Result<Vec<falcon_nats::topology::Change>, Error> {
    let specs = consumer_specs(settings, &ActorName::ALL);
    Ok(falcon_nats::topology::apply(js, &settings.streams.to_stream_settings(), &specs).await?)
}

/// The control subject for killing `actor` on `node`.
pub fn kill_subject(node: &str, actor: &str) -> String {
    format!("falcon.ctl.{node}.kill.{actor}")
}

/// Serves `falcon.ctl.<node>.kill.<actor>`: kills this runtime's child of
/// that name (`payment`, `wallet-relay`, `payment-deadlines`, … or `any` for
/// one at random) and replies with what it killed. The supervisor restarts
/// it. Only runs when `chaos.enabled`.
async fn serve_chaos(client: async_nats::Client, node: String, instance: String) {
    use futures::StreamExt;
    let Ok(mut sub) = client.subscribe(kill_subject(&node, "*")).await else {
        tracing::error!("chaos control: cannot subscribe");
        return;
    };
    tracing::warn!(node = %node, "chaos control enabled: actors may be killed on request");
    while let Some(msg) = sub.next().await {
        let target = msg
            .subject
            .rsplit('.')
            .next()
            .unwrap_or_default()
            .to_owned();
        let prefix = format!("{instance}/");
        let names: Vec<String> = ractor::registry::registered()
            .into_iter()
            .filter(|n| n.starts_with(&prefix) && !n.ends_with("/supervisor"))
            .collect();
        let victim = if target == "any" {
            names
                .get(rand::random_range(0..names.len().max(1)))
                .cloned()
        } else {
            Some(format!("{prefix}{target}")).filter(|n| names.contains(n))
        };
        let killed = victim.and_then(|name| {
            ractor::registry::where_is(name.clone()).map(|cell| {
                tracing::warn!(actor = %name, "chaos: killing");
                cell.kill();
                name
            })
        });
        if let Some(reply) = msg.reply {
            let body = serde_json::json!({ "node": node, "instance": instance, "killed": killed });
            let _ = client.publish(reply, body.to_string().into()).await;
        }
    }
}

/// The payment actor's behaviour: the provider simulator behind retry and
/// a circuit breaker, the saga deadline from config.
pub fn payment_handler(settings: &Settings, db: DatabaseConnection) -> payment::Payment {
    let provider = Arc::new(Resilient::new(
        Arc::new(Simulator::new(&settings.provider)),
        &settings.provider,
    ));
    payment::Payment::new(db, provider, Duration::from_secs(settings.saga.deadline_s))
}

/// The risk actor's behaviour with the rules from config.
pub fn risk_handler(settings: &Settings, db: DatabaseConnection) -> Result<risk::Risk, Error> {
    let rules = risk::Rules::from_settings(&settings.risk).map_err(Error::Config)?;
    Ok(risk::Risk::new(db, rules))
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
    /// Starts the given actors (all three for `falcon run`).
    pub async fn start(settings: &Settings, actors: &[ActorName]) -> Result<Runtime, Error> {
        settings.validate().map_err(Error::Config)?;
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
        let mut children = Vec::new();
        let mut loops = Vec::new();
        let mut breaker = None;
        let ctx = ChildContext {
            settings,
            js: &js,
            instance: &instance,
            stats: &stats,
            faults: &faults,
        };
        if let Some(db) = &stores.payment {
            let handler = payment_handler(settings, db.clone());
            breaker = Some(handler.provider().clone());
            children.extend(ctx.children(handler, db.clone()));
            loops.extend(["payment".to_owned(), "payment-view".to_owned()]);
            children.push(ctx.consumer(
                payment::view::SagaView::new(db.clone()),
                "payment-view",
                Poke::new(String::new()),
            ));
            let (db, saga) = (db.clone(), settings.saga.clone());
            let poke = Poke::new(format!("{instance}/payment-relay"));
            children.push(ChildSpec::new(
                format!("{instance}/payment-deadlines"),
                || payment::deadline::Sweeper,
                move || payment::deadline::SweeperArgs {
                    db: db.clone(),
                    interval: Duration::from_millis(saga.sweep_interval_ms),
                    batch_max: saga.sweep_batch_max,
                    poke: poke.clone(),
                },
            ));
        }
        if let Some(db) = &stores.risk {
            children.extend(ctx.children(risk_handler(settings, db.clone())?, db.clone()));
            loops.push("risk".to_owned());
        }
        if let Some(db) = &stores.wallet {
            children.extend(ctx.children(wallet::Wallet::new(db.clone()), db.clone()));
            loops.push("wallet".to_owned());
        }
        let args = SupervisorArgs {
            children,
            stats: stats.clone(),
        };
        let (supervisor, join) =
            Actor::spawn(Some(format!("{instance}/supervisor")), Supervisor, args)
                .await
                .map_err(|e| Error::Spawn(e.to_string()))?;
        let specs = consumer_specs(settings, actors);
        let consumers: Vec<String> = specs.iter().map(|c| c.name.clone()).collect();
        let probe = Probe {
            client: client.clone(),
            js: js.clone(),
            stores: stores.clone(),
            stats: stats.clone(),
            loops,
            consumers: specs,
            breaker,
            stuck_after: Duration::from_secs(settings.saga.stuck_after_s),
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
        let chaos = if settings.chaos.enabled {
            Some(tokio::spawn(serve_chaos(
                client.clone(),
                settings.node.clone(),
                instance.clone(),
            )))
        } else {
            None
        };
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
                actor,
                db: db.clone(),
                js: self.js.clone(),
                batch_max: self.relay_batch_max,
                interval: Duration::ZERO,
                poke: Poke::new(String::new()),
            };
            match crate::relay::drain(&args).await {
                Ok(n) => flushed += n,
                Err(e) => {
                    tracing::warn!(actor, error = %e, "publishing the outbox at shutdown; the next start publishes it")
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

struct ChildContext<'a> {
    settings: &'a Settings,
    js: &'a jetstream::Context,
    instance: &'a str,
    stats: &'a Arc<Stats>,
    faults: &'a Arc<Faults>,
}

impl ChildContext<'_> {
    /// A consumer loop named `<instance>/<name>`.
    fn consumer<H: Handler>(&self, handler: H, name: &str, poke: Poke) -> ChildSpec {
        let args = ConsumerArgs {
            label: name.to_owned(),
            handler: Arc::new(handler),
            js: self.js.clone(),
            specs: H::consumers(&self.settings.consumer),
            batch_max: self.settings.consumer.batch_max,
            retry: self.settings.consumer.retry(),
            poke,
            faults: self.faults.clone(),
            stats: self.stats.clone(),
        };
        ChildSpec::new(
            format!("{}/{name}", self.instance),
            Consumer::<H>::default,
            move || args.clone(),
        )
    }

    /// The consumer loop and the outbox relay of one actor.
    fn children<H: Handler>(&self, handler: H, db: DatabaseConnection) -> [ChildSpec; 2] {
        let actor = H::ACTOR.as_str();
        let relay_name = format!("{}/{actor}-relay", self.instance);
        let poke = Poke::new(relay_name.clone());
        let (js, relay) = (self.js.clone(), self.settings.relay.clone());
        let relay_poke = poke.clone();
        [
            ChildSpec::new(
                relay_name,
                || Relay,
                move || RelayArgs {
                    actor,
                    db: db.clone(),
                    js: js.clone(),
                    batch_max: relay.batch_max,
                    interval: Duration::from_millis(relay.interval_ms),
                    poke: relay_poke.clone(),
                },
            ),
            self.consumer(handler, actor, poke),
        ]
    }
}
