//! Dead letters: a copy of a message that can never succeed, in
//! `FALCON_DLQ`, with where it came from and why in headers.

use async_nats::jetstream::{self, message::PublishMessage};
use async_nats::HeaderMap;
use falcon_schemas::subject::{dlq, dlq_subject, HEADER_MSG_ID, HEADER_TRACEPARENT};

use crate::consumer::Delivery;
use crate::Error;

/// Longest error text kept in a header, in bytes.
pub const ERROR_LEN_MAX: usize = 1024;

/// Publishes a copy of `delivery` to `falcon.dlq.<consumer>.<subject>` and
/// waits for JetStream's ack. The copy's message id is derived from the
/// original's stream and sequence, so dead-lettering twice stores it once.
pub async fn dead_letter(
    js: &jetstream::Context,
    delivery: &Delivery,
    error: &str,
) -> Result<(), Error> {
    let subject = dlq_subject(&delivery.consumer, &delivery.subject);
    let mut headers = HeaderMap::new();
    let error_line: String = error
        .replace(['\r', '\n'], " ")
        .chars()
        .take(ERROR_LEN_MAX)
        .collect();
    headers.insert(dlq::ERROR, error_line.as_str());
    headers.insert(dlq::ORIGINAL_SUBJECT, delivery.subject.as_str());
    headers.insert(dlq::ORIGINAL_STREAM, delivery.stream.as_str());
    headers.insert(dlq::ORIGINAL_SEQ, delivery.stream_seq.to_string().as_str());
    headers.insert(dlq::CONSUMER, &*delivery.consumer);
    headers.insert(dlq::DELIVERY_COUNT, delivery.delivered.to_string().as_str());
    let dlq_id = format!(
        "dlq:{}:{}:{}",
        delivery.stream, delivery.stream_seq, delivery.consumer
    );
    headers.insert(HEADER_MSG_ID, dlq_id.as_str());
    if let Some(tp) = delivery.traceparent() {
        headers.insert(HEADER_TRACEPARENT, tp);
    }
    let publish = PublishMessage::build()
        .payload(delivery.payload.clone())
        .headers(headers);
    let fail = |e: &dyn std::fmt::Display| Error::Publish {
        subject: subject.clone(),
        detail: e.to_string(),
    };
    js.send_publish(subject.clone(), publish)
        .await
        .map_err(|e| fail(&e))?
        .await
        .map_err(|e| fail(&e))?;
    Ok(())
}
