//! Publishing with `Nats-Msg-Id` and `traceparent`, acks in flight at once.

use async_nats::jetstream::{self, context::PublishAckFuture, message::PublishMessage};
use async_nats::HeaderMap;
use bytes::Bytes;
use falcon_schemas::subject::{HEADER_MSG_ID, HEADER_TRACEPARENT};
use futures::future::join_all;

use crate::Error;

/// A message to publish: JetStream drops it as a duplicate when `msg_id` was
/// seen within the stream's duplicate window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutMsg {
    pub subject: String,
    pub msg_id: String,
    pub traceparent: Option<String>,
    pub payload: Bytes,
}

/// What JetStream said about one published message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    pub stream_seq: u64,
    /// True when JetStream had the message id already (nothing stored).
    pub duplicate: bool,
}

fn build(msg: &OutMsg) -> PublishMessage {
    let mut headers = HeaderMap::new();
    headers.insert(HEADER_MSG_ID, msg.msg_id.as_str());
    if let Some(tp) = &msg.traceparent {
        headers.insert(HEADER_TRACEPARENT, tp.as_str());
    }
    PublishMessage::build()
        .payload(msg.payload.clone())
        .headers(headers)
}

async fn send(js: &jetstream::Context, msg: &OutMsg) -> Result<PublishAckFuture, Error> {
    js.send_publish(msg.subject.clone(), build(msg))
        .await
        .map_err(|e| Error::Publish {
            subject: msg.subject.clone(),
            source: e.into(),
        })
}

async fn confirm(subject: &str, ack: PublishAckFuture) -> Result<Published, Error> {
    ack.await
        .map(|a| Published {
            stream_seq: a.sequence,
            duplicate: a.duplicate,
        })
        .map_err(|e| Error::Publish {
            subject: subject.to_owned(),
            source: e.into(),
        })
}

/// Publishes one message and waits for JetStream's ack.
pub async fn publish(js: &jetstream::Context, msg: &OutMsg) -> Result<Published, Error> {
    let ack = send(js, msg).await?;
    confirm(&msg.subject, ack).await
}

/// Acks a [`publish_all`] keeps in flight at most: below async-nats's own
/// bound on pending acks per context (5,000 by default), past which a
/// publish waits for an ack that is only awaited after every publish, for
/// ever.
pub const PUBLISH_WINDOW: usize = 1024;

/// Publishes every message, then waits for all the acks together: one round
/// trip per [`PUBLISH_WINDOW`] messages, not one per message. The results
/// are in input order.
pub async fn publish_all(
    js: &jetstream::Context,
    msgs: &[OutMsg],
) -> Vec<Result<Published, Error>> {
    let mut results = Vec::with_capacity(msgs.len());
    for window in msgs.chunks(PUBLISH_WINDOW) {
        let mut pending = Vec::with_capacity(window.len());
        for msg in window {
            pending.push(send(js, msg).await);
        }
        results.extend(
            join_all(window.iter().zip(pending).map(|(msg, sent)| async move {
                match sent {
                    Ok(ack) => confirm(&msg.subject, ack).await,
                    Err(e) => Err(e),
                }
            }))
            .await,
        );
    }
    results
}

/// Whether a publish failed in a way no retry can mend: the message is
/// larger than the server's `max_payload` or the stream's
/// `max_msg_size`. (A full stream, a timeout, a lost connection, a missing
/// stream: all may pass.) The reason, when it cannot.
pub fn never_publishable(e: &Error) -> Option<String> {
    use async_nats::jetstream::context::{PublishError, PublishErrorKind};
    let Error::Publish { source, .. } = e else {
        return None;
    };
    let publish = source.downcast_ref::<PublishError>()?;
    if publish.kind() == PublishErrorKind::MaxPayloadExceeded {
        return Some(format!("larger than the server's max_payload: {publish}"));
    }
    let api = std::error::Error::source(publish)?.downcast_ref::<async_nats::jetstream::Error>()?;
    (api.error_code() == async_nats::jetstream::ErrorCode::STREAM_MESSAGE_EXCEEDS_MAXIMUM)
        .then(|| format!("larger than the stream's max_msg_size: {api}"))
}
