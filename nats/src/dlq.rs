//! Dead letters: a copy of a message that can never succeed, or that
//! exhausted its deliveries, in `FALCON_DLQ` on
//! `falcon.dlq.<consumer>.<original subject>`, with where it came from and
//! why in headers. Listing, reading, deleting and purging them, and the
//! watcher of JetStream's MAX_DELIVERIES advisory, which catches a message
//! whose last delivery was never acked (its process died).

use std::time::Duration;

use async_nats::jetstream::{self, message::PublishMessage};
use async_nats::HeaderMap;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use falcon_schemas::subject::{
    dlq, dlq_subject, DLQ_PREFIX, HEADER_MSG_ID, HEADER_TRACEPARENT, STREAM_CMD, STREAM_DLQ,
    STREAM_EVT,
};
use futures::StreamExt;
use serde::Serialize;

use crate::Error;

/// Longest error text kept in a header, in bytes.
pub const ERROR_LEN_MAX: usize = 1024;
/// Dead letters listed at most by one read.
pub const LIST_MAX: usize = 100_000;

/// Where a message came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Origin {
    pub subject: String,
    pub stream: String,
    pub stream_seq: u64,
    /// The durable consumer that gave up on it.
    pub consumer: String,
    /// Deliveries it had had.
    pub delivered: i64,
    pub msg_id: Option<String>,
    pub traceparent: Option<String>,
}

/// A message in FALCON_DLQ.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    /// Its sequence in FALCON_DLQ.
    pub seq: u64,
    pub time: Option<DateTime<Utc>>,
    pub origin: Origin,
    pub error: String,
    #[serde(skip)]
    pub payload: Bytes,
}

fn publish_err(subject: &str, e: impl Into<crate::error::Cause>) -> Error {
    Error::Publish {
        subject: subject.to_owned(),
        source: e.into(),
    }
}

fn consume_err(e: impl Into<crate::error::Cause>) -> Error {
    Error::Consume {
        consumer: STREAM_DLQ.to_owned(),
        source: e.into(),
    }
}

/// Publishes a dead letter and waits for JetStream's ack. Its message id is
/// derived from the original's stream, sequence and consumer, so
/// dead-lettering the same delivery twice (the loop and the advisory
/// watcher) stores it once.
pub async fn dead_letter(
    js: &jetstream::Context,
    origin: &Origin,
    payload: Bytes,
    error: &str,
) -> Result<(), Error> {
    let subject = dlq_subject(&origin.consumer, &origin.subject);
    let mut headers = HeaderMap::new();
    let error_line: String = error
        .replace(['\r', '\n'], " ")
        .chars()
        .take(ERROR_LEN_MAX)
        .collect();
    headers.insert(dlq::ERROR, error_line.as_str());
    headers.insert(dlq::ORIGINAL_SUBJECT, origin.subject.as_str());
    headers.insert(dlq::ORIGINAL_STREAM, origin.stream.as_str());
    headers.insert(dlq::ORIGINAL_SEQ, origin.stream_seq.to_string().as_str());
    headers.insert(dlq::CONSUMER, origin.consumer.as_str());
    headers.insert(dlq::DELIVERY_COUNT, origin.delivered.to_string().as_str());
    if let Some(id) = &origin.msg_id {
        headers.insert(dlq::ORIGINAL_MSG_ID, id.as_str());
    }
    let dlq_id = format!(
        "dlq:{}:{}:{}",
        origin.stream, origin.stream_seq, origin.consumer
    );
    headers.insert(HEADER_MSG_ID, dlq_id.as_str());
    if let Some(tp) = &origin.traceparent {
        headers.insert(HEADER_TRACEPARENT, tp.as_str());
    }
    let publish = PublishMessage::build().payload(payload).headers(headers);
    js.send_publish(subject.clone(), publish)
        .await
        .map_err(|e| publish_err(&subject, e))?
        .await
        .map_err(|e| publish_err(&subject, e))?;
    Ok(())
}

/// Reads a dead letter's headers; `None` when they are not a dead letter's.
pub fn parse(
    seq: u64,
    time: Option<DateTime<Utc>>,
    headers: Option<&HeaderMap>,
    payload: Bytes,
) -> Option<DeadLetter> {
    let h = headers?;
    let get = |n: &str| h.get(n).map(|v| v.as_str().to_owned());
    Some(DeadLetter {
        seq,
        time,
        origin: Origin {
            subject: get(dlq::ORIGINAL_SUBJECT)?,
            stream: get(dlq::ORIGINAL_STREAM)?,
            stream_seq: get(dlq::ORIGINAL_SEQ)?.parse().ok()?,
            consumer: get(dlq::CONSUMER)?,
            delivered: get(dlq::DELIVERY_COUNT)
                .and_then(|d| d.parse().ok())
                .unwrap_or(0),
            msg_id: get(dlq::ORIGINAL_MSG_ID),
            traceparent: get(HEADER_TRACEPARENT),
        },
        error: get(dlq::ERROR).unwrap_or_default(),
        payload,
    })
}

/// Every dead letter, oldest first; `subject` narrows to dead letters whose
/// original subject matches that filter.
pub async fn list(
    js: &jetstream::Context,
    subject: Option<&str>,
) -> Result<Vec<DeadLetter>, Error> {
    let filter = match subject {
        Some(s) => format!("{DLQ_PREFIX}*.{s}"),
        None => format!("{DLQ_PREFIX}>"),
    };
    let stored = crate::read::read_filtered(js, STREAM_DLQ, &filter, LIST_MAX).await?;
    Ok(stored
        .into_iter()
        .filter_map(|s| parse(s.stream_seq, s.published, s.headers.as_ref(), s.payload))
        .collect())
}

/// One dead letter by its FALCON_DLQ sequence.
pub async fn get(js: &jetstream::Context, seq: u64) -> Result<Option<DeadLetter>, Error> {
    let stream = js.get_stream(STREAM_DLQ).await.map_err(consume_err)?;
    match stream.direct_get(seq).await {
        Ok(m) => {
            let time = DateTime::from_timestamp(m.time.unix_timestamp(), m.time.nanosecond());
            Ok(parse(seq, time, Some(&m.headers), m.payload))
        }
        Err(e) if e.kind() == jetstream::stream::DirectGetErrorKind::NotFound => Ok(None),
        Err(e) => Err(consume_err(e)),
    }
}

/// Removes one dead letter (after a successful replay).
/// The message a dead letter stands for, re-read from its own stream by
/// sequence: its subject, headers and body as stored, never as the letter
/// says. A letter is only a pointer; anyone who could write one could
/// otherwise make a replay run any body. `None` when the stream no longer
/// holds that sequence. The origin's stream must be FALCON_CMD or
/// FALCON_EVT.
pub async fn original(js: &jetstream::Context, origin: &Origin) -> Result<Option<Original>, Error> {
    if ![STREAM_CMD, STREAM_EVT].contains(&origin.stream.as_str()) {
        return Ok(None);
    }
    let Some(stored) = raw_message(js, &origin.stream, origin.stream_seq).await? else {
        return Ok(None);
    };
    let verified = Origin {
        subject: stored.published_subject().to_owned(),
        stream: origin.stream.clone(),
        stream_seq: origin.stream_seq,
        consumer: origin.consumer.clone(),
        delivered: origin.delivered,
        msg_id: stored.msg_id,
        traceparent: stored.traceparent,
    };
    Ok(Some(Original {
        origin: verified,
        payload: stored.payload,
        stored_subject: stored.subject,
    }))
}

/// A dead letter's original, re-read from its stream.
#[derive(Debug, Clone)]
pub struct Original {
    /// Where it came from, as the stream has it (its published subject).
    pub origin: Origin,
    pub payload: Bytes,
    /// Its subject as stored (with its partition), which the consumer's
    /// filters match.
    pub stored_subject: String,
}

pub async fn delete(js: &jetstream::Context, seq: u64) -> Result<bool, Error> {
    let stream = js.get_stream(STREAM_DLQ).await.map_err(consume_err)?;
    stream.delete_message(seq).await.map_err(consume_err)
}

/// Removes every dead letter (or those whose original subject matches).
pub async fn purge(js: &jetstream::Context, subject: Option<&str>) -> Result<u64, Error> {
    let stream = js.get_stream(STREAM_DLQ).await.map_err(consume_err)?;
    let purged = match subject {
        Some(s) => stream.purge().filter(format!("{DLQ_PREFIX}*.{s}")).await,
        None => stream.purge().await,
    }
    .map_err(consume_err)?;
    Ok(purged.purged)
}

/// JetStream's advisory when a message reached `max_deliver` without an ack.
#[derive(Debug, serde::Deserialize)]
struct MaxDeliveries {
    stream: String,
    consumer: String,
    stream_seq: u64,
    deliveries: i64,
}

/// Dead-letters every message of `consumers` that JetStream gives up on
/// because its last delivery was never acked (the loop dead-letters the ones
/// it nak'd itself). Runs until the connection closes. The advisory is core
/// NATS, not durable: a process that was down when it fired misses it, which
/// the consumers' state still shows (`num_ack_pending`).
pub async fn watch_max_deliveries(
    client: async_nats::Client,
    js: jetstream::Context,
    consumers: Vec<(String, String)>,
) -> Result<(), Error> {
    // One subscription per consumer: an identity may read only the
    // advisories of its own consumers.
    let mut subs = Vec::with_capacity(consumers.len());
    for (stream, name) in &consumers {
        subs.push(
            client
                .subscribe(format!(
                    "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{stream}.{name}"
                ))
                .await
                .map_err(consume_err)?,
        );
    }
    let consumers: Vec<String> = consumers.into_iter().map(|(_, name)| name).collect();
    let mut sub = futures::stream::select_all(subs);
    while let Some(msg) = sub.next().await {
        let Ok(advisory) = serde_json::from_slice::<MaxDeliveries>(&msg.payload) else {
            continue;
        };
        if !consumers.contains(&advisory.consumer) {
            continue;
        }
        if let Err(e) = dead_letter_exhausted(&js, &advisory).await {
            tracing::error!(consumer = %advisory.consumer, stream_seq = advisory.stream_seq, error = %e, "dead-lettering an exhausted message failed");
        }
    }
    Ok(())
}

async fn dead_letter_exhausted(js: &jetstream::Context, a: &MaxDeliveries) -> Result<(), Error> {
    let Some(original) = raw_message(js, &a.stream, a.stream_seq).await? else {
        return Ok(()); // aged out or deleted since: nothing left to keep
    };
    let origin = Origin {
        subject: original.published_subject().to_owned(),
        stream: a.stream.clone(),
        stream_seq: a.stream_seq,
        consumer: a.consumer.clone(),
        delivered: a.deliveries,
        msg_id: original.msg_id,
        traceparent: original.traceparent,
    };
    let error = format!(
        "{} deliveries exhausted: the last one was not acked within the consumer's ack wait (its process may have died)",
        a.deliveries
    );
    tracing::warn!(consumer = %a.consumer, stream_seq = a.stream_seq, "dead-lettering a message whose deliveries ran out");
    dead_letter(js, &origin, original.payload, &error).await
}

/// A stored message as the stream API gives it: the subject, the body, and
/// the two headers FalconPay reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawMessage {
    /// As stored (a partitioned stream's has its partition as last token).
    pub subject: String,
    pub payload: Bytes,
    pub msg_id: Option<String>,
    pub traceparent: Option<String>,
}

impl RawMessage {
    /// Its subject as published ([`falcon_schemas::subject::logical`]).
    pub fn published_subject(&self) -> &str {
        falcon_schemas::subject::logical(&self.subject).0
    }
}

#[derive(serde::Deserialize)]
struct RawGet {
    message: RawGetMessage,
}

#[derive(serde::Deserialize)]
struct RawGetMessage {
    subject: String,
    #[serde(default)]
    hdrs: Option<String>,
    #[serde(default)]
    data: Option<String>,
}

/// Message `seq` of `stream`, read through `$JS.API.STREAM.MSG.GET` (its
/// headers and body come base64 in a JSON reply), not delivered as a NATS
/// message: a header the client library cannot parse (not UTF-8, say)
/// would close the connection if it were delivered, but here it is read
/// leniently. `None` when the stream does not hold `seq`.
pub async fn raw_message(
    js: &jetstream::Context,
    stream: &str,
    seq: u64,
) -> Result<Option<RawMessage>, Error> {
    use base64::Engine as _;
    use jetstream::response::Response;
    let reply: Response<RawGet> = js
        .request(
            format!("STREAM.MSG.GET.{stream}"),
            &serde_json::json!({ "seq": seq }),
        )
        .await
        .map_err(consume_err)?;
    let message = match reply {
        Response::Ok(get) => get.message,
        Response::Err { error } if error.code() == 404 => return Ok(None),
        Response::Err { error } => return Err(consume_err(error)),
    };
    let b64 = base64::engine::general_purpose::STANDARD;
    let decode = |s: Option<String>| s.and_then(|s| b64.decode(s).ok()).unwrap_or_default();
    let headers = decode(message.hdrs);
    Ok(Some(RawMessage {
        subject: message.subject,
        payload: Bytes::from(decode(message.data)),
        msg_id: lenient_header(&headers, HEADER_MSG_ID),
        traceparent: lenient_header(&headers, HEADER_TRACEPARENT),
    }))
}

/// A header's value from a raw NATS header block, whatever else the block
/// holds; `None` unless it is printable ASCII of a sane length.
fn lenient_header(block: &[u8], name: &str) -> Option<String> {
    let text = String::from_utf8_lossy(block);
    text.split("\r\n").skip(1).find_map(|line| {
        let (k, v) = line.split_once(':')?;
        let v = v.trim();
        (k.trim().eq_ignore_ascii_case(name)
            && !v.is_empty()
            && v.len() <= 256
            && v.bytes().all(|b| b.is_ascii_graphic() || b == b' '))
        .then(|| v.to_owned())
    })
}

/// How long the watcher waits before re-subscribing after an error.
pub const WATCH_RETRY: Duration = Duration::from_secs(1);

#[cfg(test)]
mod raw_tests {
    use super::lenient_header;

    #[test]
    fn headers_are_read_leniently() {
        let block = b"NATS/1.0\r\nX-Bad: \xff\xfe\x01\r\nNats-Msg-Id: m-1\r\ntraceparent: 00-ab-cd-01\r\n\r\n";
        assert_eq!(lenient_header(block, "Nats-Msg-Id").as_deref(), Some("m-1"));
        assert_eq!(
            lenient_header(block, "traceparent").as_deref(),
            Some("00-ab-cd-01")
        );
        assert_eq!(lenient_header(block, "X-Bad"), None);
        assert_eq!(lenient_header(b"", "Nats-Msg-Id"), None);
        assert_eq!(lenient_header(&[0xff; 64], "Nats-Msg-Id"), None);
    }
}
