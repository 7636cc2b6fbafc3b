//! The root supervisor: starts each child (a consumer loop, a relay, a
//! timer) and restarts it with backoff when it fails (a panic, an error, a
//! kill); its unacked messages are redelivered and its inbox makes them
//! harmless. Stopping the supervisor stops its children and waits for them.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, SupervisionEvent};

use crate::stats::Stats;
use crate::telemetry::names;

type SpawnFuture = Pin<Box<dyn Future<Output = Result<ActorCell, ActorProcessingErr>> + Send>>;

/// How to (re)start one child.
#[derive(Clone)]
pub struct ChildSpec {
    pub name: String,
    spawn: Arc<dyn Fn(ActorCell) -> SpawnFuture + Send + Sync>,
}

impl ChildSpec {
    /// A child named `name` (registered under it), spawned from `actor()`
    /// and `args()` afresh at each (re)start.
    pub fn new<A: Actor>(
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
        self.stats.count_restart();
        metrics::counter!(names::ACTOR_RESTARTS).increment(1);
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
                state.stats.set_bound(label, false, false);
            }
            tracing::error!(child = %name, reason = %why, "child ended; restarting");
            state.schedule_restart(&myself, name);
        }
        Ok(())
    }
}
