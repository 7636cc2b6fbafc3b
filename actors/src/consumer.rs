//! The consumer loop as a ractor actor: pull a batch, handle it in one
//! transaction, poke the relay, then ack/nak/term each message. One actor
//! per business actor (payment, risk, wallet), reading all its durable
//! consumers merged.
//!
//! Shutdown: it waits for messages at most [`POLL_IDLE`] at a time, so a
//! stop is taken between batches; an unsettled batch is redelivered after
//! `ack_wait` and its inbox rows make it a no-op. Failure (a panic, or an
//! error re-binding the consumers) reaches the root supervisor, which
//! starts it again.

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use falcon_nats::{ConsumerSpec, Source};
use futures::future::join_all;
use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::batch::{run_batch, Handler};
use crate::relay::Poke;
use crate::runtime::{FaultPoint, Faults, Stats};

/// Longest wait for a message before the actor looks at its mailbox again.
pub const POLL_IDLE: Duration = Duration::from_millis(250);

pub struct Consumer<H>(PhantomData<fn() -> H>);

impl<H> Default for Consumer<H> {
    fn default() -> Self {
        Consumer(PhantomData)
    }
}

pub struct ConsumerArgs<H> {
    pub handler: Arc<H>,
    pub js: jetstream::Context,
    pub specs: Vec<ConsumerSpec>,
    pub batch_max: usize,
    pub retry: crate::settings::Retry,
    pub poke: Poke,
    pub faults: Arc<Faults>,
    pub stats: Arc<Stats>,
}

impl<H> Clone for ConsumerArgs<H> {
    fn clone(&self) -> Self {
        ConsumerArgs {
            handler: self.handler.clone(),
            js: self.js.clone(),
            specs: self.specs.clone(),
            batch_max: self.batch_max,
            retry: self.retry,
            poke: self.poke.clone(),
            faults: self.faults.clone(),
            stats: self.stats.clone(),
        }
    }
}

pub struct ConsumerState<H> {
    args: ConsumerArgs<H>,
    source: Source,
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
        let source = Source::bind(&args.js, &args.specs, args.batch_max).await?;
        myself.cast(ConsumerMsg::Poll)?;
        Ok(ConsumerState { args, source })
    }

    async fn handle(
        &self,
        myself: ActorRef<ConsumerMsg>,
        _msg: ConsumerMsg,
        state: &mut ConsumerState<H>,
    ) -> Result<(), ActorProcessingErr> {
        if let Ok(batch) = tokio::time::timeout(POLL_IDLE, state.source.next_batch()).await {
            let batch = batch?;
            let a = &state.args;
            let dispositions = run_batch(&*a.handler, &batch, a.retry).await;
            a.faults.trip(H::ACTOR, FaultPoint::AfterCommit, &batch);
            a.poke.poke();
            let settler = state.source.settler();
            let settled = join_all(
                batch
                    .iter()
                    .zip(&dispositions)
                    .map(|(d, disp)| settler.settle(d, disp)),
            )
            .await;
            for e in settled.into_iter().filter_map(Result::err) {
                tracing::warn!(actor = H::ACTOR.as_str(), error = %e, "settling failed; JetStream will redeliver");
            }
            a.stats.record_batch(&dispositions);
        }
        myself.cast(ConsumerMsg::Poll)?;
        Ok(())
    }
}
