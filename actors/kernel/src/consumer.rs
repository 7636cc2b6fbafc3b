//! The consumer loop as a ractor actor: pull a batch, handle it in one
//! transaction, poke the relay, then ack/nak/term each message. One per
//! [`Handler`] (an actor's steps, or a read model) and partition, reading
//! that partition's durable consumers merged: the partitions' batches are
//! in flight at once, and one saga's messages (one partition) stay in
//! order.
//!
//! Ownership: a loop pulls only while this process owns it
//! ([`crate::owner`]); otherwise it stands by, its consumers checked to
//! exist. Losing ownership releases the consumers between batches
//! ([`Source::release`]), so the new owner starts at once.
//!
//! Shutdown: it waits for messages at most [`POLL_IDLE`] at a time, so a
//! stop is taken between batches, and the consumers are released; an
//! unsettled batch is redelivered after `ack_wait` and its inbox rows make
//! it a no-op. Failure (a panic, or an
//! error re-binding the consumers) reaches the root supervisor, which
//! starts it again.

use std::collections::BTreeSet;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use falcon_nats::{ConsumerSpec, Settled, Source};
use futures::future::join_all;
use metrics::{Counter, Histogram};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::watch;

use crate::batch::run_batch;
use crate::faults::{FaultPoint, Faults};
use crate::handler::Handler;
use crate::owner::Owners;
use crate::relay::Poke;
use crate::signing::KeyRing;
use crate::stats::Stats;
use crate::telemetry::names;

/// Longest wait for a message before the actor looks at its mailbox again.
pub const POLL_IDLE: Duration = Duration::from_millis(250);

pub struct Consumer<H>(PhantomData<fn() -> H>);

impl<H> Default for Consumer<H> {
    fn default() -> Self {
        Consumer(PhantomData)
    }
}

pub struct ConsumerArgs<H> {
    /// What its metrics and spans call it: the actor, or `payment-view`.
    pub label: String,
    /// This loop among its label's: `<label>-<partition>` (readiness and
    /// chaos name it so).
    pub loop_name: String,
    pub handler: Arc<H>,
    pub js: jetstream::Context,
    pub specs: Vec<ConsumerSpec>,
    pub batch_max: usize,
    pub retry: crate::settings::Retry,
    pub poke: Poke,
    pub faults: Arc<Faults>,
    pub stats: Arc<Stats>,
    /// The signing keys events are checked with.
    pub ring: Arc<KeyRing>,
    /// Which of its actor's loops this process owns.
    pub owners: Arc<Owners>,
}

impl<H> Clone for ConsumerArgs<H> {
    fn clone(&self) -> Self {
        ConsumerArgs {
            label: self.label.clone(),
            loop_name: self.loop_name.clone(),
            handler: self.handler.clone(),
            js: self.js.clone(),
            specs: self.specs.clone(),
            batch_max: self.batch_max,
            retry: self.retry,
            poke: self.poke.clone(),
            faults: self.faults.clone(),
            stats: self.stats.clone(),
            ring: self.ring.clone(),
            owners: self.owners.clone(),
        }
    }
}

pub struct ConsumerState<H> {
    args: ConsumerArgs<H>,
    /// Bound while this process owns the loop.
    source: Option<Source>,
    owned: watch::Receiver<BTreeSet<String>>,
    meters: Meters,
}

/// The consumer's metric handles, registered once.
struct Meters {
    handled: Counter,
    failed: Counter,
    redelivered: Counter,
    dead_lettered: Counter,
    batch_size: Histogram,
}

impl Meters {
    fn new(label: &str) -> Meters {
        let actor = || ("actor", label.to_owned());
        Meters {
            handled: metrics::counter!(names::HANDLED, &[actor()]),
            failed: metrics::counter!(names::FAILED, &[actor()]),
            redelivered: metrics::counter!(names::REDELIVERED, &[actor()]),
            dead_lettered: metrics::counter!(names::DEAD_LETTERED, &[actor()]),
            batch_size: metrics::histogram!(names::BATCH_SIZE, &[actor()]),
        }
    }

    fn record(&self, settled: Settled) {
        match settled {
            Settled::Acked => self.handled.increment(1),
            Settled::Nakked => self.failed.increment(1),
            Settled::DeadLettered => {
                self.failed.increment(1);
                self.dead_lettered.increment(1);
            }
        }
    }
}

pub enum ConsumerMsg {
    Poll,
}

impl<H: Handler> Actor for Consumer<H> {
    type Msg = ConsumerMsg;
    type State = ConsumerState<H>;
    type Arguments = ConsumerArgs<H>;

    async fn pre_start(
        &self,
        myself: ActorRef<ConsumerMsg>,
        args: ConsumerArgs<H>,
    ) -> Result<ConsumerState<H>, ActorProcessingErr> {
        let source = if args.owners.owns(&args.loop_name) {
            Some(Source::take_over(&args.js, &args.specs, args.batch_max).await?)
        } else {
            Source::check(&args.js, &args.specs).await?;
            None
        };
        args.stats
            .set_bound(&args.loop_name, true, source.is_some());
        myself.cast(ConsumerMsg::Poll)?;
        let meters = Meters::new(&args.label);
        let owned = args.owners.watch();
        Ok(ConsumerState {
            args,
            source,
            owned,
            meters,
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<ConsumerMsg>,
        state: &mut ConsumerState<H>,
    ) -> Result<(), ActorProcessingErr> {
        state
            .args
            .stats
            .set_bound(&state.args.loop_name, false, false);
        if let Some(source) = state.source.take() {
            source.release().await;
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<ConsumerMsg>,
        _msg: ConsumerMsg,
        state: &mut ConsumerState<H>,
    ) -> Result<(), ActorProcessingErr> {
        let owns = state.args.owners.owns(&state.args.loop_name);
        let a = &state.args;
        match (owns, state.source.take()) {
            (true, Some(source)) => state.source = Some(source),
            (true, None) => {
                tracing::info!(actor = %a.label, consumer = %a.loop_name, "taking the loop over");
                state.source = Some(Source::take_over(&a.js, &a.specs, a.batch_max).await?);
                a.stats.set_bound(&a.loop_name, true, true);
            }
            (false, Some(source)) => {
                let handed_back = source.release().await;
                tracing::info!(actor = %a.label, consumer = %a.loop_name, handed_back, "handing the loop over");
                a.stats.set_bound(&a.loop_name, true, false);
            }
            (false, None) => {}
        }
        let Some(source) = state.source.as_mut() else {
            // Standing by: wake when the assignment changes, or to look at
            // the mailbox.
            let _ = tokio::time::timeout(POLL_IDLE, state.owned.changed()).await;
            myself.cast(ConsumerMsg::Poll)?;
            return Ok(());
        };
        if let Ok(batch) = tokio::time::timeout(POLL_IDLE, source.next_batch()).await {
            let batch = match batch {
                Ok(batch) => batch,
                Err(e) => {
                    state
                        .args
                        .stats
                        .set_bound(&state.args.loop_name, false, false);
                    return Err(e.into());
                }
            };
            let a = &state.args;
            state.meters.batch_size.record(batch.len() as f64);
            let redelivered = batch.iter().filter(|d| d.delivered > 1).count();
            state.meters.redelivered.increment(redelivered as u64);
            let dispositions = run_batch(&*a.handler, &a.label, &batch, a.retry, &a.ring).await;
            a.faults.trip(H::ACTOR, FaultPoint::AfterCommit, &batch);
            a.poke.poke();
            let settler = source.settler();
            let settled = join_all(
                batch
                    .iter()
                    .zip(&dispositions)
                    .map(|(d, disp)| settler.settle(d, disp)),
            )
            .await;
            for result in settled {
                match result {
                    Ok(s) => {
                        state.meters.record(s);
                        a.stats.record(s);
                    }
                    Err(e) => {
                        tracing::warn!(actor = %a.label, error = %e, "settling failed; JetStream will redeliver")
                    }
                }
            }
        }
        myself.cast(ConsumerMsg::Poll)?;
        Ok(())
    }
}
