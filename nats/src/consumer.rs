//! The batch consumer loop's JetStream halves.
//!
//! An actor's loop is: [`Source::next_batch`] (wait for at least one
//! message, then take whatever else is already there, up to the batch
//! size) → handle the whole batch in one database transaction → for each
//! message, [`Source::settle`] it with its [`Disposition`]. Settling happens
//! only after the transaction committed, so a message is never acked before
//! its effect is durable; a crash in between means a redelivery, which the
//! actor's inbox turns into a no-op.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, AckKind};
use bytes::Bytes;
use falcon_schemas::subject::{HEADER_MSG_ID, HEADER_TRACEPARENT};
use futures::future::join_all;
use futures::stream::{BoxStream, SelectAll};
use futures::StreamExt;

use crate::error::Cause;
use crate::topology::{ConsumerSpec, OWNER_GROUP};
use crate::Error;

/// How long one pull request waits for messages before a new one is sent:
/// a third of the owner timeout, so an owner renews its pin at least twice
/// before the server would give it to another process (and an idle
/// heartbeat, a third of that again, tells a dead pull from a quiet one).
fn pull_expires(owner_timeout: Duration) -> Duration {
    (owner_timeout / 3).max(Duration::from_millis(300))
}

/// One delivered message, with what the handler needs to know of it.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The durable consumer it came through.
    pub consumer: Arc<str>,
    pub subject: String,
    pub payload: Bytes,
    pub headers: Option<async_nats::HeaderMap>,
    pub stream: String,
    pub stream_seq: u64,
    /// Delivery attempt, from 1.
    pub delivered: i64,
    /// `None` for a detached delivery (a dead letter being replayed): there
    /// is nothing to ack.
    message: Option<jetstream::Message>,
}

impl Delivery {
    /// A delivery rebuilt from where a message came from, not bound to a
    /// JetStream delivery: settling it does nothing. Its inbox key is the
    /// original's, so a replay finds what the original did.
    pub fn detached(origin: &crate::dlq::Origin, payload: Bytes) -> Delivery {
        let mut headers = async_nats::HeaderMap::new();
        if let Some(id) = &origin.msg_id {
            headers.insert(HEADER_MSG_ID, id.as_str());
        }
        if let Some(tp) = &origin.traceparent {
            headers.insert(HEADER_TRACEPARENT, tp.as_str());
        }
        Delivery {
            consumer: Arc::from(origin.consumer.as_str()),
            subject: origin.subject.clone(),
            payload,
            headers: Some(headers),
            stream: origin.stream.clone(),
            stream_seq: origin.stream_seq,
            delivered: origin.delivered,
            message: None,
        }
    }

    /// Where this message came from, as a dead letter records it.
    pub fn origin(&self) -> crate::dlq::Origin {
        crate::dlq::Origin {
            subject: self.subject.clone(),
            stream: self.stream.clone(),
            stream_seq: self.stream_seq,
            consumer: self.consumer.to_string(),
            delivered: self.delivered,
            msg_id: self.msg_id().map(str::to_owned),
            traceparent: self.traceparent().map(str::to_owned),
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.as_ref()?.get(name).map(|v| v.as_str())
    }

    /// The consumer as its actor declares it (the durable's name without
    /// its partition: [`crate::topology::declared_name`]); what the inbox
    /// keys a processed message by.
    pub fn reader(&self) -> &str {
        crate::topology::declared_name(&self.consumer)
    }

    /// The publisher's `Nats-Msg-Id`, when set.
    pub fn msg_id(&self) -> Option<&str> {
        self.header(HEADER_MSG_ID)
    }

    pub fn traceparent(&self) -> Option<&str> {
        self.header(HEADER_TRACEPARENT)
    }

    /// Why the client could not fully parse this message's header block or
    /// subject (not UTF-8, a control character in a name, …), when it
    /// could not: such a message is delivered marked instead of closing the
    /// connection (vendor/async-nats/FALCON-PATCH.md), and what it says
    /// cannot be trusted.
    pub fn malformed(&self) -> Option<&str> {
        self.header(async_nats::header::MALFORMED_HEADERS)
    }

    /// A key that names this message for the inbox: the `Nats-Msg-Id` when
    /// the publisher set one, else its place in the stream.
    pub fn inbox_key(&self) -> String {
        inbox_key(self.msg_id(), &self.stream, self.stream_seq)
    }
}

/// The inbox key of a stored message: its `Nats-Msg-Id` when the publisher
/// set one, else its place in the stream.
pub fn inbox_key(msg_id: Option<&str>, stream: &str, stream_seq: u64) -> String {
    match msg_id {
        Some(id) if !id.is_empty() => id.to_owned(),
        _ => format!("{stream}:{stream_seq}"),
    }
}

/// What to do with a message once the batch's transaction has committed
/// (or failed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// Done (including "done before": a duplicate).
    Ack,
    /// Try again after the delay: a transient failure. On the consumer's
    /// last allowed delivery it is dead-lettered instead, with this error.
    Nak { delay: Duration, error: String },
    /// Can never succeed: copy to FALCON_DLQ with this error, then term.
    Term(String),
}

/// What settling a message did: a nak on the consumer's last allowed
/// delivery, or a term, is a dead letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    Acked,
    Nakked,
    DeadLettered,
}

/// A pulled message (or pull error) with the consumer it came through.
type Tagged = (Arc<str>, Result<jetstream::Message, String>);

/// Messages from one or more durable pull consumers, merged, read through
/// their [`OWNER_GROUP`]: while another process is pinned as a consumer's
/// reader this one's pulls wait on standby and receive nothing.
pub struct Source {
    js: jetstream::Context,
    max_deliver: Arc<HashMap<String, i64>>,
    /// `(stream, durable)` of each consumer read.
    consumers: Vec<(&'static str, String)>,
    names: Vec<String>,
    messages: SelectAll<BoxStream<'static, Tagged>>,
    batch_max: usize,
    /// Whether a message arrived since binding: the server delivers only to
    /// the pinned reader, so this process has held a pin.
    pinned: bool,
}

/// The durable consumers `specs` names, each checked to exist.
async fn consumers_of(
    js: &jetstream::Context,
    specs: &[ConsumerSpec],
) -> Result<Vec<jetstream::consumer::PullConsumer>, Error> {
    let mut out = Vec::with_capacity(specs.len());
    for spec in specs {
        let consume_err = |e: Cause| Error::Consume {
            consumer: spec.name.clone(),
            source: e,
        };
        let consumer: jetstream::consumer::PullConsumer = js
            .get_stream(spec.stream)
            .await
            .map_err(|e| consume_err(e.into()))?
            .get_consumer(&spec.name)
            .await
            .map_err(consume_err)?;
        out.push(consumer);
    }
    Ok(out)
}

impl Source {
    /// Checks that the durable consumers exist (provisioned by
    /// `topology::apply`) without pulling from them: what a process that
    /// does not own them (yet) checks.
    pub async fn check(js: &jetstream::Context, specs: &[ConsumerSpec]) -> Result<(), Error> {
        consumers_of(js, specs).await.map(drop)
    }

    /// Binds as the consumers' owner: releases whatever pin they have (a
    /// dead owner's, or this process's own from before a restart), so this
    /// process's pulls are pinned at once rather than after the owner
    /// timeout, then [`Source::bind`]s.
    pub async fn take_over(
        js: &jetstream::Context,
        specs: &[ConsumerSpec],
        batch_max: usize,
    ) -> Result<Source, Error> {
        // `bind` checks that the consumers exist; an unpin of a missing one
        // only fails quietly.
        for spec in specs {
            if let Err(e) = unpin(js, spec.stream, &spec.name).await {
                tracing::debug!(consumer = %spec.name, error = %e, "unpinning before taking over");
            }
        }
        Source::bind(js, specs, batch_max).await
    }

    /// Binds to existing durable consumers (provisioned by
    /// `topology::apply`); pulls up to `batch_max` messages per request.
    pub async fn bind(
        js: &jetstream::Context,
        specs: &[ConsumerSpec],
        batch_max: usize,
    ) -> Result<Source, Error> {
        let batch_max = batch_max.max(1);
        let mut messages = SelectAll::new();
        for (spec, consumer) in specs.iter().zip(consumers_of(js, specs).await?) {
            let expires = pull_expires(spec.owner_timeout);
            let stream: pull::Stream = consumer
                .stream()
                .group(OWNER_GROUP)
                .max_messages_per_batch(batch_max)
                .heartbeat(expires / 3)
                .expires(expires)
                .messages()
                .await
                .map_err(|e| Error::Consume {
                    consumer: spec.name.clone(),
                    source: e.into(),
                })?;
            let name: Arc<str> = Arc::from(spec.name.as_str());
            let tagged = stream.map(move |m| (name.clone(), m.map_err(|e| e.to_string())));
            messages.push(tagged.boxed());
        }
        Ok(Source {
            js: js.clone(),
            max_deliver: Arc::new(
                specs
                    .iter()
                    .map(|s| (s.name.clone(), s.max_deliver))
                    .collect(),
            ),
            consumers: specs.iter().map(|s| (s.stream, s.name.clone())).collect(),
            names: specs.iter().map(|s| s.name.clone()).collect(),
            messages,
            batch_max,
            pinned: false,
        })
    }

    /// Stops reading, so that another process can own these consumers:
    /// messages already received are nak'd at once (they go to the next
    /// owner now, not after `ack_wait`), the pulls end, and when this
    /// process held the pin it is released, so the next owner's waiting
    /// pull is pinned at once instead of after the owner timeout. Returns
    /// how many messages were handed back.
    pub async fn release(mut self) -> usize {
        let mut handed_back = Vec::new();
        while let Some(Some((_, item))) = futures::FutureExt::now_or_never(self.messages.next()) {
            if let Ok(message) = item {
                handed_back.push(message);
            }
        }
        drop(self.messages);
        let naks = handed_back.iter().map(|m| m.ack_with(AckKind::Nak(None)));
        for result in join_all(naks).await {
            if let Err(e) = result {
                tracing::debug!(error = %e, "handing a message back; it comes back after ack_wait");
            }
        }
        if self.pinned || !handed_back.is_empty() {
            for (stream, name) in &self.consumers {
                if let Err(e) = unpin(&self.js, stream, name).await {
                    tracing::debug!(consumer = %name, error = %e, "unpinning; the next owner is pinned after the owner timeout");
                }
            }
        }
        handed_back.len()
    }

    /// What acks, naks and terms this source's messages; cheap to clone and
    /// shareable across tasks.
    pub fn settler(&self) -> Settler {
        Settler {
            js: self.js.clone(),
            max_deliver: self.max_deliver.clone(),
        }
    }

    /// Waits for at least one message, then takes those already received,
    /// up to the batch size. Transient pull errors (a missed heartbeat) are
    /// logged and skipped; an error that needs the consumer re-bound is
    /// returned.
    pub async fn next_batch(&mut self) -> Result<Vec<Delivery>, Error> {
        let mut batch = Vec::new();
        loop {
            let next = if batch.is_empty() {
                self.messages.next().await
            } else {
                match futures::FutureExt::now_or_never(self.messages.next()) {
                    Some(item) => item,
                    None => return Ok(batch),
                }
            };
            let Some((consumer, item)) = next else {
                return Err(Error::Consume {
                    consumer: self.names.join(","),
                    source: "message stream ended".into(),
                });
            };
            match item {
                Ok(message) => {
                    self.pinned = true;
                    batch.push(to_delivery(consumer, message)?);
                }
                Err(e) if e.contains("heartbeat") => {
                    tracing::warn!(consumer = %consumer, error = %e, "pull interrupted; renewing");
                }
                Err(e) => {
                    return Err(Error::Consume {
                        consumer: consumer.to_string(),
                        source: e.into(),
                    })
                }
            }
            if batch.len() >= self.batch_max {
                return Ok(batch);
            }
        }
    }
}

/// Applies dispositions to delivered messages.
#[derive(Clone)]
pub struct Settler {
    js: jetstream::Context,
    max_deliver: Arc<HashMap<String, i64>>,
}

impl Settler {
    /// Applies a disposition. `Term` publishes the dead letter first and
    /// terms only once FALCON_DLQ has it; if that publish fails the message
    /// is nak'd instead, so it is never lost. A nak on the consumer's last
    /// allowed delivery would leave the message with no further delivery:
    /// it is dead-lettered instead, so nothing is silently dropped.
    pub async fn settle(
        &self,
        delivery: &Delivery,
        disposition: &Disposition,
    ) -> Result<Settled, Error> {
        let last_delivery = self
            .max_deliver
            .get(&*delivery.consumer)
            .is_some_and(|max| *max > 0 && delivery.delivered >= *max);
        let gave_up;
        let disposition = match disposition {
            Disposition::Nak { error, .. } if last_delivery => {
                gave_up = Disposition::Term(format!(
                    "gave up after {} deliveries; last error: {error}",
                    delivery.delivered
                ));
                &gave_up
            }
            d => d,
        };
        let (kind, settled) = match disposition {
            Disposition::Ack => (AckKind::Ack, Settled::Acked),
            Disposition::Nak { delay, .. } => (AckKind::Nak(Some(*delay)), Settled::Nakked),
            Disposition::Term(error) => {
                match crate::dlq::dead_letter(
                    &self.js,
                    &delivery.origin(),
                    delivery.payload.clone(),
                    error,
                )
                .await
                {
                    Ok(()) => (AckKind::Term, Settled::DeadLettered),
                    Err(e) => {
                        tracing::error!(consumer = %delivery.consumer, stream_seq = delivery.stream_seq, error = %e, "dead-lettering failed; will retry");
                        (AckKind::Nak(Some(Duration::from_secs(1))), Settled::Nakked)
                    }
                }
            }
        };
        let Some(message) = &delivery.message else {
            return Ok(settled);
        };
        message
            .ack_with(kind)
            .await
            .map_err(|e| Error::Settle {
                consumer: delivery.consumer.to_string(),
                stream_seq: delivery.stream_seq,
                source: e,
            })
            .map(|()| settled)
    }
}

/// Releases the pin of `durable`'s [`OWNER_GROUP`].
async fn unpin(js: &jetstream::Context, stream: &str, durable: &str) -> Result<(), Cause> {
    js.get_stream_no_info(stream)
        .await?
        .unpin_consumer(durable, OWNER_GROUP)
        .await?;
    Ok(())
}

fn to_delivery(consumer: Arc<str>, message: jetstream::Message) -> Result<Delivery, Error> {
    let (stream, stream_seq, delivered) = {
        let info = message.info().map_err(|e| Error::Consume {
            consumer: consumer.to_string(),
            source: format!("message without JetStream metadata: {e}").into(),
        })?;
        (info.stream.to_owned(), info.stream_sequence, info.delivered)
    };
    Ok(Delivery {
        consumer,
        // As published: a partitioned stream stores it with its partition.
        subject: falcon_schemas::subject::logical(&message.subject)
            .0
            .to_owned(),
        payload: message.payload.clone(),
        headers: message.headers.clone(),
        stream,
        stream_seq,
        delivered,
        message: Some(message),
    })
}
