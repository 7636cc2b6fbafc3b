//! Reading a stream's history: a bounded read of everything matching a
//! filter (the saga inspector), and a live watch (waiting for an outcome).

use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, consumer::AckPolicy, consumer::DeliverPolicy};
use bytes::Bytes;
use futures::{Stream, StreamExt};

use crate::Error;

/// A message as stored in a stream.
#[derive(Debug, Clone)]
pub struct Stored {
    pub subject: String,
    pub payload: Bytes,
    pub headers: Option<async_nats::HeaderMap>,
    pub stream_seq: u64,
    /// When the stream stored it.
    pub published: Option<chrono::DateTime<chrono::Utc>>,
}

fn published(m: &jetstream::Message) -> Option<chrono::DateTime<chrono::Utc>> {
    let t = m.info().ok()?.published;
    chrono::DateTime::from_timestamp(t.unix_timestamp(), t.nanosecond())
}

fn read_err(name: &str, e: impl std::fmt::Display) -> Error {
    Error::Consume {
        consumer: name.to_owned(),
        detail: e.to_string(),
    }
}

/// Every message of `stream` matching `filter`, oldest first, at most `max`.
/// Uses an ephemeral consumer that is deleted afterwards (or expires).
pub async fn read_filtered(
    js: &jetstream::Context,
    stream: &str,
    filter: &str,
    max: usize,
) -> Result<Vec<Stored>, Error> {
    let s = js
        .get_stream(stream)
        .await
        .map_err(|e| read_err(stream, e))?;
    let mut consumer: jetstream::consumer::PullConsumer = s
        .create_consumer(pull::Config {
            filter_subject: filter.to_owned(),
            deliver_policy: DeliverPolicy::All,
            ack_policy: AckPolicy::None,
            inactive_threshold: Duration::from_secs(60),
            memory_storage: true,
            ..Default::default()
        })
        .await
        .map_err(|e| read_err(stream, e))?;
    let pending = consumer
        .info()
        .await
        .map_err(|e| read_err(stream, e))?
        .num_pending;
    let want = usize::try_from(pending).unwrap_or(usize::MAX).min(max);
    let mut out = Vec::with_capacity(want);
    while out.len() < want {
        let mut batch = consumer
            .fetch()
            .max_messages(want - out.len())
            .expires(Duration::from_secs(2))
            .messages()
            .await
            .map_err(|e| read_err(stream, e))?;
        let before = out.len();
        while let Some(m) = batch.next().await {
            let m = m.map_err(|e| read_err(stream, e))?;
            let seq = m.info().map(|i| i.stream_sequence).unwrap_or(0);
            out.push(Stored {
                subject: m.subject.to_string(),
                payload: m.payload.clone(),
                headers: m.headers.clone(),
                stream_seq: seq,
                published: published(&m),
            });
        }
        if out.len() == before {
            break;
        }
    }
    let name = consumer.cached_info().name.clone();
    if let Err(e) = s.delete_consumer(&name).await {
        tracing::debug!(consumer = %name, error = %e, "ephemeral consumer not deleted; it expires");
    }
    Ok(out)
}

/// Messages of `stream` matching `filter`, from the first, then live as
/// they arrive.
pub async fn watch(
    js: &jetstream::Context,
    stream: &str,
    filter: &str,
) -> Result<impl Stream<Item = Result<Stored, Error>>, Error> {
    let s = js
        .get_stream(stream)
        .await
        .map_err(|e| read_err(stream, e))?;
    let consumer = s
        .create_consumer(pull::OrderedConfig {
            filter_subject: filter.to_owned(),
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .map_err(|e| read_err(stream, e))?;
    let messages = consumer.messages().await.map_err(|e| read_err(stream, e))?;
    let stream_name = stream.to_owned();
    Ok(messages.map(move |m| {
        let m = m.map_err(|e| read_err(&stream_name, e))?;
        let seq = m.info().map(|i| i.stream_sequence).unwrap_or(0);
        Ok(Stored {
            subject: m.subject.to_string(),
            payload: m.payload.clone(),
            headers: m.headers.clone(),
            stream_seq: seq,
            published: published(&m),
        })
    }))
}
