//! The JetStream topology: three streams and every actor's durable pull
//! consumers, provisioned idempotently.

use std::fmt;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use falcon_schemas::subject::{STREAM_CMD, STREAM_DLQ, STREAM_EVT};

use crate::Error;

/// Settings shared by the three streams.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamSettings {
    /// How long messages are kept (retention by limits, so replay stays
    /// possible). Default 7 days.
    pub max_age: Duration,
    /// JetStream drops a message whose `Nats-Msg-Id` it saw within this
    /// window. Default 2 minutes (the contract's minimum).
    pub duplicate_window: Duration,
    /// Replicas per stream: 1 on one server, 3 on a cluster.
    pub replicas: usize,
    /// Most bytes each stream keeps: FALCON_CMD, FALCON_EVT, FALCON_DLQ.
    /// A full stream refuses new messages (discard `new`) rather than drop
    /// history an actor has not read: publishers see the refusal and retry,
    /// and `falcon doctor` and the metrics show the stream near full.
    pub max_bytes: [i64; 3],
}

impl Default for StreamSettings {
    fn default() -> Self {
        StreamSettings {
            max_age: Duration::from_secs(7 * 24 * 3600),
            duplicate_window: Duration::from_secs(120),
            replicas: 1,
            max_bytes: [1 << 30, 4 << 30, 256 << 20],
        }
    }
}

/// A durable pull consumer an actor reads through.
#[derive(Debug, Clone, PartialEq)]
pub struct ConsumerSpec {
    /// Durable name, e.g. `payment-evt`.
    pub name: String,
    pub stream: &'static str,
    pub filter_subjects: Vec<String>,
    /// How long JetStream waits for an ack before redelivering.
    pub ack_wait: Duration,
    /// Deliveries before JetStream gives up on a message.
    pub max_deliver: i64,
    /// Messages delivered but not yet acked, at most.
    pub max_ack_pending: i64,
}

/// What `apply` did to one stream or consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Created,
    Updated,
    Unchanged,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Created => "created",
            Action::Updated => "updated",
            Action::Unchanged => "unchanged",
        })
    }
}

/// One line of `falcon streams apply`'s report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// `stream` or `consumer`.
    pub kind: &'static str,
    /// Stream name, or `STREAM/consumer`.
    pub name: String,
    pub action: Action,
}

/// The three streams with their subjects.
pub fn stream_configs(settings: &StreamSettings) -> Vec<stream::Config> {
    [
        (STREAM_CMD, "falcon.cmd.>", "commands from clients"),
        (
            STREAM_EVT,
            "falcon.evt.>",
            "domain events: the sagas' source of truth",
        ),
        (
            STREAM_DLQ,
            "falcon.dlq.>",
            "messages an actor could not process, with why",
        ),
    ]
    .into_iter()
    .zip(settings.max_bytes)
    .map(|((name, subject, description), max_bytes)| stream::Config {
        name: name.to_owned(),
        subjects: vec![subject.to_owned()],
        description: Some(description.to_owned()),
        retention: stream::RetentionPolicy::Limits,
        storage: stream::StorageType::File,
        max_age: settings.max_age,
        duplicate_window: settings.duplicate_window,
        num_replicas: settings.replicas,
        allow_direct: true,
        max_bytes,
        discard: stream::DiscardPolicy::New,
        // Commands and events are the record: no identity may delete or
        // purge them through the API (dead letters may be purged once
        // handled).
        deny_delete: name != STREAM_DLQ,
        deny_purge: name != STREAM_DLQ,
        ..Default::default()
    })
    .collect()
}

fn consumer_config(spec: &ConsumerSpec) -> consumer::pull::Config {
    let (filter_subject, filter_subjects) = match spec.filter_subjects.as_slice() {
        [one] => (one.clone(), Vec::new()),
        many => (String::new(), many.to_vec()),
    };
    consumer::pull::Config {
        durable_name: Some(spec.name.clone()),
        description: Some(format!("FalconPay {}", spec.name)),
        deliver_policy: consumer::DeliverPolicy::All,
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: spec.ack_wait,
        max_deliver: spec.max_deliver,
        max_ack_pending: spec.max_ack_pending,
        filter_subject,
        filter_subjects,
        ..Default::default()
    }
}

fn same_stream(have: &stream::Config, want: &stream::Config) -> bool {
    have.subjects == want.subjects
        && have.retention == want.retention
        && have.storage == want.storage
        && have.max_age == want.max_age
        && have.duplicate_window == want.duplicate_window
        && have.num_replicas == want.num_replicas
        && have.allow_direct == want.allow_direct
        && have.description == want.description
        && have.max_bytes == want.max_bytes
        && have.discard == want.discard
        && have.deny_delete == want.deny_delete
        && have.deny_purge == want.deny_purge
}

fn filters(filter_subject: &str, filter_subjects: &[String]) -> Vec<String> {
    let mut all: Vec<String> = filter_subjects.to_vec();
    if !filter_subject.is_empty() {
        all.push(filter_subject.to_owned());
    }
    all.sort();
    all
}

fn same_consumer(have: &consumer::Config, want: &consumer::pull::Config) -> bool {
    filters(&have.filter_subject, &have.filter_subjects)
        == filters(&want.filter_subject, &want.filter_subjects)
        && have.ack_wait == want.ack_wait
        && have.max_deliver == want.max_deliver
        && have.max_ack_pending == want.max_ack_pending
        && have.ack_policy == want.ack_policy
}

fn is_not_found(e: &jetstream::context::GetStreamError) -> bool {
    matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(js)
        if js.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND)
}

/// Creates or updates the streams and the consumers; running it again
/// changes nothing and reports every item `Unchanged`.
pub async fn apply(
    js: &jetstream::Context,
    settings: &StreamSettings,
    consumers: &[ConsumerSpec],
) -> Result<Vec<Change>, Error> {
    let mut changes = Vec::new();
    for want in stream_configs(settings) {
        let action = match js.get_stream(&want.name).await {
            Ok(mut existing) => {
                let info = existing
                    .info()
                    .await
                    .map_err(|e| Error::topology("reading stream", &want.name, e))?;
                if same_stream(&info.config, &want) {
                    Action::Unchanged
                } else {
                    js.update_stream(&want)
                        .await
                        .map_err(|e| Error::topology("updating stream", &want.name, e))?;
                    Action::Updated
                }
            }
            Err(e) if is_not_found(&e) => {
                js.create_stream(want.clone())
                    .await
                    .map_err(|e| Error::topology("creating stream", &want.name, e))?;
                Action::Created
            }
            Err(e) => return Err(Error::topology("reading stream", &want.name, e)),
        };
        changes.push(Change {
            kind: "stream",
            name: want.name.clone(),
            action,
        });
    }
    for spec in consumers {
        let name = format!("{}/{}", spec.stream, spec.name);
        let stream = js
            .get_stream(spec.stream)
            .await
            .map_err(|e| Error::topology("reading stream", spec.stream, e))?;
        let want = consumer_config(spec);
        let action = match stream.consumer_info(&spec.name).await {
            Ok(info) if same_consumer(&info.config, &want) => Action::Unchanged,
            Ok(_) => {
                stream
                    .create_consumer(want)
                    .await
                    .map_err(|e| Error::topology("updating consumer", &name, e))?;
                Action::Updated
            }
            Err(_) => {
                stream
                    .create_consumer(want)
                    .await
                    .map_err(|e| Error::topology("creating consumer", &name, e))?;
                Action::Created
            }
        };
        changes.push(Change {
            kind: "consumer",
            name,
            action,
        });
    }
    Ok(changes)
}
