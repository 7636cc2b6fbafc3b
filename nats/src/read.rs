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
    /// Its subject as published (a partitioned stream's partition token
    /// taken off: [`falcon_schemas::subject::logical`]).
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

fn read_err(name: &str, e: impl Into<crate::error::Cause>) -> Error {
    Error::Consume {
        consumer: name.to_owned(),
        source: e.into(),
    }
}

/// Where a range read starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    All,
    Seq(u64),
    Time(chrono::DateTime<chrono::Utc>),
}

/// A bounded read of a stream range, page by page, through an ephemeral
/// consumer (no acks; it expires a minute after the last page).
pub struct RangeReader {
    stream_name: String,
    stream: jetstream::stream::Stream,
    consumer: jetstream::consumer::PullConsumer,
    remaining: u64,
    to_seq: Option<u64>,
}

impl RangeReader {
    /// Opens a read of the messages of `stream` matching any of `filters`,
    /// from `start` up to `to_seq` (inclusive) or the end as it is now.
    pub async fn open(
        js: &jetstream::Context,
        stream: &str,
        filters: Vec<String>,
        start: Start,
        to_seq: Option<u64>,
    ) -> Result<RangeReader, Error> {
        let s = js
            .get_stream(stream)
            .await
            .map_err(|e| read_err(stream, e))?;
        let deliver_policy = match start {
            Start::All => DeliverPolicy::All,
            Start::Seq(seq) => DeliverPolicy::ByStartSequence {
                start_sequence: seq.max(1),
            },
            Start::Time(t) => DeliverPolicy::ByStartTime {
                start_time: time::OffsetDateTime::from_unix_timestamp_nanos(
                    t.timestamp_nanos_opt().map(i128::from).unwrap_or_default(),
                )
                .map_err(|e| read_err(stream, e))?,
            },
        };
        let (filter_subject, filter_subjects) = match filters.as_slice() {
            [one] => (one.clone(), Vec::new()),
            many => (String::new(), many.to_vec()),
        };
        let mut consumer: jetstream::consumer::PullConsumer = s
            .create_consumer(pull::Config {
                filter_subject,
                filter_subjects,
                deliver_policy,
                ack_policy: AckPolicy::None,
                inactive_threshold: Duration::from_secs(60),
                memory_storage: true,
                ..Default::default()
            })
            .await
            .map_err(|e| read_err(stream, e))?;
        let remaining = consumer
            .info()
            .await
            .map_err(|e| read_err(stream, e))?
            .num_pending;
        Ok(RangeReader {
            stream_name: stream.to_owned(),
            stream: s,
            consumer,
            remaining,
            to_seq,
        })
    }

    /// The next page of at most `max` messages; empty when the range is done.
    pub async fn next_page(&mut self, max: usize) -> Result<Vec<Stored>, Error> {
        let want = usize::try_from(self.remaining)
            .unwrap_or(usize::MAX)
            .min(max);
        if want == 0 {
            return Ok(Vec::new());
        }
        let mut batch = self
            .consumer
            .fetch()
            .max_messages(want)
            .expires(Duration::from_secs(2))
            .messages()
            .await
            .map_err(|e| read_err(&self.stream_name, e))?;
        let mut out = Vec::with_capacity(want);
        while let Some(m) = batch.next().await {
            let m = m.map_err(|e| read_err(&self.stream_name, e))?;
            let seq = m.info().map(|i| i.stream_sequence).unwrap_or(0);
            if self.to_seq.is_some_and(|to| seq > to) {
                self.remaining = 0;
                return Ok(out);
            }
            out.push(Stored {
                subject: falcon_schemas::subject::logical(&m.subject).0.to_owned(),
                payload: m.payload.clone(),
                headers: m.headers.clone(),
                stream_seq: seq,
                published: published(&m),
            });
        }
        // A fetch that brings nothing means the stream changed under us
        // (messages expired or were deleted): stop rather than spin.
        self.remaining = if out.is_empty() {
            0
        } else {
            self.remaining.saturating_sub(out.len() as u64)
        };
        Ok(out)
    }

    /// Deletes the ephemeral consumer (it would expire anyway).
    pub async fn close(self) {
        let name = self.consumer.cached_info().name.clone();
        if let Err(e) = self.stream.delete_consumer(&name).await {
            tracing::debug!(consumer = %name, error = %e, "ephemeral consumer not deleted; it expires");
        }
    }
}

/// Every message of `stream` matching `filter`, oldest first, at most `max`.
pub async fn read_filtered(
    js: &jetstream::Context,
    stream: &str,
    filter: &str,
    max: usize,
) -> Result<Vec<Stored>, Error> {
    read_matching(js, stream, vec![filter.to_owned()], max).await
}

/// Every message of `stream` matching any of `filters` (on subjects as
/// published: [`falcon_schemas::subject::stored_filters`]), oldest first, at
/// most `max`.
pub async fn read_matching(
    js: &jetstream::Context,
    stream: &str,
    filters: Vec<String>,
    max: usize,
) -> Result<Vec<Stored>, Error> {
    let filters = falcon_schemas::subject::stored_filters(&filters);
    let mut reader = RangeReader::open(js, stream, filters, Start::All, None).await?;
    let mut out = Vec::new();
    while out.len() < max {
        let page = reader.next_page(max - out.len()).await?;
        if page.is_empty() {
            break;
        }
        out.extend(page);
    }
    reader.close().await;
    Ok(out)
}

/// Messages of `stream` matching `filter` (on subjects as published:
/// [`falcon_schemas::subject::stored_filters`]), from the first, then live
/// as they arrive.
pub async fn watch(
    js: &jetstream::Context,
    stream: &str,
    filter: &str,
) -> Result<impl Stream<Item = Result<Stored, Error>>, Error> {
    let filters = falcon_schemas::subject::stored_filters(&[filter.to_owned()]);
    let (filter_subject, filter_subjects) = match filters.as_slice() {
        [one] => (one.clone(), Vec::new()),
        many => (String::new(), many.to_vec()),
    };
    let s = js
        .get_stream(stream)
        .await
        .map_err(|e| read_err(stream, e))?;
    let consumer = s
        .create_consumer(pull::OrderedConfig {
            filter_subject,
            filter_subjects,
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
            subject: falcon_schemas::subject::logical(&m.subject).0.to_owned(),
            payload: m.payload.clone(),
            headers: m.headers.clone(),
            stream_seq: seq,
            published: published(&m),
        })
    }))
}
